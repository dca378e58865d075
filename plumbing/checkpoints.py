"""Checkpoints, resume and stops: a checkpoint is written atomically (a crash never leaves half a file), read back with
weights_only=True and checked against the command line, and restored into the model, optimizers and probe exactly.
SIGINT / SIGTERM ask a run to save and stop after its step; a write that fails (a full disk) says in one line what is
saved and what is not."""
import contextlib
import dataclasses
import errno
import io
import os
import signal
from pathlib import Path

import torch
import torch.nn as nn

from plumbing.distributed import broadcast
from plumbing.errors import UserError

CKPT_FORMAT = "cleanssl-checkpoint-1"
CKPT_KEYS = ("method", "model", "optimizers", "probe", "probe_opt", "step", "epoch", "batch_in_epoch", "rng", "args")
FIXED_FLAGS = ("dataset", "backbone", "patch_size", "optimizer", "batch_size", "seed", "exp_name")  # define a run


def flag(name: str) -> str:
    """An Args field as its command-line flag: batch_size -> --batch-size."""
    return "--" + name.replace("_", "-")


def save_checkpoint(path: Path, state: dict):
    """torch.save into memory (the bytes then depend on the state alone), a temporary file of this process, an atomic
    rename: a crash or a full disk (OSError) never leaves half a file, and the previous one stays intact."""
    buffer = io.BytesIO()
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(state, buffer)
    try:
        temporary.write_bytes(buffer.getbuffer())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def load_checkpoint(path: str, method: str, args) -> dict:
    """A checkpoint of `method`, read with weights_only=True (tensors and plain values only: a file from elsewhere
    cannot run code), its flags compared with this command line: FIXED_FLAGS must agree, other changes are listed
    in its "changed" entry {field: (old, new)}."""
    if not Path(path).is_file():
        raise UserError(f"--resume {path}: no such checkpoint file.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # empty, truncated, not a torch file, or holding objects other than tensors and plain types
        raise UserError(f"--resume {path}: not a readable checkpoint ({type(e).__name__}).") from None
    if not isinstance(state, dict) or state.get("format") != CKPT_FORMAT or not state.keys() >= set(CKPT_KEYS):
        raise UserError(f"--resume {path}: not a complete cleanssl training checkpoint (resume from a run's last.pt).")
    if state["method"] != method:
        raise UserError(f"--resume {path} is a {state['method']} checkpoint; continue it with "
                        f"methods/{state['method']}.py.")
    old = state["args"]
    changed = {k: (old.get(k), v) for k, v in dataclasses.asdict(args).items()
               if k not in ("resume", "run_dir") and old.get(k) != v}
    state["changed"] = changed
    fixed = [f"{flag(k)} {changed[k][0]} (now {changed[k][1]})" for k in FIXED_FLAGS if k in changed]
    if fixed:
        raise UserError(f"--resume {path}: it was trained with {', '.join(fixed)}; these flags cannot change in a run.")
    return state


def is_complete(state: dict, stop_step: int, run_dir: Path, path: str, rank0: bool) -> bool:
    """A resumed run that reached its last step and wrote results.json after its checkpoint (rank 0's verdict)."""
    if not state or state["step"] < stop_step:
        return False
    results = run_dir / "results.json"  # written last: newer than the checkpoint once the run is complete
    complete = rank0 and results.is_file() and results.stat().st_mtime >= Path(path).stat().st_mtime
    return broadcast(complete)


def resume_position(state: dict, steps_per_epoch: int):
    """(steps done, epoch, batch in that epoch) where a resumed run goes on: after a checkpoint taken at the end of an
    epoch, the next epoch's first batch."""
    if state["batch_in_epoch"] >= steps_per_epoch:
        return state["step"], state["epoch"] + 1, 0
    return state["step"], state["epoch"], state["batch_in_epoch"]


def changes_since(state: dict, world: int) -> str:
    """'; honoured changes: --lr 0.1 -> 0.2, processes 1 -> 2' (the flags and process count changed since the
    checkpoint), or ''."""
    changes = [f"{flag(k)} {old} -> {new}" for k, (old, new) in state["changed"].items()]
    if state.get("world_size", world) != world:
        changes.append(f"processes {state['world_size']} -> {world}")
    return "; honoured changes: " + ", ".join(changes) if changes else ""


def checkpoint_state(method: str, model: nn.Module, optimizers, probe, scaler, position: dict, world: int,
                     args, resumed_from: dict = None) -> dict:
    """What last.pt holds: every weight and buffer, the optimizers', probe's and loss scaler's states, the position
    {step, epoch, batch_in_epoch}, the process count, the RNG states and the flags. A process resumed from
    `resumed_from` that took no step (resumed only to finish) holds the state it resumed from, as it was (its
    position, the lr and weight decay its schedules had set), with this position's minutes and final_logged."""
    if resumed_from is not None and position["step"] == resumed_from["step"]:
        return {**resumed_from, "minutes": position["minutes"], "final_logged": position["final_logged"]}
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"format": CKPT_FORMAT, "method": method, "model": model.state_dict(),
            "optimizers": [o.state_dict() for o in optimizers], "probe": probe.state_dict(),
            "probe_opt": probe.opt.state_dict(), **position, "world_size": world,
            "rng": {"torch": torch.get_rng_state(), "cuda": cuda_rng},
            "args": dataclasses.asdict(args), "scaler": scaler.state_dict()}


def restore(state: dict, model: nn.Module, optimizers, probe, scaler, path: str):
    """Load a checkpoint (load_checkpoint's) into the model, optimizers, probe and loss scaler, and the RNG state.
    The optimizers keep this command line's hyperparameters (lr, weight decay...), so changed flags are honoured.
    A checkpoint that does not fit: UserError naming the changed flags behind the tensors of another shape."""
    try:
        model.load_state_dict(state["model"])
        if len(state["optimizers"]) != len(optimizers):
            raise ValueError("another number of optimizers")
        for optimizer, saved in zip(optimizers, state["optimizers"]):
            now = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
            optimizer.load_state_dict(saved)
            for group, hyperparameters in zip(optimizer.param_groups, now):
                group.update(hyperparameters)
        probe.load_state_dict(state["probe"])
        probe.opt.load_state_dict(state["probe_opt"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])  # fp16's loss scale
    except (RuntimeError, ValueError, KeyError) as e:
        why = _misfit(state, model.state_dict()) or str(e).splitlines()[0][:100]
        raise UserError(f"--resume {path}: the checkpoint does not fit this command's model or optimizer "
                        f"({why}).") from None
    torch.set_rng_state(state["rng"]["torch"])  # the augmentation and masks are reseeded every step; this is the rest
    if state["rng"]["cuda"] and len(state["rng"]["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])


def _misfit(state: dict, now: dict) -> str:
    """The changed flags whose old and new values are dimensions of the tensors that do not fit, else the first
    tensor that differs, else ''."""
    old = state["model"]
    odd = [k for k in {**old, **now} if getattr(old.get(k), "shape", 0) != getattr(now.get(k), "shape", 0)]
    dims = {str(n) for k in odd for d in (old, now) if k in d for n in d[k].shape}
    culprits = [f"{flag(k)} {o} (now {n})" for k, (o, n) in state["changed"].items() if {str(o), str(n)} <= dims]
    if culprits:
        return ", ".join(culprits)
    return "".join(f"{k} differs" for k in odd[:1])


def last_good(last_checkpoint, run_dir: Path) -> str:
    """What a run that diverged still has: its last checkpoint, or its tensorboard curves up to there."""
    if last_checkpoint:
        return f"Last good checkpoint: {last_checkpoint}"
    return f"Nothing saved yet (tensorboard curves so far in {run_dir})"


def first_nonfinite(*modules: nn.Module):
    """Name of the first parameter or buffer holding NaN or Inf (one device sync), else None."""
    items = [(k, v) for m in modules for k, v in m.state_dict().items() if v.is_floating_point()]
    ok = torch.stack([torch.isfinite(v).all() for _, v in items]).cpu()
    if ok.all():
        return None
    return items[int((~ok).nonzero()[0])][0]


class Saver:
    """Writes into a run directory and remembers what is safely there (`kept`), so that a write that fails says in one
    line what was and was not saved."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.kept = []  # the files saved so far, as said to the user: "last.pt (step 400)", "backbone.pt"

    @contextlib.contextmanager
    def writing(self, *what: str):
        """An OSError (a full disk...) while writing `what`: UserError (exit 1) naming what is and is not saved."""
        try:
            yield
        except OSError as e:
            if e.errno == errno.ENOSPC:
                why = f"no space left on {self.dir}"
            else:
                why = f"cannot write in {self.dir} ({e})"
            missing = ", ".join(w for w in what if w not in self.kept)
            raise UserError(f"{why}: {missing} not saved; kept {', '.join(self.kept) or 'nothing'}.", 1) from None


class StopSignals:
    """SIGINT and SIGTERM ask the run to save a checkpoint and stop after the current step (`received`). A second
    SIGINT (Ctrl-C again) stops at once (KeyboardInterrupt); a second SIGTERM changes nothing, as a scheduler that
    preempts a job under torchrun may deliver two (its own and torchrun's forwarded one)."""

    def __init__(self, say):
        self.received = None  # the first signal's number
        self.say = say  # prints a line (rank 0's stdout)

    def catch(self):
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def release(self):
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    @contextlib.contextmanager
    def deferred(self, active: bool = True):
        """Once released: SIGINT and SIGTERM wait for the block's end, then act (KeyboardInterrupt, the end of the
        process). For what must not be cut in two: the final scalars logged and the checkpoint that says so."""
        if not active:
            yield
            return
        received = []
        signal.signal(signal.SIGINT, lambda signum, _frame: received.append(signum))
        signal.signal(signal.SIGTERM, lambda signum, _frame: received.append(signum))
        try:
            yield
        finally:
            self.release()
            if received:
                signal.raise_signal(received[0])

    def _on_signal(self, signum, _frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.received is not None:
            return
        self.received = signum
        name = signal.Signals(signum).name
        self.say(f"{name} received: saving a checkpoint after this step (Ctrl-C again: quit now)")

"""What a run writes as it goes: its directory (runs/{dataset}__{name}__{seed}__{time}-{pid}), tensorboard's events
(hyperparameters, scalars collected as tensors and read in batches, so logging costs no device sync) and the progress
line on the console."""
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

from plumbing.augment import Augment
from plumbing.distributed import broadcast


def choose_run_dir(args, method: str, resume: str, rank0: bool):
    """The run directory (a resumed run stays in its checkpoint's) and, if it cannot be made, why (rank 0's verdict,
    on every rank): (Path, error message or None). Checked before the data is loaded, created when the loop starts."""
    if resume is not None:
        if args.run_dir and Path(args.run_dir).resolve() != Path(resume).parent.resolve():
            return None, f"--run-dir {args.run_dir}: a resumed run stays in {Path(resume).parent}."
        return Path(resume).parent, None
    now = time.time()
    stamp = f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}.{int(now % 1 * 1e6):06d}-{os.getpid()}"
    directory = Path(args.run_dir or f"runs/{args.dataset}__{args.exp_name or method}__{args.seed}__{stamp}")
    error = None
    if rank0 and args.run_dir and directory.exists():
        error = f"--run-dir {directory} exists; a run directory is reused only by --resume {directory / 'last.pt'}."
    elif rank0:  # fail now, not after loading the data: can the parent hold a new directory?
        try:
            directory.parent.mkdir(parents=True, exist_ok=True)
            if not os.access(directory.parent, os.W_OK):
                error = f"cannot create {directory}: {directory.parent} is not writable."
        except OSError as e:
            error = f"cannot create the run directory {directory} ({e})."
    return broadcast((directory, error))


def open_run_dir(directory: Path, args, resumed_at: int = None, views_grid=None):
    """Create the run directory (a resumed one exists: its stale temporary files go) and its tensorboard writer, with
    the hyperparameters as a table and, for a new run, the grid of images and their views (images/views). A resumed
    run's events after its checkpoint's step are dropped (purge_step)."""
    directory.mkdir(parents=True, exist_ok=resumed_at is not None)
    for stale in directory.glob("*.tmp"):  # left by a process killed while saving
        stale.unlink(missing_ok=True)
    from torch.utils.tensorboard import SummaryWriter  # (seconds to import: only where a run starts)
    purge_step = None if resumed_at is None else resumed_at + 1
    writer = SummaryWriter(str(directory), purge_step=purge_step)
    rows = "\n".join(f"|{k}|{v}|" for k, v in vars(args).items())
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + rows)
    if resumed_at is None:
        writer.add_image("images/views", views_grid, 0)
    return writer


def header_line(method: str, args, data, device, precision: str, world: int, stop_step: int, directory) -> str:
    """The run's first line: what trains on what, where, how long, and its directory."""
    processes = f" x {world} processes" if world > 1 else ""
    return (f"[{method}] {args.dataset}: {len(data)} training images of {data.image_size}px, {data.num_classes} "
            f"classes; {args.backbone} on {device} ({precision}){processes}; {len(data) // args.batch_size} "
            f"steps/epoch, {stop_step} steps; run dir {directory}")


def views_grid(data, views, normalize):
    """A picture for tensorboard (images/views): 8 training images (first row) above each of their augmented views (a
    row per view), back in [0, 1], at the images' size (large images: 96 px)."""
    shown = next(data.eval_batches("train", 8))[0]
    drawn = Augment(views, data.mean, data.std)(shown, torch.Generator(data.device).manual_seed(0))
    mean = torch.tensor(data.mean, device=shown.device).view(1, 3, 1, 1)
    std = torch.tensor(data.std, device=shown.device).view(1, 3, 1, 1)
    size = 96 if data.large else data.image_size
    rows = [F.interpolate((v.float() * std + mean).clamp(0, 1), size=size) for v in [normalize(shown), *drawn]]
    return torchvision.utils.make_grid(torch.cat(rows).cpu(), nrow=len(shown))


class Progress:
    """Views per second between two progress reports, and whether the progress line is due (every 10 s or forced)."""

    def __init__(self):
        self.views = 0  # views augmented since the last report
        self.tick = time.time()  # when the views began to count
        self.printed = 0.0  # when the last progress line was printed

    def rate(self, now: float) -> float:
        """Views per second since the last rate; counting starts again."""
        rate = self.views / max(now - self.tick, 1e-9)
        self.views = 0
        self.tick = now
        return rate

    def due(self, now: float, force: bool) -> bool:
        if force or now - self.printed > 10:
            self.printed = now
            return True
        return False


class ScalarLog:
    """Scalars of each step {tag: tensor or number}, kept as tensors on the device until `read` (one transfer)."""

    def __init__(self):
        self.pending = []  # (step, {tag: 0-d tensor})

    def __len__(self):
        return len(self.pending)

    def add(self, step: int, scalars: dict):
        values = {}
        for tag, v in scalars.items():
            if torch.is_tensor(v):
                values[tag] = v.detach().float().reshape(()).clone()
            else:
                values[tag] = torch.tensor(float(v))
        self.pending.append((step, values))

    def read(self, device) -> list:
        """The pending scalars as [(step, tag, float)], in the order logged; the log is then empty."""
        flat = [(step, tag, v) for step, values in self.pending for tag, v in values.items()]
        self.pending = []
        if not flat:
            return []
        numbers = torch.stack([v.to(device) for _, _, v in flat]).tolist()
        return [(step, tag, number) for (step, tag, _), number in zip(flat, numbers)]


def first_nonfinite_loss(rows: list):
    """(tag, value, step) of the first losses/* scalar that is NaN or infinite among read rows, else None."""
    for step, tag, value in rows:
        if tag.startswith("losses/") and not math.isfinite(value):
            return tag, value, step
    return None


def progress_line(epoch: int, epochs: int, step: int, stop_step: int, latest: dict, views_per_sec: float,
                  eta_seconds: float) -> str:
    """'epoch 1/10 step 40/390 loss 5.1234 lr 0.0004 views/s 1,234 ETA 2.0 min'; the loss is losses/total or else the
    first losses/* term of `latest` {tag: last value}."""
    loss = latest.get("losses/total", next((v for k, v in latest.items() if k.startswith("losses/")), math.nan))
    return (f"epoch {epoch + 1}/{epochs} step {step}/{stop_step} loss {loss:.4f} lr "
            f"{latest.get('charts/learning_rate', math.nan):.4g} views/s {views_per_sec:,.0f} ETA "
            f"{eta_seconds / 60:.1f} min")


def silence_stdout():
    """From now on stdout is /dev/null (its reader left: a closed pipe, a terminal that hung up)."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())

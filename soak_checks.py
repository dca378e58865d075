"""The soak's checks of its runs (soak.py): a completed run holds what it must, equals its uninterrupted twin tensor by
tensor and curve by curve in tensorboard, and nothing stray is left under the soak's folder."""
import json
import logging
from collections import Counter
from pathlib import Path
from typing import List

import torch

CHECKPOINT_KEYS = ("model", "optimizers", "probe", "probe_opt", "scaler", "step", "epoch", "batch_in_epoch", "rng")


def unequal(mine, theirs, path: str) -> List[str]:
    """The paths (e.g. model/backbone.stem.0.weight) where two loaded checkpoints differ: tensors by torch.equal."""
    if torch.is_tensor(mine) or torch.is_tensor(theirs):
        same = torch.is_tensor(mine) and torch.is_tensor(theirs) and mine.dtype == theirs.dtype
        return [] if same and mine.shape == theirs.shape and torch.equal(mine, theirs) else [path]
    if isinstance(mine, dict) and isinstance(theirs, dict):
        if mine.keys() != theirs.keys():
            return [f"{path} (other keys)"]
        return [p for k in mine for p in unequal(mine[k], theirs[k], f"{path}/{k}")]
    if isinstance(mine, (list, tuple)) and isinstance(theirs, (list, tuple)):
        if len(mine) != len(theirs):
            return [f"{path} (another length)"]
        return [p for i, (a, b) in enumerate(zip(mine, theirs)) for p in unequal(a, b, f"{path}/{i}")]
    return [] if mine == theirs else [path]


def compare_runs(run_dir: Path, twin_dir: Path) -> List[str]:
    """Where a run's backbone.pt and last.pt differ from its twin's (last.pt: weights and buffers, optimizers, online
    probe, loss scale, position, RNG state; not the flags, which name the directories)."""
    differences = []
    for name in ("backbone.pt", "last.pt"):
        mine = torch.load(run_dir / name, map_location="cpu", weights_only=True)
        theirs = torch.load(twin_dir / name, map_location="cpu", weights_only=True)
        if name == "last.pt":
            mine = {k: mine.get(k) for k in CHECKPOINT_KEYS}
            theirs = {k: theirs.get(k) for k in CHECKPOINT_KEYS}
        differences += unequal(mine, theirs, name)
    return [f"{run_dir.name}: {path} differs from the twin's" for path in differences]


def scalar_curves(run_dir: Path) -> dict:
    """{tag: [(step, value)]} of a run's scalars as tensorboard reads its event files (EventAccumulator: a resumed
    run's purge_step drops what a stopped process logged after its checkpoint)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    logging.getLogger("tensorboard").setLevel(logging.ERROR)  # not a warning for each purge: resumes are expected
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def compare_curves(run_dir: Path, twin_dir: Path) -> List[str]:
    """losses/total's steps strictly increase; every scalar (but views/s, a timing) is logged at the twin's steps
    (none lost, none more often) with the twin's values."""
    mine = scalar_curves(run_dir)
    theirs = scalar_curves(twin_dir)
    steps = [s for s, _ in mine.get("losses/total", [])]
    problems = [] if steps else [f"{run_dir.name}: no losses/total in tensorboard"]
    twice = [s for i, s in enumerate(steps) if i and s <= max(steps[:i])]  # logged at or before a step already seen
    if twice:
        problems.append(f"{run_dir.name}: losses/total steps not strictly increasing (again at {twice[:5]})")
    for tag in sorted((set(mine) | set(theirs)) - {"charts/views_per_sec"}):
        ours = Counter(s for s, _ in mine.get(tag, []))
        twins = Counter(s for s, _ in theirs.get(tag, []))
        more = sorted((ours - twins).elements())
        # the twin evaluates twice at its last step (its last epoch's evaluation, then the final one); a run stopped
        # at its last step, before the epoch's evaluation, resumes with no step left and only the final one
        none = sorted(set(twins) - set(ours))
        if more or none:
            problems.append(f"{run_dir.name}: {tag} at other steps than the twin's (more at {more[:5]}, none at "
                            f"{none[:5]})")
            continue
        other = sorted(set(mine[tag]) ^ set(theirs[tag]))  # (step, value) pairs of one of them only
        if other:
            where = sorted({step for step, _ in other})
            problems.append(f"{run_dir.name}: {tag} differs from the twin's at {len(where)} steps ({where[:5]})")
    return problems


def complete(run_dir: Path, plan, steps: int) -> List[str]:
    """What a completed run of this plan (a soak.Plan) must hold: results.json, backbone.pt, last.pt at the last step,
    all its own (method, seed, processes); no *.tmp."""
    missing = [f for f in ("results.json", "backbone.pt", "last.pt") if not (run_dir / f).is_file()]
    if missing:
        return [f"{run_dir}: no {', '.join(missing)}"]
    results = json.loads((run_dir / "results.json").read_text())
    checkpoint = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
    want = {"method": plan.method, "seed": plan.seed, "steps": steps, "processes": 2 if plan.torchrun else 1}
    got = {"method": results.get("method"), "seed": results.get("seed"), "steps": results.get("steps"),
           "processes": results.get("processes")}
    problems = [f"{run_dir}: results.json says {got}, not {want}"] if got != want else []
    ours = (checkpoint["method"], checkpoint["args"]["seed"], checkpoint["step"], checkpoint["world_size"])
    if ours != (plan.method, plan.seed, steps, want["processes"]):
        problems.append(f"{run_dir}: last.pt is (method, seed, step, processes) {ours}")
    problems += [f"{p}: a temporary file left" for p in run_dir.rglob("*.tmp")]
    return problems


def strays(out: Path, runs: List[str], aside: List[str]) -> List[str]:
    """Everything under OUT that is neither a run (runs/), a twin (twins/), a recorded aside (aside/) nor a log."""
    found = [str(p) for p in out.iterdir() if p.name not in ("runs", "twins", "aside", "logs", "soak.json")]
    for folder, names in (("runs", runs), ("twins", runs), ("aside", aside)):
        found += [str(p) for p in (out / folder).iterdir() if p.name not in names]
    return [f"{p}: not a run of this soak nor recorded as set aside" for p in found]

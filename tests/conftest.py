"""The one test harness: `train` runs a method's main() in this process exactly as its command line would (tyro parses
the flags), `run_script` runs a script as a subprocess, where the command line itself is under test."""
import json
import math
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import tyro

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "methods"))
import common  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n 2: one thread per worker (and its subprocesses), a core each
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

def pytest_addoption(parser):
    parser.addoption("--full", action="store_true", help="also run the tests marked full (what CI leaves out for time)")


def pytest_configure(config):
    config.addinivalue_line("markers", "full: slower repeats of a CI test for more methods; run with pytest --full")


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--full"):
        skip = pytest.mark.skip(reason="part of the full suite: pytest --full")
        for item in items:
            if "full" in item.keywords:
                item.add_marker(skip)


# a few CPU seconds: tiny backbone, synthetic data, no periodic evaluation or checkpoints unless a test asks
TINY = ("--dataset", "synthetic", "--backbone", "tiny", "--batch-size", "32", "--epochs", "2", "--warmup-epochs", "1",
        "--eval-every", "0", "--mi-every", "0", "--save-every", "0", "--save-every-minutes", "0", "--device", "cpu")


def run_script(script, *args, cwd, timeout=600, env=None):
    """Run a script as a user would, in `cwd` (its runs/ goes there); returns the CompletedProcess."""
    threads = os.environ.get("OMP_NUM_THREADS", "2")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": threads, **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def script(tmp_path):
    """script(path, *args) runs a script as a subprocess in tmp_path (see run_script)."""
    return lambda path, *args, **kw: run_script(path, *args, cwd=kw.pop("cwd", tmp_path), **kw)


def events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


@dataclass
class Trained:
    run: common.Run  # the run: .model, .optimizers, .probe, .data, .views, .step_count ...
    before: dict  # the model's state_dict when main() registered it with run.track (before any step)
    dir: Path  # the run directory
    results: dict  # its results.json ({} if the run wrote none)


@pytest.fixture
def train(tmp_path, monkeypatch):
    """train(module, *flags, images=None) -> Trained. images=N keeps the first N images of each split (the test split
    N // 2), so that epochs are a few steps long."""

    def go(module, *flags, images=None):
        seen, track, load = {}, common.Run.track, common.load_data

        def spy(self, model, *a, **k):
            seen.update(run=self, before={n: v.detach().clone() for n, v in model.state_dict().items()})
            return track(self, model, *a, **k)

        def small(*a, **k):
            d = load(*a, **k)
            d.splits = {s: (x[:images // (2 if s == "test" else 1)], y[:images // (2 if s == "test" else 1)])
                        for s, (x, y) in d.splits.items()}
            return d

        monkeypatch.setattr(common.Run, "track", spy)
        if images:
            monkeypatch.setattr(common, "load_data", small)
        monkeypatch.chdir(tmp_path)
        try:
            module.main(tyro.cli(module.Args, args=[str(f) for f in flags]))
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler), signal.signal(signal.SIGTERM, signal.SIG_DFL)
        run = seen["run"]
        results = run.dir / "results.json"
        return Trained(run, seen["before"], run.dir, json.loads(results.read_text()) if results.exists() else {})

    return go


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """cli(module, *flags) -> (exit code, stdout, stderr): the script's command line (common.cli, as its __main__ runs
    it) in this process, in tmp_path. An exception that common.cli lets through (a traceback) fails the test."""

    def go(module, *flags):
        monkeypatch.chdir(tmp_path)
        monkeypatch.setattr(sys, "argv", [module.__file__, *map(str, flags)])
        code = 0
        try:
            common.cli(module.main, module.Args)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler), signal.signal(signal.SIGTERM, signal.SIG_DFL)
        out = capsys.readouterr()
        return code, out.out, out.err

    return go


@pytest.fixture
def one_thread():
    """Small tensors: one thread is faster, and robust to a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def naive_dino(s, t, c, ts, tt):
    """Every (teacher global view i, student view v != i, image n) term, one float at a time."""
    terms = []
    for i in range(t.shape[0]):
        for v in range(s.shape[0]):
            if v == i:
                continue
            for n in range(s.shape[1]):
                tl = [(float(t[i, n, k]) - float(c[k])) / tt for k in range(t.shape[2])]
                sl = [float(x) / ts for x in s[v, n]]
                pt = [math.exp(x - max(tl)) / sum(math.exp(y - max(tl)) for y in tl) for x in tl]
                lse = max(sl) + math.log(sum(math.exp(x - max(sl)) for x in sl))
                terms.append(-sum(pk * (sk - lse) for pk, sk in zip(pt, sl)))
    return sum(terms) / len(terms)


@pytest.fixture
def probe_inputs(monkeypatch):
    """What the online probe trained on at each step, beside every output of the main (first tracked) backbone since
    the probe's previous step (a ViT: the CLS token of each tokens() call): a list of (probe features, [outputs])."""
    seen, pending, update, track = [], [], common.OnlineProbe.update, common.Run.track

    def spy_update(self, feats, y):
        seen.append((feats.detach().clone(), list(pending)))
        pending.clear()
        return update(self, feats, y)

    def spy_track(self, model, optimizers, backbones, probe, **kw):
        net = next(iter(backbones.values()))[0]  # a ViT's tokens() runs through its forward: hooked too
        net.register_forward_hook(lambda m, i, out: pending.append(out))
        return track(self, model, optimizers, backbones, probe, **kw)

    monkeypatch.setattr(common.OnlineProbe, "update", spy_update)
    monkeypatch.setattr(common.Run, "track", spy_track)
    return seen


def check_the_teacher_is_the_main_result(t, seen, out: str):
    """DINO, DINO-ViT, iBOT: backbone.pt is the teacher's backbone (not the student's); the results without a suffix
    and the printed [teacher] lines are the teacher's, the student is reported as *_student; from step 2 on (at step 1
    the two networks are still equal) the online probe trains on the teacher's features of that step."""
    model = torch.load(t.dir / "last.pt", weights_only=True)["model"]
    saved = torch.load(t.dir / "backbone.pt", weights_only=True)
    assert all(torch.equal(v, model[f"teacher.0.{k}"]) for k, v in saved.items())
    assert not all(torch.equal(v, model[f"student.0.{k}"]) for k, v in saved.items())
    assert {"knn_top1", "linear_top1", "online_linear_top1", "knn_top1_student", "linear_top1_student"} <= set(t.results)
    assert not [k for k in t.results if k.endswith("_g")] and "online_linear_top1_student" not in t.results
    assert "[teacher] kNN top-1" in out and "[student] kNN top-1" in out and "[teacher] online linear top-1" in out
    assert len(seen) >= 2
    for feats, outs in seen[1:]:
        cls = [o[:, 0] if o.ndim == 3 else o for o in outs]  # ViT tokens (N, 1 + L, D): the CLS token is R
        assert any(c.shape[1:] == feats.shape[1:] and torch.equal(c[:len(feats)], feats) for c in cls)

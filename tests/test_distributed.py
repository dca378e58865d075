"""Several processes (torchrun, gloo on the CPU): one step of two processes, each on its half of the global batch,
gives every parameter the gradient one process computes on the whole batch (BatchNorm made per-sample, see
tests/ddp_worker.py), for every method, and a gather that drops the other ranks' gradient is caught. torchrun runs
the scripts end to end (one run directory, one checkpoint) and a single process resumes their checkpoint."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TINY, run_script

CI = ["simclr", "vicreg", "swav", "dino", "moco_v2"]
OTHERS = ["adadim", "barlow_twins", "byol", "deepcluster_v2", "jmi", "moco_v3", "nnclr", "sdmi", "simsiam", "dino_vit",
          "ibot", "mae"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def torchrun(*args, nproc=2, cwd=None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=900)


def gradients(tmp_path, methods):
    """{method: (grads of one process, grads of rank 0, grads of rank 1)} after one step (see tests/ddp_worker.py)."""
    one = subprocess.run([sys.executable, str(ROOT / "tests/ddp_worker.py"), tmp_path, *methods], env=ENV,
                         capture_output=True, text=True, timeout=900)
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun(ROOT / "tests/ddp_worker.py", tmp_path, *methods)
    assert two.returncode == 0, two.stderr[-3000:]
    load = lambda m, w, r: torch.load(tmp_path / f"{m}_world{w}_rank{r}.pt", weights_only=True)  # noqa: E731
    return {m: (load(m, 1, 0), load(m, 2, 0), load(m, 2, 1)) for m in methods}


def mismatches(single, rank0, rank1, tol=1e-4):
    """Parameters whose two-process gradient differs from the one-process one by more than tol x (its largest entry
    + 1% of the largest entry of all): a gradient that is zero in exact arithmetic (e.g. of a bias the loss is
    invariant to) is round-off, compared at the scale of the others."""
    assert single.keys() == rank0.keys() == rank1.keys() and single
    bad, top = [], max(g.abs().max().item() for g in single.values())
    for k, g in single.items():
        scale = g.abs().max().item() + 0.01 * top
        if not torch.equal(rank0[k], rank1[k]):  # every rank takes the same step
            bad.append((k, "ranks differ"))
        elif (rank0[k] - g).abs().max().item() > tol * scale:
            bad.append((k, (rank0[k] - g).abs().max().item() / scale))
    return bad


def check(tmp_path, methods):
    for m, (single, r0, r1) in gradients(tmp_path, methods).items():
        assert not mismatches(single, r0, r1), (m, mismatches(single, r0, r1)[:5])


@pytest.fixture(scope="module")
def ci_gradients(tmp_path_factory):
    """One launch for the CI methods and for SimCLR with the broken gather (each launch costs seconds of imports)."""
    return gradients(tmp_path_factory.mktemp("grads"), [*CI, "simclr+broken-gather"])


def test_two_processes_give_the_one_process_gradient(ci_gradients):
    for m in CI:
        assert not mismatches(*ci_gradients[m]), (m, mismatches(*ci_gradients[m])[:5])


@pytest.mark.full
def test_two_processes_give_the_one_process_gradient_for_every_other_method(tmp_path):
    check(tmp_path, [m for m in OTHERS if (ROOT / "methods" / f"{m}.py").exists()])


def test_a_gather_that_drops_the_other_ranks_gradient_is_caught(ci_gradients):
    assert mismatches(*ci_gradients["simclr+broken-gather"]), "a broken gather went unnoticed: the test cannot fail"


def _torchrun_then_resume_alone(tmp_path, method, extra=()):
    flags = [*TINY, "--max-steps", 4, "--save-every", 1, *extra]  # --sync-bn (the default) is off on CPU, saying so
    res = torchrun(ROOT / "methods" / f"{method}.py", *flags, "--run-dir", tmp_path / "run", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "x 2 processes" in res.stdout and res.stdout.count("kNN top-1") >= 1
    assert res.stdout.count("--sync-bn is off") == (method not in ("dino_vit", "ibot", "mae")), res.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # one run directory
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ckpt["step"] == 4 and ckpt["world_size"] == 2
    res = run_script(f"methods/{method}.py", *flags, "--max-steps", 6, "--resume", tmp_path / "run" / "last.pt",
                     cwd=tmp_path)
    assert res.returncode == 0 and "processes 2 -> 1" in res.stdout, res.stderr[-3000:]
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["step"] == 6


def test_torchrun_runs_a_script_and_one_process_resumes_it(tmp_path):
    _torchrun_then_resume_alone(tmp_path, "simclr")


EXTRA = {"moco_v2": ["--queue-size", 64], "nnclr": ["--queue-size", 64], "dino": ["--num-prototypes", 64],
         "swav": ["--queue-size", 64, "--num-prototypes", 30], "deepcluster_v2": ["--num-prototypes", 30, 30],
         "ibot": ["--backbone", "vit_tiny", "--patch-size", 8], "dino_vit": ["--backbone", "vit_tiny", "--patch-size", 8],
         "mae": ["--backbone", "vit_tiny", "--patch-size", 8, "--finetune-epochs", 0]}


@pytest.mark.full
@pytest.mark.parametrize("method", CI[1:] + OTHERS)
def test_torchrun_runs_every_script_and_one_process_resumes_it(tmp_path, method):
    if not (ROOT / "methods" / f"{method}.py").exists():
        pytest.skip(f"{method}.py does not exist")
    _torchrun_then_resume_alone(tmp_path, method, EXTRA.get(method, []))


def test_a_batch_that_does_not_divide_is_one_line(tmp_path):
    res = torchrun(ROOT / "methods/simclr.py", *TINY, "--batch-size", 33, cwd=tmp_path)
    assert res.returncode != 0 and "--batch-size 33" in res.stderr and "multiple of the 2 processes" in res.stderr

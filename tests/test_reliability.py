"""Nothing lost: every bad input is one line and a non-zero exit with nothing half-written; checkpoints load with
weights_only=True, refuse what does not fit and honour what may change; a non-finite state is never saved; SIGTERM
saves and SIGKILL loses at most the last checkpoint interval, and --resume then ends bit-identical to an
uninterrupted run (the same backbone.pt bytes); two runs started together get two run directories; a closed stdout,
a full disk, a complete run resumed and Ctrl-C while importing each end in one line or none; a failure while loading
images ends the process at once, in one line if a file caused it."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import common
from plumbing import checkpoints
import dino_vit
import mae
import moco_v2
import simclr
import swav
from conftest import ROOT, TINY, events, run_script

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # bit-identical needs the same thread count: it can change the reduction order

def one_error_line(code, err, *words):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert all(w in lines[0] for w in words), (lines[0], words)
    return lines[0]


def no_run_dir(tmp_path):
    runs = tmp_path / "runs"
    return not runs.exists() or not any(runs.iterdir())


# --------------------------------------------------------------------------------------------------- bad flags
@pytest.mark.parametrize("flags,words", [(["--lr", -0.1], ["--lr", "-0.1"]), (["--max-steps", -1], ["--max-steps"]),
                                         (["--batch-size", 1], ["--batch-size"]), (["--epochs", 0], ["--epochs"]),
                                         (["--device", "tpu9"], ["--device", "tpu9"]), (["--workers", -3], ["--workers"]),
                                         (["--batch-size", 8192], ["--batch-size", "4096"])])
def test_bad_numbers_are_one_line(cli, tmp_path, flags, words):
    one_error_line(*cli(simclr, *TINY, *flags)[::2], *words)
    assert no_run_dir(tmp_path)


def test_a_typo_in_a_choice_is_refused_without_traceback(tmp_path):
    res = run_script("methods/simclr.py", "--dataset", "cifar11", cwd=tmp_path)
    assert res.returncode != 0 and "Traceback" not in res.stderr and "cifar11" in res.stderr


def test_help_into_a_pipe_closed_early_is_quiet(tmp_path):
    """`python methods/simclr.py --help | head -2`: the reader goes away; no BrokenPipeError traceback. The read end
    is closed before the script writes, so every write meets a closed pipe (not a race with the pipe's buffer)."""
    read, write = os.pipe()
    os.close(read)
    res = subprocess.run([sys.executable, str(ROOT / "methods/simclr.py"), "--help"], cwd=tmp_path, stdout=write,
                         stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(write)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-2000:]


def test_missing_cifar_is_one_line(tmp_path):
    res = run_script("methods/simclr.py", "--dataset", "cifar10", "--data-dir", tmp_path / "empty", "--backbone", "tiny",
                     cwd=tmp_path)
    line = one_error_line(res.returncode, res.stderr, "--dataset synthetic", "--dataset imagefolder")
    assert "cifar10" in line and no_run_dir(tmp_path)


# --------------------------------------------------------------------------------------------------------- data
def _folder(root, size, n=6, corrupt=None):  # size: side, or (height, width) of ImageNet-sized JPEGs
    rng = np.random.default_rng(0)
    h, w = (size, size) if isinstance(size, int) else size
    for split, k in (("train", n), ("val", 2)):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(k):
                shape = (h, w, 3) if i % 2 else (w, h, 3)  # landscape and portrait: padded batches
                Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(root / split / c / f"{i}.jpg")
    if corrupt:
        data = (root / "train" / "dog" / "1.jpg").read_bytes()
        (root / "train" / "dog" / "1.jpg").write_bytes(data[:len(data) // 3])  # truncated
    return root


def test_an_image_folder_without_images_is_one_line(cli, tmp_path):
    for split in ("train/cat", "val/cat"):
        (tmp_path / "data" / split).mkdir(parents=True)
    line = one_error_line(*cli(simclr, *TINY, "--dataset", "imagefolder", "--data-dir", tmp_path / "data")[::2])
    assert "no images" in line and no_run_dir(tmp_path)


def test_a_corrupt_image_of_a_decoded_once_folder_is_named_up_front(cli, tmp_path):
    _folder(tmp_path / "data", 32, corrupt=True)
    line = one_error_line(*cli(simclr, *TINY, "--dataset", "imagefolder", "--data-dir", tmp_path / "data")[::2])
    assert "dog/1.jpg" in line and no_run_dir(tmp_path)


def test_a_corrupt_image_of_a_streamed_folder_is_replaced_and_counted(cli, tmp_path):
    _folder(tmp_path / "data", (375, 500), corrupt=True)  # > 96 px: decoded by DataLoader workers while training
    code, out, err = cli(simclr, *TINY, "--dataset", "imagefolder", "--data-dir", tmp_path / "data", "--batch-size", 4,
                         "--epochs", 1, "--proj-hidden-dim", 32, "--workers", 1)
    assert code == 0, err
    assert "warning: unreadable image" in err and "dog/1.jpg" in err and "kNN top-1" in out


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_dino_vit_multicrop_on_imagenet_sized_jpegs_decoded_on_the_device(cli, tmp_path, device):
    """--decode gpu: the workers only read the files, the device (the CPU in CI; nvJPEG on a GPU) decodes them; the
    truncated JPEG fails there, is replaced by another image of its batch and counted; 2 x 224 + 2 x 96 px views cut
    on the device."""
    _folder(tmp_path / "data", (375, 500), corrupt=True)
    code, out, err = cli(dino_vit, *TINY, "--backbone", "vit_tiny", "--dataset", "imagefolder", "--data-dir",
                         tmp_path / "data", "--batch-size", 4, "--epochs", 1, "--decode", "gpu", "--workers", 1,
                         "--device", device,
                         "--num-local-crops", 2, "--local-crop-size", 96, "--patch-size", 32, "--num-prototypes", 64,
                         "--proj-hidden-dim", 32, "--proj-output-dim", 16)
    assert code == 0, err
    assert err.count("warning: unreadable image") == 1 and "dog/1.jpg" in err and "kNN top-1" in out


# simclr's command line with a failure planted in the data loading (forked DataLoader workers inherit it): "file", an
# exception that no decoder is expected to raise, on train/dog/3's file only; "collate", a bug in the workers' code
PLANTED = """import sys
sys.path[:0] = [{root!r}, {methods!r}]
import common
import simclr
from plumbing import imagefiles

read_image = imagefiles.read_image
read_jpeg_bytes = imagefiles.read_jpeg_bytes


def failing_on_one_file(read):
    def reading(path, *args):
        if "dog/3." in path:
            raise KeyError("a decoder's bug")
        return read(path, *args)
    return reading


def collate_with_a_bug(self, batch):
    raise IndexError("a bug in collate")


failure = sys.argv.pop(1)
if failure == "file":
    imagefiles.read_image = failing_on_one_file(read_image)
    imagefiles.read_jpeg_bytes = failing_on_one_file(read_jpeg_bytes)
else:
    imagefiles.ImageFiles.collate = collate_with_a_bug
common.cli(simclr.main, simclr.Args)
"""


def _planted(tmp_path, failure, size, *flags):
    """Run PLANTED with `failure` on an image folder of `size`: (CompletedProcess, seconds). A process that does not
    end raises subprocess.TimeoutExpired."""
    _folder(tmp_path / "data", size)
    (tmp_path / "planted.py").write_text(PLANTED.format(root=str(ROOT), methods=str(ROOT / "methods")))
    cmd = [sys.executable, str(tmp_path / "planted.py"), failure, *TINY, "--dataset", "imagefolder", "--data-dir",
           tmp_path / "data", "--batch-size", 12, "--epochs", 1, "--proj-hidden-dim", 32, "--workers", 1, *flags]
    t0 = time.monotonic()
    res = subprocess.run(list(map(str, cmd)), cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return res, time.monotonic() - t0


@pytest.mark.parametrize("size,decode", [(32, "cpu"), ((375, 500), "cpu"), ((375, 500), "gpu")],
                         ids=["small", "large", "large-bytes"])
def test_a_file_that_makes_a_worker_raise_ends_the_run_at_once_in_one_line(tmp_path, size, decode):
    """A worker's unforeseen exception while reading a file (not a corrupt file's OSError, which replaces or refuses
    it): one line naming the file and the exception, exit 2, at once. It used to be the worker's traceback, and with
    small images (decoded once, by workers that are not persistent) a wait at exit for a worker that ignores SIGTERM,
    until the cluster's time limit (16-bit PNGs, issue 30)."""
    res, seconds = _planted(tmp_path, "file", size, "--decode", decode)
    one_error_line(res.returncode, res.stderr, "dog/3.jpg", "KeyError", "a decoder's bug")
    assert seconds < 60 and no_run_dir(tmp_path) == (size == 32), seconds


def test_a_bug_in_the_workers_ends_the_run_at_once_with_its_traceback(tmp_path):
    """A programming error in the workers' code keeps its traceback (the one failure without one line: the traceback
    is for whoever fixes the code), and the process still ends at once with exit 1 (it used to wait at exit for the
    small-image workers, which ignore SIGTERM)."""
    res, seconds = _planted(tmp_path, "collate", 32)
    assert res.returncode == 1 and "Traceback" in res.stderr and seconds < 60, (res.returncode, seconds, res.stderr)
    assert res.stderr.strip().splitlines()[-1] == "IndexError: a bug in collate", res.stderr[-2000:]


def test_a_patch_size_that_does_not_divide_the_images_is_one_line(cli, tmp_path):
    line = one_error_line(*cli(mae, *TINY, "--backbone", "vit_tiny", "--patch-size", 5)[::2], "--patch-size 5")
    assert "32-px" in line and no_run_dir(tmp_path)


def test_a_medmnist_path_that_is_not_an_npz_is_one_line(cli, tmp_path):
    (tmp_path / "notes.txt").write_text("not an npz")
    line = one_error_line(*cli(simclr, *TINY, "--dataset", "medmnist", "--data-dir", tmp_path / "notes.txt")[::2])
    assert "notes.txt" in line and no_run_dir(tmp_path)


# ---------------------------------------------------------------------------------------------- run directories
def test_run_directories(cli, tmp_path):
    (tmp_path / "taken").mkdir()
    line = one_error_line(*cli(simclr, *TINY, "--run-dir", tmp_path / "taken")[::2], "--run-dir", "--resume")
    assert not any((tmp_path / "taken").iterdir())
    (tmp_path / "runs").write_text("a file where runs/ should be")
    one_error_line(*cli(simclr, *TINY)[::2], "run directory")
    one_error_line(*cli(simclr, *TINY, "--run-dir", "/proc/cleanssl/x")[::2], "run directory")


def test_a_run_directory_in_a_read_only_folder_is_one_line(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as a non-root user in a read-only folder
    line = one_error_line(*cli(simclr, *TINY, "--run-dir", tmp_path / "ro" / "x")[::2], "ro/x", "not writable")
    assert "AssertionError" not in line


def test_two_identical_commands_started_together_get_two_run_directories_even_with_stdout_closed(tmp_path):
    """Their stdout is a pipe whose reader has gone (`| head -3`, a closed terminal) before they print: every line
    meets a closed pipe, and both runs still train, save and exit 0."""
    cmd = [sys.executable, str(ROOT / "methods/simclr.py"), *TINY, "--max-steps", 2, "--save-every", 1]
    read, write = os.pipe()
    os.close(read)
    procs = [subprocess.Popen(list(map(str, cmd)), cwd=tmp_path, stdout=write, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, **ONE_THREAD}) for _ in range(2)]  # a core each
    errs = [p.communicate(timeout=300)[1] for p in procs]
    os.close(write)
    assert [p.returncode for p in procs] == [0, 0] and not any(errs), errs
    dirs = list((tmp_path / "runs").iterdir())
    assert len(dirs) == 2 and all((d / f).exists() for d in dirs for f in ("last.pt", "backbone.pt", "results.json"))


def test_ctrl_c_while_the_script_imports_torch_exits_130_quietly(tmp_path):
    """SIGINT once numpy, the first slow import, has begun loading (seen on -X importtime's stderr)."""
    p = subprocess.Popen([sys.executable, "-X", "importtime", str(ROOT / "methods/simclr.py"), "--help"], cwd=tmp_path,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = []
    while p.poll() is None and not any("numpy" in ln for ln in lines[-1:]):
        lines.append(p.stderr.readline())
    p.send_signal(signal.SIGINT)
    err = "".join(lines) + p.communicate(timeout=120)[1]
    assert p.returncode == 130 and "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]


# -------------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture
def checkpoint(train):
    """A SimCLR checkpoint after 3 steps of batch 32 (small heads), and the flags that made it."""
    flags = [*TINY, "--max-steps", 3, "--save-every", 1, "--proj-hidden-dim", 64, "--proj-output-dim", 32]
    return train(simclr, *flags, images=256).dir / "last.pt", flags


def test_checkpoints_hold_only_tensors_and_plain_values(checkpoint):
    state = torch.load(checkpoint[0], weights_only=True)  # would raise on any other pickled object
    assert state["format"] == checkpoints.CKPT_FORMAT and state["step"] == 3


@pytest.mark.parametrize("damage", ["empty", "truncated", "foreign", "pickled code", "backbone.pt", "missing"])
def test_an_unusable_checkpoint_is_one_line(cli, checkpoint, tmp_path, damage):
    path, flags = checkpoint
    bad = tmp_path / "bad.pt"
    if damage == "empty":
        bad.write_bytes(b"")
    elif damage == "truncated":
        bad.write_bytes(path.read_bytes()[:5000])
    elif damage == "foreign":
        torch.save({"weights": torch.zeros(3)}, bad)
    elif damage == "pickled code":
        torch.save({"format": checkpoints.CKPT_FORMAT, "payload": os.system}, bad)  # a callable: weights_only refuses it
    elif damage == "backbone.pt":
        bad = path.parent / "backbone.pt"
    before = sorted(p.name for p in path.parent.iterdir())
    line = one_error_line(*cli(simclr, *flags, "--resume", bad)[::2], "--resume")
    assert sorted(p.name for p in path.parent.iterdir()) == before  # no event file in the run directory


@pytest.mark.parametrize("flags,words", [(["--backbone", "resnet18"], ["--backbone tiny (now resnet18)"]),
                                         (["--optimizer", "sgd"], ["--optimizer lars (now sgd)"]),
                                         (["--seed", 1], ["--seed 0 (now 1)"]),
                                         (["--proj-output-dim", 16, "--lr", 0.3, "--max-steps", 5],
                                          ["--proj-output-dim 32 (now 16)", "does not fit"])])
def test_a_checkpoint_of_another_run_is_refused_naming_the_flag(cli, checkpoint, flags, words):
    path, base = checkpoint
    before = sorted(p.name for p in path.parent.iterdir())
    line = one_error_line(*cli(simclr, *base, *flags, "--resume", path)[::2], *words)
    assert "--lr" not in line and "--max-steps" not in line  # only the flags that change a shape are named
    assert sorted(p.name for p in path.parent.iterdir()) == before


def test_a_checkpoint_of_another_method_is_refused(cli, checkpoint):
    path, base = checkpoint
    one_error_line(*cli(swav, *base, "--resume", path)[::2], "simclr checkpoint", "methods/simclr.py")


def test_resume_of_a_complete_run_changes_nothing_and_a_missing_results_json_is_made(cli, train, checkpoint, capsys):
    path, base = checkpoint
    files = lambda: {p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())  # noqa: E731
                     for p in path.parent.rglob("*") if p.is_file()}
    before, _ = files(), capsys.readouterr()
    code, out, err = cli(simclr, *base, "--resume", path)
    assert code == 0 and not out and len(err.splitlines()) == 1 and "already complete" in err, (out, err)
    assert files() == before
    (path.parent / "results.json").unlink()  # a run stopped between its last checkpoint and results.json
    t = train(simclr, *base, "--resume", path, images=256)
    out = capsys.readouterr().out
    assert t.results["steps"] == 3 and "step 4" not in out and "kNN top-1" in out
    assert files()["last.pt"] == before["last.pt"] and files()["backbone.pt"][1] == before["backbone.pt"][1]


def test_resume_honours_and_prints_a_changed_lr_and_cleans_stale_temporary_files(train, capsys, checkpoint):
    path, base = checkpoint
    (path.parent / "last.pt.99999.tmp").write_bytes(b"half a checkpoint of a killed process")
    state = torch.load(path, weights_only=True)
    torch.save({**state, "world_size": 2, "minutes": 90.0}, path)  # as if two processes had trained it for 90 min
    t = train(simclr, *base, "--max-steps", 4, "--lr", 0.2, "--resume", path, images=256)
    assert 90.0 < t.results["minutes"] < 95 and t.results["device"] == "cpu"  # every part of the run, where it ran
    out = capsys.readouterr().out
    assert "honoured changes" in out and "--lr 0.4 -> 0.2" in out and "--max-steps 3 -> 4" in out
    assert "processes 2 -> 1" in out
    assert all(g["base_lr"] == pytest.approx(0.2 * 32 / 256) for g in t.run.optimizers[0].param_groups)
    assert not list(path.parent.glob("*.tmp")) and torch.load(path, weights_only=True)["step"] == 4


def test_a_non_finite_state_is_never_saved(train, checkpoint):
    path, base = checkpoint
    t = train(simclr, *base, "--max-steps", 4, "--resume", path, images=256)
    good = torch.load(path, weights_only=True)
    t.run.model.backbone.stem[1].running_var[0] = float("inf")  # the loss can stay finite while BN statistics blow up
    with pytest.raises(common.UserError, match="running_var is not finite.*Last good checkpoint"):
        t.run.save()
    after = torch.load(path, weights_only=True)
    assert all(torch.equal(good["model"][k], after["model"][k]) for k in good["model"])


@pytest.mark.parametrize("full_at", ["projector", "backbone.pt"])
def test_a_full_disk_at_the_end_is_one_line_naming_what_was_saved(train, monkeypatch, full_at):
    """The files come first, the projector (the largest write) last; a failed write names what is and is not saved."""
    from torch.utils.tensorboard import SummaryWriter

    def full(*_, **__):
        raise OSError(28, "No space left on device")

    write = Path.write_bytes
    if full_at == "projector":
        monkeypatch.setattr(SummaryWriter, "add_embedding", full)
    else:  # save_checkpoint writes its temporary file backbone.pt.PID.tmp with Path.write_bytes
        monkeypatch.setattr(Path, "write_bytes", lambda p, data: full() if p.name.startswith("backbone.pt") else
                            write(p, data))
    with pytest.raises(common.UserError) as e:
        train(simclr, *TINY, "--max-steps", 3, "--save-every", 1, images=256)
    line, run_dir = str(e.value), next(Path("runs").iterdir())
    assert e.value.code == 1 and line.startswith(f"no space left on {run_dir}: ") and "\n" not in line, line
    if full_at == "projector":
        assert "tensorboard's projector not saved; kept last.pt (step 3), backbone.pt, results.json." in line, line
        assert (run_dir / "backbone.pt").exists() and json.loads((run_dir / "results.json").read_text())["steps"] == 3
    else:
        assert "backbone.pt, results.json, tensorboard's projector not saved; kept last.pt (step 3)." in line, line


def test_a_diverged_run_stops_with_one_line_and_writes_no_checkpoint(tmp_path):
    res = run_script("methods/simclr.py", *TINY, "--max-steps", 3, "--mi-every", 2, "--save-every", 1,
                     "--optimizer", "sgd", "--lr", 1e38, cwd=tmp_path)
    line = one_error_line(res.returncode, res.stderr, "diverged", "Nothing saved")
    assert "losses/" in line or "not finite" in line
    (run_dir,) = (tmp_path / "runs").iterdir()  # kept for its tensorboard curves up to the divergence, as it says
    assert not (run_dir / "last.pt").exists() and not (run_dir / "backbone.pt").exists() and run_dir.name in line
    assert "losses/info_nce" in events(run_dir).Tags()["scalars"]


# ---------------------------------------------------------------------------------------------- interruptions
INTERRUPTED = {simclr: [], moco_v2: ["--queue-size", 64], swav: ["--queue-size", 64, "--queue-start-epoch", 0,
                                                                   "--num-prototypes", 30, "--freeze-prototypes-epochs", 0]}


def _straight(tmp_path, module, flags):
    res = run_script(f"methods/{module.__name__}.py", *flags, "--run-dir", tmp_path / "straight", cwd=tmp_path,
                     env=ONE_THREAD)
    assert res.returncode == 0, res.stderr[-2000:]
    return tmp_path / "straight" / "backbone.pt"


def _interrupt(tmp_path, module, flags, sig, name):
    """Start the run, wait for its first checkpoint by time (so it is training), then send `sig`."""
    cmd = [sys.executable, str(ROOT / f"methods/{module.__name__}.py"), *map(str, flags), "--run-dir", tmp_path / name,
           "--save-every-minutes", 0.004]
    p = subprocess.Popen(list(map(str, cmd)), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, **ONE_THREAD})
    t0 = time.time()
    while not (tmp_path / name / "last.pt").exists() and p.poll() is None and time.time() - t0 < 120:
        time.sleep(0.05)
    time.sleep(float(np.random.default_rng(int(t0)).uniform(0, 0.3)))  # a random step after it
    p.send_signal(sig)
    out, err = p.communicate(timeout=300)
    return p.returncode, out, err


@pytest.mark.parametrize("module", [simclr, pytest.param(moco_v2, marks=pytest.mark.full),
                                    pytest.param(swav, marks=pytest.mark.full)], ids=lambda m: m.__name__)
def test_sigterm_and_sigkill_then_resume_end_identical_to_an_uninterrupted_run(tmp_path, module):
    flags = [*TINY, "--epochs", 1, "--max-steps", 40, *INTERRUPTED[module]]  # 128 steps per epoch: stop mid-epoch
    want = _straight(tmp_path, module, flags)
    for sig, name in ((signal.SIGTERM, "term"), (signal.SIGKILL, "kill")):
        code, out, err = _interrupt(tmp_path, module, flags, sig, name)
        if sig == signal.SIGTERM:
            lines = [ln for ln in err.splitlines() if ln.strip()]
            assert code == 143 and len(lines) == 1 and "stopped by SIGTERM" in lines[0], err
            assert f"--resume {tmp_path / name / 'last.pt'}" in lines[0] and "Traceback" not in err
        else:
            assert code == -signal.SIGKILL
        step = torch.load(tmp_path / name / "last.pt", weights_only=True)["step"]
        assert 0 < step < 40, step  # it was stopped in the middle of the run
        res = run_script(f"methods/{module.__name__}.py", *flags, "--resume", tmp_path / name / "last.pt", cwd=tmp_path,
                         env=ONE_THREAD)
        assert res.returncode == 0, res.stderr[-2000:]
        got = tmp_path / name / "backbone.pt"  # the same file, bit for bit (README), not only the same tensors
        assert hashlib.sha256(got.read_bytes()).digest() == hashlib.sha256(want.read_bytes()).digest(), (name, step)
        assert not list((tmp_path / name).glob("*.tmp"))

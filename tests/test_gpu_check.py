"""gpu_check.py at the tiny size (what a lent GPU runs at the full size), run as a user would."""
import json
import math
import subprocess
import sys
import time
import zipfile

import pytest
import torch
from conftest import ROOT

MEASURED = ("views_per_sec", "gflops_per_view")  # (a): on every device
NOT_ON_CPU = ("peak_memory_gb", "syncs_per_step", "of_peak")  # (a): CUDA only, or the device's peak FLOP rate


def fake_cifar_zip(path, per_class=(16, 4)):
    """A CIFAR-10-shaped zip: train/<class>/*.jpg and test/<class>/*.jpg, 32 px, two classes."""
    import io
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as z:
        for split, n in zip(("train", "test"), per_class):
            for k, cls in enumerate(("cat", "dog")):
                for i in range(n * 5):
                    buf = io.BytesIO()
                    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) // (k + 1)).save(buf, "JPEG")
                    z.writestr(f"{split}/{cls}/{i:04d}.jpg", buf.getvalue())


def number_or_reason(v, *reasons):
    return (isinstance(v, (int, float)) and math.isfinite(v) and v > 0) or (isinstance(v, str) and v.startswith(reasons))


def test_gpu_check_tiny_writes_a_row_per_part(tmp_path):
    fake_cifar_zip(tmp_path / "c10.zip")
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, str(ROOT / "gpu_check.py"), "--device", "cpu", "--methods", "simclr",
                          "--out", str(out), "--cifar-zip", str(tmp_path / "c10.zip")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rep, md = json.loads((out / "report.json").read_text()), (out / "report.md").read_text()
    assert rep["size"] == "tiny" and rep["elapsed_s"] < rep["budget_s"] and not rep["rerun"]
    # (a): one timed row, and its --compile row that says why it was not measured on a CPU
    plain, compiled = rep["a"]
    assert plain["method"] == "simclr" and not plain["compile"] and compiled["compile"]
    assert all(number_or_reason(plain[k]) for k in MEASURED), plain
    assert all(number_or_reason(plain[k], "n/a") for k in NOT_ON_CPU), plain
    assert plain["syncs_per_step"].startswith("n/a on CPU") and plain["cifar10_epoch_s"] > 0
    assert compiled["views_per_sec"].startswith("not measured (tiny")
    assert 0.05 < plain["gflops_per_view"] < 0.2, plain  # the tiny ResNet: ~0.1 GFLOPs per view, forward + backward
    # (b): the zip was unzipped and trained on: 160 training images, 5 steps per epoch, kNN over the 2 classes
    b = rep["b"]
    assert b["status"] == "measured" and "c10.zip, 160 training images" in b["data"], b
    assert b["steps"] == 5 * b["epochs"] and b["epoch_s"] > 0 and 0 <= b["knn_top1"] <= 100
    assert "not judged" in b["goal"]
    # (c): the step alone and the script on generated large JPEGs through the large-image loader, decoded by the
    # workers and by the device
    alone, *loaders = rep["c"]
    assert all(number_or_reason(r["views_per_sec"]) for r in (alone, *loaders)), rep["c"]
    assert alone["gflops_per_view"] > 0 and all(r["of_step_alone"] > 0 for r in loaders)
    assert ["--decode cpu" in loaders[0]["what"], "--decode gpu" in loaders[1]["what"]] == [True, True]
    # profile: SimCLR's step under torch.profiler, its ops by CPU time on a CPU
    prof = rep["profile"]
    assert prof["status"] == "measured" and prof["step_ms"] > 0 and prof["device_busy"] == "n/a on CPU", prof
    assert "aten::" in prof["table"] and "Self CPU" in prof["table"]
    for title in ("## (a)", "## (b)", "## (c)", "| simclr | tiny | off |", "| knn_top1 |", "| step alone", "## Profile",
                  "aten::"):
        assert title in md, title


def check(tmp_path, seconds: float, **flags):
    import gpu_check
    return gpu_check.Check(gpu_check.Args(**flags), gpu_check.FULL, torch.device("cpu"), tmp_path,
                           time.time() + seconds, {"device": "test"}, small_data_flags=["--dataset", "synthetic"],
                           small_data_images=4096)


def test_gpu_check_full_size_without_the_cifar_copy_says_so(tmp_path):
    import gpu_check
    r = gpu_check.cifar_epochs(check(tmp_path, 600, cifar_zip=str(tmp_path / "absent.zip")), 1000.0, 2)
    assert r == {"status": f"not measured (no CIFAR-10 copy at {tmp_path / 'absent.zip'}; pass --cifar-zip PATH)"}


def test_gpu_check_skips_what_the_budget_leaves_no_room_for_and_stops_a_child_at_its_end(tmp_path):
    import gpu_check
    budget = check(tmp_path, 20)  # a child is expected to take 15 s before one was measured
    compiled = gpu_check.timed_method_run(budget, "simclr", True)
    assert compiled["views_per_sec"].startswith("skipped: time budget, 20 s left, about 60")
    assert gpu_check.cifar_epochs(budget, 1000.0, 2)["status"].startswith("skipped: time budget")
    assert all(r["views_per_sec"].startswith("skipped: time budget") for r in gpu_check.large_image_path(budget))
    budget = check(tmp_path, 6)
    t = time.time()
    with pytest.raises(RuntimeError, match="stopped after 6 s"):
        budget.run_child([sys.executable, "-c", "import time; time.sleep(60)"])
    assert time.time() - t < 20


def test_gpu_check_times_every_method_asked_for_without_simclr_too(tmp_path, monkeypatch):
    """--methods without SimCLR: every method gets its (a) row (the first H100 run skipped the first of the list)."""
    import gpu_check
    timed = []
    monkeypatch.setattr(gpu_check, "timed_method_run", lambda c, m, compiled: timed.append(m) or {
        "method": m, "compile": compiled, "views_per_sec": 1.0})
    monkeypatch.setattr(gpu_check, "counted_method_run", lambda c, m: {"gflops_per_view": 1.0, "syncs_per_step": 0})
    gpu_check.main(gpu_check.Args(device="cpu", methods=["moco_v3", "nnclr", "sdmi"], checks=["a"],
                                  out=str(tmp_path / "out")))
    assert timed == ["moco_v3", "nnclr", "sdmi"]
    assert [r["method"] for r in json.loads((tmp_path / "out" / "report.json").read_text())["a"]] == timed


def test_the_rerun_line_replaces_the_commands_own_checks():
    import gpu_check
    argv = ["gpu_check.py", "--out", "d", "--checks", "a", "c", "--methods", "byol"]
    assert gpu_check.without_checks(argv) == ["gpu_check.py", "--out", "d", "--methods", "byol"]
    assert gpu_check.without_checks(["gpu_check.py", "--checks=a", "--out", "d"]) == ["gpu_check.py", "--out", "d"]

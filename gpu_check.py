"""The one-call GPU check: everything a lent H100 / H200 should tell, in one call of at most 8 minutes and without
network, into OUT/report.md and OUT/report.json. The budget (--budget-minutes 7.5) holds: what no longer fits is
skipped and the report says so, with the command that measures the rest; every child run is stopped at the budget's
end. Each part catches its own failure and writes it into the report, and the report is rewritten after each part.
The throughput benchmarks on their own (augmentation, training steps, the large-image path) are benchmark.py.

    python gpu_check.py --help
    python gpu_check.py --out runs/gpu_check --cifar-zip .cifar10/cifar10_jpeg.zip
    python gpu_check.py --out runs/gpu_check --checks a compile --methods simclr byol   # some parts, some rows

What is measured
(a) every method at batch 512, 32 px (ResNet-18; DINO-ViT, iBOT, MAE: vit_tiny with 4-px patches) on synthetic,
    compile off, and on for SimCLR, BYOL, DINO-ViT: views/s as benchmark.py --part train measures it; peak memory
    (torch.cuda.max_memory_allocated over the run, evaluation included); host syncs of one step
    (torch.cuda.set_sync_debug_mode "warn" in the 3-step run minus the 2-step run of the FLOP count, explicit
    torch.cuda.synchronize() calls not counted); FLOPs/view and the fraction of the card's peak. The timed runs go one
    at a time; the counting runs (not timed) 4 at once.
(b) SimCLR ResNet-18, batch 512, on the CIFAR-10 JPEG copy (--cifar-zip; unzipped into a temporary folder) for as many
    whole epochs as fit in 180 s at the (a) rate (--epochs that many, 10% warmup), kNN and linear probe at the end;
    epoch time = 50,000 x 2 views / views/s, against the goal of 2.0 s on an H100.
(c) SimCLR with ResNet-50 at 224 px, batch 256 (the ImageNet-100 network): the step alone (random views already on the
    device, no augmentation, in this process) and the script through the large-image loader (--dataset imagefolder on
    3,072 generated 500x375 JPEGs, two epochs; views/s of the second), once with workers that decode (--decode cpu)
    and once with workers that only read the files for the device to decode (--decode gpu).
(profile) SimCLR's (a) run under torch.profiler for 6 steps after 6 (a step's boundary: its first optimizer step, the
    model's): the ops by their own device time and the device's busy fraction over those steps' wall time (a GPU
    that is busy only part of the time waits for the host).
On a CPU (or with --tiny) the same runs at a tiny size (tiny / vit_tiny-8 backbones, batch 32, 160 generated 32-px
JPEGs instead of synthetic; (b) 3 s on the copy or generated images; (c) vit_tiny with 32-px patches, batch 2): the
test suite runs it, so the command cannot rot. Priority when time is short: (a) SimCLR eager and compiled, (b), the
profile, the other (a) rows, (c), the counts, the other compiled rows.
"""
import concurrent.futures
import json
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Literal

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
import benchmark  # noqa: E402
import common  # noqa: E402
from plumbing import data, distributed  # noqa: E402

VIT_METHODS = ("dino_vit", "ibot", "mae")  # (a) takes vit_tiny for these, ResNet-18 for the rest
COMPILED = ("simclr", "byol", "dino_vit")  # (a) rows measured again with --compile
TINY_METHODS = ["simclr", "dino_vit"]  # the tiny check's default: one ResNet and one ViT method
GOAL_EPOCH_S = 2.0  # SimCLR ResNet-18, batch 512, one CIFAR-10 epoch on an H100 (the issue "GPU-shaped")


@dataclass
class Args:
    out: str = "runs/gpu_check"
    """folder for report.md and report.json"""
    cifar_zip: str = ""
    """(b): the CIFAR-10 JPEG zip or its unzipped folder (default: .cifar10/cifar10_jpeg.zip, else
    ../shared/data/cifar10/cifar10_jpeg.zip, beside this file)"""
    methods: List[str] = field(default_factory=lambda: list(benchmark.METHODS))
    """(a): the methods to time (file names in methods/ without .py; default: all, at the tiny size simclr dino_vit)"""
    checks: List[Literal["a", "b", "c", "compile", "profile"]] = field(
        default_factory=lambda: ["a", "b", "c", "compile", "profile"])
    """the parts to run (compile: the (a) rows with --compile; profile: where SimCLR's step spends its time)"""
    budget_minutes: float = 7.5
    """wall-clock budget of the whole check; what no longer fits is skipped and reported"""
    cifar_seconds: float = 0.0
    """(b): training time of the CIFAR-10 run (0: 180 s; at the tiny size 3 s)"""
    tiny: bool = False
    """the test suite's size (tiny backbones, batch 32, a few steps; always on a CPU)"""
    device: str = "auto"
    """auto (cuda if available), cpu, cuda"""
    precision: common.Precision = "auto"
    """autocast dtype of the training steps (auto = bf16 on CUDA, fp32 on CPU)"""


@dataclass
class Size:
    """The check's sizes: FULL on a GPU, TINY in the test suite and on any CPU."""
    batch: int  # (a), (b): images per step
    timed_epochs: int  # (a): epochs of the timed run (views/s: its last epoch after the 3rd step)
    resnet: str  # (a), (b)
    vit: str  # (a): for VIT_METHODS
    vit_patch: int
    large_backbone: str  # (c), 224 px
    large_patch: int  # (c): ViT patch (0: the default)
    large_batch: int
    large_files: int  # (c): generated large JPEGs to train on (and large_files // 8 to evaluate on)
    count_jobs: int  # (a): FLOP / sync-count runs at once (not timed, so they may share the device)
    child_seconds_guess: float  # seconds a child run is expected to take before one was measured
    cifar_overhead_s: float  # (b): seconds of unzipping, decoding and final evaluation around the training
    cifar_train_s: float  # (b): training time unless --cifar-seconds says otherwise


FULL = Size(batch=512, timed_epochs=2, resnet="resnet18", vit="vit_tiny", vit_patch=4, large_backbone="resnet50",
            large_patch=0, large_batch=256, large_files=3072, count_jobs=4, child_seconds_guess=15.0,
            cifar_overhead_s=70.0, cifar_train_s=180.0)
TINY = Size(batch=32, timed_epochs=1, resnet="tiny", vit="vit_tiny", vit_patch=8, large_backbone="vit_tiny",
            large_patch=32, large_batch=2, large_files=8, count_jobs=2, child_seconds_guess=10.0,
            cifar_overhead_s=20.0, cifar_train_s=3.0)


def not_measured(reason: str) -> str:
    return f"not measured ({reason})"


NOT_ASKED = not_measured("not asked for: --checks")


def failure(e: Exception) -> str:
    """A child's own line ("failed: ...", "stopped after ...", "skipped: ..."), or the exception."""
    message = str(e)
    if isinstance(e, RuntimeError) and message.startswith(("failed", "stopped", "skipped")):
        return message
    return f"failed: {type(e).__name__}: {message}"[:200]


@dataclass
class Check:
    """What every part of the check shares: flags, sizes, device, its temporary folder, the clock and the report."""
    args: Args
    size: Size
    device: torch.device
    tmp: Path
    deadline: float  # time.time() at which the budget is spent
    report: dict
    small_data_flags: list = field(default_factory=list)  # (a), the counts, the profile: the dataset's flags
    small_data_images: int = 0  # and its training images
    child_seconds: List[float] = field(default_factory=list)  # how long the timed child runs took

    def seconds_left(self) -> float:
        return self.deadline - time.time()

    def no_room_for(self, need: float) -> str:
        """'' when `need` seconds fit in the budget, else the reason the part is skipped."""
        left = self.seconds_left()
        if left >= need:
            return ""
        return f"skipped: time budget, {max(left, 0):.0f} s left, about {need:.0f} s needed"

    def expected_child_seconds(self) -> float:
        seconds = self.child_seconds
        return sum(seconds) / len(seconds) if seconds else self.size.child_seconds_guess

    def run_child(self, cmd: List[str], cap: float = 600.0, timed: bool = True) -> str:
        """A child process (its own process group), stopped when the budget ends or after `cap` s; its stdout. Its
        time joins the estimate of the next one's unless `timed` is False."""
        timeout = min(cap, self.seconds_left())
        if timeout < 5:
            raise RuntimeError("skipped: time budget spent")
        start = time.time()
        proc = subprocess.Popen([str(part) for part in cmd], cwd=self.tmp, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise RuntimeError(f"stopped after {timeout:.0f} s (time budget)") from None
        if timed:
            self.child_seconds.append(time.time() - start)
        if proc.returncode:
            raise RuntimeError("failed: " + (err.strip().splitlines() or [f"exit {proc.returncode}"])[-1][-200:])
        return out

    def method_flags(self, method: str, steps: int, run_dir: str, *extra) -> List[str]:
        """A method script's flags for a run of `steps` steps on the small data (DeepCluster v2: one epoch more, so that
        the steps that count are in epoch 1; epoch 0 only fills its memory)."""
        size = self.size
        is_vit = method in VIT_METHODS
        network = ["--backbone", size.vit, "--patch-size", size.vit_patch] if is_vit else ["--backbone", size.resnet]
        if method == "deepcluster_v2":
            steps += self.small_data_images // size.batch
        return [*self.small_data_flags, *network, "--batch-size", size.batch, "--max-steps", steps,
                *benchmark.NO_EXTRAS, "--warmup-epochs", 0, *self.device_flags(), "--run-dir", self.tmp / run_dir,
                *extra]

    def device_flags(self) -> list:
        """Every child run's --device and --precision, and BN of one process (no sync)."""
        return ["--device", self.args.device, "--precision", self.args.precision, "--no-sync-bn"]

    def results(self, run_dir: str) -> dict:
        return json.loads((self.tmp / run_dir / "results.json").read_text())


def parse(out: str, key: str) -> int:
    return int(next(ln for ln in out.splitlines() if ln.startswith(key + " ")).split()[1])


def peak_gb(out: str):
    peak_bytes = parse(out, "PEAK")
    return peak_bytes / 2**30 if peak_bytes >= 0 else "n/a on CPU"


def timed_method_run(check: Check, method: str, compiled: bool) -> dict:
    """(a) one method's timed run on the small data, in a child process that reports its peak CUDA memory."""
    size = check.size
    row = {"method": method, "backbone": size.vit if method in VIT_METHODS else size.resnet, "compile": compiled}
    skip = check.no_room_for(check.expected_child_seconds() * (4 if compiled else 1))
    if skip:
        return {**row, "views_per_sec": skip}
    run_dir = f"a_{method}{'_compiled' if compiled else ''}"
    steps = size.timed_epochs * (check.small_data_images // size.batch)
    flags = check.method_flags(method, steps, run_dir, *(["--compile"] if compiled else []))
    try:
        out = check.run_child(benchmark.child_command("peak-child", method, flags))
        results = check.results(run_dir)
    except Exception as e:  # noqa: BLE001 (said in the report)
        return {**row, "views_per_sec": failure(e)}
    views_per_sec = results.get("views_per_sec", not_measured("too few steps timed"))
    views_per_image = results["views_per_image"]
    measured = isinstance(views_per_sec, float)
    epoch_s = benchmark.CIFAR_TRAIN * views_per_image / views_per_sec if measured else views_per_sec
    return {**row, "views_per_sec": views_per_sec, "views_per_image": views_per_image, "peak_memory_gb": peak_gb(out),
            "seconds": check.child_seconds[-1], "cifar10_epoch_s": epoch_s}


def counted_method_run(check: Check, method: str) -> dict:
    """(a) one method's FLOPs per view and host syncs per step: its 3-step run minus its 2-step run (setup and final
    evaluation are the same in both and cancel), each in a child under FlopCounterMode and sync_debug_mode."""
    skip = check.no_room_for(2 * check.expected_child_seconds())
    if skip:
        return {"gflops_per_view": skip, "syncs_per_step": skip}
    flops = {}
    syncs = {}
    try:
        for steps in (3, 2):
            flags = check.method_flags(method, steps, f"counts_{method}_{steps}")
            out = check.run_child(benchmark.child_command("flops-child", method, flags))
            flops[steps] = parse(out, "FLOPS")
            syncs[steps] = parse(out, "SYNCS")
        views_per_image = check.results(f"counts_{method}_3")["views_per_image"]
    except Exception as e:  # noqa: BLE001 (said in the report)
        return {"gflops_per_view": failure(e), "syncs_per_step": failure(e)}
    syncs_per_step = syncs[3] - syncs[2] if syncs[3] >= 0 else "n/a on CPU (tests/test_sync.py counts them)"
    return {"gflops_per_view": (flops[3] - flops[2]) / (check.size.batch * views_per_image) / 1e9,
            "syncs_per_step": syncs_per_step}


def step_profile(check: Check) -> dict:
    """SimCLR's training step under torch.profiler ((a)'s run: small data, batch, backbone and precision): the ops that
    take the device's time, and how busy the device is over the wall time of the recorded steps (below 1: the host,
    not the GPU, sets the pace)."""
    skip = check.no_room_for(2 * check.expected_child_seconds())
    if skip:
        return {"status": skip}
    flags = check.method_flags("simclr", benchmark.PROFILE_WAIT + 3 + benchmark.PROFILE_ACTIVE, "profile")
    try:
        out = check.run_child(benchmark.child_command("profile-child", "simclr", flags), timed=False)
    except Exception as e:  # noqa: BLE001 (said in the report)
        return {"status": failure(e)}
    busy = float(out.split("BUSY ")[1].split()[0])
    step_ms = float(out.split("STEP_MS ")[1].split()[0])
    return {"status": "measured", "steps_recorded": benchmark.PROFILE_ACTIVE, "step_ms": step_ms,
            "device_busy": busy if busy >= 0 else "n/a on CPU", "table": out.split("PROFILE_BEGIN\n", 1)[1]}


def find_cifar(check: Check):
    """(b) the CIFAR-10 JPEG copy as a folder with train/ and test/ (a zip is unzipped into the check's temporary
    folder), or None, and where it was looked for."""
    if check.args.cifar_zip:
        paths = [Path(check.args.cifar_zip)]
    else:
        paths = [ROOT / ".cifar10" / "cifar10_jpeg.zip", ROOT / ".cifar10",
                 ROOT.parent / "shared/data/cifar10/cifar10_jpeg.zip"]
    for path in paths:
        if (path / "train").is_dir():
            return path, path
        if path.is_file():
            with zipfile.ZipFile(path) as archive:
                archive.extractall(check.tmp / "cifar10")
            return check.tmp / "cifar10", path
    return None, " or ".join(map(str, paths))


def cifar_epochs(check: Check, simclr_views_per_sec, simclr_views_per_image) -> dict:
    """(b) SimCLR ResNet-18 on the CIFAR-10 JPEG copy for a fixed training time, kNN and linear probe at the end."""
    size = check.size
    args = check.args
    want = args.cifar_seconds or size.cifar_train_s
    train_s = min(want, check.seconds_left() - size.cifar_overhead_s)
    if train_s < min(30.0, want):
        return {"status": check.no_room_for(want + size.cifar_overhead_s) or "skipped: time budget"}
    try:
        folder, where = find_cifar(check)
    except Exception as e:  # noqa: BLE001 (a damaged zip, a full disk: said in the report)
        return {"status": f"failed: unzipping the CIFAR-10 copy: {type(e).__name__}: {e}"[:200]}
    if folder is None and size is FULL:
        return {"status": not_measured(f"no CIFAR-10 copy at {where}; pass --cifar-zip PATH")}
    images_dir = folder or check.tmp / "small"
    images = sum(1 for _ in (images_dir / "train").glob("*/*"))
    steps_per_epoch = images // size.batch
    source = f"CIFAR-10 JPEG copy from {where}" if folder else "generated 32-px JPEGs (tiny, no copy)"
    row = {"data": f"{source}, {images} training images", "backbone": size.resnet, "batch": size.batch,
           "planned_training_s": train_s}
    if steps_per_epoch < 4:
        return {**row, "status": not_measured(f"{steps_per_epoch} steps per epoch; views/s needs at least 4")}
    epochs = 1
    how = "no (a) rate for SimCLR: one epoch"
    if isinstance(simclr_views_per_sec, float):
        fit = train_s * simclr_views_per_sec / (size.batch * simclr_views_per_image * steps_per_epoch)
        epochs = max(1, int(fit))
        how = "epochs that fit at the (a) rate"
    flags = ["--dataset", "imagefolder", "--data-dir", images_dir, "--backbone", size.resnet,
             "--batch-size", size.batch, "--epochs", epochs, "--warmup-epochs", epochs // 10, *benchmark.NO_EXTRAS,
             *check.device_flags(), "--run-dir", check.tmp / "b"]
    start = time.time()
    try:
        out = check.run_child(benchmark.child_command("peak-child", "simclr", flags), cap=want * 3 + 300, timed=False)
        results = check.results("b")
    except Exception as e:  # noqa: BLE001 (said in the report)
        return {**row, "status": failure(e)}
    views_per_sec = results.get("views_per_sec", not_measured("too few steps timed"))
    epoch_s = images * results["views_per_image"] / views_per_sec if isinstance(views_per_sec, float) else views_per_sec
    if "H100" in check.report["device"] and isinstance(epoch_s, float):
        goal = "met" if epoch_s <= GOAL_EPOCH_S else "not met"
    else:
        goal = f"not judged (the goal is for an H100; this is {check.report['device']})"
    return {**row, "status": "measured", "epochs": epochs, "steps": results["steps"], "how": how,
            "views_per_sec": views_per_sec, "epoch_s": epoch_s,
            "goal": f"<= {GOAL_EPOCH_S} s per epoch on an H100: {goal}",
            "knn_top1": results["knn_top1"], "linear_top1": results["linear_top1"], "peak_memory_gb": peak_gb(out),
            "wall_s": time.time() - start}


def write_jpegs(root: Path, n: int, size, classes: int, seed: int):
    """n JPEG files of `size` (w, h) in an ImageFolder layout: class-structured synthetic images, resized, with noise so
    that files and decoding cost about what photographs do (large ones: 32 distinct images, then copies)."""
    from PIL import Image
    import io
    images, labels = data.make_synthetic(n if size[0] <= 64 else min(n, 32), seed, size=64, num_classes=classes)
    rng = np.random.default_rng(seed)
    blobs = []
    for image in images:
        pixels = Image.fromarray(image.permute(1, 2, 0).numpy()).resize(size, Image.BILINEAR)
        pixels = np.asarray(pixels, dtype=np.int16)
        pixels = (pixels + rng.integers(-12, 13, pixels.shape)).clip(0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=90)
        blobs.append(buf.getvalue())
    for i in range(n):
        k = i % len(blobs)
        (root / f"c{int(labels[k])}").mkdir(parents=True, exist_ok=True)
        (root / f"c{int(labels[k])}" / f"{i:05d}.jpg").write_bytes(blobs[k])


def step_without_loader(check: Check) -> dict:
    """(c) SimCLR's step at 224 px without files or augmentation: two views of random pixels already on the device,
    backbone and projector forward, NT-Xent, backward, LARS step, at the script's precision, channels_last."""
    from torch import nn
    from torch.utils.flop_counter import FlopCounterMode
    simclr = runpy.run_path(str(ROOT / "methods" / "simclr.py"))  # its objective and defaults; its main() does not run
    defaults = simclr["Args"]()
    batch = check.size.large_batch
    device = check.device
    torch.backends.cudnn.benchmark = True
    backbone, dim = common.build_backbone(check.size.large_backbone, 224, check.size.large_patch)
    projector = nn.Sequential(nn.Linear(dim, defaults.proj_hidden_dim), nn.ReLU(inplace=True),
                              nn.Linear(defaults.proj_hidden_dim, defaults.proj_output_dim))
    model = nn.ModuleDict(dict(backbone=backbone, projector=projector)).to(device, memory_format=torch.channels_last)
    groups = common.param_groups(model, defaults.weight_decay)
    optimizer = common.make_optimizer("lars", groups, defaults.lr * batch / 256)
    x1, x2 = (torch.randn(batch, 3, 224, 224, device=device).to(memory_format=torch.channels_last) for _ in range(2))
    bf16 = check.args.precision == "bf16" or (check.args.precision == "auto" and device.type == "cuda")

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            z1, z2 = projector(backbone(x1)), projector(backbone(x2))
        loss = simclr["info_nce_loss"](z1.float(), z2.float(), defaults.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(3):  # cudnn autotuning
        step()
    benchmark.sync(device)
    least_steps, least_seconds = (5, 3.0) if check.size is FULL else (2, 0.0)
    steps = 0
    start = time.perf_counter()
    while steps < least_steps or (time.perf_counter() - start < least_seconds and steps < 50):
        step()
        steps += 1
        if steps == least_steps:
            benchmark.sync(device)
    benchmark.sync(device)
    views_per_sec = 2 * batch * steps / (time.perf_counter() - start)
    with FlopCounterMode(display=False) as counter:
        step()
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else "n/a on CPU"
    del model, backbone, projector, optimizer, x1, x2
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"what": f"step alone (random 224-px views on the device, {steps} timed steps)",
            "views_per_sec": views_per_sec, "gflops_per_view": counter.get_total_flops() / (2 * batch) / 1e9,
            "peak_memory_gb": memory}


def large_image_path(check: Check) -> List[dict]:
    """(c) the ImageNet-100 network (ResNet-50, 224 px, SimCLR): the step alone, and the script on large JPEG files
    through the large-image loader (--dataset imagefolder)."""
    size = check.size
    args = check.args
    head = {"backbone": size.large_backbone, "batch": size.large_batch}
    skip = check.no_room_for(2 * check.expected_child_seconds() + 20)
    if skip:
        return [{**head, "what": what, "views_per_sec": skip}
                for what in ("step alone", "loader, --decode cpu", "loader, --decode gpu")]
    rows = []
    try:
        rows.append({**head, **step_without_loader(check)})
    except Exception as e:  # noqa: BLE001 (out of memory, a backbone that does not build: said in the report)
        rows.append({**head, "what": "step alone", "views_per_sec": failure(e)})
        if check.device.type == "cuda":
            torch.cuda.empty_cache()
    files_dir = check.tmp / "big"
    steps_per_epoch = size.large_files // size.large_batch
    try:
        write_jpegs(files_dir / "train", size.large_files, (500, 375), 10, 0)
        write_jpegs(files_dir / "val", max(10, size.large_files // 8), (500, 375), 10, 1)
    except Exception as e:  # noqa: BLE001 (a full disk: said in the report)
        return rows + [{**head, "what": "loader", "views_per_sec": failure(e)}]
    for decode in ("cpu", "gpu"):  # workers decode, or workers read and the device decodes (nvJPEG on a GPU)
        row = {**head, "what": f"script + large-image loader, --decode {decode}: {size.large_files} generated 500x375 "
                               f"JPEGs, 2 epochs of {steps_per_epoch} steps (views/s: the 2nd after its 3rd step)"}
        flags = ["--dataset", "imagefolder", "--data-dir", files_dir, "--backbone", size.large_backbone,
                 "--decode", decode, "--patch-size", size.large_patch, "--batch-size", size.large_batch, "--epochs", 2,
                 "--max-steps", 2 * steps_per_epoch, "--warmup-epochs", 0, *benchmark.NO_EXTRAS, *check.device_flags(),
                 "--run-dir", check.tmp / f"c_{decode}"]
        try:
            out = check.run_child(benchmark.child_command("peak-child", "simclr", flags), cap=300, timed=False)
            results = check.results(f"c_{decode}")
            views_per_sec = results.get("views_per_sec", not_measured("too few steps timed"))
            alone = rows[0]["views_per_sec"]
            if isinstance(views_per_sec, float) and isinstance(alone, float):
                ratio = views_per_sec / alone
            else:
                ratio = not_measured("no ratio")
            rows.append({**row, "views_per_sec": views_per_sec, "peak_memory_gb": peak_gb(out),
                         "of_step_alone": ratio})
        except Exception as e:  # noqa: BLE001 (said in the report)
            rows.append({**row, "views_per_sec": failure(e)})
    return rows


def fraction_of_peak(row: dict, peak):
    """The FLOP rate of a row's step over the device's peak (compiled rows: the same FLOPs/view as compile off)."""
    gflops = row.get("gflops_per_view")
    views_per_sec = row.get("views_per_sec")
    if not peak:
        return "n/a (peak FLOP rate of this device unknown)"
    if isinstance(gflops, float) and isinstance(views_per_sec, float):
        return gflops * 1e9 * views_per_sec / peak
    return not_measured("needs views/s and FLOPs/view")


def without_checks(argv: List[str]) -> List[str]:
    """A command line without its --checks and their values (the rerun line gives its own)."""
    kept = []
    skip = False
    for arg in argv:
        skip = arg == "--checks" or (skip and not arg.startswith("--"))
        if not skip and not arg.startswith("--checks="):
            kept.append(arg)
    return kept


def rerun_line(report: dict) -> str:
    """The command that measures what the budget left out, or ''."""
    parts = [("compile" if row.get("compile") else "a", row) for row in report["a"]]
    parts += [("b", report["b"])] + [("c", row) for row in report["c"]] + [("profile", report["profile"])]
    left = sorted({part for part, result in parts if "skipped: time budget" in json.dumps(result)})
    if not left:
        return ""
    return f"{' '.join(without_checks(sys.argv))} --checks {' '.join(left)}  # what the budget left out"


def run_check(args: Args):
    """(a), (b), (c) and the profile of the top of this file into OUT/report.md and OUT/report.json, in the order of
    priority; each part catches its own failure, says it in the report and the check goes on; the report is
    rewritten after each part."""
    device = distributed.pick_device(args.device)
    size = TINY if args.tiny or device.type != "cuda" else FULL
    methods = TINY_METHODS if size is TINY and args.methods == benchmark.METHODS else args.methods
    precision = args.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    out = Path(args.out)
    start = time.time()
    if args.budget_minutes <= 0 or args.cifar_seconds < 0:
        raise common.UserError("--budget-minutes must be positive and --cifar-seconds at least 0.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise common.UserError(f"--out {out}: cannot create it ({e.strerror}).") from None
    report = {"device": benchmark.device_name(device), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M %Z"), "size": "full" if size is FULL else "tiny",
              "precision": precision, "batch": size.batch, "budget_s": 60 * args.budget_minutes, "elapsed_s": 0.0,
              "command": " ".join(sys.argv), "a": [], "b": {}, "c": [], "profile": {}}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        check = Check(args, size, device, Path(tmp), start + 60 * args.budget_minutes, report)
        if size is TINY:  # no synthetic set (5,120 images to evaluate on): 200 small JPEGs
            write_jpegs(check.tmp / "small" / "train", 160, (32, 32), 10, 0)
            write_jpegs(check.tmp / "small" / "test", 40, (32, 32), 10, 1)
            check.small_data_flags = ["--dataset", "imagefolder", "--data-dir", check.tmp / "small"]
            check.small_data_images = 160
        else:
            check.small_data_flags = ["--dataset", "synthetic"]
            check.small_data_images = benchmark.SYNTHETIC_IMAGES
        run_parts(check, methods, out, start)
    print((out / "report.md").read_text())


def run_parts(check: Check, methods: List[str], out: Path, start: float):
    """The parts in their order of priority, the report written after each (see the top of this file)."""
    checks = check.args.checks
    report = check.report
    pending = not_measured("not run yet") if "a" in checks else NOT_ASKED
    rows = {method: {"method": method, "views_per_sec": pending} for method in methods}
    order = sorted(methods, key=lambda method: method != "simclr")  # SimCLR first: (b) takes its rate
    compiled = {}  # compiled rows: SimCLR's right after its eager row (does compiling reach the epoch goal?)
    if "a" in checks and order[0] == "simclr":
        rows["simclr"] = timed_method_run(check, "simclr", False)
        if "compile" in checks and check.size is FULL and "simclr" in COMPILED:
            compiled["simclr"] = timed_method_run(check, "simclr", True)
    report["a"] = list(rows.values()) + list(compiled.values())
    write_report(out, report, start)
    simclr = rows.get("simclr", {})
    if "b" in checks:
        report["b"] = cifar_epochs(check, simclr.get("views_per_sec"), simclr.get("views_per_image"))
    else:
        report["b"] = {"status": NOT_ASKED}
    write_report(out, report, start)
    report["profile"] = step_profile(check) if "profile" in checks else {"status": NOT_ASKED}
    write_report(out, report, start)
    for method in order if "a" in checks else []:
        if method != "simclr":
            rows[method] = timed_method_run(check, method, False)
            report["a"] = list(rows.values()) + list(compiled.values())
            write_report(out, report, start)
    report["c"] = large_image_path(check) if "c" in checks else [{"views_per_sec": NOT_ASKED}]
    write_report(out, report, start)
    if "a" in checks:
        with concurrent.futures.ThreadPoolExecutor(check.size.count_jobs) as pool:  # not timed: several at once
            for method, counts in zip(methods, pool.map(counted_method_run, [check] * len(methods), methods)):
                rows[method].update(counts)
        for method in methods:
            if "out of memory" in str(rows[method]["gflops_per_view"]).lower():
                rows[method].update(counted_method_run(check, method))  # out of memory beside the others: once more
    for method in COMPILED if "compile" in checks else ():
        if method not in methods:
            continue
        timed = compiled.get(method)
        if not timed and check.size is FULL:
            timed = timed_method_run(check, method, True)
        if not timed:
            timed = {"method": method, "backbone": rows[method].get("backbone"), "compile": True,
                     "views_per_sec": not_measured("tiny: --compile is measured on a GPU only")}
        compiled[method] = {**timed, "gflops_per_view": rows[method].get("gflops_per_view"),  # the same network's
                            "syncs_per_step": not_measured("counted with compile off")}
    report["a"] = list(rows.values()) + list(compiled.values())
    peak = benchmark.peak_flops(check.device)
    for row in report["a"]:
        row["of_peak"] = fraction_of_peak(row, peak)
    report["rerun"] = rerun_line(report)
    write_report(out, report, start)


def cell(value, spec: str = ",.0f") -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "" if value is None else str(value)
    return format(value, ",") if isinstance(value, int) else format(value, spec)


def write_report(out: Path, report: dict, start: float):
    """OUT/report.json (every figure, or why it is missing) and OUT/report.md (the same as tables)."""
    report["elapsed_s"] = time.time() - start
    (out / "report.json").write_text(json.dumps(report, indent=1))
    rerun = report.get("rerun")
    md = [f"# GPU check: {report['device']}", "",
          f"torch {report['torch']}, {report['date']}, {report['size']} size, {report['precision']}; "
          f"{report['elapsed_s']:.0f} s of a {report['budget_s']:.0f}-s budget. Command: `{report['command']}`", "",
          *([f"Left out for time; to measure it: `{rerun}`", ""] if rerun else []),
          f"## (a) Training step of every method: batch {report['batch']}, 32-px images, {report['precision']}", "",
          "Views/s: the script's own figure (steady state after the 3rd step); peak memory: torch.cuda."
          "max_memory_allocated over the run; host syncs: torch.cuda.set_sync_debug_mode warnings of step 3 "
          "(3-step run minus 2-step run); GFLOPs/view: FlopCounterMode, the same difference; epoch: 50,000 images at "
          "that rate.", "", "| method | backbone | compile | views/s | peak memory (GiB) | host syncs / step | "
          "GFLOPs/view | of peak | CIFAR-10 epoch (s) |", "|---|---|---|---|---|---|---|---|---|"]
    md += [f"| {row.get('method', '')} | {cell(row.get('backbone'))} | {'on' if row.get('compile') else 'off'} | "
           f"{cell(row.get('views_per_sec'))} | {cell(row.get('peak_memory_gb'), '.2f')} | "
           f"{cell(row.get('syncs_per_step'))} | {cell(row.get('gflops_per_view'), '.3f')} | "
           f"{cell(row.get('of_peak'), '.1%')} | {cell(row.get('cifar10_epoch_s'), '.2f')} |" for row in report["a"]]
    md += ["", "## (b) SimCLR on the CIFAR-10 JPEG copy, a fixed training time, kNN at the end", "",
           "| item | value |", "|---|---|"]
    md += [f"| {key} | {cell(value, ',.2f')} |" for key, value in report["b"].items()]
    md += ["", "## (c) The ImageNet-100 network at 224 px (SimCLR)", "",
           "| what | backbone | batch | views/s | GFLOPs/view | peak memory (GiB) | of the step alone |",
           "|---|---|---|---|---|---|---|"]
    md += [f"| {row.get('what', '')} | {cell(row.get('backbone'))} | {cell(row.get('batch'))} | "
           f"{cell(row.get('views_per_sec'))} | {cell(row.get('gflops_per_view'), '.2f')} | "
           f"{cell(row.get('peak_memory_gb'), '.2f')} | "
           f"{cell(row.get('of_step_alone'), '.0%')} |" for row in report["c"]]
    profile = report.get("profile", {})
    md += ["", "## Profile: SimCLR's step ((a)'s run) under torch.profiler", "",
           *[f"- {key}: {cell(value, ',.3f')}" for key, value in profile.items() if key != "table"],
           *(["", "```", profile["table"].rstrip(), "```"] if "table" in profile else [])]
    (out / "report.md").write_text("\n".join(md) + "\n")


def main(args: Args):
    benchmark.refuse_unknown_methods(args.methods)
    run_check(args)


if __name__ == "__main__":
    common.cli(main, Args)

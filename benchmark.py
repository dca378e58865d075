"""Throughput benchmark: augmentation views/s, and each method's training views/s with FLOPs per view and the ratio to
the device's peak when it is known. Every training figure comes from the method scripts run through their own flags.

    python benchmark.py                                   # everything on the default device (cuda if available)
    python benchmark.py --part aug                        # augmentation only (batched, and the PIL baseline)
    python benchmark.py --part train --methods simclr byol --steps 12 --backbone resnet18
    python benchmark.py --part train --methods simclr --nproc 2   # the same through torchrun, 2 processes
    python benchmark.py --part data --data-dir PATH       # large-image input path, JPEGs under PATH (e.g. ImageNet)
    bash run_all.sh bench                                 # the same as the first line
    python benchmark.py --part gpu-check --out DIR        # the one-call GPU check (below): DIR/report.md, .json

What is measured
- aug: `common.Augment` with the SimCLR (symmetric) and BYOL (asymmetric) CIFAR views on a 256-image uint8 batch
  already on the device: views/s of the augmentation alone. Baseline: the same operations as a per-image
  torchvision PIL pipeline in a DataLoader with 2 workers (what a CIFAR script usually does).
- train: `python methods/M.py --dataset synthetic --batch-size B --max-steps S --eval-every 0 --mi-every 0
  --save-every 0 --save-every-minutes 0 --warmup-epochs 0 ...` as a child process (with --nproc N: under torchrun);
  views/s is the figure the run writes into its results.json: views of the steps after the third of its last epoch
  over their time, device synchronized (compilation and autotuning are in the first steps). DeepCluster v2 runs one
  epoch more, so that its timed steps are in epoch 1 (epoch 0 only fills its memory). FLOPs/view: FLOPs of one
  training step (every forward and backward, EMA targets, queues; of the augmentation only the blur's small
  convolutions count) / views per step, counted by torch's FlopCounterMode around the same script run for 3 and for 2 steps
  (setup and final evaluation are the same in both and cancel; DeepCluster v2: one epoch more in both, so its
  k-means at the start of epoch 1 cancels too). "epoch" = time for 50,000 images (a CIFAR epoch) at that rate;
  "floor" = the same epoch at the device's peak dense bf16 FLOP rate (unknown on CPUs).
- gpu-check: everything a lent H100 / H200 should tell, in one call of at most 8 minutes (--budget-minutes 7.5: what
  no longer fits is skipped and the report says so, with the command that measures the rest; every child run is
  stopped at the budget's end) and without network. Each part catches its own failure and writes it into the report.
  (a) every method at batch 512, 32 px (ResNet-18; DINO-ViT, iBOT, MAE: vit_tiny with 4-px patches) on synthetic,
      compile off, and on for SimCLR, BYOL, DINO-ViT: views/s as for train; peak memory (torch.cuda.
      max_memory_allocated over the run, evaluation included); host syncs of one step (torch.cuda.set_sync_debug_mode
      "warn" in the 3-step run minus the 2-step run of the FLOP count, explicit torch.cuda.synchronize() calls not
      counted); FLOPs/view and the fraction of the card's peak. The timed runs go one at a time; the counting runs
      (not timed) 4 at once.
  (b) SimCLR ResNet-18, batch 512, on the CIFAR-10 JPEG copy (--cifar-zip; unzipped into a temporary folder) for as
      many whole epochs as fit in 180 s at the (a) rate (--epochs that many, 10% warmup), kNN and linear probe at
      the end; epoch time = 50,000 x 2 views / views/s, against the goal of 2.0 s on an H100.
  (c) SimCLR with ResNet-50 at 224 px, batch 256 (the ImageNet-100 network): the step alone (random views already on
      the device, no augmentation, in this process) and the script through the large-image loader (--dataset
      imagefolder on 3,072 generated 500x375 JPEGs, two epochs; views/s of the second), once with workers that
      decode (--decode cpu) and once with workers that only read the files for the device to decode (--decode gpu).
  On a CPU (or with --tiny) the same runs at a tiny size (tiny / vit_tiny-8 backbones, batch 32, 160 generated 32-px
  JPEGs instead of synthetic; (b) 3 s on the copy or generated images; (c) vit_tiny with 32-px patches, batch 2): the
  test suite runs it, so the command cannot rot. (profile) SimCLR's (a) run under torch.profiler for 6 steps after
  6: the ops by their own device time and the device's busy fraction over those steps' wall time (a GPU that is busy
  only part of the time waits for the host). Priority when time is short: (a) SimCLR eager and compiled, (b), the
  profile, the other (a) rows, (c), the counts, the other compiled rows.
- data: the large-image input path on the JPEGs under --data-dir (the first --images of them, sorted), --workers
  DataLoader workers, batches of 32: views/s per worker for 2 x 224 and for 2 x 224 + 10 x 96 views (DINO's
  multi-crop) of (1) the previous path, where the workers cut and resize every view in PIL
  (RandomResizedCrop per view); (2) workers that only decode (torchvision) and pad (--decode cpu); (3) workers
  that only read the files (--decode gpu; the device's decoding is not in this row); (4) decode alone in PIL and
  in torchvision (the images stay in the worker: the ceiling of (2), which also pads and hands them over). (2)-(4)
  run in workers set up as the training loader's (imagefiles.quiet_worker); (1) in plain ones, as the previous code
  did. Per image, a worker's time does not depend on the number of views in (2)-(4). Last row: views/s of the
  device's part, `area_resized_crop` of every view of a padded batch of 64 (with rrc_params), on the benchmark
  device.
Numbers are only comparable on the same device; write them into the README table with the date and device.
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
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Literal

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from plumbing import augment  # noqa: E402
import common  # noqa: E402
from plumbing import data, distributed, imagefiles

METHODS = sorted(p.stem for p in (ROOT / "methods").glob("*.py"))
PEAK_BF16 = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12,
             "4090": 165e12}  # dense tensor-core FLOP/s; the first name found in the device's name counts
SYNTHETIC_IMAGES = 4096


@dataclass
class Args:
    part: Literal["all", "aug", "train", "gpu-check", "data"] = "all"
    """what to measure (gpu-check: the one-call GPU check, see the top of this file; --out names its folder; data: only with --data-dir)"""
    data_dir: str = ""
    """--part data: a folder with ImageNet-sized JPEGs (searched recursively)"""
    images: int = 256
    """--part data: how many of its JPEGs"""
    workers: int = 2
    """--part data: DataLoader workers"""
    methods: List[str] = field(default_factory=lambda: list(METHODS))
    """methods for --part train (file names in methods/ without .py)"""
    backbone: common.BackboneName = "resnet18"
    """backbone of the training-step benchmark"""
    batch_size: int = 256
    """images per step"""
    steps: int = 12
    """timed run length in steps (the first 3 are not timed)"""
    device: str = "auto"
    """auto (cuda if available), cpu, cuda"""
    precision: common.Precision = "auto"
    """autocast dtype of the training steps (auto = bf16 on CUDA, fp32 on CPU)"""
    compile: bool = False
    """torch.compile the backbones"""
    nproc: int = 0
    """run the training scripts under torchrun with this many processes (0: plain python, one process)"""
    flops: bool = True
    """also count FLOPs per view (two more short runs per method)"""
    pil_baseline: bool = True
    """also time the per-image PIL pipeline with 2 DataLoader workers"""
    out: str = "runs/gpu_check"
    """--part gpu-check: folder for report.md and report.json"""
    tiny: bool = False
    """--part gpu-check at the test suite's size (tiny backbones, batch 32, a few steps; always on a CPU)"""
    cifar_zip: str = ""
    """--part gpu-check (b): the CIFAR-10 JPEG zip or its unzipped folder (default: .cifar10/cifar10_jpeg.zip, else
    ../shared/data/cifar10/cifar10_jpeg.zip, beside this file)"""
    cifar_seconds: float = 0.0
    """--part gpu-check (b): training time of the CIFAR-10 run (0: 180 s; at the tiny size 3 s)"""
    budget_minutes: float = 7.5
    """--part gpu-check: wall-clock budget of the whole check; what no longer fits is skipped and reported"""
    checks: List[Literal["a", "b", "c", "compile", "profile"]] = field(
        default_factory=lambda: ["a", "b", "c", "compile", "profile"])
    """--part gpu-check: the parts to run (compile: the (a) rows with --compile; profile: where SimCLR's step spends
    its time)"""
    flops_child: str = ""
    """internal: run this script under FlopCounterMode with the flags after --, print the count"""
    peak_child: str = ""
    """internal: run this script with the flags after --, print its peak CUDA memory"""
    profile_child: str = ""
    """internal: run this script with the flags after -- under torch.profiler, print its table"""


def peak_flops(device: torch.device):
    if device.type != "cuda":
        return None
    return next((v for k, v in PEAK_BF16.items() if k in torch.cuda.get_device_name(device)), None)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_aug(device: torch.device, pil: bool):
    x, _ = data.make_synthetic(2560, 0)
    mean, std = data.image_stats(x)
    batch, rows = x[:256].to(device), []
    simclr = [common.ViewSpec(32, jitter=(0.8, 0.8, 0.8, 0.2), blur_p=0.5)] * 2
    byol = [common.ViewSpec(32), common.ViewSpec(32, solarize_p=0.2)]
    for name, views in (("symmetric (SimCLR)", simclr), ("asymmetric (BYOL)", byol)):
        aug, g = common.Augment(views, mean, std), torch.Generator(device=device).manual_seed(0)
        for _ in range(3):
            aug(batch, g)
        sync(device)
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < 3.0:
            aug(batch, g)
            n += 1
        sync(device)
        rows.append((f"batched, {name}", n * 256 * len(views) / (time.perf_counter() - t)))
    if pil:
        rows.append(("per-image PIL, 2 workers, symmetric", bench_pil(x, mean, std)))
    return rows


class _PILPairs(torch.utils.data.Dataset):
    def __init__(self, x, tf):
        from PIL import Image
        self.imgs, self.tf = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in x], tf

    def __len__(self):
        return len(self.imgs)

    def __getitem__(self, i):
        return self.tf(self.imgs[i]), self.tf(self.imgs[i])


def bench_pil(x, mean, std) -> float:
    import torchvision.transforms as T
    tf = T.Compose([T.RandomResizedCrop(32, scale=(0.08, 1.0)), T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
                    T.RandomGrayscale(0.2), T.RandomApply([T.GaussianBlur(3, (0.1, 2.0))], p=0.5),
                    T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    loader = torch.utils.data.DataLoader(_PILPairs(x, tf), batch_size=256, shuffle=True, num_workers=2, drop_last=True,
                                         persistent_workers=True)
    it = iter(loader)
    next(it)  # workers started
    n, t = 0, time.perf_counter()
    for _ in range(2):
        for a, b in it:
            n += len(a) * 2
        it = iter(loader)
    return n / (time.perf_counter() - t)


class _Files(torch.utils.data.Dataset):
    """--part data: the JPEGs read as the previous path did (PIL, a random resized crop per view), or decoded only."""

    def __init__(self, paths, how: str, views=()):
        self.paths, self.how, self.views = paths, how, views

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        import torchvision.transforms as T
        from PIL import Image
        if self.how == "torchvision":
            return imagefiles.read_image(self.paths[i])
        img = Image.open(self.paths[i]).convert("RGB")
        if self.how == "pil":
            return T.functional.pil_to_tensor(img)
        return [T.functional.pil_to_tensor(T.RandomResizedCrop(v.size, v.scale, v.ratio)(img)) for v in self.views]


def _images_per_sec(dataset, workers: int, collate, take=lambda b: b, init=None) -> float:
    """Images/s of a DataLoader (batches of 32, persistent workers) over 2 passes, after passes to start up: enough
    that each worker has written every buffer of its ring (imagefiles.RING) once, whose first writes fault in fresh
    memory, as a training run does once in thousands of batches (every row gets the same warm-up); `take`: what the
    main process does with each batch (ImageFiles.received, as data.Data does); `init`: the workers' init
    (augment's file_loader: _quiet_worker, which also keeps glibc from handing freed memory back)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, num_workers=workers, collate_fn=collate,
                                         persistent_workers=True, worker_init_fn=init)
    for _ in range(max(1, -(-imagefiles.RING * max(workers, 1) // len(loader)))):
        for _ in map(take, loader):
            pass
    t = time.perf_counter()
    for _ in range(2):
        for _ in map(take, loader):
            pass
    return 2 * len(dataset) / (time.perf_counter() - t)


def bench_data(args: Args, device: torch.device):
    """Rows (label, views/s per worker with 2 views, with 2 + 10 views) of the large-image path (see --part data)."""
    paths = sorted(str(p) for p in Path(args.data_dir).expanduser().rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if not paths:
        raise common.UserError(f"--data-dir {args.data_dir}: no .jpg / .jpeg files in it.")
    paths, w = paths[:args.images], args.workers
    pair = [common.ViewSpec(224, (0.08, 1.0))] * 2
    dino = common.multicrop(pair, 10, 96, (0.05, 0.4), (0.4, 1.0))
    stack = lambda b: [torch.stack(v) for v in zip(*b)]  # noqa: E731  (per view, as the previous path's collate)
    rows = [("previous: workers decode and crop every view in PIL", *(
        _images_per_sec(_Files(paths, "crop", v), w, stack) * len(v) / w for v in (pair, dino)))]
    for label, mode in (("workers decode (torchvision) and pad; crops on the device", "decode"),
                        ("--decode gpu: workers read the files; decode and crops on the device", "bytes")):
        files = (np.array([os.fsencode(p) for p in paths]), np.zeros(len(paths), dtype=np.int64))
        ds = imagefiles.ImageFiles(files, 0, mode)
        rate = _images_per_sec(ds, w, ds.collate, ds.received, imagefiles.quiet_worker) / w
        rows.append((label, rate * 2, rate * 12))
    for how in ("pil", "torchvision"):
        rate = _images_per_sec(_Files(paths, how), w, len, init=imagefiles.quiet_worker) / w  # decoding only
        rows.append((f"decode alone, {'PIL' if how == 'pil' else 'torchvision.io.decode_image'}", rate * 2, rate * 12))
    x, hw = imagefiles.pad_images([imagefiles.read_image(p, imagefiles.LARGE_MAX) for p in (paths * 64)[:64]])
    x, hw, g = x.to(device).float(), hw.to(device), torch.Generator(device=device).manual_seed(0)
    rates = []
    for views in (pair, dino):
        crop = lambda: [augment.area_resized_crop(x, *augment.rrc_params(  # noqa: E731
            64, hw[:, 0], hw[:, 1], v.scale, v.ratio, g), v.size) for v in views]
        crop()
        sync(device)
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < 3.0:
            crop()
            n += 1
        sync(device)
        rates.append(n * 64 * len(views) / (time.perf_counter() - t))
    rows.append((f"device part: area_resized_crop of a padded batch of 64 on {device.type} (views/s, total)", *rates))
    return rows


def script_flags(args: Args, method: str, steps: int, run_dir: Path) -> List[str]:
    """The method's command line for a benchmark run of `steps` steps (evaluation, metrics and checkpoints off)."""
    spe = SYNTHETIC_IMAGES // args.batch_size
    steps += spe if method == "deepcluster_v2" else 0  # its timed steps are in epoch 1
    flags = ["--dataset", "synthetic", "--backbone", args.backbone, "--batch-size", args.batch_size, "--max-steps", steps,
             "--eval-every", 0, "--mi-every", 0, "--save-every", 0, "--save-every-minutes", 0, "--warmup-epochs", 0,
             "--device", args.device, "--precision", args.precision, "--run-dir", run_dir, "--no-sync-bn"]
    return [str(f) for f in flags] + (["--compile"] if args.compile else [])


def child(script: str, flags: List[str], flops: bool):
    """Run the script as `python script flags` would, in this process; print its FLOPs (torch's FlopCounterMode) and
    host syncs (the warnings of torch.cuda.set_sync_debug_mode, CUDA only) with `flops`, and its peak CUDA memory."""
    from contextlib import nullcontext
    from torch.utils.flop_counter import FlopCounterMode
    cuda = torch.cuda.is_available()
    sys.argv, counter = [script, *flags], FlopCounterMode(display=False) if flops else nullcontext()
    with warnings.catch_warnings(record=True) as caught, counter:
        warnings.simplefilter("always")
        if flops and cuda:
            torch.cuda.set_sync_debug_mode("warn")  # a warning at every op that makes the host wait for the GPU
        runpy.run_path(script, run_name="__main__")
    torch.cuda.set_sync_debug_mode("default") if flops and cuda else None
    if flops:
        print(f"FLOPS {counter.get_total_flops()}")
        own = os.path.join("torch", "cuda", "__init__.py")  # torch.cuda.synchronize(): the script's timing, not a step
        syncs = [w for w in caught if "synchronizing CUDA operation" in str(w.message) and not w.filename.endswith(own)]
        print(f"SYNCS {len(syncs) if cuda else -1}")
    print(f"PEAK {torch.cuda.max_memory_allocated() if cuda and torch.cuda.is_initialized() else -1}")


PROFILE_WAIT, PROFILE_ACTIVE = 4, 6  # steps: skipped (cudnn autotuning, compilation), then recorded (after 2 warm-up)


def profile_child(script: str, flags: List[str]):
    """Run the script as `python script flags` would, in this process, under torch.profiler for steps PROFILE_WAIT + 3
    to PROFILE_WAIT + 2 + PROFILE_ACTIVE (a step begins at Run.update_lr, which every method calls first); print the
    ops by their own device time (CPU time on a CPU) and the device's busy fraction over those steps' wall time."""
    from torch.profiler import ProfilerActivity, profile, schedule
    cuda = torch.cuda.is_available()
    prof = profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else []),
                   schedule=schedule(wait=PROFILE_WAIT, warmup=2, active=PROFILE_ACTIVE))
    update_lr, stamps = common.Run.update_lr, []

    def step_then_update_lr(self, *optimizers):
        prof.step()
        stamps.append(time.perf_counter())
        return update_lr(self, *optimizers)
    common.Run.update_lr, sys.argv = step_then_update_lr, [script, *flags]
    with prof:
        runpy.run_path(script, run_name="__main__")
    first = PROFILE_WAIT + 2  # stamps[i]: the start of step i + 1; the recorded steps are first + 1 .. first + ACTIVE
    if len(stamps) <= first + PROFILE_ACTIVE:
        raise SystemExit(f"failed: {len(stamps)} steps; the profile needs {first + PROFILE_ACTIVE + 1}")
    events, wall = prof.key_averages(), stamps[first + PROFILE_ACTIVE] - stamps[first]
    own = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
    key = own if cuda else "self_cpu_time_total"
    busy = sum(getattr(e, key) for e in events) / 1e6 / wall if cuda else -1
    print(f"STEP_MS {wall / PROFILE_ACTIVE * 1e3:.3f}\nBUSY {busy:.4f}\nPROFILE_BEGIN")
    print(events.table(sort_by=key, row_limit=25))


def bench_method(args: Args, m: str, tmp: Path) -> dict:
    script = str(ROOT / "methods" / f"{m}.py")
    launch = [sys.executable] if not args.nproc else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                      f"--nproc_per_node={args.nproc}"]
    res = subprocess.run(launch + [script, *script_flags(args, m, args.steps, tmp / "timed")], capture_output=True,
                         text=True)
    if res.returncode:
        raise RuntimeError((res.stderr.strip().splitlines() or ["?"])[-1][:120])
    r = json.loads((tmp / "timed" / "results.json").read_text())
    if "views_per_sec" not in r:
        raise RuntimeError("too few steps timed: raise --steps")
    out = {"views_per_sec": r["views_per_sec"], "views_per_image": r["views_per_image"], "flops_per_view": None}
    if args.flops:
        counts = []
        for steps in (3, 2):  # FLOPs(3 steps) - FLOPs(2 steps) = the third step (DeepCluster: of epoch 1)
            cmd = [sys.executable, str(ROOT / "benchmark.py"), f"--flops-child={script}", "--",
                   *script_flags(args, m, steps, tmp / f"flops{steps}")]
            res = subprocess.run(cmd, capture_output=True, text=True)
            line = next((ln for ln in res.stdout.splitlines() if ln.startswith("FLOPS ")), None)
            if res.returncode or line is None:
                raise RuntimeError("FLOP count failed: " + (res.stderr.strip().splitlines() or ["?"])[-1][:100])
            counts.append(int(line.split()[1]))
        out["flops_per_view"] = (counts[0] - counts[1]) / (args.batch_size * r["views_per_image"])
    return out


# ----------------------------------------------- --part gpu-check: every figure of a lent GPU in one call (<= 8 min)
VIT_METHODS = ("dino_vit", "ibot", "mae")  # (a) takes vit_tiny for these, ResNet-18 for the rest
COMPILED = ("simclr", "byol", "dino_vit")  # (a) rows measured again with --compile
TINY_METHODS = ["simclr", "dino_vit"]  # the tiny check's default: one ResNet and one ViT method
GOAL_EPOCH_S = 2.0  # SimCLR ResNet-18, batch 512, one CIFAR-10 epoch on an H100 (the issue "GPU-shaped")
CIFAR_TRAIN = 50000


@dataclass
class Size:
    """The check's sizes: FULL on a GPU, TINY in the test suite and on any CPU."""
    batch: int  # (a), (b): images per step
    timed_epochs: int  # (a): epochs of the timed run (views/s: its last epoch after the 3rd step)
    resnet: str  # (a), (b)
    vit: str
    patch: int
    big_backbone: str  # (c), 224 px
    big_patch: int  # (c): ViT patch (0: the default)
    big_batch: int
    big_files: int  # (c): generated large JPEGs to train on (and big_files // 8 to evaluate on)
    jobs: int  # (a): FLOP / sync-count runs at once (not timed, so they may share the device)
    est_child: float  # seconds a child run is expected to take before one was measured
    b_overhead: float  # (b): seconds of unzipping, decoding and final evaluation around the training
    b_seconds: float  # (b): training time unless --cifar-seconds says otherwise


FULL = Size(512, 2, "resnet18", "vit_tiny", 4, "resnet50", 0, 256, 3072, 4, 15.0, 70.0, 180.0)
TINY = Size(32, 1, "tiny", "vit_tiny", 8, "vit_tiny", 32, 2, 8, 2, 10.0, 20.0, 3.0)


def not_measured(reason: str) -> str:
    return f"not measured ({reason})"


def failure(e: Exception) -> str:  # a child's own line ("failed: ...", "stopped after ..."), or the exception
    s = str(e)
    return s if isinstance(e, RuntimeError) and s.startswith(("failed", "stopped", "skipped")) else \
        f"failed: {type(e).__name__}: {s}"[:200]


@dataclass
class Check:
    """What every part of the check shares: flags, sizes, device, its temporary folder, the clock and the report."""
    args: Args
    size: Size
    device: torch.device
    tmp: Path
    end: float  # time.time() at which the budget is spent
    report: dict
    data_a: tuple = ()  # (a): (dataset flags, training images)
    est: List[float] = field(default_factory=list)  # measured child run times

    def left(self) -> float:
        return self.end - time.time()

    def fits(self, need: float) -> str:
        """'' when `need` seconds fit in the budget, else the reason it was skipped."""
        left = self.left()
        return "" if left >= need else f"skipped: time budget, {max(left, 0):.0f} s left, about {need:.0f} s needed"

    def child_est(self) -> float:
        return sum(self.est) / len(self.est) if self.est else self.size.est_child

    def run(self, cmd: List[str], cap: float = 600.0, timed: bool = True) -> str:
        """A child process (its own process group), stopped when the budget ends or after `cap` s; its stdout. Its
        time joins the estimate of the next one's unless `timed` is False."""
        timeout = min(cap, self.left())
        if timeout < 5:
            raise RuntimeError("skipped: time budget spent")
        t = time.time()
        proc = subprocess.Popen([str(c) for c in cmd], cwd=self.tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise RuntimeError(f"stopped after {timeout:.0f} s (time budget)") from None
        self.est += [time.time() - t] if timed else []
        if proc.returncode:
            raise RuntimeError("failed: " + (err.strip().splitlines() or [f"exit {proc.returncode}"])[-1][-200:])
        return out

    def flags(self, m: str, data: tuple, steps: int, run_dir: str, *extra) -> List[str]:
        """A method script's flags for a run of `steps` steps on `data` (DeepCluster v2: one epoch more, so that the
        steps that count are in epoch 1; epoch 0 only fills its memory)."""
        (data_flags, n), s, a = data, self.size, self.args
        net = ["--backbone", s.vit, "--patch-size", s.patch] if m in VIT_METHODS else ["--backbone", s.resnet]
        steps += n // s.batch if m == "deepcluster_v2" else 0
        return [*data_flags, *net, "--batch-size", s.batch, "--max-steps", steps, "--eval-every", 0, "--mi-every", 0,
                "--save-every", 0, "--save-every-minutes", 0, "--warmup-epochs", 0, "--device", a.device,
                "--precision", a.precision, "--run-dir", self.tmp / run_dir, "--no-sync-bn", *extra]

    def results(self, run_dir: str) -> dict:
        return json.loads((self.tmp / run_dir / "results.json").read_text())


def parse(out: str, key: str) -> int:
    return int(next(ln for ln in out.splitlines() if ln.startswith(key + " ")).split()[1])


def peak_gb(out: str):
    b = parse(out, "PEAK")
    return b / 2**30 if b >= 0 else "n/a on CPU"


def a_timed(c: Check, m: str, compiled: bool) -> dict:
    """(a) one method's timed run on synthetic data, in a child process that reports its peak CUDA memory."""
    row = {"method": m, "backbone": c.size.vit if m in VIT_METHODS else c.size.resnet, "compile": compiled}
    why = c.fits(c.child_est() * (4 if compiled else 1))
    if why:
        return {**row, "views_per_sec": why}
    name = f"a_{m}{'_compiled' if compiled else ''}"
    steps = c.size.timed_epochs * (c.data_a[1] // c.size.batch)
    try:
        out = c.run([sys.executable, ROOT / "benchmark.py", f"--peak-child={ROOT / 'methods' / f'{m}.py'}", "--",
                     *c.flags(m, c.data_a, steps, name, *(["--compile"] if compiled else []))])
        r = c.results(name)
    except Exception as e:  # noqa: BLE001 (said in the report)
        return {**row, "views_per_sec": failure(e)}
    vps = r.get("views_per_sec", not_measured("too few steps timed"))
    return {**row, "views_per_sec": vps, "views_per_image": r["views_per_image"], "peak_memory_gb": peak_gb(out),
            "seconds": c.est[-1],
            "cifar10_epoch_s": CIFAR_TRAIN * r["views_per_image"] / vps if isinstance(vps, float) else vps}


def a_counts(c: Check, m: str) -> dict:
    """(a) one method's FLOPs per view and host syncs per step: its 3-step run minus its 2-step run (setup and final
    evaluation are the same in both and cancel), each in a child under FlopCounterMode and sync_debug_mode."""
    why = c.fits(2 * c.child_est())
    if why:
        return {"gflops_per_view": why, "syncs_per_step": why}
    counts = {}
    try:
        for steps in (3, 2):
            out = c.run([sys.executable, ROOT / "benchmark.py", f"--flops-child={ROOT / 'methods' / f'{m}.py'}", "--",
                         *c.flags(m, c.data_a, steps, f"counts_{m}_{steps}")])
            counts[steps] = parse(out, "FLOPS"), parse(out, "SYNCS")
        vpi = c.results(f"counts_{m}_3")["views_per_image"]
    except Exception as e:  # noqa: BLE001 (said in the report)
        return {"gflops_per_view": failure(e), "syncs_per_step": failure(e)}
    syncs = counts[3][1] - counts[2][1]
    return {"gflops_per_view": (counts[3][0] - counts[2][0]) / (c.size.batch * vpi) / 1e9,
            "syncs_per_step": syncs if counts[3][1] >= 0 else "n/a on CPU (tests/test_sync.py counts them)"}


def part_profile(c: Check) -> dict:
    """SimCLR's training step under torch.profiler ((a)'s run: synthetic, batch, backbone and precision): the ops that
    take the device's time, and how busy the device is over the wall time of the recorded steps (below 1: the host,
    not the GPU, sets the pace)."""
    why = c.fits(2 * c.child_est())
    if why:
        return {"status": why}
    steps = PROFILE_WAIT + 3 + PROFILE_ACTIVE
    try:
        out = c.run([sys.executable, ROOT / "benchmark.py", f"--profile-child={ROOT / 'methods' / 'simclr.py'}", "--",
                     *c.flags("simclr", c.data_a, steps, "profile")], timed=False)
    except Exception as e:  # noqa: BLE001 (said in the report)
        return {"status": failure(e)}
    busy = float(out.split("BUSY ")[1].split()[0])
    step_ms = float(out.split("STEP_MS ")[1].split()[0])
    return {"status": "measured", "steps_recorded": PROFILE_ACTIVE, "step_ms": step_ms,
            "device_busy": busy if busy >= 0 else "n/a on CPU", "table": out.split("PROFILE_BEGIN\n", 1)[1]}


def find_cifar(c: Check):
    """(b) the CIFAR-10 JPEG copy as a folder with train/ and test/ (a zip is unzipped into the check's temporary
    folder), or None, and where it was looked for."""
    paths = [Path(c.args.cifar_zip)] if c.args.cifar_zip else [
        ROOT / ".cifar10" / "cifar10_jpeg.zip", ROOT / ".cifar10", ROOT.parent / "shared/data/cifar10/cifar10_jpeg.zip"]
    for p in paths:
        if (p / "train").is_dir():
            return p, p
        if p.is_file():
            with zipfile.ZipFile(p) as z:
                z.extractall(c.tmp / "cifar10")
            return c.tmp / "cifar10", p
    return None, " or ".join(map(str, paths))


def part_b(c: Check, vps_a, vpi_a) -> dict:
    """(b) SimCLR ResNet-18 on the CIFAR-10 JPEG copy for a fixed training time, kNN and linear probe at the end."""
    s, a = c.size, c.args
    want = a.cifar_seconds or s.b_seconds
    train_s = min(want, c.left() - s.b_overhead)
    if train_s < min(30.0, want):
        return {"status": c.fits(want + s.b_overhead) or "skipped: time budget"}
    try:
        folder, where = find_cifar(c)
    except Exception as e:  # noqa: BLE001 (a damaged zip, a full disk: said in the report)
        return {"status": f"failed: unzipping the CIFAR-10 copy: {type(e).__name__}: {e}"[:200]}
    if folder is None and c.size is FULL:
        return {"status": not_measured(f"no CIFAR-10 copy at {where}; pass --cifar-zip PATH")}
    data = folder or c.tmp / "small"
    n = sum(1 for _ in (data / "train").glob("*/*"))
    spe = n // s.batch
    row = {"data": f"{'CIFAR-10 JPEG copy from ' + str(where) if folder else 'generated 32-px JPEGs (tiny, no copy)'}"
                   f", {n} training images", "backbone": s.resnet, "batch": s.batch, "planned_training_s": train_s}
    if spe < 4:
        return {**row, "status": not_measured(f"{spe} steps per epoch; views/s needs at least 4")}
    epochs, note = 1, "no (a) rate for SimCLR: one epoch"
    if isinstance(vps_a, float):
        epochs, note = max(1, int(train_s * vps_a / (s.batch * vpi_a * spe))), "epochs that fit at the (a) rate"
    flags = ["--dataset", "imagefolder", "--data-dir", data, "--backbone", s.resnet, "--batch-size", s.batch,
             "--epochs", epochs, "--warmup-epochs", epochs // 10, "--eval-every", 0, "--mi-every", 0, "--save-every", 0,
             "--save-every-minutes", 0, "--device", a.device, "--precision", a.precision, "--run-dir", c.tmp / "b",
             "--no-sync-bn"]
    t = time.time()
    try:
        out = c.run([sys.executable, ROOT / "benchmark.py", f"--peak-child={ROOT / 'methods' / 'simclr.py'}", "--",
                     *flags], cap=want * 3 + 300, timed=False)
        r = c.results("b")
    except Exception as e:  # noqa: BLE001 (said in the report)
        return {**row, "status": failure(e)}
    vps = r.get("views_per_sec", not_measured("too few steps timed"))
    epoch_s = n * r["views_per_image"] / vps if isinstance(vps, float) else vps
    h100 = "H100" in c.report["device"]
    goal = (f"{'met' if epoch_s <= GOAL_EPOCH_S else 'not met'}" if h100 and isinstance(epoch_s, float) else
            f"not judged (the goal is for an H100; this is {c.report['device']})")
    return {**row, "status": "measured", "epochs": epochs, "steps": r["steps"], "how": note,
            "views_per_sec": vps, "epoch_s": epoch_s, "goal": f"<= {GOAL_EPOCH_S} s per epoch on an H100: {goal}",
            "knn_top1": r["knn_top1"], "linear_top1": r["linear_top1"], "peak_memory_gb": peak_gb(out),
            "wall_s": time.time() - t}


def write_jpegs(root: Path, n: int, size, classes: int, seed: int):
    """n JPEG files of `size` (w, h) in an ImageFolder layout: class-structured synthetic images, resized, with noise so
    that files and decoding cost about what photographs do (large ones: 32 distinct images, then copies)."""
    from PIL import Image
    import io
    x, y = data.make_synthetic(n if size[0] <= 64 else min(n, 32), seed, size=64, num_classes=classes)
    rng, blobs = np.random.default_rng(seed), []
    for im in x:
        a = np.asarray(Image.fromarray(im.permute(1, 2, 0).numpy()).resize(size, Image.BILINEAR), dtype=np.int16)
        a = (a + rng.integers(-12, 13, a.shape)).clip(0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "JPEG", quality=90)
        blobs.append(buf.getvalue())
    for i in range(n):
        k = i % len(blobs)
        (root / f"c{int(y[k])}").mkdir(parents=True, exist_ok=True)
        (root / f"c{int(y[k])}" / f"{i:05d}.jpg").write_bytes(blobs[k])


def step_alone(c: Check) -> dict:
    """(c) SimCLR's step at 224 px without files or augmentation: two views of random pixels already on the device,
    backbone and projector forward, NT-Xent, backward, LARS step, at the script's precision, channels_last."""
    from torch import nn
    from torch.utils.flop_counter import FlopCounterMode
    g = runpy.run_path(str(ROOT / "methods" / "simclr.py"))  # its objective and defaults; its main() does not run
    a, b, dev = g["Args"](), c.size.big_batch, c.device
    torch.backends.cudnn.benchmark = True
    backbone, dim = common.build_backbone(c.size.big_backbone, 224, c.size.big_patch)
    projector = nn.Sequential(nn.Linear(dim, a.proj_hidden_dim), nn.ReLU(inplace=True),
                              nn.Linear(a.proj_hidden_dim, a.proj_output_dim))
    model = nn.ModuleDict(dict(backbone=backbone, projector=projector)).to(dev, memory_format=torch.channels_last)
    opt = common.make_optimizer("lars", common.param_groups(model, a.weight_decay), a.lr * b / 256)
    x1, x2 = (torch.randn(b, 3, 224, 224, device=dev).to(memory_format=torch.channels_last) for _ in range(2))
    bf16 = c.args.precision == "bf16" or (c.args.precision == "auto" and dev.type == "cuda")

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            z1, z2 = projector(backbone(x1)), projector(backbone(x2))
        loss = g["info_nce_loss"](z1.float(), z2.float(), a.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    for _ in range(3):  # cudnn autotuning
        step()
    sync(dev)
    n, t, (least, secs) = 0, time.perf_counter(), (5, 3.0) if c.size is FULL else (2, 0.0)
    while n < least or (time.perf_counter() - t < secs and n < 50):  # at least `least` steps and `secs` seconds
        step()
        n += 1
        sync(dev) if n == least else None
    sync(dev)
    vps = 2 * b * n / (time.perf_counter() - t)
    with FlopCounterMode(display=False) as counter:
        step()
    mem = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else "n/a on CPU"
    del model, backbone, projector, opt, x1, x2
    torch.cuda.empty_cache() if dev.type == "cuda" else None
    return {"what": f"step alone (random 224-px views on the device, {n} timed steps)", "views_per_sec": vps,
            "gflops_per_view": counter.get_total_flops() / (2 * b) / 1e9, "peak_memory_gb": mem}


def part_c(c: Check) -> List[dict]:
    """(c) the ImageNet-100 network (ResNet-50, 224 px, SimCLR): the step alone, and the script on large JPEG files
    through the large-image loader (--dataset imagefolder)."""
    s, a, rows = c.size, c.args, []
    head = {"backbone": s.big_backbone, "batch": s.big_batch}
    why = c.fits(2 * c.child_est() + 20)
    if why:
        return [{**head, "what": w, "views_per_sec": why} for w in ("step alone", "loader, --decode cpu",
                                                                     "loader, --decode gpu")]
    try:
        rows.append({**head, **step_alone(c)})
    except Exception as e:  # noqa: BLE001 (out of memory, a backbone that does not build: said in the report)
        rows.append({**head, "what": "step alone", "views_per_sec": failure(e)})
        torch.cuda.empty_cache() if c.device.type == "cuda" else None
    big, spe = c.tmp / "big", s.big_files // s.big_batch
    try:
        write_jpegs(big / "train", s.big_files, (500, 375), 10, 0)
        write_jpegs(big / "val", max(10, s.big_files // 8), (500, 375), 10, 1)
    except Exception as e:  # noqa: BLE001 (a full disk: said in the report)
        return rows + [{**head, "what": "loader", "views_per_sec": failure(e)}]
    for decode in ("cpu", "gpu"):  # workers decode, or workers read and the device decodes (nvJPEG on a GPU)
        row = {**head, "what": f"script + large-image loader, --decode {decode}: {s.big_files} generated 500x375 "
                              f"JPEGs, 2 epochs of {spe} steps (views/s: the 2nd after its 3rd step)"}
        flags = ["--dataset", "imagefolder", "--data-dir", big, "--backbone", s.big_backbone, "--decode", decode,
                 "--patch-size", s.big_patch, "--batch-size", s.big_batch, "--epochs", 2, "--max-steps", 2 * spe,
                 "--warmup-epochs", 0, "--eval-every", 0, "--mi-every", 0, "--save-every", 0,
                 "--save-every-minutes", 0, "--device", a.device, "--precision", a.precision,
                 "--run-dir", c.tmp / f"c_{decode}", "--no-sync-bn"]
        try:
            out = c.run([sys.executable, ROOT / "benchmark.py", f"--peak-child={ROOT / 'methods' / 'simclr.py'}",
                         "--", *flags], cap=300, timed=False)
            r = c.results(f"c_{decode}")
            vps = r.get("views_per_sec", not_measured("too few steps timed"))
            alone = rows[0]["views_per_sec"]
            ratio = vps / alone if isinstance(vps, float) and isinstance(alone, float) else not_measured("no ratio")
            rows.append({**row, "views_per_sec": vps, "peak_memory_gb": peak_gb(out), "of_step_alone": ratio})
        except Exception as e:  # noqa: BLE001 (said in the report)
            rows.append({**row, "views_per_sec": failure(e)})
    return rows


def gpu_check(args: Args):
    """--part gpu-check: (a), (b), (c) of the top of this file into OUT/report.md and OUT/report.json; each part
    catches its own failure, says it in the report and the check goes on; the report is rewritten after each part."""
    device = distributed.pick_device(args.device)
    size = TINY if args.tiny or device.type != "cuda" else FULL
    methods = TINY_METHODS if size is TINY and args.methods == METHODS else args.methods
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    prec = args.precision if args.precision != "auto" else "bf16" if device.type == "cuda" else "fp32"
    out, t0 = Path(args.out), time.time()
    if args.budget_minutes <= 0 or args.cifar_seconds < 0:
        raise common.UserError("--budget-minutes must be positive and --cifar-seconds at least 0.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise common.UserError(f"--out {out}: cannot create it ({e.strerror}).") from None
    report = {"device": name, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M %Z"),
              "size": "full" if size is FULL else "tiny", "precision": prec, "batch": size.batch,
              "budget_s": 60 * args.budget_minutes, "elapsed_s": 0.0, "command": " ".join(sys.argv),
              "a": [], "b": {}, "c": [], "profile": {}}
    save = lambda: write_report(out, report, t0)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        c = Check(args, size, device, Path(tmp), t0 + 60 * args.budget_minutes, report)
        if size is TINY:  # no synthetic set (5,120 images to evaluate on): 200 small JPEGs
            write_jpegs(c.tmp / "small" / "train", 160, (32, 32), 10, 0)
            write_jpegs(c.tmp / "small" / "test", 40, (32, 32), 10, 1)
        c.data_a = ((["--dataset", "imagefolder", "--data-dir", c.tmp / "small"], 160) if size is TINY else
                    (["--dataset", "synthetic"], SYNTHETIC_IMAGES))
        pending = not_measured("not run yet" if "a" in args.checks else "not asked for: --checks")
        rows = {m: {"method": m, "views_per_sec": pending} for m in methods}
        order = sorted(methods, key=lambda m: m != "simclr")  # SimCLR first: (b) takes its rate
        compiled = {}  # compiled rows: SimCLR's right after its eager row (does compiling reach the epoch goal?)
        if "a" in args.checks and order[0] == "simclr":
            rows["simclr"] = a_timed(c, "simclr", False)
            if "compile" in args.checks and size is FULL and "simclr" in COMPILED:
                compiled["simclr"] = a_timed(c, "simclr", True)
        report["a"] = list(rows.values()) + list(compiled.values())
        save()
        r = rows.get("simclr", {})
        report["b"] = part_b(c, r.get("views_per_sec"), r.get("views_per_image")) if "b" in args.checks else {
            "status": not_measured("not asked for: --checks")}
        save()
        report["profile"] = part_profile(c) if "profile" in args.checks else {
            "status": not_measured("not asked for: --checks")}
        save()
        for m in [m for m in order if m != "simclr"] if "a" in args.checks else []:
            rows[m] = a_timed(c, m, False)
            report["a"] = list(rows.values()) + list(compiled.values())
            save()
        report["c"] = part_c(c) if "c" in args.checks else [{"views_per_sec": not_measured("not asked for: --checks")}]
        save()
        if "a" in args.checks:
            with concurrent.futures.ThreadPoolExecutor(size.jobs) as pool:  # counts are not timed: several at once
                for m, counts in zip(methods, pool.map(lambda m: a_counts(c, m), methods)):
                    rows[m].update(counts)
            for m in [m for m in methods if "out of memory" in str(rows[m]["gflops_per_view"]).lower()]:
                rows[m].update(a_counts(c, m))  # out of memory beside the others: once more alone
        for m in [m for m in COMPILED if m in methods] if "compile" in args.checks else []:
            r = compiled.get(m) or (a_timed(c, m, True) if size is FULL else {
                "method": m, "backbone": rows[m].get("backbone"), "compile": True,
                "views_per_sec": not_measured("tiny: --compile is measured on a GPU only")})
            compiled[m] = {**r, "gflops_per_view": rows[m].get("gflops_per_view"),  # the same network's FLOPs
                           "syncs_per_step": not_measured("counted with compile off")}
        report["a"] = list(rows.values()) + list(compiled.values())
        peak = peak_flops(device)
        for r in report["a"]:  # FLOP rate of the step over the device's peak (compiled rows: the same FLOPs/view)
            f, v = r.get("gflops_per_view"), r.get("views_per_sec")
            r["of_peak"] = (f * 1e9 * v / peak if peak and isinstance(f, float) and isinstance(v, float) else
                            "n/a (peak FLOP rate of this device unknown)" if not peak else
                            not_measured("needs views/s and FLOPs/view"))
        parts = [("compile" if r.get("compile") else "a", r) for r in report["a"]] + [("b", report["b"])] + [
            ("c", r) for r in report["c"]] + [("profile", report["profile"])]
        left = sorted({p for p, r in parts if "skipped: time budget" in json.dumps(r)})
        report["rerun"] = (f"{' '.join(without_checks(sys.argv))} --checks {' '.join(left)}  # what the budget left out"
                           if left else "")
        save()
    print((out / "report.md").read_text())


def without_checks(argv: List[str]) -> List[str]:
    """A command line without its --checks and their values (the rerun line gives its own)."""
    out, skip = [], False
    for a in argv:
        skip = a == "--checks" or (skip and not a.startswith("--"))
        out += [] if skip or a.startswith("--checks=") else [a]
    return out


def cell(v, spec: str = ",.0f") -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return "" if v is None else str(v)
    return format(v, ",") if isinstance(v, int) else format(v, spec)


def write_report(out: Path, rep: dict, t0: float):
    """OUT/report.json (every figure, or why it is missing) and OUT/report.md (the same as tables)."""
    rep["elapsed_s"] = time.time() - t0
    (out / "report.json").write_text(json.dumps(rep, indent=1))
    b = rep["b"]
    md = [f"# GPU check: {rep['device']}", "",
          f"torch {rep['torch']}, {rep['date']}, {rep['size']} size, {rep['precision']}; {rep['elapsed_s']:.0f} s of "
          f"a {rep['budget_s']:.0f}-s budget. Command: `{rep['command']}`", "",
          *([f"Left out for time; to measure it: `{rep['rerun']}`", ""] if rep.get("rerun") else []),
          f"## (a) Training step of every method: batch {rep['batch']}, 32-px images, {rep['precision']}", "",
          "Views/s: the script's own figure (steady state after the 3rd step); peak memory: torch.cuda."
          "max_memory_allocated over the run; host syncs: torch.cuda.set_sync_debug_mode warnings of step 3 "
          "(3-step run minus 2-step run); GFLOPs/view: FlopCounterMode, the same difference; epoch: 50,000 images at "
          "that rate.", "", "| method | backbone | compile | views/s | peak memory (GiB) | host syncs / step | "
          "GFLOPs/view | of peak | CIFAR-10 epoch (s) |", "|---|---|---|---|---|---|---|---|---|"]
    md += [f"| {r.get('method', '')} | {cell(r.get('backbone'))} | {'on' if r.get('compile') else 'off'} | "
           f"{cell(r.get('views_per_sec'))} | {cell(r.get('peak_memory_gb'), '.2f')} | {cell(r.get('syncs_per_step'))} "
           f"| {cell(r.get('gflops_per_view'), '.3f')} | {cell(r.get('of_peak'), '.1%')} | "
           f"{cell(r.get('cifar10_epoch_s'), '.2f')} |" for r in rep["a"]]
    md += ["", "## (b) SimCLR on the CIFAR-10 JPEG copy, a fixed training time, kNN at the end", "",
           "| item | value |", "|---|---|"]
    md += [f"| {k} | {cell(v, ',.2f')} |" for k, v in b.items()]
    md += ["", "## (c) The ImageNet-100 network at 224 px (SimCLR)", "",
           "| what | backbone | batch | views/s | GFLOPs/view | peak memory (GiB) | of the step alone |",
           "|---|---|---|---|---|---|---|"]
    md += [f"| {r.get('what', '')} | {cell(r.get('backbone'))} | {cell(r.get('batch'))} | "
           f"{cell(r.get('views_per_sec'))} | {cell(r.get('gflops_per_view'), '.2f')} | "
           f"{cell(r.get('peak_memory_gb'), '.2f')} | "
           f"{cell(r.get('of_step_alone'), '.0%')} |" for r in rep["c"]]
    p = rep.get("profile", {})
    md += ["", "## Profile: SimCLR's step ((a)'s run) under torch.profiler", "",
           *[f"- {k}: {cell(v, ',.3f')}" for k, v in p.items() if k != "table"],
           *(["", "```", p["table"].rstrip(), "```"] if "table" in p else [])]
    (out / "report.md").write_text("\n".join(md) + "\n")


def main(args: Args):
    if args.profile_child:
        return profile_child(args.profile_child, EXTRA)
    if args.flops_child or args.peak_child:
        return child(args.flops_child or args.peak_child, EXTRA, flops=bool(args.flops_child))
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        raise common.UserError(f"unknown method(s) {unknown}; choose from {METHODS}")
    if args.part == "gpu-check":
        return gpu_check(args)
    if args.steps < 4:
        raise common.UserError("--steps must be at least 4 (the first 3 are not timed).")
    device = distributed.pick_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"# benchmark on {name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    if args.part in ("all", "aug"):
        print("\n| augmentation (32 px, batch 256) | views/s |\n|-|-|")
        for label, vps in bench_aug(device, args.pil_baseline):
            print(f"| {label} | {vps:,.0f} |", flush=True)
    if args.part == "data" or (args.part == "all" and args.data_dir):
        print(f"\n| large images ({args.workers} workers, JPEGs of {args.data_dir}) | views/s per worker, 2 x 224 | "
              "2 x 224 + 10 x 96 |\n|-|-|-|", flush=True)
        for label, a, b in bench_data(args, device):
            print(f"| {label} | {a:,.0f} | {b:,.0f} |", flush=True)
    if args.part in ("all", "train"):
        procs = f", {args.nproc} process(es) under torchrun" if args.nproc else ""
        print(f"\n| method ({args.backbone}, batch {args.batch_size}{procs}) | views/s | GFLOPs/view | CIFAR-10 epoch (s) | "
              "epoch at peak (s) | of peak |\n|-|-|-|-|-|-|", flush=True)
        peak = peak_flops(device)
        for m in args.methods:
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    r = bench_method(args, m, Path(tmp))
                except RuntimeError as e:
                    print(f"| {m} | failed: {e} | | | | |", flush=True)
                    continue
            epoch = 50000 * r["views_per_image"] / r["views_per_sec"]
            f = r["flops_per_view"]
            floor = 50000 * r["views_per_image"] * f / peak if peak and f else None
            print(f"| {m} | {r['views_per_sec']:,.0f} | {'n/a' if f is None else f'{f / 1e9:.2f}'} | {epoch:,.1f} | "
                  f"{'n/a' if floor is None else f'{floor:.2f}'} | {'n/a' if floor is None else f'{floor / epoch:.0%}'} |",
                  flush=True)


if __name__ == "__main__":
    EXTRA = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    sys.argv = sys.argv[:sys.argv.index("--")] if "--" in sys.argv else sys.argv
    common.cli(main, Args)

"""Throughput benchmarks: augmentation views/s, each method's training views/s with FLOPs per view and the ratio to
the device's peak when it is known, and the large-image input path. Every training figure comes from the method
scripts run through their own flags. The one-call GPU check of a lent card is its own script: gpu_check.py.

    python benchmark.py --help
    python benchmark.py                                   # aug and train on the default device (cuda if available)
    python benchmark.py --part aug                        # augmentation only (batched, and the PIL baseline)
    python benchmark.py --part train --methods simclr byol --steps 12 --backbone resnet18
    python benchmark.py --part train --methods simclr --nproc 2   # the same through torchrun, 2 processes
    python benchmark.py --part data --data-dir PATH       # large-image input path, JPEGs under PATH (e.g. ImageNet)
    bash run_all.sh bench                                 # the same as the second line

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
  convolutions count) / views per step, counted by torch's FlopCounterMode around the same script run for 3 and for
  2 steps (setup and final evaluation are the same in both and cancel; DeepCluster v2: one epoch more in both, so its
  k-means at the start of epoch 1 cancels too). "epoch" = time for 50,000 images (a CIFAR epoch) at that rate;
  "floor" = the same epoch at the device's peak dense bf16 FLOP rate (unknown on CPUs).
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
The child runs (--flops-child, --peak-child, --profile-child: a method script run inside this file, with its FLOPs,
host syncs and peak memory printed, or its steps under torch.profiler) serve gpu_check.py too.
Numbers are only comparable on the same device; write them into docs/benchmark.md with the date and device.
"""
import functools
import json
import os
import runpy
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Literal

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
import common  # noqa: E402
from plumbing import augment, data, distributed, imagefiles  # noqa: E402

METHODS = sorted(p.stem for p in (ROOT / "methods").glob("*.py"))
PEAK_BF16 = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12,
             "4090": 165e12}  # dense tensor-core FLOP/s; the first name found in the device's name counts
SYNTHETIC_IMAGES = 4096
CIFAR_TRAIN = 50000  # images of one CIFAR epoch
# a benchmark run's flags for no evaluation during training, no metrics, no checkpoints
NO_EXTRAS = ["--eval-every", 0, "--mi-every", 0, "--save-every", 0, "--save-every-minutes", 0]
CHILD_FLAGS: List[str] = []  # a child run's script flags, after -- on the command line


@dataclass
class Args:
    part: Literal["all", "aug", "train", "data"] = "all"
    """what to measure (all: aug and train, and data with --data-dir; the GPU check is gpu_check.py)"""
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
    flops_child: str = ""
    """internal: run this script under FlopCounterMode with the flags after --, print the count"""
    peak_child: str = ""
    """internal: run this script with the flags after --, print its peak CUDA memory"""
    profile_child: str = ""
    """internal: run this script with the flags after -- under torch.profiler, print its table"""


def peak_flops(device: torch.device):
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for card, flops in PEAK_BF16.items() if card in name), None)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def refuse_unknown_methods(methods: List[str]):
    unknown = [method for method in methods if method not in METHODS]
    if unknown:
        raise common.UserError(f"unknown method(s) {unknown}; choose from {METHODS}")


def calls_per_sec(call, device: torch.device, warmup: int) -> float:
    """How often `call()` runs per second over 3 s, after `warmup` calls; the device synchronized at both ends."""
    for _ in range(warmup):
        call()
    sync(device)
    calls = 0
    start = time.perf_counter()
    while time.perf_counter() - start < 3.0:
        call()
        calls += 1
    sync(device)
    return calls / (time.perf_counter() - start)


def bench_aug(device: torch.device, pil: bool):
    images, _ = data.make_synthetic(2560, 0)
    mean, std = data.image_stats(images)
    batch = images[:256].to(device)
    simclr = [common.ViewSpec(32, jitter=(0.8, 0.8, 0.8, 0.2), blur_p=0.5)] * 2
    byol = [common.ViewSpec(32), common.ViewSpec(32, solarize_p=0.2)]
    rows = []
    for name, views in (("symmetric (SimCLR)", simclr), ("asymmetric (BYOL)", byol)):
        aug = common.Augment(views, mean, std)
        generator = torch.Generator(device=device).manual_seed(0)
        rate = calls_per_sec(functools.partial(aug, batch, generator), device, warmup=3)
        rows.append((f"batched, {name}", rate * 256 * len(views)))
    if pil:
        rows.append(("per-image PIL, 2 workers, symmetric", bench_pil(images, mean, std)))
    return rows


class PilPairs(torch.utils.data.Dataset):
    """The images as PIL images, each item two views of one through the transform `tf`."""

    def __init__(self, images, tf):
        from PIL import Image
        self.images = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in images]
        self.tf = tf

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.tf(self.images[i]), self.tf(self.images[i])


def bench_pil(images, mean, std) -> float:
    import torchvision.transforms as T
    tf = T.Compose([T.RandomResizedCrop(32, scale=(0.08, 1.0)),
                    T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8), T.RandomGrayscale(0.2),
                    T.RandomApply([T.GaussianBlur(3, (0.1, 2.0))], p=0.5),
                    T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    loader = torch.utils.data.DataLoader(PilPairs(images, tf), batch_size=256, shuffle=True, num_workers=2,
                                         drop_last=True, persistent_workers=True)
    batches = iter(loader)
    next(batches)  # workers started
    views = 0
    start = time.perf_counter()
    for _ in range(2):
        for first, _second in batches:
            views += len(first) * 2
        batches = iter(loader)
    return views / (time.perf_counter() - start)


class JpegFiles(torch.utils.data.Dataset):
    """--part data: the JPEGs read as the previous path did (how="crop": PIL, a random resized crop per view), or
    decoded only (how="pil" or "torchvision")."""

    def __init__(self, paths, how: str, views=()):
        self.paths = paths
        self.how = how
        self.views = views

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


def stack_per_view(batch):
    """The previous path's collate: one tensor per view."""
    return [torch.stack(views) for views in zip(*batch)]


def as_is(batch):
    """The main process's default for a received batch: nothing."""
    return batch


def images_per_sec(dataset, workers: int, collate, take=as_is, init=None) -> float:
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
    start = time.perf_counter()
    for _ in range(2):
        for _ in map(take, loader):
            pass
    return 2 * len(dataset) / (time.perf_counter() - start)


def crop_views(images, sizes, views, generator):
    """The device's part of the large-image path: every view cut from the padded batch (rrc_params, area resize)."""
    crops = []
    for view in views:
        box = augment.rrc_params(len(images), sizes[:, 0], sizes[:, 1], view.scale, view.ratio, generator)
        crops.append(augment.area_resized_crop(images, *box, view.size))
    return crops


def bench_data(args: Args, device: torch.device):
    """Rows (label, views/s per worker with 2 views, with 2 + 10 views) of the large-image path (see --part data)."""
    found = Path(args.data_dir).expanduser().rglob("*")
    paths = sorted(str(p) for p in found if p.suffix.lower() in (".jpg", ".jpeg"))
    if not paths:
        raise common.UserError(f"--data-dir {args.data_dir}: no .jpg / .jpeg files in it.")
    paths = paths[:args.images]
    workers = args.workers
    pair = [common.ViewSpec(224, (0.08, 1.0))] * 2
    dino = common.multicrop(pair, 10, 96, (0.05, 0.4), (0.4, 1.0))
    previous = [images_per_sec(JpegFiles(paths, "crop", views), workers, stack_per_view) * len(views) / workers
                for views in (pair, dino)]
    rows = [("previous: workers decode and crop every view in PIL", *previous)]
    for label, mode in (("workers decode (torchvision) and pad; crops on the device", "decode"),
                        ("--decode gpu: workers read the files; decode and crops on the device", "bytes")):
        files = (np.array([os.fsencode(p) for p in paths]), np.zeros(len(paths), dtype=np.int64))
        dataset = imagefiles.ImageFiles(files, 0, mode)
        rate = images_per_sec(dataset, workers, dataset.collate, dataset.received, imagefiles.quiet_worker) / workers
        rows.append((label, rate * 2, rate * 12))
    for how in ("pil", "torchvision"):
        rate = images_per_sec(JpegFiles(paths, how), workers, len, init=imagefiles.quiet_worker) / workers  # decoding
        rows.append((f"decode alone, {'PIL' if how == 'pil' else 'torchvision.io.decode_image'}", rate * 2, rate * 12))
    padded, sizes = imagefiles.pad_images([imagefiles.read_image(p, imagefiles.LARGE_MAX) for p in (paths * 64)[:64]])
    padded = padded.to(device).float()
    sizes = sizes.to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    rates = []
    for views in (pair, dino):
        crop = functools.partial(crop_views, padded, sizes, views, generator)
        rates.append(calls_per_sec(crop, device, warmup=1) * 64 * len(views))
    rows.append((f"device part: area_resized_crop of a padded batch of 64 on {device.type} (views/s, total)", *rates))
    return rows


def script_flags(args: Args, method: str, steps: int, run_dir: Path) -> List[str]:
    """The method's command line for a benchmark run of `steps` steps (evaluation, metrics and checkpoints off)."""
    if method == "deepcluster_v2":
        steps += SYNTHETIC_IMAGES // args.batch_size  # its timed steps are in epoch 1
    flags = ["--dataset", "synthetic", "--backbone", args.backbone, "--batch-size", args.batch_size,
             "--max-steps", steps, *NO_EXTRAS, "--warmup-epochs", 0, "--device", args.device,
             "--precision", args.precision, "--run-dir", run_dir, "--no-sync-bn"]
    return [str(f) for f in flags] + (["--compile"] if args.compile else [])


def child_command(mode: str, method: str, flags, tool: str = "benchmark.py") -> List[str]:
    """`python TOOL --MODE=methods/METHOD.py -- FLAGS`: the method's script run inside TOOL (this file's --flops-child
    and --peak-child, gpu_check.py's --profile-child)."""
    return [sys.executable, str(ROOT / tool), f"--{mode}={ROOT / 'methods' / f'{method}.py'}", "--", *map(str, flags)]


def split_child_flags(argv: List[str]):
    """(this command's own arguments, the child script's flags after --)."""
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]


def run_child_script(script: str, flags: List[str], flops: bool):
    """Run the script as `python script flags` would, in this process; print its FLOPs (torch's FlopCounterMode) and
    host syncs (the warnings of torch.cuda.set_sync_debug_mode, CUDA only) with `flops`, and its peak CUDA memory."""
    from torch.utils.flop_counter import FlopCounterMode
    cuda = torch.cuda.is_available()
    sys.argv = [script, *flags]
    counter = FlopCounterMode(display=False) if flops else nullcontext()
    with warnings.catch_warnings(record=True) as caught, counter:
        warnings.simplefilter("always")
        if flops and cuda:
            torch.cuda.set_sync_debug_mode("warn")  # a warning at every op that makes the host wait for the GPU
        runpy.run_path(script, run_name="__main__")
    if flops and cuda:
        torch.cuda.set_sync_debug_mode("default")
    if flops:
        print(f"FLOPS {counter.get_total_flops()}")
        own = os.path.join("torch", "cuda", "__init__.py")  # torch.cuda.synchronize(): the script's timing, not a step
        syncs = [w for w in caught if "synchronizing CUDA operation" in str(w.message) and not w.filename.endswith(own)]
        print(f"SYNCS {len(syncs) if cuda else -1}")
    print(f"PEAK {torch.cuda.max_memory_allocated() if cuda and torch.cuda.is_initialized() else -1}")


PROFILE_WAIT = 4  # steps skipped (cudnn autotuning, compilation), then 2 of warm-up
PROFILE_ACTIVE = 6  # steps recorded


def profile_child(script: str, flags: List[str]):
    """Run the script as `python script flags` would, in this process, under torch.profiler for steps PROFILE_WAIT + 3
    to PROFILE_WAIT + 2 + PROFILE_ACTIVE; print the ops by their own device time (CPU time on a CPU) and the device's
    busy fraction over those steps' wall time. A step's boundary is its first optimizer step (the model's; the online
    probe's comes after it), seen by a global step hook of torch.optim, so that nothing in common is replaced."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook
    from torch.profiler import ProfilerActivity, profile, schedule
    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    prof = profile(activities=activities, schedule=schedule(wait=PROFILE_WAIT, warmup=2, active=PROFILE_ACTIVE))
    stamps = []  # stamps[i]: the boundary that ends step i + 1
    model_optimizer = []  # the first optimizer that steps

    def at_step_boundary(optimizer, args, kwargs):
        if not model_optimizer:
            model_optimizer.append(optimizer)
        if optimizer is model_optimizer[0]:
            prof.step()
            stamps.append(time.perf_counter())

    hook = register_optimizer_step_pre_hook(at_step_boundary)
    sys.argv = [script, *flags]
    with prof:
        runpy.run_path(script, run_name="__main__")
    hook.remove()
    first = PROFILE_WAIT + 2  # the recorded steps are first + 1 .. first + ACTIVE
    if len(stamps) <= first + PROFILE_ACTIVE:
        raise SystemExit(f"failed: {len(stamps)} steps; the profile needs {first + PROFILE_ACTIVE + 1}")
    events = prof.key_averages()
    wall = stamps[first + PROFILE_ACTIVE] - stamps[first]
    own = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
    key = own if cuda else "self_cpu_time_total"
    busy = sum(getattr(e, key) for e in events) / 1e6 / wall if cuda else -1
    print(f"STEP_MS {wall / PROFILE_ACTIVE * 1e3:.3f}\nBUSY {busy:.4f}\nPROFILE_BEGIN")
    print(events.table(sort_by=key, row_limit=25))


def last_error_line(stderr: str, limit: int) -> str:
    return (stderr.strip().splitlines() or ["?"])[-1][:limit]


def bench_method(args: Args, method: str, tmp: Path) -> dict:
    """One method's views/s from its own timed run, and its FLOPs per view from a 3-step and a 2-step counted run."""
    script = str(ROOT / "methods" / f"{method}.py")
    launch = [sys.executable]
    if args.nproc:
        launch += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}"]
    done = subprocess.run(launch + [script, *script_flags(args, method, args.steps, tmp / "timed")],
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(last_error_line(done.stderr, 120))
    results = json.loads((tmp / "timed" / "results.json").read_text())
    if "views_per_sec" not in results:
        raise RuntimeError("too few steps timed: raise --steps")
    out = {"views_per_sec": results["views_per_sec"], "views_per_image": results["views_per_image"],
           "flops_per_view": None}
    if args.flops:
        counts = []
        for steps in (3, 2):  # FLOPs(3 steps) - FLOPs(2 steps) = the third step (DeepCluster: of epoch 1)
            flags = script_flags(args, method, steps, tmp / f"flops{steps}")
            done = subprocess.run(child_command("flops-child", method, flags), capture_output=True, text=True)
            line = next((ln for ln in done.stdout.splitlines() if ln.startswith("FLOPS ")), None)
            if done.returncode or line is None:
                raise RuntimeError("FLOP count failed: " + last_error_line(done.stderr, 100))
            counts.append(int(line.split()[1]))
        out["flops_per_view"] = (counts[0] - counts[1]) / (args.batch_size * results["views_per_image"])
    return out


def print_aug_rows(args: Args, device: torch.device):
    print("\n| augmentation (32 px, batch 256) | views/s |\n|-|-|")
    for label, views_per_sec in bench_aug(device, args.pil_baseline):
        print(f"| {label} | {views_per_sec:,.0f} |", flush=True)


def print_data_rows(args: Args, device: torch.device):
    print(f"\n| large images ({args.workers} workers, JPEGs of {args.data_dir}) | views/s per worker, 2 x 224 | "
          "2 x 224 + 10 x 96 |\n|-|-|-|", flush=True)
    for label, two_views, twelve_views in bench_data(args, device):
        print(f"| {label} | {two_views:,.0f} | {twelve_views:,.0f} |", flush=True)


def print_train_rows(args: Args, device: torch.device):
    processes = f", {args.nproc} process(es) under torchrun" if args.nproc else ""
    print(f"\n| method ({args.backbone}, batch {args.batch_size}{processes}) | views/s | GFLOPs/view | "
          "CIFAR-10 epoch (s) | epoch at peak (s) | of peak |\n|-|-|-|-|-|-|", flush=True)
    peak = peak_flops(device)
    for method in args.methods:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                result = bench_method(args, method, Path(tmp))
            except RuntimeError as e:
                print(f"| {method} | failed: {e} | | | | |", flush=True)
                continue
        epoch_s = CIFAR_TRAIN * result["views_per_image"] / result["views_per_sec"]
        flops = result["flops_per_view"]
        floor = CIFAR_TRAIN * result["views_per_image"] * flops / peak if peak and flops else None
        gflops = "n/a" if flops is None else f"{flops / 1e9:.2f}"
        floor_s = "n/a" if floor is None else f"{floor:.2f}"
        of_peak = "n/a" if floor is None else f"{floor / epoch_s:.0%}"
        print(f"| {method} | {result['views_per_sec']:,.0f} | {gflops} | {epoch_s:,.1f} | {floor_s} | {of_peak} |",
              flush=True)


def main(args: Args):
    if args.profile_child:
        return profile_child(args.profile_child, CHILD_FLAGS)
    if args.flops_child or args.peak_child:
        return run_child_script(args.flops_child or args.peak_child, CHILD_FLAGS, flops=bool(args.flops_child))
    refuse_unknown_methods(args.methods)
    if args.steps < 4:
        raise common.UserError("--steps must be at least 4 (the first 3 are not timed).")
    device = distributed.pick_device(args.device)
    print(f"# benchmark on {device_name(device)}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    if args.part in ("all", "aug"):
        print_aug_rows(args, device)
    if args.part == "data" or (args.part == "all" and args.data_dir):
        print_data_rows(args, device)
    if args.part in ("all", "train"):
        print_train_rows(args, device)


if __name__ == "__main__":
    sys.argv, CHILD_FLAGS = split_child_flags(sys.argv)
    common.cli(main, Args)

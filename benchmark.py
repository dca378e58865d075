"""Throughput benchmark: augmentation views/s, and each method's training views/s with FLOPs per view and the ratio to
the device's peak when it is known. Every training figure comes from the method scripts run through their own flags.

    python benchmark.py                                   # everything on the default device (cuda if available)
    python benchmark.py --part aug                        # augmentation only (batched, and the PIL baseline)
    python benchmark.py --part train --methods simclr byol --steps 12 --backbone resnet18
    python benchmark.py --part train --methods simclr --nproc 2   # the same through torchrun, 2 processes
    python benchmark.py --part data --data-dir PATH       # large-image input path, JPEGs under PATH (e.g. ImageNet)
    bash run_all.sh bench                                 # the same as the first line

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
- data: the large-image input path on the JPEGs under --data-dir (the first --images of them, sorted), --workers
  DataLoader workers, batches of 32: views/s per worker for 2 x 224 and for 2 x 224 + 10 x 96 views (DINO's
  multi-crop) of (1) the previous path, where the workers cut and resize every view in PIL
  (RandomResizedCrop per view); (2) workers that only decode (torchvision) and pad (--decode cpu); (3) workers
  that only read the files (--decode gpu; the device's decoding is not in this row); (4) decode alone in PIL and
  in torchvision (the images stay in the worker: the ceiling of (2), which also pads and hands them over). Per image, a worker's time does not depend on the number of
  views in (2)-(4). Last row: views/s of the device's part, `area_resized_crop` of every view of a padded batch
  of 64 (with rrc_params), on the benchmark device.
Numbers are only comparable on the same device; write them into the README table with the date and device.
"""
import json
import os
import runpy
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Literal

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
import augment  # noqa: E402
import common  # noqa: E402

METHODS = sorted(p.stem for p in (ROOT / "methods").glob("*.py"))
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "4090": 165e12}  # dense tensor-core FLOP/s
SYNTHETIC_IMAGES = 4096


@dataclass
class Args:
    part: Literal["all", "aug", "train", "data"] = "all"
    """what to measure (data: only with --data-dir)"""
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


def peak_flops(device: torch.device):
    if device.type != "cuda":
        return None
    return next((v for k, v in PEAK_BF16.items() if k in torch.cuda.get_device_name(device)), None)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_aug(device: torch.device, pil: bool):
    x, _ = common.make_synthetic(2560, 0)
    mean, std = common._stats(x)
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
            return common.read_image(self.paths[i])
        img = Image.open(self.paths[i]).convert("RGB")
        if self.how == "pil":
            return T.functional.pil_to_tensor(img)
        return [T.functional.pil_to_tensor(T.RandomResizedCrop(v.size, v.scale, v.ratio)(img)) for v in self.views]


def _images_per_sec(dataset, workers: int, collate) -> float:
    """Images/s of a DataLoader (batches of 32, persistent workers) over 2 passes, after one pass to start up."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, num_workers=workers, collate_fn=collate,
                                         persistent_workers=True)
    for _ in loader:
        pass
    t = time.perf_counter()
    for _ in range(2):
        for _ in loader:
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
        ds = common._Decoded(files, 0, mode)
        rate = _images_per_sec(ds, w, ds.collate) / w
        rows.append((label, rate * 2, rate * 12))
    for how in ("pil", "torchvision"):
        rate = _images_per_sec(_Files(paths, how), w, len) / w  # the images stay in the worker: decoding only
        rows.append((f"decode alone, {'PIL' if how == 'pil' else 'torchvision.io.decode_image'}", rate * 2, rate * 12))
    x, hw = common.pad_images([common.read_image(p, common.LARGE_MAX) for p in (paths * 64)[:64]])
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


def flops_child(script: str, flags: List[str]):
    """Run the script as `python script flags` would, in this process, under FlopCounterMode; print the count."""
    from torch.utils.flop_counter import FlopCounterMode
    sys.argv = [script, *flags]
    with FlopCounterMode(display=False) as counter:
        runpy.run_path(script, run_name="__main__")
    print(f"FLOPS {counter.get_total_flops()}")


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


def main(args: Args):
    if args.flops_child:
        return flops_child(args.flops_child, EXTRA)
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        raise common.UserError(f"unknown method(s) {unknown}; choose from {METHODS}")
    if args.steps < 4:
        raise common.UserError("--steps must be at least 4 (the first 3 are not timed).")
    device = common.pick_device(args.device)
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

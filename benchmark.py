"""Throughput benchmark: augmentation views/s, and full training-step views/s of every method, with FLOPs per view
and the ratio to the device's peak when it is known.

    python benchmark.py                                   # everything on the default device (cuda if available)
    python benchmark.py --part aug                        # augmentation only (batched, and the PIL baseline)
    python benchmark.py --part train --methods simclr byol --steps 6 --backbone resnet18
    bash run_all.sh bench                                 # the same as the first line

What is measured
- aug: `common.Augment` with the SimCLR (symmetric) and BYOL (asymmetric) CIFAR presets on a 256-image uint8 batch
  already on the device: views/s of the augmentation alone. Baseline: the same operations as a per-image
  torchvision PIL pipeline in a DataLoader with 2 workers (what a CIFAR script usually does).
- train: each method's own script (its `main`), in a child process, on 32-px synthetic images at --batch-size,
  with evaluation, MI logging and checkpoints switched off. The first --warmup steps (one of them counted by
  torch's FlopCounterMode, which slows it) are not timed; views/s = views per step * timed steps / time.
  FLOPs/view = FLOPs of one whole training step (every forward and backward, EMA targets, queues, augmentation
  excluded: it is not matmul/conv) / views per step. DeepCluster v2 is timed in epoch 1 (its epoch 0 only fills the
  memory); its k-means at each epoch start is not in the figure. "epoch" = time for 50,000 images (a CIFAR epoch) at that
  rate; "floor" = the same epoch at the device's peak dense bf16 (or fp32 on CPU: unknown) FLOP rate.
Numbers are only comparable on the same device; write them into the README table with the date and device.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Literal

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
import common  # noqa: E402

METHODS = sorted(p.stem for p in (ROOT / "methods").glob("*.py"))
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "4090": 165e12}  # dense tensor-core FLOP/s


@dataclass
class Args:
    part: Literal["all", "aug", "train"] = "all"
    """what to measure"""
    methods: List[str] = field(default_factory=lambda: list(METHODS))
    """methods for --part train (file names in methods/ without .py)"""
    backbone: common.BackboneName = "resnet18"
    """backbone of the training-step benchmark"""
    batch_size: int = 256
    """images per step"""
    steps: int = 12
    """training steps per method (the first --warmup are not timed)"""
    warmup: int = 3
    """untimed steps (compilation, cudnn autotuning, the FLOP-counted step)"""
    device: str = "auto"
    """auto (cuda if available), cpu, cuda"""
    precision: common.Precision = "auto"
    """autocast dtype of the training steps (auto = bf16 on CUDA, fp32 on CPU)"""
    compile: bool = False
    """torch.compile the backbones"""
    pil_baseline: bool = True
    """also time the per-image PIL pipeline with 2 DataLoader workers"""
    child: str = ""
    """internal: run one method's training benchmark in this process"""


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_aug(device: torch.device, pil: bool):
    x, _ = common.make_synthetic(2560, 0)
    mean, std = common._stats(x)
    batch = x[:256].to(device)
    rows = []
    for name, views in (("symmetric (SimCLR)", common.symmetric_views(32)), ("asymmetric (BYOL)", common.asymmetric_views(32))):
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


def child(args: Args):
    """Run methods/{args.child}.py's main for a few steps with timing hooks on common.Run; print one JSON line."""
    from torch.utils.flop_counter import FlopCounterMode
    sys.path.insert(0, str(ROOT / "methods"))
    mod = __import__(args.child)
    out = {}
    original = common.Run.batches

    def timed_batches(run, epoch):
        counter = FlopCounterMode(display=False)
        for x, y in original(run, epoch):
            sync(run.device)
            k = run.step_count
            k -= run.start_epoch * run.steps_per_epoch  # steps of this benchmark (DeepCluster starts at epoch 1)
            if k == 2:
                counter.__exit__(None, None, None)
                out["flops_per_view"] = counter.get_total_flops() / (args.batch_size * len(run.views))
            if k == args.warmup + 1:
                out["t0"] = time.perf_counter()
            if k == 1:
                counter.__enter__()  # count the whole first step
            yield x, y
        sync(run.device)
        out["t1"], out["timed"] = time.perf_counter(), run.step_count - run.start_epoch * run.steps_per_epoch - args.warmup
        out["views_per_step"] = args.batch_size * len(run.views)
        out["device"] = torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else "cpu"
        out["peak"] = peak_flops(run.device)

    common.Run.batches = timed_batches
    if args.child == "deepcluster_v2":  # its epoch 0 only fills the memory (no backward): time a training epoch
        track = common.Run.track

        def track_from_epoch_1(run, *a, **kw):
            track(run, *a, **kw)
            run.start_epoch, run.step_count = 1, run.steps_per_epoch
            run.stop_step = run.steps_per_epoch + args.steps
        common.Run.track = track_from_epoch_1
    common.Run.evaluate = lambda self: None
    common.Run.finish = lambda self: None
    margs = mod.Args(dataset="synthetic", backbone=args.backbone, batch_size=args.batch_size, max_steps=args.steps,
                     eval_every=0, mi_every=0, save_every=0, warmup_epochs=0, device=args.device,
                     precision=args.precision, compile=args.compile, exp_name="bench")
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        mod.main(margs)
    vps = out["views_per_step"] * out["timed"] / (out["t1"] - out["t0"])
    print("RESULT " + json.dumps(dict(method=args.child, views_per_sec=vps, flops_per_view=out["flops_per_view"],
                                      device=out["device"], peak=out["peak"], views_per_image=out["views_per_step"] // args.batch_size)))


def main(args: Args):
    if args.child:
        return child(args)
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        raise common.UserError(f"unknown method(s) {unknown}; choose from {METHODS}")
    if args.steps <= args.warmup + 1:
        raise common.UserError("--steps must exceed --warmup + 1.")
    device = common.pick_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"# benchmark on {name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    if args.part in ("all", "aug"):
        print("\n| augmentation (32 px, batch 256) | views/s |\n|-|-|")
        for label, vps in bench_aug(device, args.pil_baseline):
            print(f"| {label} | {vps:,.0f} |", flush=True)
    if args.part in ("all", "train"):
        print(f"\n| method ({args.backbone}, batch {args.batch_size}) | views/s | GFLOPs/view | CIFAR-10 epoch (s) | "
              "epoch at peak (s) | of peak |\n|-|-|-|-|-|-|", flush=True)
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k in ("backbone", "batch_size", "steps", "warmup", "device", "precision")]
        for m in args.methods:
            cmd = [sys.executable, str(ROOT / "benchmark.py"), f"--child={m}", *flags] + (["--compile"] if args.compile else [])
            res = subprocess.run(cmd, capture_output=True, text=True)
            line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if res.returncode or line is None:
                print(f"| {m} | failed: {(res.stderr.strip().splitlines() or ['?'])[-1][:120]} | | | | |", flush=True)
                continue
            r = json.loads(line[7:])
            epoch = 50000 * r["views_per_image"] / r["views_per_sec"]
            floor = 50000 * r["views_per_image"] * r["flops_per_view"] / r["peak"] if r["peak"] else None
            print(f"| {m} | {r['views_per_sec']:,.0f} | {r['flops_per_view'] / 1e9:.2f} | {epoch:,.1f} | "
                  f"{'n/a' if floor is None else f'{floor:.2f}'} | {'n/a' if floor is None else f'{floor / epoch:.0%}'} |", flush=True)


if __name__ == "__main__":
    common.cli(main, Args)

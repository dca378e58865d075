"""cleanssl plumbing shared by every method file; nothing here is part of a method's algorithm (read a method first).
Contents: errors and the command line | several processes (torchrun) | data | optimization | evaluation | runs
(directory, logging, checkpoints, resume, interruptions). Two topics have their own module, re-exported here so a
method file needs only `import common`: augment.py (batched augmentation) and backbones.py (ResNet, ViT)."""
import atexit
import contextlib
import copy
import dataclasses
import datetime
import errno
import io
import json
import math
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Literal

try:  # the slow imports (seconds; method files import common first): Ctrl-C meanwhile exits 130, no traceback
    import numpy as np
    import torch
    import torch.distributed as dist
    import torch.nn as nn
    import torch.nn.functional as F
    import torchvision
    import tyro

    import estimators
    from augment import (LARGE_MAX, Augment, ImageFiles, ViewSpec, decode_jpegs, file_loader, multicrop,  # noqa: F401
                         pad_images, read_image, read_jpeg_bytes)  # method files use them as common.X
    from backbones import VIT_SIZES, MeanTokens, TinyResNet, ViT, build_backbone, default_patch, mlp  # noqa: F401
except KeyboardInterrupt:
    sys.exit(130)

DatasetName = Literal["cifar10", "cifar100", "stl10", "tinyimagenet", "imagenet100", "imagefolder", "medmnist",
                      "synthetic"]
BackboneName = Literal["resnet18", "resnet50", "tiny", "vit_mini", "vit_tiny", "vit_small"]
OptimizerName = Literal["lars", "sgd", "adamw"]
Precision, Decoder = Literal["auto", "fp32", "bf16", "fp16"], Literal["cpu", "gpu"]
Tensor = torch.Tensor
ONLINE_PROTOCOL = ("online linear probe: trained during SSL on detached backbone features of augmented view 1 "
                   "(SGD lr 0.1, momentum 0.9)")
FINETUNE_PROTOCOL = ("end-to-end fine-tuning: backbone (every parameter) + linear head on the labelled train images, "
                     "AdamW lr 5e-4 x batch/256, wd 0.05, 10% warmup then cosine, crop 0.2-1 + flip; un-augmented "
                     "test images")

class UserError(Exception):
    """What the user can fix (missing data, bad flag, unusable checkpoint) or a saved stop: one line, exit `code`."""
    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code  # 2 (bad input), 1 (a failed write), 0 (nothing to do), or 128 + the signal

def cli(main, args_cls):
    """Parse the command line with tyro and run main(args), alone or as one of torchrun's processes."""
    try:
        args = tyro.cli(args_cls)
    except BrokenPipeError:  # `--help | head`: the reader left; quiet, as other command-line tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    try:
        main(args)
    except UserError as e:
        print(f"{f'[rank {rank()}] ' if rank() else ''}{'error: ' if 0 < e.code < 3 else ''}{e}", file=sys.stderr)
        sys.exit(e.code)
    except KeyboardInterrupt:
        print("interrupted: nothing saved since the last checkpoint", file=sys.stderr)
        sys.exit(130)
    dist.destroy_process_group() if dist.is_initialized() else None

# --------------------------------------------------------------------------------------------- several processes
def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0

def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1

def init_distributed(device: str) -> torch.device:
    """Under torchrun: join the process group (NCCL on GPUs, gloo on CPU), return cuda:LOCAL_RANK; alone: `device`."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return pick_device(device)
    cuda = torch.cuda.is_available() and device != "cpu"
    dev = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if not dist.is_initialized():
        torch.cuda.set_device(dev) if cuda else None
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    return dev

def gather(x: Tensor) -> Tensor:
    """The global batch: x of every rank concatenated along dim 0 in rank order, WITH gradients (the backward of
    torch.distributed.nn.functional.all_gather sums every rank's gradient into the local slice). Identity alone."""
    if world_size() == 1:
        return x
    with warnings.catch_warnings():  # deprecated in torch 2.14 for a private API; still the gather with gradients
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(torch.distributed.nn.functional.all_gather(x.contiguous()))

def average_gradients(*modules: nn.Module):
    """Between backward and the optimizer step: each gradient becomes its mean over the ranks (one flat all-reduce).
    A loss on gathered embeddings is the same on every rank and gather's backward sums, so each rank holds
    world_size x its share and the mean is exactly the one-process gradient of the global batch. No-op alone."""
    grads = [p.grad for m in modules for p in m.parameters() if p.grad is not None]
    if world_size() > 1 and grads:
        dist.all_reduce(flat := torch.cat([g.reshape(-1) for g in grads]).div_(world_size()))
        for g, v in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(v.view_as(g))

def any_rank(flag: bool) -> bool:
    """True on every rank if True on any (a collective: every rank calls it at the same point)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([float(flag)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())

def broadcast(obj):  # rank 0's value of a picklable object, on every rank
    box = [obj]
    dist.broadcast_object_list(box, src=0) if world_size() > 1 else None
    return box[0]

def broadcast_(*tensors: Tensor):  # rank 0's values of these tensors on every rank, in place (a collective)
    for t in tensors if world_size() > 1 else ():
        dist.broadcast(t, 0)

# ------------------------------------------------------------------------------------------------------------ data
CIFAR_STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
               "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
SMALL_MAX = 96  # images up to 96 px are decoded once onto the device; above: read by `feed` (LARGE_MAX px)

def make_synthetic(n: int, seed: int, size: int = 32, num_classes: int = 10):
    """Ten texture classes (stripes, checkers, rings, squares, blobs, grids...), random phase, position and palette
    colours: the class is in the spatial structure, which survives the augmentations. uint8 (n, 3, S, S), labels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randperm(n, generator=g) % num_classes
    u = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    c = torch.arange(size, dtype=torch.float32) - size / 2
    yy, xx = c[None, :, None], c[None, None, :]
    f = (2 * math.pi / (3.5 + 0.25 * (y % 5) + 0.2 * u(n)))[:, None, None]  # period ~3.5-4.7 px, set by the class
    p1, p2 = (2 * math.pi * u(n))[:, None, None], (2 * math.pi * u(n))[:, None, None]
    cy, cx = ((u(n) - 0.5) * size)[:, None, None], ((u(n) - 0.5) * size)[:, None, None]
    theta = (2 * math.pi * u(n))[:, None, None]
    blobs = F.interpolate(torch.randn(n, 1, 4, 4, generator=g), size=size, mode="bicubic", align_corners=False)[:, 0]
    sin, cos, mx = torch.sin, torch.cos, torch.maximum
    pats = [sin(f * yy + p1), sin(f * xx + p1), sin(f * xx + p1) * sin(f * yy + p2) * 2,
            sin(f * (xx + yy) / 1.41 + p1) + sin(f * (xx - yy) / 1.41 + p2),
            sin(f * ((xx - cx) ** 2 + (yy - cy) ** 2).sqrt() + p1), blobs,
            sin(f * mx((xx - cx).abs(), (yy - cy).abs()) + p1),
            (mx(cos(f * xx + p1), cos(f * yy + p2)) > 0.8) * 2.0 - 1,
            (xx * cos(theta) + yy * sin(theta)) / size * 2, (cos(f * xx + p1) + cos(f * yy + p2) > 1.0) * 2.0 - 1]
    v = torch.sigmoid(2 * torch.stack([p.expand(n, size, size) for p in pats])[y, torch.arange(n)])[:, None]
    # colours from a palette shared by all classes: colour tells neither the class nor the instance
    palette = torch.rand(6, 2, 3, generator=torch.Generator().manual_seed(7))
    pick = palette[torch.randint(0, 6, (n,), generator=g)]  # (n, 2, 3)
    c0, c1 = [(pick[:, i] + 0.05 * torch.randn(n, 3, generator=g)).view(n, 3, 1, 1) for i in (0, 1)]
    img = c0 * (1 - v) + c1 * v + 0.05 * torch.randn(n, 3, size, size, generator=g)  # noise
    return (img.clamp(0, 1) * 255).round().to(torch.uint8), y

def _missing(what: str, where, hint: str = "") -> UserError:
    return UserError(f"{what} not found in {where}{hint}. Offline? Use --dataset synthetic (no files) or --dataset "
                     "imagefolder --data-dir PATH (PATH/train/<class>/*.jpg and PATH/val/ or PATH/test/).")

def _torchvision_split(name, root, split):
    first = world_size() == 1 or os.environ.get("LOCAL_RANK", "0") == "0"  # of its node: it alone downloads
    try:
        dist.barrier() if not first else None  # the others wait until the first has the files, then only read
        kw = dict(split=split) if name == "stl10" else dict(train=split == "train")
        d = getattr(torchvision.datasets, name.upper())(root, download=first, **kw)
        x, y = torch.from_numpy(d.data), torch.as_tensor(d.labels if name == "stl10" else d.targets).long()
        return (x if name == "stl10" else x.permute(0, 3, 1, 2).contiguous()), y  # CIFAR's arrays are (N, H, W, 3)
    except Exception as e:  # no network, partial download, unreadable files
        hint = f" and could not be downloaded ({type(e).__name__})"
        raise _missing(f"{name} ({split} split)", Path(root).resolve(), hint) from None
    finally:
        dist.barrier() if first and world_size() > 1 else None  # downloaded (or failed): the others may read

def _folder_samples(root: Path):  # ((paths, labels), classes) of an ImageFolder layout or Tiny-ImageNet's val/; numpy
    try:  # arrays (bytes, int64): forked DataLoader workers read them without copying them page by page
        if (root / "val_annotations.txt").exists():
            classes = sorted(p.name for p in (root.parent / "train").iterdir() if p.is_dir())
            rows = [ln.split("\t")[:2] for ln in (root / "val_annotations.txt").read_text().splitlines() if ln.strip()]
            samples = [(str(root / "images" / f), classes.index(c)) for f, c in rows]
        else:
            samples, classes = (d := torchvision.datasets.ImageFolder(str(root))).samples, d.classes
    except (OSError, ValueError) as e:  # no class folders, or folders without images
        raise UserError(f"{root}: no images in an ImageFolder layout ({str(e).splitlines()[0][:100]}).") from None
    return (np.array([os.fsencode(p) for p, _ in samples]), np.array([c for _, c in samples], dtype=np.int64)), classes

def _decode_all(files, size, workers):  # small images, decoded once: uint8 (N, 3, size, size), labels; bad: refused
    chunks = [range(k, min(k + 512, len(files[0]))) for k in range(0, len(files[0]), 512)]
    parts = list(file_loader(ImageFiles(files, size, "small"), chunks, workers))
    bad = [os.fsdecode(files[0][i]) for _, _, idx, ok in parts for i in idx[~ok].tolist()]
    if bad:
        raise UserError(f"{len(bad)} unreadable image file(s), e.g. {', '.join(bad[:3])}; remove or replace them.")
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

@dataclass
class Data:
    """A dataset ready for training. `splits` {"ssl": what SSL trains on (labels -1 = unlabelled), "train", "test": the
    evaluation splits}: (uint8 images (N, 3, H, W), labels) on the device (every rank's). Large images: `files`
    (paths, labels) per split, decoded by DataLoader workers or on the device (`feed`); crops: on the device."""
    name: str
    num_classes: int
    image_size: int
    mean: tuple
    std: tuple
    splits: dict = None
    files: dict = None
    device: torch.device = torch.device("cpu")
    unreadable: int = 0  # large images replaced by another one so far
    feed: torch.utils.data.DataLoader = None  # large images' training batches: files read by persistent workers

    large = property(lambda self: self.files is not None)  # images decoded by DataLoader workers or on the device
    __len__ = lambda self: len((self.files or self.splits)["ssl"][0])  # noqa: E731  (images of the SSL split)

    def ssl_batches(self, batch_size: int, epoch: int, seed: int, start: int = 0, split: str = "ssl"):
        """This rank's share of global batches start, start + 1... of an epoch of a split (drop_last): uint8 images
        (large ones padded as pad_images'), labels, dataset indices. Shuffled by (seed, epoch) only; rank r takes the
        r-th equal share. Large images (image folders): the SSL split is the labelled train split, read by `feed`."""
        split = "ssl" if self.large else split
        b, r, n = batch_size // world_size(), rank(), len((self.files or self.splits)[split][0])
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        perm = perm if self.large else perm.to(self.device)  # once an epoch: a host-to-device copy makes the host wait
        shares = [perm[i * batch_size + r * b:][:b] for i in range(start, n // batch_size)]
        if not self.large:
            x, y = self.splits[split]
            yield from ((x[idx], y[idx], idx) for idx in shares)
            return
        self.feed.batch_sampler[:], dev = shares, self.device  # read at each iter(feed): one epoch at a time
        for x, y, idx, ok in map(self.feed.dataset.received, self.feed):  # a copy of a worker's reused buffer
            if self.feed.dataset.mode == "bytes":  # --decode gpu: a file the device cannot decode is replaced
                x, src, decoded = decode_jpegs(x[0].split(x[1].tolist()), dev, LARGE_MAX)
                y, ok = y[src], ok & torch.tensor(decoded)
            if not ok.all():
                self.unreadable += int((~ok).sum())
                print(f"warning: unreadable image {os.fsdecode(self.files['ssl'][0][int(idx[~ok][0])])} replaced by "
                      f"another ({self.unreadable} so far)", file=sys.stderr, flush=True)
            yield [t.to(dev, non_blocking=True) for t in x], *(t.to(dev, non_blocking=True) for t in (y, idx))

    def eval_batches(self, split: Literal["train", "test"], batch_size: int = 512):  # un-augmented, in order
        if not self.large:
            x, y = self.splits[split]
            yield from ((x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size))
            return
        n, files = len(self.files[split][0]), ImageFiles(self.files[split], self.image_size, "eval")
        sampler = [range(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
        for x, y, _, _ in file_loader(files, sampler, self.feed.num_workers):
            yield x.to(self.device, non_blocking=True), y.to(self.device)

def load_data(name: str, data_dir: str, seed: int, device, workers: int = 0, decode: Decoder = "cpu") -> Data:
    """Load a dataset (layouts in the README); missing or unusable data: UserError naming what, where, what to do."""
    root, small = Path(data_dir).expanduser(), None
    workers = workers or max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))  # per process
    if name == "synthetic":
        x, y = make_synthetic(5120, seed)
        small = 10, (x[:4096], y[:4096]), (x[:4096], y[:4096]), (x[4096:], y[4096:]), _stats(x[:4096])
    elif name in ("cifar10", "cifar100"):
        tr, te = _torchvision_split(name, root, "train"), _torchvision_split(name, root, "test")
        small = 10 if name == "cifar10" else 100, tr, tr, te, CIFAR_STATS[name]
    elif name == "stl10":
        splits = [_torchvision_split(name, root, s) for s in ("train+unlabeled", "train", "test")]
        small = 10, *splits, IMAGENET_STATS
    elif name == "medmnist":
        keys = ("train_images", "train_labels", "test_images", "test_labels")
        try:  # images (N, H, W) or (N, H, W, 1 or 3); any other shape fails in permute or expand
            z = np.load(root)
            a = {k: torch.from_numpy(z[k]) for k in keys}
            tr, te = [((v[..., None] if v.ndim == 3 else v).permute(0, 3, 1, 2).expand(-1, 3, -1, -1).contiguous(),
                       a[f"{s}_labels"].reshape(len(v), -1)[:, 0].long()) for s, v in ((s, a[f"{s}_images"]) for s in
                                                                                      ("train", "test"))]
        except (OSError, ValueError, KeyError, AttributeError, TypeError, RuntimeError) as e:
            raise UserError(f"medmnist needs --data-dir pointing at a MedMNIST .npz file with the arrays {keys}, "
                            f"images (N, H, W) or (N, H, W, 1 or 3) (e.g. bloodmnist.npz); {root} is not one "
                            f"({type(e).__name__}).") from None
        small = int(max(tr[1].max(), te[1].max())) + 1, tr, tr, te, _stats(tr[0])
    else:  # imagefolder, tinyimagenet, imagenet100: ImageFolder layouts
        split = next((s for s in ("val", "test") if (root / s).is_dir()), None)
        if not (root / "train").is_dir() or split is None:
            raise _missing(f"--dataset {name}: folders train/ and val/ (or test/)", root.resolve())
        (train, classes), (test, _) = _folder_samples(root / "train"), _folder_samples(root / split)
        try:
            size = max(read_image(os.fsdecode(train[0][0])).shape[1:])
        except (OSError, RuntimeError) as e:
            raise UserError(f"unreadable image {os.fsdecode(train[0][0])} ({type(e).__name__}); remove it.") from None
        if size > SMALL_MAX or name == "imagenet100":  # at exit, feed's workers stop before multiprocessing's SIGTERM
            feed = file_loader(ImageFiles(train, 0, "bytes" if decode == "gpu" else "decode"), [], workers, True)
            atexit.register(lambda: feed._iterator and feed._iterator._shutdown_workers())
            d = Data(name, len(classes), 224, *IMAGENET_STATS, files=dict(ssl=train, train=train, test=test), feed=feed)
        else:
            tr = _decode_all(train, size, workers)
            small = len(classes), tr, tr, _decode_all(test, size, workers), _stats(tr[0])
    if small:
        k, ssl, tr, te, stats = small
        splits = {s: (x.to(device), y.to(device)) for s, (x, y) in (("ssl", ssl), ("train", tr), ("test", te))}
        d = Data(name, k, ssl[0].shape[-1], *stats, splits=splits)
    d.device = torch.device(device)
    return d

def _stats(x: Tensor):  # per-channel mean and std of (up to 10,000) uint8 images
    x = x[:10000].float() / 255
    return tuple(x.mean((0, 2, 3)).tolist()), tuple(x.std((0, 2, 3)).tolist())

# ---------------------------------------------------------------------------------------------------- optimization
class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017) as in solo-learn: SGD with momentum where each weight's step is scaled by the trust ratio
    eta ||w|| / (||g|| + wd ||w||), clipped to at most 1x the global lr (`clip`). Groups with lars_exclude=True
    (biases, norm layers) get neither weight decay nor the trust ratio."""

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, eta=0.02, clip=True, eps=1e-8):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, clip=clip, eps=eps,
                                      lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):
        """One foreach pass per group over all its parameters: a few dozen kernels a step, none read by the host."""
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            grads = [p.grad for p in params]
            if params and not group["lars_exclude"]:
                wd, w, g = group["weight_decay"], *(torch.stack(torch._foreach_norm(t)) for t in (params, grads))
                ok = (w > 0) & (g > 0)  # as solo-learn: a zero weight or gradient is left as it is (no decay, no ratio)
                trust = group["eta"] * w / (g + wd * w + group["eps"])
                trust = torch.where(ok, torch.clamp(trust / group["lr"], max=1.0) if group["clip"] else trust, 1.0)
                grads = torch._foreach_addcmul(grads, params, (wd * ok).unbind())  # g + wd w
                torch._foreach_mul_(grads, trust.unbind())
            for p in (p for p in params if "momentum_buffer" not in self.state[p]):
                self.state[p]["momentum_buffer"] = torch.zeros_like(p)  # so that the first buffer is the first gradient
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, grads)
            torch._foreach_add_(params, bufs, alpha=-group["lr"])

def param_groups(module: nn.Module, weight_decay: float, **extra):
    """Two groups: weights (decayed) and biases/norm parameters (ndim <= 1: no decay, excluded from LARS)."""
    params = [p for p in module.parameters() if p.requires_grad]
    return [dict(params=[p for p in params if p.ndim > 1], weight_decay=weight_decay, lars_exclude=False, **extra),
            dict(params=[p for p in params if p.ndim <= 1], weight_decay=0.0, lars_exclude=True, **extra)]

def make_optimizer(name: str, groups, lr: float, momentum: float = 0.9, betas=(0.9, 0.999)):
    """LARS / SGD / AdamW over param groups (see `param_groups`); `lr` is the already batch-scaled rate. SGD and AdamW
    run torch's fused kernels where every parameter is on CUDA, else its foreach path (one pass over all parameters)."""
    for grp in groups:
        grp["base_lr"] = grp.get("base_lr", lr)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum)
    groups = [{k: v for k, v in grp.items() if k != "lars_exclude"} for grp in groups]
    fast = {"fused" if all(p.is_cuda for grp in groups for p in grp["params"]) else "foreach": True}
    return (torch.optim.SGD(groups, lr=lr, momentum=momentum, **fast) if name == "sgd" else
            torch.optim.AdamW(groups, lr, betas, **fast))

def warmup_cosine(step: int, total: int, warmup: int, start: float = 3e-5 / 0.4, end: float = 0.0) -> float:
    """Multiplier of the base lr at `step`: linear warmup from `start` to 1 over `warmup` steps, cosine to `end`.
    Default `start`: solo-learn's warmup begins at lr 3e-5 with SimCLR's base lr 0.4; here that fraction of any lr."""
    if step < warmup:
        return start + (1 - start) * step / max(1, warmup)
    return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

def cosine_schedule(step: int, total: int, base: float, final: float) -> float:
    """solo-learn's EMA/temperature schedule: final - (final - base) * (cos(pi * step / total) + 1) / 2."""
    return final - (final - base) * (math.cos(math.pi * min(step, total) / max(1, total)) + 1) / 2

def linspace_warmup(epoch: int, warmup: int, start: float, final: float) -> float:
    """np.linspace(start, final, warmup)[epoch] in the first `warmup` epochs (final in the last one), then final."""
    return start + (final - start) * min(1.0, epoch / max(1, warmup - 1)) if warmup > 0 else final

# ------------------------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def extract_features(net: nn.Module, data: Data, split: str, normalize, batch_size=512):
    """Outputs of `net` in eval mode on the un-augmented images of a split, and their labels. Every rank computes
    them all (no collective, so evaluation cannot deadlock; it is not sped up by several processes)."""
    was_training = net.training
    feats, labels = zip(*[(net.eval()(normalize(x)).float(), y) for x, y in data.eval_batches(split, batch_size)])
    net.train(was_training)
    return torch.cat(feats), torch.cat(labels)

def labelled_cross_entropy(logits: Tensor, y: Tensor):
    """Cross-entropy L = S / n and top-1 (%) over the labelled samples (y >= 0) of the global batch: one all-reduce (no
    sync) sums rank r's loss sum S_r and labelled count n_r (unequal on STL-10). dL = sum_r dS_r / n; average_gradients
    divides the ranks' sum by W, so each rank backpropagates W S_r / n, with the value of L (what is logged)."""
    s_r = F.cross_entropy(logits, y, ignore_index=-1, reduction="sum")  # over this rank's labelled samples
    tot = torch.stack([s_r.detach(), (logits.argmax(1) == y).sum(), (y >= 0).sum()]).float()  # [S_r, hits_r, n_r]
    dist.all_reduce(tot) if world_size() > 1 else None  # -> [S, hits, n]; returned: value S / n, gradient W dS_r / n
    return (world_size() * (s_r - s_r.detach()) + tot[0]) / tot[2].clamp(min=1), 100 * tot[1] / tot[2].clamp(min=1)

class OnlineProbe(nn.Module):
    """Linear classifier trained alongside SSL on detached features, with its own SGD (ONLINE_PROTOCOL)."""

    def __init__(self, feat_dim: int, num_classes: int, device):
        super().__init__()
        self.fc = nn.Linear(feat_dim, num_classes).to(device)
        self.opt = make_optimizer("sgd", [dict(params=list(self.fc.parameters()))], 0.1)  # momentum 0.9

    def update(self, feats: Tensor, y: Tensor):
        """One step on the labelled samples (y = -1: skipped) of the global batch; returns its (loss, train top-1 %)."""
        loss, acc = labelled_cross_entropy(self.fc(feats.detach().float()), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.fc)
        self.opt.step()
        return loss.detach(), acc

def finetune(backbone: nn.Module, feat_dim: int, data: Data, normalize, autocast, scaler, epochs: int, batch_size: int,
             seed: int, pool: str = "cls") -> float:
    """End-to-end supervised fine-tuning of a copy of the backbone with a linear head (FINETUNE_PROTOCOL), each rank on
    its share of the labelled train split (not the SSL split, unlabelled on STL-10), gradients averaged (`scaler`: fp16
    loss scaling); returns the test top-1. pool "mean": the head reads a ViT's mean patch token (MeanTokens; MAE)."""
    body = MeanTokens(copy.deepcopy(backbone)) if pool == "mean" else copy.deepcopy(backbone)
    with torch.random.fork_rng(devices=[]):  # the head from the seed alone: the same for any backbone and on every rank
        torch.manual_seed(seed)
        net = nn.Sequential(body, nn.Linear(feat_dim, data.num_classes)).to(data.device).train()
    net.requires_grad_(True)  # every parameter, also those fixed during SSL (MAE's sin-cos positions), as MAE does
    opt = make_optimizer("adamw", param_groups(net, 0.05), 5e-4 * batch_size / 256)
    view = ViewSpec(data.image_size, scale=(0.2, 1.0), jitter_p=0.0, gray_p=0.0)
    aug, g = Augment([view], data.mean, data.std, shard=(rank(), world_size())), torch.Generator(data.device)
    total, step = epochs * (len((data.files or data.splits)["train"][0]) // batch_size), 0
    for epoch in range(epochs):
        for x, y, _ in data.ssl_batches(batch_size, epoch, seed + 7, split="train"):
            for grp in opt.param_groups:
                grp["lr"] = grp["base_lr"] * warmup_cosine(step, total, total // 10, start=0.0)
            with autocast():
                loss, _ = labelled_cross_entropy(net(aug(x, g.manual_seed(seed * 1_000_003 + step))[0]).float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            average_gradients(net)
            scaler.step(opt), scaler.update()
            step += 1
    with autocast():
        logits, labels = extract_features(net, data, "test", normalize)
    return 100.0 * (logits.argmax(1) == labels).float().mean().item()

# ------------------------------------------------------------------------------------------------------------ runs
CKPT_FORMAT = "cleanssl-checkpoint-1"
CKPT_KEYS = ("method", "model", "optimizers", "probe", "probe_opt", "step", "epoch", "batch_in_epoch", "rng", "args")
FIXED_FLAGS = ("dataset", "backbone", "patch_size", "optimizer", "batch_size", "seed", "exp_name")  # define a run

def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but no CUDA device is available; use --device cpu.")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: not a device (auto, cpu, cuda, cuda:1, ...).") from None

def save_checkpoint(path: Path, state: dict):
    """torch.save into memory (the bytes then depend on the state alone), a temporary file of this process, an atomic
    rename: a crash or a full disk (OSError) never leaves half a file, and the previous one stays intact."""
    buf, tmp = io.BytesIO(), path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(state, buf)
    try:
        tmp.write_bytes(buf.getbuffer())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

def load_checkpoint(path: str, method: str, args) -> dict:
    """A checkpoint of `method`, read with weights_only=True (tensors and plain values only: a file from elsewhere
    cannot run code), its flags compared with this command line: FIXED_FLAGS must agree, other changes are listed."""
    if not Path(path).is_file():
        raise UserError(f"--resume {path}: no such checkpoint file.")
    try:
        s = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # empty, truncated, not a torch file, or holding objects other than tensors and plain types
        raise UserError(f"--resume {path}: not a readable checkpoint ({type(e).__name__}).") from None
    if not isinstance(s, dict) or s.get("format") != CKPT_FORMAT or not s.keys() >= set(CKPT_KEYS):
        raise UserError(f"--resume {path}: not a complete cleanssl training checkpoint (resume from a run's last.pt).")
    if s["method"] != method:
        raise UserError(f"--resume {path} is a {s['method']} checkpoint; continue it with methods/{s['method']}.py.")
    old = s["args"]
    s["changed"] = {k: (old.get(k), v) for k, v in dataclasses.asdict(args).items()
                    if k not in ("resume", "run_dir") and old.get(k) != v}
    fixed = [f"--{k.replace('_', '-')} {s['changed'][k][0]} (now {s['changed'][k][1]})" for k in FIXED_FLAGS
             if k in s["changed"]]
    if fixed:
        raise UserError(f"--resume {path}: it was trained with {', '.join(fixed)}; these flags cannot change in a run.")
    return s

def _first_nonfinite(*modules: nn.Module):
    """Name of the first parameter or buffer holding NaN or Inf (one device sync), else None."""
    items = [(k, v) for m in modules for k, v in m.state_dict().items() if v.is_floating_point()]
    ok = torch.stack([torch.isfinite(v).all() for _, v in items]).cpu()
    return None if ok.all() else items[int((~ok).nonzero()[0])][0]

class Run:
    """Everything around a method's training loop: processes, seed, device, data, run directory and tensorboard,
    learning-rate schedule, precision, evaluation, metrics, checkpoints, resume, interruptions. It yields batches,
    sets the lr, evaluates, logs and saves; every forward, backward and step is in the method file:
        for epoch in run.epochs():
            for x, y in run.batches(epoch): views, forward, loss, zero_grad, backward, step, run.log({...})
        run.finish()
    """

    def __init__(self, args, method: str):
        self.args, self.method, self.t0, a = args, method, time.time(), args
        low = dict(epochs=1, batch_size=2, lr=1e-12, weight_decay=0, warmup_epochs=0, max_steps=0, eval_every=0,
                   mi_every=0, save_every=0, save_every_minutes=0, patch_size=0, finetune_epochs=0, workers=0)
        for flag in (f for f, lo in low.items() if getattr(a, f) < lo):
            raise UserError(f"--{flag.replace('_', '-')} {getattr(a, flag)} is out of range (at least {low[flag]:g}).")
        self.device = init_distributed(a.device)
        self.rank, self.world, self.main = rank(), world_size(), rank() == 0
        if a.batch_size % self.world:
            raise UserError(f"--batch-size {a.batch_size} (global) is not a multiple of the {self.world} processes.")
        np.random.seed(a.seed), torch.manual_seed(a.seed)  # the same initial weights on every rank
        torch.backends.cudnn.benchmark = torch.backends.cuda.matmul.allow_tf32 = not a.deterministic
        torch.backends.cudnn.allow_tf32 = not a.deterministic
        if a.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.ckpt = load_checkpoint(a.resume, method, a) if a.resume else None
        self.dir = self._choose_dir()
        self.data = load_data(a.dataset, a.data_dir, a.seed, self.device, a.workers, a.decode)
        if len(self.data) < a.batch_size:
            raise UserError(f"--batch-size {a.batch_size} exceeds the {len(self.data)} training images of {a.dataset}.")
        size, p = self.data.image_size, a.patch_size or default_patch(self.data.image_size)
        if a.backbone in VIT_SIZES and size % p:
            raise UserError(f"--patch-size {p} does not divide the {size}-px images of {a.dataset}.")
        mine = (len(self.data), self.data.num_classes, self.data.image_size, sorted(dataclasses.asdict(a).items()))
        if self.world > 1 and any_rank(broadcast(mine) != mine):
            raise UserError("the processes disagree on the data or the flags (the same files and command everywhere?).")
        self.steps_per_epoch = len(self.data) // a.batch_size
        self.total_steps = a.epochs * self.steps_per_epoch  # what the lr / EMA / temperature schedules span
        self.stop_step = min(self.total_steps, a.max_steps or self.total_steps)
        res = self.dir / "results.json"  # written last: newer than the checkpoint once the run is complete
        if self.ckpt and self.ckpt["step"] >= self.stop_step and broadcast(
                self.main and res.is_file() and res.stat().st_mtime >= Path(a.resume).stat().st_mtime):
            raise UserError(f"{a.resume}: the run is already complete; a larger --max-steps or --epochs extends it.", 0)
        prec = a.precision if a.precision != "auto" else "fp32" if self.device.type != "cuda" else (
            "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16")  # bf16 natively: sm 8.0+
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(prec)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=prec == "fp16")  # fp16 only; its step syncs
        self.channels_last = not a.backbone.startswith("vit")  # faster convolutions on CUDA and on CPU (oneDNN)
        self.gen = torch.Generator(device=self.device)  # augmentation: reseeded from (seed, step) at every step
        self.step_count = self.epoch = self.start_epoch = self.start_batch = self.batch_in_epoch = self._views = 0
        self.done = self.resumed_mid_epoch = False
        self.writer = self.views = self.last_ckpt = self._signal = self._grid = self._embedding = None
        self.results, self._pending, self.kept, self._printed = {}, [], [], 0.0  # kept: the files saved so far
        self._tick = self._saved = time.time()
        self.print(f"[{method}] {a.dataset}: {len(self.data)} training images of {self.data.image_size}px, "
                   f"{self.data.num_classes} classes; {a.backbone} on {self.device} ({prec})"
                   f"{f' x {self.world} processes' if self.world > 1 else ''}; {self.steps_per_epoch} steps/epoch, "
                   f"{self.stop_step} steps; run dir {self.dir}")

    def print(self, *a):  # rank 0's stdout; closed (`| head`, a closed terminal): what cannot be printed is dropped
        try:
            print(*a, flush=True) if self.main else None
        except OSError:  # BrokenPipeError, or EIO from a terminal that hung up: from now on stdout is /dev/null
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())

    def shard(self, t: Tensor) -> Tensor:
        """This rank's rows of a tensor drawn for the global batch (e.g. masks drawn with run.gen)."""
        b = len(t) // self.world
        return t[self.rank * b:(self.rank + 1) * b]

    # -- setup
    def _choose_dir(self) -> Path:
        a, t = self.args, time.time()
        if self.ckpt is not None:
            if a.run_dir and Path(a.run_dir).resolve() != Path(a.resume).parent.resolve():
                raise UserError(f"--run-dir {a.run_dir}: a resumed run stays in {Path(a.resume).parent}.")
            return Path(a.resume).parent
        stamp = f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(t))}.{int(t % 1 * 1e6):06d}-{os.getpid()}"
        d, err = Path(a.run_dir or f"runs/{a.dataset}__{a.exp_name or self.method}__{a.seed}__{stamp}"), None
        if self.main and a.run_dir and d.exists():
            err = f"--run-dir {d} exists; a run directory is reused only by --resume {d / 'last.pt'}."
        elif self.main:  # fail now, not after loading the data: can the parent hold a new directory?
            try:
                d.parent.mkdir(parents=True, exist_ok=True)
                err = None if os.access(d.parent, os.W_OK) else f"cannot create {d}: {d.parent} is not writable."
            except OSError as e:
                err = f"cannot create the run directory {d} ({e})."
        d, err = broadcast((d, err))  # rank 0's name and verdict
        if err:
            raise UserError(err)
        return d

    def normalize(self, x: Tensor) -> Tensor:
        """uint8 images -> normalized float (the un-augmented evaluation input)."""
        mean, std = (torch.tensor(s, device=x.device).view(1, 3, 1, 1) for s in (self.data.mean, self.data.std))
        y = (x.float() / 255 - mean) / std
        return y.contiguous(memory_format=torch.channels_last) if self.channels_last else y

    def augment(self, views: List[ViewSpec]) -> Augment:
        """The batched augmentation of these views. Also fixes the held-out pair of views on which MI and dimensionality
        are measured all run long, and a grid of images with their views for tensorboard (images/views)."""
        self.views, d = views, self.data
        x, xs = next(d.eval_batches("test", 256))[0], next(d.eval_batches("train", 8))[0]
        fixed = Augment((views * 2)[:2], d.mean, d.std, self.channels_last)  # the same on every rank; 1 view: 2 draws
        self.fixed_pair = fixed(x, torch.Generator(self.device).manual_seed(12345))
        grid = [self.normalize(xs)] + Augment(views, d.mean, d.std)(xs, torch.Generator(self.device).manual_seed(0))
        mean, std = (torch.tensor(s, device=xs.device).view(1, 3, 1, 1) for s in (d.mean, d.std))
        grid = [F.interpolate((v.float() * std + mean).clamp(0, 1), size=96 if d.large else d.image_size) for v in grid]
        self._grid = torchvision.utils.make_grid(torch.cat(grid).cpu(), nrow=len(xs))
        return Augment(views, d.mean, d.std, self.channels_last, (self.rank, self.world))

    def prepare(self, model: nn.Module) -> nn.Module:
        """To the device (channels_last for conv nets), SyncBatchNorm across processes with --sync-bn; with --compile,
        torch.compile of every network a method calls: the model's parts, the members of a part that is a Sequential,
        and each backbone (ViT.tokens runs through its forward: compiled too); in place."""
        model = model.to(self.device, memory_format=torch.channels_last if self.channels_last else None)
        if self.args.sync_bn and self.world > 1 and self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif self.args.sync_bn and self.world > 1:  # SyncBatchNorm runs on GPUs only
            self.print("--sync-bn is off: SyncBatchNorm needs GPUs (BatchNorm uses each process's share of the batch)")
        parts = [m for c in model.children() for m in [c, *(c if isinstance(c, nn.Sequential) else [])]]
        for m in {*parts, *(m for m in model.modules() if isinstance(m, (torchvision.models.ResNet, TinyResNet, ViT)))}:
            m.compile() if self.args.compile else None
        if self.args.compile:  # (dynamo: seconds to import) the compiled modules share one cache: 64 entries, not 8
            torch._dynamo.config.recompile_limit = 64
        return model

    def track(self, model: nn.Module, optimizers, backbones: dict, probe: OnlineProbe, branches=None):
        """Register what a checkpoint holds: model (every parameter and buffer: queues, centers, memories), optimizer(s)
        and the online probe; `backbones` {name: (backbone, project R -> Z)} are evaluated, the first as the main one
        (no tag suffix, online probe, backbone.pt); `branches` (online, target): the two networks (images ->
        embeddings) whose outputs on two views the objective compares, if not one network. Loads --resume, makes the
        run directory and writer (rank 0); catches signals."""
        self.model, self.probe, self.backbones, self.branches = model, probe, backbones, branches
        self.optimizers = list(optimizers) if isinstance(optimizers, (list, tuple)) else [optimizers]
        if self.ckpt is not None:
            self._load(self.ckpt)
        with self._saving("the run directory and its tensorboard events"):
            if self.main:
                self.dir.mkdir(parents=True, exist_ok=self.ckpt is not None)
                for stale in self.dir.glob("*.tmp"):  # left by a process killed while saving
                    stale.unlink(missing_ok=True)
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(self.dir), purge_step=self.step_count + 1 if self.ckpt else None)
                self.writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(
                    f"|{k}|{v}|" for k, v in vars(self.args).items()))
                self.writer.add_image("images/views", self._grid, 0) if not self.ckpt else None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

    @contextlib.contextmanager
    def _saving(self, *what: str):  # an OSError (a full disk...) writing `what`: one line, what is and is not saved
        try:
            yield
        except OSError as e:
            why = f"no space left on {self.dir}" if e.errno == errno.ENOSPC else f"cannot write in {self.dir} ({e})"
            raise UserError(f"{why}: {', '.join(w for w in what if w not in self.kept)} not saved; kept "
                            f"{', '.join(self.kept) or 'nothing'}.", 1) from None

    def _load(self, s: dict):
        a = self.args
        try:
            self.model.load_state_dict(s["model"])
            assert len(s["optimizers"]) == len(self.optimizers)
            for o, so in zip(self.optimizers, s["optimizers"]):
                now = [{k: v for k, v in g.items() if k != "params"} for g in o.param_groups]
                o.load_state_dict(so)
                for g, h in zip(o.param_groups, now):
                    g.update(h)  # lr, weight decay, momentum...: this command line's (so changes are honoured)
            self.probe.load_state_dict(s["probe"]), self.probe.opt.load_state_dict(s["probe_opt"])
            self.scaler.load_state_dict(s["scaler"]) if s.get("scaler") else None  # fp16's loss scale
        except (RuntimeError, ValueError, KeyError, AssertionError) as e:  # name the changed flags whose old and new
            old, now = s["model"], self.model.state_dict()  # values are dimensions of the tensors that do not fit
            odd = [k for k in {**old, **now} if getattr(old.get(k), "shape", 0) != getattr(now.get(k), "shape", 0)]
            dims = {str(n) for k in odd for d in (old, now) if k in d for n in d[k].shape}
            why = ", ".join(f"--{k.replace('_', '-')} {o} (now {n})" for k, (o, n) in s["changed"].items()
                            if {str(o), str(n)} <= dims) or "".join(f"{k} differs" for k in odd[:1])
            raise UserError(f"--resume {a.resume}: the checkpoint does not fit this command's model or optimizer "
                            f"({why or str(e).splitlines()[0][:100]}).") from None
        self.step_count, self.start_epoch, self.start_batch = s["step"], s["epoch"], s["batch_in_epoch"]
        if self.start_batch >= self.steps_per_epoch:
            self.start_epoch, self.start_batch = self.start_epoch + 1, 0
        torch.set_rng_state(s["rng"]["torch"])  # the augmentation and masks are reseeded every step; this is the rest
        if s["rng"]["cuda"] and len(s["rng"]["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(s["rng"]["cuda"])
        self.last_ckpt, self.kept = Path(a.resume), [f"last.pt (step {s['step']})"]
        changes = [f"--{k.replace('_', '-')} {o} -> {n}" for k, (o, n) in s["changed"].items()] + [
            f"processes {w} -> {self.world}" for w in [s.get("world_size", self.world)] if w != self.world]
        self.print(f"resumed from {a.resume} at step {self.step_count} (epoch {self.start_epoch + 1}, batch "
                   f"{self.start_batch}){'; honoured changes: ' + ', '.join(changes) if changes else ''}")

    def _last_good(self) -> str:  # for the line of a run that diverged (its directory keeps the curves up to there)
        return (f"Last good checkpoint: {self.last_ckpt}" if self.last_ckpt else
                f"Nothing saved yet (tensorboard curves so far in {self.dir})")

    def _on_signal(self, signum, _frame):
        if self._signal is not None:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self._signal = signum
        self.print(f"{signal.Signals(signum).name} received: saving a checkpoint after this step (again: quit now)")

    # -- the loop
    def epochs(self):
        end = self.args.epochs if self.step_count < self.stop_step else 0  # resumed at the end: no epoch left
        for epoch in range(self.start_epoch, end):
            self.epoch, self.resumed_mid_epoch = epoch, epoch == self.start_epoch and self.start_batch > 0
            yield epoch
            self.flush(force_print=True)
            last = epoch == self.args.epochs - 1 or self.done
            if self.args.eval_every and ((epoch + 1) % self.args.eval_every == 0 or last):
                self.evaluate()
            if self.args.save_every and ((epoch + 1) % self.args.save_every == 0 or last):
                self.save()
            if self.done:
                break

    def batches(self, epoch: int):
        """This rank's training batches of one epoch, from where a resumed run stopped: (uint8 images, or a padded batch
        for large images; labels, -1 = none); `run.batch_index` holds their dataset indices; `run.step_count` is 1-based
        (the step being taken; step_count - 1 were done). Between steps: metrics, time checkpoints, SIGINT / SIGTERM."""
        a, start, steady = self.args, self.start_batch if epoch == self.start_epoch else 0, None
        for i, (x, y, self.batch_index) in enumerate(self.data.ssl_batches(a.batch_size, epoch, a.seed, start), start):
            self.step_count, self.batch_in_epoch = self.step_count + 1, i + 1
            self.gen.manual_seed(a.seed * 1_000_003 + self.step_count)
            yield x, y
            self._views += a.batch_size * len(self.views)
            if i - start == 2:  # steady state from the epoch's 4th step on (compilation, autotuning done)
                steady = (self._sync(), self.step_count)
            if a.mi_every and self.step_count % a.mi_every == 0:
                self.flush()
                self.log_representation()
            if self.world == 1 or self.step_count % 50 == 0:  # several processes: a collective, read on the host
                due = self.main and a.save_every_minutes and time.time() - self._saved > 60 * a.save_every_minutes
                stop, save = any_rank(self._signal is not None), any_rank(bool(due))
                if stop or save:
                    self.save()
                if stop:
                    sig = signal.Signals(self._signal or signal.SIGTERM)
                    raise UserError(f"stopped by {sig.name} at step {self.step_count}; checkpoint {self.last_ckpt}; "
                                    f"continue with --resume {self.last_ckpt}", 128 + sig.value)
            if self.step_count >= self.stop_step:
                self.done = True
                break
        if steady and self.step_count > steady[1]:
            self.results["views_per_sec"] = ((self.step_count - steady[1]) * a.batch_size * len(self.views)
                                             / (self._sync() - steady[0]))

    def _sync(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def update_lr(self, *optimizers) -> float:
        """Set each param group's lr to base_lr x warmup-cosine factor (groups with fixed_lr=True keep base_lr)."""
        f = warmup_cosine(self.step_count - 1, self.total_steps, round(self.args.warmup_epochs * self.steps_per_epoch))
        for grp in (grp for o in optimizers or self.optimizers for grp in o.param_groups):
            grp["lr"] = grp["base_lr"] * (1.0 if grp.get("fixed_lr") else f)
        return (optimizers or self.optimizers)[0].param_groups[0]["lr"]

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def log(self, scalars: dict):
        """Log this step's scalars {tensorboard tag: tensor or number}, e.g. {"losses/total": loss}; written in batches
        of 50 steps, so logging costs no device sync."""
        self._pending.append((self.step_count, {k: v.detach().float().reshape(()).clone() if torch.is_tensor(v)
                                                else torch.tensor(float(v)) for k, v in scalars.items()}))
        if len(self._pending) >= 50:
            self.flush()

    def flush(self, force_print=False):
        """Write pending scalars, then stop if a loss is not finite (on every rank), print the progress line (~10 s)."""
        flat = [(step, k, v) for step, s in self._pending for k, v in s.items()]
        vals = torch.stack([v.to(self.device) for _, _, v in flat]).tolist() if flat else []
        self._pending, now, last = [], time.time(), {k: v for (_, k, _), v in zip(flat, vals)}
        if flat and self.main:
            vps, self._views, self._tick = self._views / max(now - self._tick, 1e-9), 0, now
            with self._saving("tensorboard's scalars"):
                for (step, k, _), v in zip(flat, vals):
                    self.writer.add_scalar(k, v, step)
                self.writer.add_scalar("charts/views_per_sec", vps, self.step_count)
        bad = next(((k, v, t) for (t, k, _), v in zip(flat, vals) if k[:7] == "losses/" and not math.isfinite(v)), None)
        if any_rank(bad is not None):
            k, v, step = bad or ("a loss of another rank", "not finite", "?")
            raise UserError(f"{k} is {v} at step {step}: training diverged. {self._last_good()}. Try a lower --lr or "
                            "--precision fp32.")
        if flat and self.main and (force_print or now - self._printed > 10):
            done = self.step_count - self.start_epoch * self.steps_per_epoch - self.start_batch
            eta, self._printed = (now - self.t0) / max(1, done) * (self.stop_step - self.step_count), now
            loss = last.get("losses/total", next((v for k, v in last.items() if k.startswith("losses/")), math.nan))
            self.print(f"epoch {self.epoch + 1}/{self.args.epochs} step {self.step_count}/{self.stop_step} loss "
                       f"{loss:.4f} lr {last.get('charts/learning_rate', math.nan):.4g} views/s {vps:,.0f} ETA "
                       f"{eta / 60:.1f} min")

    # -- evaluation
    def _eval_mode(self, sync: bool = True):  # sync: rank 0's BN statistics on every rank, as DDP does (a collective)
        modes = [m.training for m in self.model.modules()]
        self.model.eval()
        broadcast_(*self.model.buffers()) if sync else None
        return modes

    def _restore(self, modes):
        for m, t in zip(self.model.modules(), modes):
            m.training = t
        self._tick = time.time()

    def _metrics(self, backbone, project) -> dict:
        with torch.no_grad(), self.autocast():
            r1, r2 = backbone(self.fixed_pair[0]), backbone(self.fixed_pair[1])
            z1, z2 = project(r1), project(r2)
        return estimators.representation_metrics(r1.float(), z1.float(), z2.float())

    def log_representation(self):
        """On the fixed held-out pair of views (rank 0): mi/* between the embeddings the objective compares (the
        branches: online(view 1), target(view 2); else one network's Z of both views), dimensionality of each tracked
        network (dim/*, suffix _name) and, with branches, each network's Z of both views as mi_same/*."""
        if self.main:
            modes = self._eval_mode(sync=False)
            for pos, (name, (backbone, project)) in enumerate(self.backbones.items()):
                for k, v in self._metrics(backbone, project).items():
                    k = k.replace("mi/", "mi_same/") if self.branches else k
                    self.writer.add_scalar(k + ("" if pos == 0 else f"_{name}"), v, self.step_count)
            with torch.no_grad(), self.autocast():
                pair = [f(x).float() for f, x in zip(self.branches, self.fixed_pair)] if self.branches else []
            for k, v in estimators.mi_estimates(*pair).items() if pair else ():
                self.writer.add_scalar(k, v, self.step_count)
            self._restore(modes)

    def evaluate(self, final: bool = False):
        """kNN top-1 of each tracked backbone and the online probe's test top-1 (on the first, main backbone's
        features); at the end (final) also the linear probe, H(R) and I(R;Z), printed with their protocols."""
        modes, E, k = self._eval_mode(), estimators, self.data.num_classes
        for pos, (name, (backbone, project)) in enumerate(self.backbones.items()):
            with self.autocast():
                (trf, trl), (tef, tel) = [extract_features(backbone, self.data, s, self.normalize) for s in ("train",
                                                                                                             "test")]
            tag, r, main = "" if pos == 0 else f"_{name}", {}, pos == 0
            r["knn_top1"] = E.knn_top1(trf, trl, tef, tel, k)
            if main:
                r["online_linear_top1"] = 100.0 * (self.probe.fc(tef).argmax(1) == tel).float().mean().item()
            if not final:
                self.print(f"  eval epoch {self.epoch + 1}: kNN top-1{tag} {r['knn_top1']:.2f}" +
                           (f", online linear top-1 {r['online_linear_top1']:.2f}" if main else ""))
            else:
                m = self._metrics(backbone, project)
                r.update(linear_top1=E.linear_probe(backbone, trf, trl, tef, tel, k, seed=self.args.seed),
                         H_R=m["dim/erank_R"], I_RZ=m["dim/mi_RZ"])
                h, i, dims = r["H_R"], r["I_RZ"], min(len(self.fixed_pair[0]), trf.shape[1])
                self.print(f"[{name}] kNN top-1 {r['knn_top1']:.2f}   ({E.KNN_PROTOCOL})\n[{name}] linear top-1 "
                           f"{r['linear_top1']:.2f}   ({E.LINEAR_PROTOCOL})\n[{name}] H(R) = effective rank {h:.2f} "
                           f"of {dims} (a count, not nats); I(R;Z) = {i:.3f} nats (matrix Renyi-2, held-out batch); "
                           f"I(R;Z)/H(R) = {i / max(h, 1e-9):.4f} nats per effective dimension" + (f"\n[{name}] online "
                           f"linear top-1 {r['online_linear_top1']:.2f}   ({ONLINE_PROTOCOL})" if main else ""))
            self.results.update({key + tag: v for key, v in r.items()})
            if final and main:  # for tensorboard's projector (PCA / t-SNE of test features with labels), written last
                n = min(2000, len(tef))
                x = None if self.data.large else (self.data.splits["test"][0][:n].float() / 255).cpu()
                self._embedding = dict(mat=tef[:n].cpu(), metadata=tel[:n].tolist(), label_img=x)
            for key in ("knn_top1", "online_linear_top1", "linear_top1") if self.main else ():
                self.writer.add_scalar(f"eval/{key}{tag}", r[key], self.step_count) if key in r else None
        self._restore(modes)

    def save(self):
        """Checkpoint of a finite state (every rank checks, rank 0 writes atomically): model, optimizers, probe, step,
        position in the epoch, args, RNG states. A non-finite state stops the run and never replaces a checkpoint."""
        self.flush()
        bad = _first_nonfinite(self.model, self.probe)
        if any_rank(bad is not None):
            raise UserError(f"{bad or 'a parameter of another rank'} is not finite at step {self.step_count}: training "
                            f"diverged; not saved. {self._last_good()}. Try a lower --lr.")
        with self._saving(f"last.pt of step {self.step_count}"):
            save_checkpoint(self.dir / "last.pt", {
                "format": CKPT_FORMAT, "method": self.method, "model": self.model.state_dict(),
                "optimizers": [o.state_dict() for o in self.optimizers], "probe": self.probe.state_dict(),
                "probe_opt": self.probe.opt.state_dict(), "step": self.step_count, "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch, "world_size": self.world, "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
                "args": dataclasses.asdict(self.args), "scaler": self.scaler.state_dict()}) if self.main else None
        self.last_ckpt, self._saved = self.dir / "last.pt", time.time()
        self.kept = [f"last.pt (step {self.step_count})"]

    def finish(self):
        """Final evaluation of each backbone (and fine-tuning with --finetune-epochs), backbone.pt, results.json."""
        signal.signal(signal.SIGINT, signal.default_int_handler), signal.signal(signal.SIGTERM, signal.SIG_DFL)
        self.flush(force_print=True)
        a, epochs = self.args, min(self.args.epochs, -(-self.step_count // self.steps_per_epoch))  # begun epochs
        self.print(f"== {self.method} on {a.dataset}: {a.backbone}, {epochs} epochs, {self.step_count} steps, "
                   f"seed {a.seed} ==")
        name, (backbone, _) = next(iter(self.backbones.items()))  # the main result: the first tracked backbone
        with self._saving("backbone.pt", "results.json", "tensorboard's projector"):  # the projector: the largest, last
            self.evaluate(final=True)
            if self.main and _first_nonfinite(backbone) is None:
                save_checkpoint(self.dir / "backbone.pt", {k: v.cpu() for k, v in backbone.state_dict().items()})
                self.kept.append("backbone.pt")
            if a.finetune_epochs:
                ft = finetune(backbone, self.probe.fc.in_features, self.data, self.normalize, self.autocast,
                              torch.amp.GradScaler(self.device.type, enabled=self.scaler.is_enabled()),
                              a.finetune_epochs, a.batch_size, a.seed, pool := getattr(a, "finetune_pool", "cls"))
                self.results["finetune_top1"] = ft
                self.writer.add_scalar("eval/finetune_top1", ft, self.step_count) if self.main else None
                self.print(f"[{name}] fine-tune top-1 {ft:.2f} after {a.finetune_epochs} epochs ({FINETUNE_PROTOCOL}"
                           f"{'; the head reads the mean patch token' if pool == 'mean' else ''})")
            self.results.update(method=self.method, dataset=a.dataset, backbone=a.backbone, seed=a.seed, epochs=epochs,
                                steps=self.step_count, minutes=(time.time() - self.t0) / 60, processes=self.world,
                                views_per_image=len(self.views), batch_size=a.batch_size)
            if self.main:
                (self.dir / "results.json").write_text(json.dumps(self.results, indent=1))
                self.kept.append("results.json")
                self.writer.add_embedding(**self._embedding, global_step=self.step_count, tag="backbone_features")
                self.writer.close()
        self.print(f"backbone: {self.dir / 'backbone.pt'}   checkpoint: {self.last_ckpt}   tensorboard --logdir "
                   f"{self.dir.parent}")
        return self.results

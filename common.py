"""cleanssl plumbing shared by every method file: data, augmentation, backbones, optimizers, evaluation,
logging, checkpoints. Nothing here is part of any method's algorithm; read a method file top to bottom first.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import List, Literal, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import estimators

DatasetName = Literal["cifar10", "cifar100", "stl10", "tinyimagenet", "imagenet100", "imagefolder", "medmnist", "synthetic"]
BackboneName = Literal["resnet18", "resnet50", "tiny"]
OptimizerName = Literal["lars", "sgd", "adamw"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
MI_TEMPERATURE = 0.1  # critic temperature of the logged MI estimates (fixed, so curves compare across methods)
KNN_K, KNN_T = 200, 0.1
KNN_PROTOCOL = f"weighted kNN: cosine, k={KNN_K}, T={KNN_T}, backbone features of un-augmented images, train split as memory, test split as queries"
LINEAR_PROTOCOL = ("offline linear probe: frozen backbone (eval mode), precomputed features of un-augmented images, "
                   "standardized with train statistics; Adam lr 1e-2 cosine, 100 epochs, batch 256, no weight decay; test top-1")
ONLINE_PROTOCOL = "online linear probe: trained during SSL on detached backbone features of augmented view 1 (SGD lr 0.1, momentum 0.9); test top-1"


class UserError(Exception):
    """An error the user can fix (missing data, bad flag combination): printed as one line, exit code 2."""


def cli(main, args_cls):
    """Parse the command line with tyro and run main(args); user errors become one line and exit code 2."""
    import tyro
    args = tyro.cli(args_cls)
    try:
        main(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


# ----------------------------------------------------------------------------------------------- data
CIFAR_STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
               "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
SMALL_MAX = 96  # images up to this size are decoded once into a uint8 tensor on the device


def make_synthetic(n: int, seed: int, size: int = 32, num_classes: int = 10):
    """Ten texture classes (stripes, checkers, rings, squares, blobs, grids...) with random phase, position and a
    palette colour.
    Class identity lives in the spatial structure, which survives crops, flips, colour jitter and grayscale,
    so SSL on it beats a random network. Returns uint8 (n, 3, size, size) and labels (n,)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randperm(n, generator=g) % num_classes
    u = lambda *s: torch.rand(*s, generator=g)
    c = torch.arange(size, dtype=torch.float32) - size / 2
    yy, xx = c[None, :, None], c[None, None, :]
    f = (2 * math.pi / (3.5 + 0.25 * (y % 5) + 0.2 * u(n)))[:, None, None]  # period ~3.5-4.7 px, set by the class
    p1, p2 = (2 * math.pi * u(n))[:, None, None], (2 * math.pi * u(n))[:, None, None]
    cy, cx = ((u(n) - 0.5) * size)[:, None, None], ((u(n) - 0.5) * size)[:, None, None]
    theta = (2 * math.pi * u(n))[:, None, None]
    blobs = F.interpolate(torch.randn(n, 1, 4, 4, generator=g), size=size, mode="bicubic", align_corners=False)[:, 0]
    pats = [torch.sin(f * yy + p1), torch.sin(f * xx + p1), torch.sin(f * xx + p1) * torch.sin(f * yy + p2) * 2,
            torch.sin(f * (xx + yy) / 1.41 + p1) + torch.sin(f * (xx - yy) / 1.41 + p2),
            torch.sin(f * ((xx - cx) ** 2 + (yy - cy) ** 2).sqrt() + p1), blobs,
            torch.sin(f * torch.maximum((xx - cx).abs(), (yy - cy).abs()) + p1), (torch.maximum(torch.cos(f * xx + p1), torch.cos(f * yy + p2)) > 0.8) * 2.0 - 1,
            (xx * torch.cos(theta) + yy * torch.sin(theta)) / size * 2, (torch.cos(f * xx + p1) + torch.cos(f * yy + p2) > 1.0) * 2.0 - 1]
    v = torch.stack([p.expand(n, size, size) for p in pats])[y, torch.arange(n)]  # (n, S, S): class y's pattern
    v = torch.sigmoid(2 * v)[:, None]  # (n, 1, S, S) in (0, 1)
    # colours from a small palette shared by all classes: colour tells neither the class nor the instance, so
    # the views can only be matched through structure (unique random colours would be an instance shortcut)
    palette = torch.rand(6, 2, 3, generator=torch.Generator().manual_seed(7))
    pick = palette[torch.randint(0, 6, (n,), generator=g)]  # (n, 2, 3)
    c0, c1 = [(pick[:, i] + 0.05 * torch.randn(n, 3, generator=g)).view(n, 3, 1, 1) for i in (0, 1)]
    img = c0 * (1 - v) + c1 * v + 0.05 * torch.randn(n, 3, size, size, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8), y


def _missing(what: str, where, hint: str = "") -> UserError:
    return UserError(f"{what} not found in {where}{hint}. Offline? Use --dataset synthetic (no files) or "
                     f"--dataset imagefolder --data-dir PATH (PATH/train/<class>/*.jpg and PATH/val/ or PATH/test/).")


def _torchvision_split(name, root, split):
    ds = torchvision.datasets
    try:
        if name in ("cifar10", "cifar100"):
            d = (ds.CIFAR10 if name == "cifar10" else ds.CIFAR100)(root, train=split == "train", download=True)
            return torch.from_numpy(d.data).permute(0, 3, 1, 2).contiguous(), torch.as_tensor(d.targets)
        d = ds.STL10(root, split=split, download=True)
        return torch.from_numpy(d.data), torch.as_tensor(d.labels).long()
    except Exception as e:  # no network, partial download, unreadable files
        raise _missing(f"{name} ({split} split)", Path(root).resolve(), f" and it could not be downloaded ({type(e).__name__})") from None


def _folder_samples(root: Path):
    """(path, label) pairs of an ImageFolder layout; also reads Tiny-ImageNet's val/images + val_annotations.txt."""
    ann = root / "val_annotations.txt"
    if ann.exists():
        classes = sorted(p.name for p in (root.parent / "train").iterdir() if p.is_dir())
        rows = [line.split("\t")[:2] for line in ann.read_text().splitlines() if line.strip()]
        return [(str(root / "images" / f), classes.index(c)) for f, c in rows], classes
    d = torchvision.datasets.ImageFolder(str(root))
    return d.samples, d.classes


class _Decoded(torch.utils.data.Dataset):
    """Decodes images for the data loader: full image resized to `size` (small path), or per-view random
    resized crops for training / resize + center crop for evaluation (large-image path)."""

    def __init__(self, samples, size, views=None, train=False):
        self.samples, self.size, self.views, self.train = samples, size, views, train

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        from PIL import Image
        import torchvision.transforms.v2 as T
        path, label = self.samples[i]
        with open(path, "rb") as fh:
            img = Image.open(fh).convert("RGB")
        if self.train:  # large path, training: one random resized crop per view; the rest runs on the device
            crops = [T.RandomResizedCrop(v.size, v.scale, v.ratio, antialias=True)(img) for v in self.views]
            return [T.functional.pil_to_tensor(c) for c in crops], label, i
        if self.views == "small":
            img = img if img.size == (self.size, self.size) else img.resize((self.size, self.size), Image.BILINEAR)
        else:
            img = T.CenterCrop(self.size)(T.Resize(round(self.size * 8 / 7), antialias=True)(img))
        return T.functional.pil_to_tensor(img), label


def _loader(dataset, batch_size, shuffle=False, generator=None, drop_last=False):
    workers = min(8, os.cpu_count() or 1)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                                       num_workers=workers, drop_last=drop_last, persistent_workers=False,
                                       pin_memory=torch.cuda.is_available())


def _decode_all(samples, size):
    xs, ys = [], []
    for x, y in _loader(_Decoded(samples, size, "small"), 512):
        xs.append(x), ys.append(y)
    return torch.cat(xs), torch.cat(ys)


@dataclass
class Data:
    """A dataset ready for training. Small images: uint8 tensors (N, 3, H, W) on the device, index-sampled.
    Large images: file lists decoded by DataLoader workers (crops there, the rest of the augmentation on the device)."""
    name: str
    num_classes: int
    image_size: int
    mean: tuple
    std: tuple
    train: torch.Tensor | None = None  # SSL images (small path)
    train_labels: torch.Tensor | None = None  # -1 = unlabeled
    eval_train: torch.Tensor | None = None
    eval_train_labels: torch.Tensor | None = None
    test: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    files: dict | None = None  # large path: {"train": samples, "test": samples}

    @property
    def large(self):
        return self.files is not None

    def __len__(self):
        return len(self.files["train"]) if self.large else len(self.train)

    def to(self, device):
        for f in ("train", "train_labels", "eval_train", "eval_train_labels", "test", "test_labels"):
            if getattr(self, f) is not None:
                setattr(self, f, getattr(self, f).to(device))
        return self

    def ssl_batches(self, batch_size: int, epoch: int, seed: int, views=None):
        """One epoch of (uint8 images on the device, labels, dataset indices), drop_last; the order depends on
        (seed, epoch) only."""
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        if self.large:
            for crops, y, idx in _loader(_Decoded(self.files["train"], self.image_size, views, True), batch_size, True, g, True):
                dev = self.device
                yield [c.to(dev, non_blocking=True) for c in crops], y.to(dev, non_blocking=True), idx.to(dev)
            return
        perm = torch.randperm(len(self.train), generator=g).to(self.train.device)
        for i in range(len(self.train) // batch_size):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            yield self.train[idx], self.train_labels[idx], idx

    def eval_batches(self, split: Literal["train", "test"], batch_size: int = 512):
        """Un-augmented uint8 images of the evaluation train or test split, in order."""
        if self.large:
            for x, y in _loader(_Decoded(self.files[split], self.image_size, "eval"), batch_size):
                yield x.to(self.device, non_blocking=True), y.to(self.device)
            return
        x, y = (self.eval_train, self.eval_train_labels) if split == "train" else (self.test, self.test_labels)
        for i in range(0, len(x), batch_size):
            yield x[i:i + batch_size], y[i:i + batch_size]


def load_data(name: str, data_dir: str, seed: int, device) -> Data:
    """Load a dataset (see README for layouts). Missing data: UserError naming what, where and what to do."""
    root = Path(data_dir).expanduser()
    if name == "synthetic":
        x, y = make_synthetic(5120, seed)
        d = Data(name, 10, 32, *_stats(x[:4096]), x[:4096], y[:4096], x[:4096], y[:4096], x[4096:], y[4096:])
    elif name in ("cifar10", "cifar100"):
        xtr, ytr = _torchvision_split(name, root, "train")
        xte, yte = _torchvision_split(name, root, "test")
        d = Data(name, 10 if name == "cifar10" else 100, 32, *CIFAR_STATS[name], xtr, ytr, xtr, ytr, xte, yte)
    elif name == "stl10":
        xu, yu = _torchvision_split(name, root, "train+unlabeled")
        xtr, ytr = _torchvision_split(name, root, "train")
        xte, yte = _torchvision_split(name, root, "test")
        d = Data(name, 10, 96, *IMAGENET_STATS, xu, yu, xtr, ytr, xte, yte)
    elif name == "medmnist":
        if not root.is_file():
            raise UserError(f"medmnist needs --data-dir pointing at a MedMNIST .npz file (e.g. bloodmnist.npz); {root} is not a file.")
        z = np.load(root)
        missing = [k for k in ("train_images", "train_labels", "test_images", "test_labels") if k not in z]
        if missing:
            raise UserError(f"{root} lacks the MedMNIST arrays {missing}.")
        def arr(k):
            a = torch.from_numpy(z[k])
            return (a[:, None].expand(-1, 3, -1, -1) if a.ndim == 3 else a.permute(0, 3, 1, 2)).contiguous()
        xtr, xte = arr("train_images"), arr("test_images")
        ytr, yte = torch.from_numpy(z["train_labels"]).reshape(len(xtr), -1)[:, 0].long(), torch.from_numpy(z["test_labels"]).reshape(len(xte), -1)[:, 0].long()
        d = Data(name, int(max(ytr.max(), yte.max())) + 1, xtr.shape[-1], *_stats(xtr), xtr, ytr, xtr, ytr, xte, yte)
    else:  # imagefolder, tinyimagenet, imagenet100: ImageFolder layouts
        split = next((s for s in ("val", "test") if (root / s).is_dir()), None)
        if not (root / "train").is_dir() or split is None:
            raise _missing(f"--dataset {name}: folders train/ and val/ (or test/)", root.resolve())
        train, classes = _folder_samples(root / "train")
        test, _ = _folder_samples(root / split)
        if not train or not test:
            raise _missing(f"images for --dataset {name}", root.resolve())
        from PIL import Image
        w, h = Image.open(train[0][0]).size
        if max(w, h) <= SMALL_MAX and name != "imagenet100":
            xtr, ytr = _decode_all(train, max(w, h))
            xte, yte = _decode_all(test, max(w, h))
            d = Data(name, len(classes), max(w, h), *_stats(xtr), xtr, ytr, xtr, ytr, xte, yte)
        else:
            d = Data(name, len(classes), 224, *IMAGENET_STATS, files={"train": train, "test": test})
    d.device = torch.device(device)
    return d.to(device)


def _stats(x: torch.Tensor):
    x = x[:10000].float() / 255
    return tuple(x.mean((0, 2, 3)).tolist()), tuple(x.std((0, 2, 3)).tolist())


# ------------------------------------------------------------------------------------------ augmentation
# Batched, on the training device, per-sample random parameters from a torch.Generator (reproducible); each op
# matches torchvision's function on one image (tests/test_augment.py).
Tensor = torch.Tensor


@dataclass
class ViewSpec:
    """Augmentation recipe of one view."""
    size: int
    scale: Tuple[float, float] = (0.08, 1.0)
    ratio: Tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter: Tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)  # bright., contrast, sat., hue
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: Tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0


def _rand(shape, g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> Tensor:
    """U[lo, hi) float32 samples from g, on g's device."""
    return torch.rand(shape, generator=g, device=g.device).mul_(hi - lo).add_(lo)


def _apply(x: Tensor, mask: Tensor, fn, *params: Tensor) -> Tensor:
    """In place x[mask] = fn(x[mask], *params[mask]): only the selected samples are computed."""
    idx = mask.nonzero().squeeze(1)
    if idx.numel():
        x.index_copy_(0, idx, fn(x.index_select(0, idx), *(q.index_select(0, idx) for q in params)))
    return x


# ---------------------------------------------------------------- geometry
def rrc_params(B: int, H: int, W: int, scale, ratio, g: torch.Generator, attempts: int = 10):
    """RandomResizedCrop.get_params for B samples at once -> (top, left, h, w), long (B,) each.

    All tries are drawn at once; a sample keeps its first valid try, else torchvision's fallback
    (central crop, aspect ratio clamped to `ratio`)."""
    area = _rand((B, attempts), g, scale[0], scale[1]) * (H * W)
    r = _rand((B, attempts), g, math.log(ratio[0]), math.log(ratio[1])).exp_()
    w, h = (area * r).sqrt_().round_(), (area / r).sqrt_().round_()  # half to even, as Python
    ok = (w > 0) & (w <= W) & (h > 0) & (h <= H)
    first = ok.to(torch.uint8).argmax(1, keepdim=True)
    found = ok.any(1)
    fw = int(round(H * max(ratio))) if W / H > max(ratio) else W
    fh = int(round(W / min(ratio))) if W / H < min(ratio) else H
    h = torch.where(found, h.gather(1, first).squeeze(1), float(fh)).long()
    w = torch.where(found, w.gather(1, first).squeeze(1), float(fw)).long()
    u = _rand((2, B), g)
    top = torch.where(found, torch.minimum((u[0] * (H - h + 1)).long(), H - h), (H - h) // 2)
    left = torch.where(found, torch.minimum((u[1] * (W - w + 1)).long(), W - w), (W - w) // 2)
    return top, left, h, w


def _src_index(start: Tensor, length: Tensor, size: int):
    """Bilinear (align_corners=False) source indices and weights of `size` outputs per crop."""
    scale = (length.float() / size)[:, None]  # float32, as torch.nn.functional.interpolate
    src = ((torch.arange(size, device=start.device) + 0.5) * scale - 0.5).clamp_(min=0)
    i0 = src.floor().long()
    i1 = torch.minimum(i0 + 1, length[:, None] - 1)  # clamp at the crop border, not the image's
    return start[:, None] + i0, start[:, None] + i1, src - i0


def resized_crop(x: Tensor, top: Tensor, left: Tensor, h: Tensor, w: Tensor, size: int) -> Tensor:
    """Crop box i of image i, resize it bilinearly to size x size; float32 output.

    Equals torchvision ``resized_crop(img, top, left, h, w, [size, size], antialias=False)``:
    downscaling is done WITHOUT antialiasing. Separable: whole-row copies + lerp, then column
    gathers + lerp. uint8 input is interpolated on its 0..255 scale."""
    B, C, H, W = x.shape
    S = size
    (y0, y1, ly), (x0, x1, lx) = _src_index(top, h, S), _src_index(left, w, S)
    planes, flat = torch.arange(B * C, device=x.device).view(B, C, 1) * H, x.reshape(B * C * H, W)
    rows = lambda y: flat.index_select(0, (planes + y[:, None]).view(-1)).view(B, C, S, W)
    ly, lx = ly[:, None, :, None], lx[:, None, None, :]
    t = (rows(y0) * (1 - ly)).addcmul_(rows(y1), ly)
    cols = lambda xi: t.gather(3, xi[:, None, None, :].expand(B, C, S, S))
    return cols(x0).mul_(1 - lx).addcmul_(cols(x1), lx)


def hflip(x: Tensor, mask: Tensor, inplace: bool = False) -> Tensor:
    """Flip horizontally the samples where mask is True."""
    return _apply(x if inplace else x.clone(), mask, lambda z: z.flip(-1))


# ---------------------------------------------------------------- photometric
def _gray(x: Tensor) -> Tensor:
    r, g, b = x.unbind(1)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(1)


def _blend(x: Tensor, other: Tensor, f: Tensor) -> Tensor:
    f = f.view(-1, 1, 1, 1)
    return (x * f).add_(other * (1 - f)).clamp_(0, 1)


def rgb_to_grayscale(x: Tensor) -> Tensor:
    """Luma 0.2989 R + 0.587 G + 0.114 B, repeated to 3 channels."""
    return _gray(x).expand_as(x).contiguous()


def adjust_brightness(x: Tensor, f: Tensor) -> Tensor:
    return (x * f.view(-1, 1, 1, 1)).clamp_(0, 1)


def adjust_contrast(x: Tensor, f: Tensor) -> Tensor:
    """Blend with the mean of each image's grayscale version."""
    return _blend(x, _gray(x).mean((1, 2, 3), keepdim=True), f)


def adjust_saturation(x: Tensor, f: Tensor) -> Tensor:
    return _blend(x, _gray(x), f)


_HUE_RAMP = ((3.0, 2.0, 4.0), (1.0, 2.0, 2.0), (1.0, -1.0, -1.0))  # centre, offset, sign of R, G, B


def adjust_hue(x: Tensor, hue: Tensor) -> Tensor:
    """Shift the HSV hue by `hue` (in [-0.5, 0.5], mod 1), as torchvision's RGB -> HSV -> RGB.

    Branch-free form of torchvision's _rgb_to_hsv/_hsv_to_rgb, algebraically identical (agrees to
    ~1e-6; torch.where/remainder are slow on CPU). Max and chroma = max - min are kept; with
    n = (x - min) / chroma, hue h6 (in sextants) = n_g - n_b | 2 + n_b - n_r | 4 + n_r - n_g if max
    is R | G | B; then x = min + chroma * clamp(ramp(h6 mod 6), 0, 1), ramps R: |h6-3|-1,
    G: 2-|h6-2|, B: 2-|h6-4|."""
    v, m = x.amax(1, keepdim=True), x.amin(1, keepdim=True)
    cr = v - m
    n = (x - m).div_(cr.clamp(min=1e-12))  # gray pixels: 0 / 1e-12 = 0 (any hue is fine there)
    nr, ng, nb = n.unbind(1)
    wr, fg = n[:, :2].floor().unbind(1)  # 1 on the max channel(s); R wins ties, as torchvision
    wg = fg * (1 - wr)
    wb = 1 - wr - wg
    h6 = wr * (ng - nb) + wg * (nb - nr + 2) + wb * (nr - ng + 4) + 6 * hue.view(-1, 1, 1)
    h6 = h6.sub_(h6.div(6).floor_().mul_(6)).unsqueeze(1)  # mod 6
    ctr, off, sgn = torch.tensor(_HUE_RAMP, device=x.device).view(3, 1, 3, 1, 1)
    return (h6 - ctr).abs_().sub_(off).mul_(sgn).clamp_(0, 1).mul_(cr).add_(m)


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Per-sample sigma, torchvision's kernel exp(-x^2 / 2 sigma^2) normalized, reflect padding;
    separable, as a grouped conv over B*C groups."""
    B, C, H, W = x.shape
    k, p = kernel_size, kernel_size // 2
    ker = (torch.linspace(-p, p, k, device=x.device) / sigma[:, None]).pow_(2).mul_(-0.5).exp_()
    ker = (ker / ker.sum(1, keepdim=True)).repeat_interleave(C, 0)  # (B*C, k)
    y = F.pad(x.reshape(1, B * C, H, W), (p, p, p, p), mode="reflect")
    y = F.conv2d(y, ker.view(B * C, 1, k, 1), groups=B * C)
    return F.conv2d(y, ker.view(B * C, 1, 1, k), groups=B * C).view(B, C, H, W)


def solarize(x: Tensor, mask: Tensor, threshold: float = 0.5, inplace: bool = False) -> Tensor:
    """where(x >= threshold, 1 - x, x) on the samples where mask is True. For threshold 0.5 that
    is exactly min(x, 1 - x), which is faster than torch.where on CPU."""
    fn = lambda z: torch.minimum(z, 1 - z) if threshold == 0.5 else torch.where(z >= threshold, 1 - z, z)
    return _apply(x if inplace else x.clone(), mask, fn)


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def color_jitter(x: Tensor, b: float, c: float, s: float, h: float, p: float, g: torch.Generator,
                 return_params: bool = False, inplace: bool = False):
    """RandomApply([ColorJitter(b, c, s, h)], p) with per-sample factors and op order.

    Pass k applies op order[:, k] (0 brightness, 1 contrast, 2 saturation, 3 hue) to the subset
    of jittered samples that has it there: 4 ops per sample. Zero strengths are skipped.
    return_params=True also returns (applied (B,) bool, order (B, 4), factors (B, 4))."""
    B = x.shape[0]
    applied = _rand(B, g) < p
    order = _rand((B, 4), g).argsort(1)
    fac = torch.stack([_rand(B, g, max(0.0, 1 - b), 1 + b), _rand(B, g, max(0.0, 1 - c), 1 + c),
                       _rand(B, g, max(0.0, 1 - s), 1 + s), _rand(B, g, -h, h)], 1)
    idx = applied.nonzero().squeeze(1)
    if idx.numel() and any((b, c, s, h)):
        xs, o, fs = (t.index_select(0, idx) for t in (x, order, fac))
        for k in range(4):
            for j, strength in enumerate((b, c, s, h)):
                if strength:
                    _apply(xs, o[:, k] == j, _JITTER_OPS[j], fs[:, j])
        x = x.index_copy_(0, idx, xs) if inplace else x.index_copy(0, idx, xs)
    return (x, (applied, order, fac)) if return_params else x


# ---------------------------------------------------------------- pipeline
class Augment:
    """uint8 batch (B, 3, H, W) -> one normalized float32 view per ViewSpec.

    Per view, solo-learn's order: random resized crop, color jitter, grayscale, Gaussian blur
    (kernel: odd size nearest 10% of the view size, >= 3), solarize, horizontal flip, normalize.
    x may also be a list of uint8 batches already cropped to each spec.size (e.g. by a
    DataLoader for large images): the crop step is then skipped."""

    def __init__(self, views: List[ViewSpec], mean: Sequence[float], std: Sequence[float]):
        self.views = list(views)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.inv_std = 1.0 / torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, x: Union[Tensor, List[Tensor]], g: torch.Generator) -> List[Tensor]:
        pre = isinstance(x, (list, tuple))
        return [self.view(x[i] if pre else x, v, g, crop=not pre) for i, v in enumerate(self.views)]

    def view(self, x: Tensor, v: ViewSpec, g: torch.Generator, crop: bool = True) -> Tensor:
        B, _, H, W = x.shape
        if crop:
            y = resized_crop(x, *rrc_params(B, H, W, v.scale, v.ratio, g), v.size)
        else:
            y = x.to(torch.float32, copy=True)
        y = y.mul_(1.0 / 255) if x.dtype == torch.uint8 else y
        if v.jitter_p > 0:
            y = color_jitter(y, *v.jitter, v.jitter_p, g, inplace=True)
        if v.gray_p > 0:
            y = _apply(y, _rand(B, g) < v.gray_p, rgb_to_grayscale)
        if v.blur_p > 0:
            k = max(3, int(0.1 * v.size) // 2 * 2 + 1)
            sigma = _rand(B, g, *v.blur_sigma)
            y = _apply(y, _rand(B, g) < v.blur_p, lambda z, sg: gaussian_blur(z, sg, k), sigma)
        if v.solarize_p > 0:
            y = solarize(y, _rand(B, g) < v.solarize_p, inplace=True)
        if v.flip_p > 0:
            y = hflip(y, _rand(B, g) < v.flip_p, inplace=True)
        return y.sub_(self.mean.to(y.device)).mul_(self.inv_std.to(y.device))


# ---------------------------------------------------------------- solo-learn CIFAR presets
def _pair(p) -> Tuple[float, float]:  # blur_p: one float for both views, or one per view
    return tuple(p) if isinstance(p, (tuple, list)) else (p, p)


def symmetric_views(size: int, blur_p=0.5) -> List[ViewSpec]:
    """SimCLR-style: strong jitter (0.8, 0.8, 0.8, 0.2), no solarize."""
    return [ViewSpec(size, jitter=(0.8, 0.8, 0.8, 0.2), blur_p=bp) for bp in _pair(blur_p)]


def symmetric_weak_views(size: int, blur_p=0.5) -> List[ViewSpec]:
    return [ViewSpec(size, jitter=(0.4, 0.4, 0.4, 0.1), blur_p=bp) for bp in _pair(blur_p)]


def asymmetric_views(size: int, blur_p=0.0) -> List[ViewSpec]:
    """BYOL-style: solarize on view 2 only; no blur on CIFAR (ImageNet recipe: blur_p=(1.0, 0.1))."""
    return [ViewSpec(size, blur_p=bp, solarize_p=sp) for bp, sp in zip(_pair(blur_p), (0.0, 0.2))]


def vicreg_views(size: int, blur_p=0.0) -> List[ViewSpec]:
    return [ViewSpec(size, scale=(0.2, 1.0), blur_p=bp, solarize_p=0.1) for bp in _pair(blur_p)]


def multicrop_views(base: List[ViewSpec], n_local: int, local_size: int,
                    local_scale=(0.05, 0.4), global_scale=(0.4, 1.0)) -> List[ViewSpec]:
    """The 2 global views of `base` with scale=global_scale, plus n_local small copies of base[0]."""
    glob = [replace(v, scale=tuple(global_scale)) for v in base[:2]]
    return glob + [replace(base[0], size=local_size, scale=tuple(local_scale)) for _ in range(n_local)]


# ------------------------------------------------------------------------------------------- backbones
class TinyResNet(nn.Module):
    """A narrow ResNet (widths 16-32-64-128, one BasicBlock per stage, CIFAR stem) for CPU runs and tests."""

    def __init__(self, widths=(16, 32, 64, 128)):
        super().__init__()
        from torchvision.models.resnet import BasicBlock
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            down = None if stride == 1 and cin == w else nn.Sequential(nn.Conv2d(cin, w, 1, stride, bias=False), nn.BatchNorm2d(w))
            layers.append(BasicBlock(cin, w, stride, down))
            cin = w
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return torch.flatten(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1)


def build_backbone(name: str, image_size: int):
    """Backbone trunk without classifier, and its feature dimension. ResNets are torchvision's with `fc` replaced
    by Identity; for images <= 64 px the CIFAR stem (3x3 conv, stride 1, padding 1, no max-pool). The saved
    `backbone.pt` loads into the module this function returns with strict=True."""
    if name == "tiny":
        return TinyResNet(), 128
    net = getattr(torchvision.models, name)(weights=None)
    if image_size <= 64:
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


def mlp(in_dim: int, hidden: int, out: int, layers: int = 2, last_bn: bool = False, last_bn_affine: bool = True):
    """Linear-BN-ReLU blocks then a final Linear (optionally followed by BN), the usual SSL projector/predictor."""
    mods, d = [], in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(d, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        d = hidden
    mods.append(nn.Linear(d, out, bias=not last_bn))
    if last_bn:
        mods.append(nn.BatchNorm1d(out, affine=last_bn_affine))
    return nn.Sequential(*mods)


# ------------------------------------------------------------------------------------ optimization
class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017) as in solo-learn: SGD with momentum where each weight's step is scaled by the trust
    ratio eta*||w|| / (||g|| + wd*||w||), clipped to at most 1x the global lr (`clip`). Parameter groups with
    `lars_exclude=True` (biases, norm layers) get neither weight decay nor the trust ratio."""

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, eta=0.02, clip=True, eps=1e-8):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, clip=clip, eps=eps, lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if not group["lars_exclude"]:
                    wd = group["weight_decay"]
                    w_norm, g_norm = p.norm(), g.norm()
                    trust = group["eta"] * w_norm / (g_norm + wd * w_norm + group["eps"])
                    if group["clip"]:
                        trust = torch.clamp(trust / group["lr"], max=1.0)
                    trust = torch.where((w_norm > 0) & (g_norm > 0), trust, torch.ones_like(trust))
                    g = (g + wd * p) * trust
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = torch.clone(g).detach()
                else:
                    buf.mul_(group["momentum"]).add_(g)
                p.add_(buf, alpha=-group["lr"])


def param_groups(module: nn.Module, weight_decay: float, **extra):
    """Two groups: weights (decayed) and biases/norm parameters (ndim <= 1: no decay, excluded from LARS)."""
    params = [p for p in module.parameters() if p.requires_grad]
    return [dict(params=[p for p in params if p.ndim > 1], weight_decay=weight_decay, lars_exclude=False, **extra),
            dict(params=[p for p in params if p.ndim <= 1], weight_decay=0.0, lars_exclude=True, **extra)]


def make_optimizer(name: str, groups, lr: float, momentum: float = 0.9, betas=(0.9, 0.999)):
    """LARS / SGD / AdamW over param groups (see `param_groups`); `lr` is the already batch-scaled rate."""
    for grp in groups:
        grp["base_lr"] = grp.get("base_lr", lr)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum)
    if name == "sgd":
        return torch.optim.SGD([{k: v for k, v in grp.items() if k != "lars_exclude"} for grp in groups], lr=lr, momentum=momentum)
    return torch.optim.AdamW([{k: v for k, v in grp.items() if k != "lars_exclude"} for grp in groups], lr=lr, betas=betas)


def scaled_lr(base_lr: float, batch_size: int) -> float:
    """solo-learn's linear scaling rule: lr = base_lr * batch_size / 256."""
    return base_lr * batch_size / 256


def warmup_cosine(step: int, total: int, warmup: int, start: float = 3e-5 / 0.4, end: float = 0.0) -> float:
    """Multiplier of the base lr at `step`: linear warmup from `start` to 1 over `warmup` steps, then cosine to `end`."""
    if step < warmup:
        return start + (1 - start) * step / max(1, warmup)
    t = (step - warmup) / max(1, total - warmup)
    return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def cosine_schedule(step: int, total: int, base: float, final: float) -> float:
    """solo-learn's EMA/temperature schedule: final - (final - base) * (cos(pi * step / total) + 1) / 2."""
    return final - (final - base) * (math.cos(math.pi * min(step, total) / max(1, total)) + 1) / 2


# ------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def extract_features(backbone: nn.Module, data: Data, split: str, aug_normalize, batch_size=512):
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    for x, y in data.eval_batches(split, batch_size):
        feats.append(backbone(aug_normalize(x)).float())
        labels.append(y)
    backbone.train(was_training)
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def knn_top1(train_f, train_y, test_f, test_y, num_classes, k=KNN_K, T=KNN_T, chunk=1024) -> float:
    """Weighted kNN (Wu et al. 2018): cosine similarity, top-k neighbours vote with weight exp(sim / T)."""
    train_f, test_f = F.normalize(train_f, dim=1), F.normalize(test_f, dim=1)
    k, correct = min(k, len(train_f)), 0
    for i in range(0, len(test_f), chunk):
        sim, idx = (test_f[i:i + chunk] @ train_f.T).topk(k, dim=1)
        votes = torch.zeros(len(sim), num_classes, device=sim.device).scatter_add_(1, train_y[idx], (sim / T).exp())
        correct += (votes.argmax(1) == test_y[i:i + chunk]).sum().item()
    return 100.0 * correct / len(test_f)


def linear_probe(backbone: nn.Module, train_f, train_y, test_f, test_y, num_classes, epochs=100, batch_size=256, seed=0) -> float:
    """Offline linear probe on frozen precomputed features (see LINEAR_PROTOCOL). Checks that it trained only its
    two tensors and that the backbone (weights and BN statistics) is unchanged afterwards."""
    before = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
    mu, sd = train_f.mean(0), train_f.std(0) + 1e-6
    train_f, test_f = (train_f - mu) / sd, (test_f - mu) / sd
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # a seeded classifier init, leaving the global RNG untouched
        torch.manual_seed(seed)
        clf = nn.Linear(train_f.shape[1], num_classes).to(train_f.device)
    params = list(clf.parameters())
    opt = torch.optim.Adam(params, lr=1e-2)
    steps = epochs * math.ceil(len(train_f) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(epochs):
        perm = torch.randperm(len(train_f), generator=g).to(train_f.device)
        for i in range(0, len(train_f), batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(clf(train_f[idx]), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    assert len(params) == 2 and [tuple(p.shape) for p in params] == [(num_classes, train_f.shape[1]), (num_classes,)]
    assert all(p.grad is None for p in backbone.parameters()), "linear probe: backbone received gradients"
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "linear probe: backbone weights or BN statistics changed"
    with torch.no_grad():
        return 100.0 * (clf(test_f).argmax(1) == test_y).float().mean().item()


class OnlineProbe(nn.Module):
    """Linear classifier trained alongside SSL on detached features (its own optimizer; unlabeled samples skipped)."""

    def __init__(self, feat_dim, num_classes):
        super().__init__()
        self.fc = nn.Linear(feat_dim, num_classes)
        self.opt = torch.optim.SGD(self.fc.parameters(), lr=0.1, momentum=0.9)

    def step(self, feats, y):
        keep = y >= 0
        logits = self.fc(feats.detach().float()[keep])
        loss = F.cross_entropy(logits, y[keep])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach(), (logits.argmax(1) == y[keep]).float().mean().detach() * 100

    def state(self):
        return {"fc": self.fc.state_dict(), "opt": self.opt.state_dict()}

    def load(self, s):
        self.fc.load_state_dict(s["fc"]), self.opt.load_state_dict(s["opt"])


# ------------------------------------------------------------------------------------------------ runs
def seed_everything(seed: int, deterministic: bool):
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but no CUDA device is available; use --device cpu.")
    return torch.device(name)


def rng_states(gen: torch.Generator) -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [], "augment": gen.get_state()}


def set_rng_states(s: dict, gen: torch.Generator):
    random.setstate(s["python"]), np.random.set_state(s["numpy"]), torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    gen.set_state(s["augment"])


def save_checkpoint(path: Path, state: dict):
    """torch.save to a temporary file, then an atomic rename: a crash never leaves half a checkpoint."""
    tmp = Path(str(path) + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


class Run:
    """Everything around a method's training loop: seed, device, data, run directory and tensorboard, learning-rate
    schedule, mixed precision, online probe, periodic kNN, representation/MI metrics, checkpoints and resume.

    The method file keeps the algorithm; its loop reads:
        for epoch in run.epochs():
            for x, y in run.batches(epoch): ...views, forward, loss, run.step(loss, opt), run.log(...)
        run.finish()
    """

    def __init__(self, args, method: str):
        self.args, self.method, self.t0 = args, method, time.time()
        if args.epochs < 1 or args.batch_size < 2:
            raise UserError("--epochs must be >= 1 and --batch-size >= 2.")
        self.device = pick_device(args.device)
        seed_everything(args.seed, args.deterministic)
        self.data = load_data(args.dataset, args.data_dir, args.seed, self.device)
        if len(self.data) < args.batch_size:
            raise UserError(f"--batch-size {args.batch_size} is larger than the {len(self.data)} training images of {args.dataset}.")
        self.steps_per_epoch = len(self.data) // args.batch_size
        self.total_steps = args.epochs * self.steps_per_epoch  # what the lr / EMA / temperature schedules span
        self.stop_step = min(self.total_steps, args.max_steps or self.total_steps)
        prec = args.precision if args.precision != "auto" else ("bf16" if self.device.type == "cuda" else "fp32")
        self.amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[prec]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=prec == "fp16")
        self.gen = torch.Generator(device=self.device).manual_seed(args.seed)
        self.channels_last = True  # faster convolutions on CUDA and on CPU (oneDNN)
        self.step_count, self.epoch, self.start_epoch, self.done = 0, 0, 0, False
        self._pending, self._views_seen, self._tick, self._last_print = [], 0, time.time(), 0.0
        self.views, self.models, self.last_ckpt, self.results = None, None, None, {}
        if args.resume:
            ckpt = Path(args.resume)
            if not ckpt.is_file():
                raise UserError(f"--resume {ckpt}: no such checkpoint file.")
            self.dir = ckpt.parent
        else:
            self.dir = Path("runs") / f"{args.dataset}__{args.exp_name or method}__{args.seed}__{int(time.time())}"
        self.dir.mkdir(parents=True, exist_ok=True)
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(self.dir))
        table = "\n".join(f"|{k}|{v}|" for k, v in vars(args).items())
        self.writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}")
        print(f"[{method}] {args.dataset}: {len(self.data)} training images of {self.data.image_size}px, "
              f"{self.data.num_classes} classes; {args.backbone} on {self.device} ({prec}); "
              f"{self.steps_per_epoch} steps/epoch, {self.stop_step} steps; run dir {self.dir}", flush=True)

    # -- setup
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images -> normalized float (the un-augmented evaluation input)."""
        mean = torch.tensor(self.data.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.data.std, device=x.device).view(1, 3, 1, 1)
        return self.cl((x.float() / 255 - mean) / std)

    def cl(self, x):
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    def augment(self, views):
        """Build the batched augmentation for these view specs; log a grid of images and their views; fix the
        held-out pair of views on which MI and dimensionality metrics are measured all run long."""
        aug = Augment(views, self.data.mean, self.data.std)
        self.views = views
        x = next(self.data.eval_batches("test", 256))[0]
        g = torch.Generator(device=self.device).manual_seed(12345)
        v1, v2 = aug(x, g)[:2]
        self.fixed_pair = (self.cl(v1), self.cl(v2))
        xs = next(self.data.eval_batches("train", 8))[0]
        grid = [self.normalize(xs)] + aug(xs, torch.Generator(device=self.device).manual_seed(0))
        size = self.data.image_size if not self.data.large else 96
        mean, std = torch.tensor(self.data.mean, device=xs.device).view(1, 3, 1, 1), torch.tensor(self.data.std, device=xs.device).view(1, 3, 1, 1)
        grid = torch.cat([F.interpolate((v.float() * std + mean).clamp(0, 1), size=size) for v in grid])
        self.writer.add_image("images/views", torchvision.utils.make_grid(grid.cpu(), nrow=len(xs)), 0)
        return aug

    def prepare(self, model: nn.Module) -> nn.Module:
        """Move to the device (channels_last on CUDA) and optionally torch.compile the backbone(s) in place."""
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.args.compile:
            for m in model.modules():
                if isinstance(m, (torchvision.models.ResNet, TinyResNet)):
                    m.compile()
        return model

    def track(self, model: nn.Module, optimizers, backbones: dict, feat_dim: int):
        """Register what is trained (model: every parameter and buffer, queues included), its optimizer(s), and the
        backbones to evaluate as {name: (backbone, project)} where project maps R to Z. Resumes if --resume."""
        self.model, self.optimizers = model, optimizers if isinstance(optimizers, (list, tuple)) else [optimizers]
        self.backbones = backbones
        self.probe = OnlineProbe(feat_dim, self.data.num_classes).to(self.device)
        if self.args.resume:
            s = torch.load(self.args.resume, map_location=self.device, weights_only=False)
            if s.get("method") != self.method:
                raise UserError(f"--resume {self.args.resume} is a {s.get('method')} checkpoint, not {self.method}.")
            model.load_state_dict(s["model"])
            for o, so in zip(self.optimizers, s["optimizers"]):
                o.load_state_dict(so)
            self.probe.load(s["probe"]), self.scaler.load_state_dict(s["scaler"])
            self.step_count, self.start_epoch = s["step"], s["epoch"] + 1
            set_rng_states(s["rng"], self.gen)
            self.last_ckpt = Path(self.args.resume)
            print(f"resumed from {self.args.resume}: epoch {s['epoch'] + 1} done, step {s['step']}", flush=True)

    # -- the loop
    def epochs(self):
        for epoch in range(self.start_epoch, self.args.epochs):
            self.epoch = epoch
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
        """Training batches of one epoch: (uint8 images, or per-view crops for large images; labels, -1 = none).
        `run.batch_index` holds the dataset indices of the current batch (for per-sample memories)."""
        for x, y, self.batch_index in self.data.ssl_batches(self.args.batch_size, epoch, self.args.seed, self.views):
            self.step_count += 1
            self._views_seen += self.args.batch_size * len(self.views or [0, 0])
            yield x, y
            if self.args.mi_every and self.step_count % self.args.mi_every == 0:
                self.flush()
                self.log_representation()
            if self.step_count >= self.stop_step:
                self.done = True
                return

    def lr_factor(self) -> float:
        warm = self.args.warmup_epochs * self.steps_per_epoch
        return warmup_cosine(self.step_count - 1, self.total_steps, warm)

    def update_lr(self, *optimizers) -> float:
        """Set each param group's lr to base_lr * warmup-cosine factor (groups with fixed_lr=True keep base_lr)."""
        f = self.lr_factor()
        for o in optimizers or self.optimizers:
            for grp in o.param_groups:
                grp["lr"] = grp["base_lr"] * (1.0 if grp.get("fixed_lr") else f)
        return (optimizers or self.optimizers)[0].param_groups[0]["lr"]

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def step(self, loss: torch.Tensor, *optimizers):
        """Backward and optimizer step (with the fp16 grad scaler when used)."""
        optimizers = optimizers or self.optimizers
        for o in optimizers:
            o.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        for o in optimizers:
            self.scaler.step(o)
        self.scaler.update()

    def log(self, feats: torch.Tensor | None = None, labels: torch.Tensor | None = None, **scalars):
        """Log this step's scalars (tensor or float, e.g. losses/info_nce=...) and train the online probe on
        `feats` (backbone features of view 1). Values are flushed to tensorboard in batches: no per-step sync."""
        if feats is not None:
            scalars["losses/online_linear"], scalars["charts/online_linear_train_top1"] = self.probe.step(feats, labels)
        scalars = {k.replace("__", "/"): v.detach().float().clone() if torch.is_tensor(v) else torch.tensor(float(v)) for k, v in scalars.items()}
        self._pending.append((self.step_count, scalars))
        if len(self._pending) >= 50:
            self.flush()

    def flush(self, force_print=False):
        """Write pending scalars, check the losses are finite, print the progress line (every ~10 s)."""
        if not self._pending:
            return
        # one device->host transfer for all pending values; a key missing from a step is skipped, not NaN-filled
        flat = [(step, k, v) for step, s in self._pending for k, v in s.items()]
        vals = torch.stack([v.to(self.device) for _, _, v in flat]).tolist()
        now = time.time()
        vps = self._views_seen / max(now - self._tick, 1e-9)
        last = {}
        for (step, k, _), v in zip(flat, vals):
            last[k] = v
            if k.startswith("losses/") and not math.isfinite(v):
                where = self.last_ckpt or "none saved yet"
                raise UserError(f"{k} is {v} at step {step}: training diverged. Last good checkpoint: {where}. "
                                "Try a lower --lr or --precision fp32.")
            if math.isfinite(v):
                self.writer.add_scalar(k, v, step)
        self.writer.add_scalar("charts/views_per_sec", vps, self.step_count)
        self._pending, self._views_seen, self._tick = [], 0, now
        if force_print or now - self._last_print > 10:
            self._last_print = now
            eta = (now - self.t0) / max(1, self.step_count - (self.start_epoch * self.steps_per_epoch)) * (self.stop_step - self.step_count)
            loss = last.get("losses/total", next((v for k, v in last.items() if k.startswith("losses/")), float("nan")))
            print(f"epoch {self.epoch + 1}/{self.args.epochs} step {self.step_count}/{self.stop_step} loss {loss:.4f} "
                  f"lr {last.get('charts/learning_rate', float('nan')):.4g} views/s {vps:,.0f} ETA {eta / 60:.1f} min", flush=True)

    # -- evaluation
    def _eval_mode(self):
        modes = [m.training for m in self.model.modules()]
        self.model.eval()
        return modes

    def _restore(self, modes):
        for m, t in zip(self.model.modules(), modes):
            m.training = t

    @torch.no_grad()
    def log_representation(self):
        """MI estimates between the two views' embeddings and dimensionality metrics on the fixed held-out pair."""
        modes = self._eval_mode()
        for name, (backbone, project) in self.backbones.items():
            with self.autocast():
                r1 = backbone(self.fixed_pair[0])
                z1, z2 = project(r1), project(backbone(self.fixed_pair[1]))
            tag = "" if name == "main" else f"_{name}"
            for k, v in representation_metrics(r1.float(), z1.float(), z2.float()).items():
                self.writer.add_scalar(k + tag, v, self.step_count)
        self._restore(modes)
        self._tick = time.time()

    def features(self, backbone, split):
        with self.autocast():
            return extract_features(backbone, self.data, split, self.normalize)

    def evaluate(self):
        """kNN top-1 of each tracked backbone and the online probe's test top-1."""
        modes = self._eval_mode()
        for name, (backbone, _) in self.backbones.items():
            (trf, trl), (tef, tel) = self.features(backbone, "train"), self.features(backbone, "test")
            knn = knn_top1(trf, trl, tef, tel, self.data.num_classes)
            tag = "" if name == "main" else f"_{name}"
            self.writer.add_scalar("eval/knn_top1" + tag, knn, self.step_count)
            msg = f"  eval epoch {self.epoch + 1}: kNN top-1{tag} {knn:.2f}"
            if name == "main":
                with torch.no_grad():
                    online = 100.0 * (self.probe.fc(tef).argmax(1) == tel).float().mean().item()
                self.writer.add_scalar("eval/online_linear_top1", online, self.step_count)
                msg += f", online linear top-1 {online:.2f}"
                self.results.update(knn_top1=knn, online_linear_top1=online)
            print(msg, flush=True)
        self._restore(modes)
        self._tick = time.time()

    def save(self):
        """Checkpoint (atomic): model, optimizers, probe, scaler, step, epoch, args, RNG states."""
        self.flush()
        path = self.dir / "last.pt"
        save_checkpoint(path, {"method": self.method, "model": self.model.state_dict(),
                               "optimizers": [o.state_dict() for o in self.optimizers], "probe": self.probe.state(),
                               "scaler": self.scaler.state_dict(), "step": self.step_count, "epoch": self.epoch,
                               "args": dataclasses.asdict(self.args), "rng": rng_states(self.gen)})
        self.last_ckpt = path

    def finish(self):
        """Final kNN and offline linear probe per backbone, backbone.pt, projector embedding, summary and results.json."""
        self.flush(force_print=True)
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)  # training is over; the linear probe then checks no gradient reaches the backbone
        modes = self._eval_mode()
        a = self.args
        print(f"== {self.method} on {a.dataset}: {a.backbone}, {self.epoch + 1} epochs, {self.step_count} steps, seed {a.seed} ==")
        for name, (backbone, project) in self.backbones.items():
            (trf, trl), (tef, tel) = self.features(backbone, "train"), self.features(backbone, "test")
            knn = knn_top1(trf, trl, tef, tel, self.data.num_classes)
            lin = linear_probe(backbone, trf, trl, tef, tel, self.data.num_classes, seed=a.seed)
            with torch.no_grad(), self.autocast():
                r = backbone(self.fixed_pair[0])
                z = project(r)
            m = representation_metrics(r.float(), z.float(), z.float())
            h_r, i_rz = m["dim/erank_R"], m["dim/mi_RZ"]
            tag = "" if name == "main" else f"_{name}"
            self.results.update({f"knn_top1{tag}": knn, f"linear_top1{tag}": lin, f"H_R{tag}": h_r, f"I_RZ{tag}": i_rz})
            self.writer.add_scalar("eval/knn_top1" + tag, knn, self.step_count)
            self.writer.add_scalar("eval/linear_top1" + tag, lin, self.step_count)
            print(f"[{name}] kNN top-1 {knn:.2f}   ({KNN_PROTOCOL})")
            print(f"[{name}] linear top-1 {lin:.2f}   ({LINEAR_PROTOCOL})")
            print(f"[{name}] H(R) = effective rank {h_r:.2f} of {min(r.shape)}; I(R;Z) = {i_rz:.3f} nats "
                  f"(matrix Renyi-2, held-out batch); I(R;Z)/H(R) = {i_rz / max(h_r, 1e-9):.4f}")
            if name == "main":
                path = self.dir / "backbone.pt"
                save_checkpoint(path, {k: v.cpu() for k, v in backbone.state_dict().items()})
                n = min(2000, len(tef))
                thumbs = torch.cat([x for x, _ in self.data.eval_batches("test", 512)])[:n] if not self.data.large else None
                self.writer.add_embedding(tef[:n].cpu(), metadata=tel[:n].tolist(), global_step=self.step_count,
                                          label_img=None if thumbs is None else (thumbs.float() / 255).cpu(), tag="backbone_features")
        if "online_linear_top1" in self.results:
            print(f"[main] online linear top-1 {self.results['online_linear_top1']:.2f}   ({ONLINE_PROTOCOL})")
        self._restore(modes)
        self.results.update(method=self.method, dataset=a.dataset, backbone=a.backbone, seed=a.seed, epochs=self.epoch + 1,
                            steps=self.step_count, minutes=(time.time() - self.t0) / 60)
        (self.dir / "results.json").write_text(json.dumps(self.results, indent=1))
        self.writer.close()
        print(f"backbone: {self.dir / 'backbone.pt'}   checkpoint: {self.last_ckpt}   tensorboard --logdir {self.dir.parent}", flush=True)
        return self.results


def mi_estimates(z1: torch.Tensor, z2: torch.Tensor) -> dict:
    """cos-DV, InfoNCE and JSD bounds (nats) between paired embeddings, cosine critic at T=MI_TEMPERATURE."""
    s = estimators.cosine_scores(z1, z2, MI_TEMPERATURE)
    return {"mi/cos_dv": estimators.dv_bound(s).item(), "mi/infonce": estimators.infonce_bound(s).item(),
            "mi/jsd": estimators.jsd_bound(s).item()}


def representation_metrics(r: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> dict:
    """MI estimates between the views' embeddings (mi_estimates) and dimensionality of R and Z."""
    out = mi_estimates(z1, z2)
    out["dim/mi_RZ"] = estimators.matrix_mutual_information(F.normalize(r, dim=1), F.normalize(z1, dim=1))
    for name, x in (("R", r), ("Z", z1)):
        out[f"dim/erank_{name}"] = estimators.effective_rank(x)
        out[f"dim/eig_count_{name}"] = estimators.eigen_count(x, 0.01)
        out[f"dim/explained_var_top30_{name}"] = estimators.explained_variance(x, 0.3)
        out[f"dim/uniformity_{name}"] = estimators.uniformity(x)
    return out

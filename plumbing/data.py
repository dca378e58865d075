"""The datasets: CIFAR-10/100 and STL-10 through torchvision, MedMNIST's .npz files, image folders (ImageFolder layouts,
Tiny-ImageNet, ImageNet-100) and a generated synthetic set. Small images (up to 96 px) are decoded once into uint8
tensors on the training device; larger ones are read by DataLoader workers (imagefiles.py) batch by batch. `Data`
yields each rank's share of seeded batches, resumable in the middle of an epoch."""
import atexit
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

from plumbing.distributed import rank, world_size
from plumbing.errors import UserError
from plumbing.imagefiles import LARGE_MAX, UNREADABLE, ImageFiles, decode_jpegs, eight_bits, file_loader, read_image

Tensor = torch.Tensor
DatasetName = Literal["cifar10", "cifar100", "stl10", "tinyimagenet", "imagenet100", "imagefolder", "medmnist",
                      "synthetic"]
Decoder = Literal["cpu", "gpu"]
CIFAR_STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
               "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
SMALL_MAX = 96  # images up to 96 px are decoded once onto the device; above: read by `feed` (LARGE_MAX px)


def make_synthetic(n: int, seed: int, size: int = 32, num_classes: int = 10):
    """Ten texture classes (stripes, checkers, rings, squares, blobs, grids...), random phase, position and palette
    colours: the class is in the spatial structure, which survives the augmentations. uint8 (n, 3, S, S), labels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randperm(n, generator=g) % num_classes

    def uniform(*shape):
        return torch.rand(*shape, generator=g)

    c = torch.arange(size, dtype=torch.float32) - size / 2
    yy, xx = c[None, :, None], c[None, None, :]
    f = (2 * math.pi / (3.5 + 0.25 * (y % 5) + 0.2 * uniform(n)))[:, None, None]  # period ~3.5-4.7 px, by the class
    p1 = (2 * math.pi * uniform(n))[:, None, None]
    p2 = (2 * math.pi * uniform(n))[:, None, None]
    cy = ((uniform(n) - 0.5) * size)[:, None, None]
    cx = ((uniform(n) - 0.5) * size)[:, None, None]
    theta = (2 * math.pi * uniform(n))[:, None, None]
    blobs = F.interpolate(torch.randn(n, 1, 4, 4, generator=g), size=size, mode="bicubic", align_corners=False)[:, 0]
    sin = torch.sin
    cos = torch.cos
    mx = torch.maximum
    radius = ((xx - cx) ** 2 + (yy - cy) ** 2).sqrt()
    pats = [sin(f * yy + p1),  # stripes
            sin(f * xx + p1),
            sin(f * xx + p1) * sin(f * yy + p2) * 2,  # checkers
            sin(f * (xx + yy) / 1.41 + p1) + sin(f * (xx - yy) / 1.41 + p2),
            sin(f * radius + p1),  # rings
            blobs,
            sin(f * mx((xx - cx).abs(), (yy - cy).abs()) + p1),  # squares
            (mx(cos(f * xx + p1), cos(f * yy + p2)) > 0.8) * 2.0 - 1,  # grid lines
            (xx * cos(theta) + yy * sin(theta)) / size * 2,  # a ramp
            (cos(f * xx + p1) + cos(f * yy + p2) > 1.0) * 2.0 - 1]  # dots
    v = torch.sigmoid(2 * torch.stack([p.expand(n, size, size) for p in pats])[y, torch.arange(n)])[:, None]
    # colours from a palette shared by all classes: colour tells neither the class nor the instance
    palette = torch.rand(6, 2, 3, generator=torch.Generator().manual_seed(7))
    pick = palette[torch.randint(0, 6, (n,), generator=g)]  # (n, 2, 3)
    c0, c1 = [(pick[:, i] + 0.05 * torch.randn(n, 3, generator=g)).view(n, 3, 1, 1) for i in (0, 1)]
    img = c0 * (1 - v) + c1 * v + 0.05 * torch.randn(n, 3, size, size, generator=g)  # noise
    return (img.clamp(0, 1) * 255).round().to(torch.uint8), y


def image_stats(x: Tensor):
    """Per-channel mean and std of (up to 10,000) uint8 images, as two tuples."""
    x = x[:10000].float() / 255
    return tuple(x.mean((0, 2, 3)).tolist()), tuple(x.std((0, 2, 3)).tolist())


def _missing(what: str, where, hint: str = "") -> UserError:
    return UserError(f"{what} not found in {where}{hint}. Offline? Use --dataset synthetic (no files) or --dataset "
                     "imagefolder --data-dir PATH (PATH/train/<class>/*.jpg and PATH/val/ or PATH/test/).")


def _torchvision_split(name, root, split):
    """(uint8 images (N, 3, H, W), labels) of a torchvision dataset's split; the first process of a node downloads."""
    first = world_size() == 1 or os.environ.get("LOCAL_RANK", "0") == "0"
    try:
        if not first:
            torch.distributed.barrier()  # the others wait until the first has the files, then only read
        if name == "stl10":
            dataset = torchvision.datasets.STL10(root, split=split, download=first)
            return torch.from_numpy(dataset.data), torch.as_tensor(dataset.labels).long()
        dataset = getattr(torchvision.datasets, name.upper())(root, train=split == "train", download=first)
        images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()  # CIFAR's arrays are (N, H, W, 3)
        return images, torch.as_tensor(dataset.targets).long()
    except Exception as e:  # no network, partial download, unreadable files
        hint = f" and could not be downloaded ({type(e).__name__})"
        raise _missing(f"{name} ({split} split)", Path(root).resolve(), hint) from None
    finally:
        if first and world_size() > 1:
            torch.distributed.barrier()  # downloaded (or failed): the others may read


def _folder_samples(root: Path):
    """((paths, labels), classes) of an ImageFolder layout or Tiny-ImageNet's val/. numpy arrays (bytes, int64):
    forked DataLoader workers read them without copying them page by page."""
    try:
        if (root / "val_annotations.txt").exists():
            classes = sorted(p.name for p in (root.parent / "train").iterdir() if p.is_dir())
            lines = (root / "val_annotations.txt").read_text().splitlines()
            rows = [line.split("\t")[:2] for line in lines if line.strip()]
            samples = [(str(root / "images" / f), classes.index(c)) for f, c in rows]
        else:
            folder = torchvision.datasets.ImageFolder(str(root))
            samples, classes = folder.samples, folder.classes
    except (OSError, ValueError) as e:  # no class folders, or folders without images
        raise UserError(f"{root}: no images in an ImageFolder layout ({str(e).splitlines()[0][:100]}).") from None
    paths = np.array([os.fsencode(p) for p, _ in samples])
    labels = np.array([c for _, c in samples], dtype=np.int64)
    return (paths, labels), classes


def _decode_all(files, size, workers):
    """Small images, decoded once: uint8 (N, 3, size, size) and labels. An unreadable file is refused, by name."""
    n = len(files[0])
    chunks = [range(k, min(k + 512, n)) for k in range(0, n, 512)]
    parts = list(file_loader(ImageFiles(files, size, "small"), chunks, workers))
    bad = [os.fsdecode(files[0][i]) for _, _, idx, ok in parts for i in idx[~ok].tolist()]
    if bad:
        examples = ", ".join([f"{bad[0]} ({_why(bad[0])})", *bad[1:3]])
        raise UserError(f"{len(bad)} unreadable image file(s), e.g. {examples}; remove or replace them.")
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _why(path: str) -> str:
    """Why an image file is unreadable, in a few words: the exception that reading it raises."""
    try:
        read_image(path)
    except UNREADABLE as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0][:160]}" if str(e) else type(e).__name__
    return "no error when read again"  # it failed in the worker only


def _load_medmnist(root: Path):
    """(train, test) splits of a MedMNIST .npz: images (N, H, W) or (N, H, W, 1 or 3) as uint8 (N, 3, H, W). uint16
    images are scaled to 8 bits as 16-bit image files are (eight_bits); any other dtype (float, int64...) is refused:
    its scale is not known."""
    keys = ("train_images", "train_labels", "test_images", "test_labels")
    try:  # any other shape fails in permute or expand
        arrays = np.load(root)
        splits = []
        for split in ("train", "test"):
            array = arrays[f"{split}_images"]
            if array.dtype not in (np.uint8, np.uint16):
                raise UserError(f"{root}: {split}_images are {array.dtype}; medmnist needs uint8 images (or uint16, "
                                "scaled to 8 bits): convert them, e.g. np.round(x * 255).astype(np.uint8) for values "
                                "in [0, 1].")
            images = eight_bits(torch.from_numpy(array))
            labels = torch.from_numpy(arrays[f"{split}_labels"])
            if images.ndim == 3:
                images = images[..., None]
            images = images.permute(0, 3, 1, 2).expand(-1, 3, -1, -1).contiguous()
            splits.append((images, labels.reshape(len(images), -1)[:, 0].long()))
    except (OSError, ValueError, KeyError, AttributeError, TypeError, RuntimeError) as e:
        raise UserError(f"medmnist needs --data-dir pointing at a MedMNIST .npz file with the arrays {keys}, "
                        f"images (N, H, W) or (N, H, W, 1 or 3) (e.g. bloodmnist.npz); {root} is not one "
                        f"({type(e).__name__}).") from None
    return splits


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

    @property
    def large(self) -> bool:
        """Images read from files by DataLoader workers batch by batch (not decoded once onto the device)."""
        return self.files is not None

    def __len__(self):  # images of the SSL split
        return len((self.files or self.splits)["ssl"][0])

    def ssl_batches(self, batch_size: int, epoch: int, seed: int, start: int = 0, split: str = "ssl"):
        """This rank's share of global batches start, start + 1... of an epoch of a split (drop_last): uint8 images
        (large ones padded as pad_images'), labels, dataset indices. Shuffled by (seed, epoch) only; rank r takes the
        r-th equal share. Large images (image folders): the SSL split is the labelled train split, read by `feed`."""
        if self.large:
            split = "ssl"
        share = batch_size // world_size()
        first = rank() * share
        n = len((self.files or self.splits)[split][0])
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        if not self.large:
            perm = perm.to(self.device)  # once an epoch: a host-to-device copy makes the host wait
        shares = [perm[i * batch_size + first:][:share] for i in range(start, n // batch_size)]
        if self.large:
            yield from self._read_batches(shares)
            return
        x, y = self.splits[split]
        for idx in shares:
            yield x[idx], y[idx], idx

    def _read_batches(self, shares):
        """The large images of these index batches, read by `feed`'s workers (or their bytes decoded here)."""
        self.feed.batch_sampler[:] = shares  # read at each iter(feed): one epoch at a time
        for x, y, idx, ok in map(self.feed.dataset.received, self.feed):  # a copy of a worker's reused buffer
            if self.feed.dataset.mode == "bytes":  # --decode gpu: a file the device cannot decode is replaced
                x, src, decoded = decode_jpegs(x[0].split(x[1].tolist()), self.device, LARGE_MAX)
                y = y[src]
                ok = ok & torch.tensor(decoded)
            if not ok.all():
                self.unreadable += int((~ok).sum())
                path = os.fsdecode(self.files["ssl"][0][int(idx[~ok][0])])
                print(f"warning: unreadable image {path} replaced by another ({self.unreadable} so far)",
                      file=sys.stderr, flush=True)
            images = [t.to(self.device, non_blocking=True) for t in x]
            yield images, y.to(self.device, non_blocking=True), idx.to(self.device, non_blocking=True)

    def eval_batches(self, split: Literal["train", "test"], batch_size: int = 512):
        """Un-augmented (uint8 images, labels) of a split, in order; large images resized and center-cropped."""
        if not self.large:
            x, y = self.splits[split]
            for i in range(0, len(x), batch_size):
                yield x[i:i + batch_size], y[i:i + batch_size]
            return
        n = len(self.files[split][0])
        files = ImageFiles(self.files[split], self.image_size, "eval")
        sampler = [range(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
        for x, y, _, _ in file_loader(files, sampler, self.feed.num_workers):
            yield x.to(self.device, non_blocking=True), y.to(self.device)


def _image_folder(name: str, root: Path, workers: int, decode: Decoder):
    """An ImageFolder layout: small images decoded once (train, test), or large ones as files (a Data)."""
    split = next((s for s in ("val", "test") if (root / s).is_dir()), None)
    if not (root / "train").is_dir() or split is None:
        raise _missing(f"--dataset {name}: folders train/ and val/ (or test/)", root.resolve())
    train, classes = _folder_samples(root / "train")
    test, _ = _folder_samples(root / split)
    first = os.fsdecode(train[0][0])
    try:
        size = max(read_image(first).shape[1:])
    except UNREADABLE as e:
        raise UserError(f"unreadable image {first} ({type(e).__name__}); remove it.") from None
    if size <= SMALL_MAX and name != "imagenet100":
        return len(classes), _decode_all(train, size, workers), _decode_all(test, size, workers)
    feed = file_loader(ImageFiles(train, 0, "bytes" if decode == "gpu" else "decode"), [], workers, True)

    def stop_workers():  # at exit, before multiprocessing's SIGTERM reaches them
        if feed._iterator:
            feed._iterator._shutdown_workers()

    atexit.register(stop_workers)
    files = dict(ssl=train, train=train, test=test)
    return Data(name, len(classes), 224, *IMAGENET_STATS, files=files, feed=feed)


def load_data(name: str, data_dir: str, seed: int, device, workers: int = 0, decode: Decoder = "cpu") -> Data:
    """Load a dataset (layouts: the README's Datasets section); missing or unusable data: UserError naming what,
    where, what to do."""
    root = Path(data_dir).expanduser()
    if not workers:  # this node's cores shared by its processes
        workers = max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if name == "synthetic":
        x, y = make_synthetic(5120, seed)
        train = (x[:4096], y[:4096])
        test = (x[4096:], y[4096:])
        return _in_memory(name, 10, train, train, test, image_stats(train[0]), device)
    if name in ("cifar10", "cifar100"):
        train = _torchvision_split(name, root, "train")
        test = _torchvision_split(name, root, "test")
        num_classes = 10 if name == "cifar10" else 100
        return _in_memory(name, num_classes, train, train, test, CIFAR_STATS[name], device)
    if name == "stl10":
        ssl, train, test = [_torchvision_split(name, root, s) for s in ("train+unlabeled", "train", "test")]
        return _in_memory(name, 10, ssl, train, test, IMAGENET_STATS, device)
    if name == "medmnist":
        train, test = _load_medmnist(root)
        num_classes = int(max(train[1].max(), test[1].max())) + 1
        return _in_memory(name, num_classes, train, train, test, image_stats(train[0]), device)
    # imagefolder, tinyimagenet, imagenet100: ImageFolder layouts
    folder = _image_folder(name, root, workers, decode)
    if isinstance(folder, Data):
        folder.device = torch.device(device)
        return folder
    num_classes, train, test = folder
    return _in_memory(name, num_classes, train, train, test, image_stats(train[0]), device)


def _in_memory(name: str, num_classes: int, ssl, train, test, stats, device) -> Data:
    """A Data of decoded splits (uint8 images, labels), moved to the device."""
    splits = {s: (x.to(device), y.to(device)) for s, (x, y) in (("ssl", ssl), ("train", train), ("test", test))}
    data = Data(name, num_classes, ssl[0].shape[-1], *stats, splits=splits)
    data.device = torch.device(device)
    return data

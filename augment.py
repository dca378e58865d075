"""cleanssl's batched augmentation, imported by common.py (method files use it as common.ViewSpec, common.Augment,
common.multicrop). On the training device, per-sample random parameters from a torch.Generator; each op matches
torchvision's function on one image (tests/test_augment.py). Parameters are drawn for the global batch and each rank
keeps its rows (shard = (rank, world size)), so several processes see exactly the views that one process would.
Nothing asks the device for a value: a random op is computed on every sample and kept per sample (weights 0 or 1,
never the selected samples' indices), so the host queues a view's kernels without waiting (tests/test_sync.py).
Large images reach it undecoded or decoded but uncropped: read_image, decode_jpegs, pad_images, and ImageFiles /
file_loader (DataLoader workers that only read or decode files; common.load_data builds them)."""
import functools
import math
import os
import signal
import time
from dataclasses import dataclass, replace
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
import torchvision

Tensor = torch.Tensor


@dataclass
class ViewSpec:
    """Augmentation recipe of one view (defaults: solo-learn's CIFAR asymmetric view 1)."""
    size: int
    scale: Tuple[float, float] = (0.08, 1.0)
    ratio: Tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter: Tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: Tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0


def multicrop(base: List[ViewSpec], n_local: int, local_size: int, local_scale, global_scale) -> List[ViewSpec]:
    """The 2 global views of `base` with scale=global_scale, plus n_local small copies of base[0] (multi-crop)."""
    glob = [replace(v, scale=tuple(global_scale)) for v in base[:2]]
    return glob + [replace(base[0], size=local_size, scale=tuple(local_scale)) for _ in range(n_local)]


def _rand(shape, g: torch.Generator, lo: float = 0.0, hi: float = 1.0, shard=(0, 1)) -> Tensor:
    """U[lo, hi) float32 on g's device, drawn for shape[0] x world rows; this rank's shape[0] rows are returned."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    u = torch.rand((shape[0] * shard[1],) + shape[1:], generator=g, device=g.device)
    return u[shard[0] * shape[0]:(shard[0] + 1) * shape[0]].mul_(hi - lo).add_(lo)


def _apply(x: Tensor, mask: Tensor, fn, *params: Tensor) -> Tensor:
    """fn(x, *params) where mask (B,), x elsewhere: computed on every sample and selected per sample, so the device
    never reports how many samples an op picked (no host-device sync; the same cost for any mask). The selection is
    torch.lerp with weight 0 or 1, which returns either input exactly (and is faster than torch.where on CPUs)."""
    return torch.lerp(x, fn(x, *params), mask.to(x.dtype).view(-1, *[1] * (x.dim() - 1)))


def rrc_params(B: int, H, W, scale, ratio, g: torch.Generator, attempts: int = 10, shard=(0, 1)):
    """RandomResizedCrop.get_params for B samples at once -> (top, left, h, w), long (B,) each. H, W: the image size,
    ints or long (B,) tensors (one size per sample). All tries are drawn at once; a sample keeps its first valid try,
    else torchvision's fallback (central crop, ratio clamped, in float64 as Python's)."""
    H, W = (s.reshape(-1) if torch.is_tensor(s) else torch.full((1,), s, device=g.device) for s in (H, W))  # (B,)/(1,)
    area = _rand((B, attempts), g, scale[0], scale[1], shard) * (H * W)[:, None]
    r = _rand((B, attempts), g, math.log(ratio[0]), math.log(ratio[1]), shard).exp_()
    w, h = (area * r).sqrt_().round_(), (area / r).sqrt_().round_()  # half to even, as Python
    ok = (w > 0) & (w <= W[:, None]) & (h > 0) & (h <= H[:, None])
    first, found = ok.to(torch.uint8).argmax(1, keepdim=True), ok.any(1)
    Hd, Wd = H.double(), W.double()
    fw = torch.where(Wd / Hd > max(ratio), (Hd * max(ratio)).round(), Wd)
    fh = torch.where(Wd / Hd < min(ratio), (Wd / min(ratio)).round(), Hd)
    h = torch.where(found, h.gather(1, first).squeeze(1), fh.float()).long()
    w = torch.where(found, w.gather(1, first).squeeze(1), fw.float()).long()
    u = _rand((B, 2), g, shard=shard).T
    top = torch.where(found, torch.minimum((u[0] * (H - h + 1)).long(), H - h), (H - h) // 2)
    left = torch.where(found, torch.minimum((u[1] * (W - w + 1)).long(), W - w), (W - w) // 2)
    return top, left, h, w


def _src_index(start: Tensor, length: Tensor, size: int):
    """Bilinear (align_corners=False) source indices and weights of `size` outputs per crop."""
    src = ((torch.arange(size, device=start.device) + 0.5) * (length.float() / size)[:, None] - 0.5).clamp_(min=0)
    i0 = src.floor().long()
    i1 = torch.minimum(i0 + 1, length[:, None] - 1)  # clamp at the crop border, not the image's
    return start[:, None] + i0, start[:, None] + i1, src - i0


def resized_crop(x: Tensor, top: Tensor, left: Tensor, h: Tensor, w: Tensor, size: int) -> Tensor:
    """Crop box i of image i resized bilinearly to size x size, float32 on x's scale: torchvision's resized_crop(img,
    top, left, h, w, [size, size], antialias=False). Separable: whole-row copies + lerp, then column gathers + lerp."""
    B, C, H, W = x.shape
    (y0, y1, ly), (x0, x1, lx) = _src_index(top, h, size), _src_index(left, w, size)
    planes, flat = torch.arange(B * C, device=x.device).view(B, C, 1) * H, x.reshape(B * C * H, W)
    rows = lambda y: flat.index_select(0, (planes + y[:, None]).view(-1)).view(B, C, size, W)  # noqa: E731
    ly, lx = ly[:, None, :, None], lx[:, None, None, :]
    t = (rows(y0) * (1 - ly)).addcmul_(rows(y1), ly)
    cols = lambda xi: t.gather(3, xi[:, None, None, :].expand(B, C, size, size))  # noqa: E731
    return cols(x0).mul_(1 - lx).addcmul_(cols(x1), lx)


def _aa_weights(start: Tensor, length: Tensor, size: int, n: int) -> Tensor:
    """(B, size, n): row i holds the weights of output pixel i over the n (padded) input pixels, for torchvision's
    antialiased bilinear resize (PIL's filter) of the crop [start, start + length) to `size`: a triangle of
    half-width max(1, s) input pixels, s = length / size, centred at s (i + 0.5) in the crop, zero outside the crop,
    each row normalized to sum 1 (what ATen's _upsample_bilinear2d_aa computes, pixel by pixel)."""
    s = (length.float() / size)[:, None, None]
    support, centre = s.clamp(min=1.0), (torch.arange(size, device=start.device) + 0.5)[None, :, None] * s
    k = (torch.arange(n, device=start.device)[None, None, :] - start[:, None, None]).float()  # position in the crop
    wt = (1 - (k + 0.5 - centre).abs_().div_(support)).clamp_(min=0) * ((k >= 0) & (k < length[:, None, None]))
    return wt.div_(wt.sum(2, keepdim=True))


def area_resized_crop(x: Tensor, top: Tensor, left: Tensor, h: Tensor, w: Tensor, size: int) -> Tensor:
    """Crop box i of image i resized to size x size WITH antialiasing, float32 on x's scale: torchvision's
    resized_crop(img, top, left, h, w, [size, size], antialias=True) for images of any size, zero-padded into one
    float batch x (B, C, Hmax, Wmax). The resize is separable and linear, so each image's output is Wy @ img @ Wx^T with
    per-sample weight matrices Wy (size, Hmax), Wx (size, Wmax) that are zero outside the crop: one batched matmul
    pair, exact up to float rounding, blind to the padding, and the filter widens with the downscale factor, so a
    small view of a large image averages every pixel under it instead of sampling 4 (no aliasing). Cost ~ size x
    Hmax x Wmax multiply-adds per channel. On a GPU the matmuls may run in TF32 unless --deterministic (rounding of
    order 255 x 2^-11 = 0.1 grey level; not measured)."""
    B, C, H, W = x.shape
    wy, wx = _aa_weights(top, h, size, H), _aa_weights(left, w, size, W)
    rows = wy @ x.permute(0, 2, 3, 1).reshape(B, H, W * C)  # (B, size, W C); a view if x is channels-last (pad_images)
    cols = wx @ rows.view(B, size, W, C).transpose(1, 2).reshape(B, W, size * C)  # (B, size_x, size_y C)
    return cols.view(B, size, size, C).transpose(1, 2).contiguous().permute(0, 3, 1, 2)  # channels-last memory


def read_image(path: str, max_side: int = 0) -> Tensor:
    """An image file -> uint8 (3, H, W) RGB, shrunk to max_side (0: as is). torchvision's decoders (JPEG, PNG, WebP,
    GIF; faster than PIL's: benchmark.py --part data), PIL for other formats (BMP, TIFF...). Corrupt: an error."""
    try:
        x = torchvision.io.decode_image(torchvision.io.read_file(path), mode=torchvision.io.ImageReadMode.RGB)
    except RuntimeError:  # a format torchvision does not decode; a corrupt file raises OSError in PIL
        from PIL import Image
        x = torchvision.transforms.functional.pil_to_tensor(Image.open(path).convert("RGB"))
    return shrink(x, max_side)


def read_jpeg_bytes(path: str) -> Tensor:
    """A file's bytes as a uint8 1-D tensor for the device to decode (--decode gpu). A truncated JPEG (no end-of-image
    marker after its last start-of-scan) is an error here: nvJPEG decoded one without an error on an H100 (torch 2.11,
    2026-12-06) where torchvision's CPU decoder raises, so the workers catch it, for both devices."""
    with open(path, "rb") as f:
        data = bytearray(f.read())
    if data[:2] == b"\xff\xd8" and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        raise ValueError(f"{path}: truncated JPEG (no end-of-image marker after its last scan)")
    return torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)


def shrink(x: Tensor, max_side: int) -> Tensor:
    """uint8 image (3, H, W) with its longer side shrunk to max_side (antialiased bilinear); unchanged if it fits or
    max_side is 0."""
    f = max_side / max(x.shape[1:])
    if f >= 1 or not max_side:
        return x
    size = [max(1, round(d * f)) for d in x.shape[1:]]
    y = F.interpolate(x[None].float(), size=size, mode="bilinear", antialias=True)[0]
    return y.round_().clamp_(0, 255).to(torch.uint8)


def pad_images(images: Sequence[Tensor], storage=None) -> Tuple[Tensor, Tensor]:
    """uint8 images (3, H_i, W_i) -> one zero-padded uint8 batch (B, 3, max H, max W) and their sizes (B, 2), long:
    Augment's input for images of different sizes. Channels-last memory (B, H, W, 3), as decoders write pixels: whole
    rows are copied; in a DataLoader worker, straight into shared memory (as its default collate does), or into
    `storage(nbytes)`: a shared storage of at least that size that the worker reuses (ImageFiles)."""
    hw = torch.tensor([x.shape[1:] for x in images], dtype=torch.long)
    shape, dev = (len(images), *hw.amax(0).tolist(), 3), images[0].device
    shared = dev.type == "cpu" and torch.utils.data.get_worker_info() is not None
    st = (storage or torch.UntypedStorage._new_shared)(math.prod(shape)) if shared else None
    out = (torch.empty(0, dtype=torch.uint8).new(st)[:math.prod(shape)].view(shape) if shared else
           torch.empty(shape, dtype=torch.uint8, device=dev))
    for o, x in zip(out, images):  # the padding is zeroed only where an image leaves some (a reused buffer is dirty)
        (h, w), (H, W) = x.shape[1:], o.shape[:2]
        o[:h, :w] = x.permute(1, 2, 0)
        o[h:].zero_() if h < H else None
        o[:h, w:].zero_() if w < W else None
    return out.permute(0, 3, 1, 2), hw.to(dev, non_blocking=True)


def decode_jpegs(blobs: Sequence[Tensor], device, max_side: int):
    """Files' bytes (uint8 1-D tensors) -> (pad_images of the images decoded on `device`, src, decoded). One batched
    torchvision decode_jpeg (nvJPEG on a GPU); a file it cannot decode is tried with torchvision's CPU decoder (PNG,
    CMYK JPEG...), and one that no decoder reads is replaced by the next decoded image of the batch: image i is file
    src[i], decoded[i] = False. Images are shrunk to max_side (shrink) before padding."""
    rgb = torchvision.io.ImageReadMode.RGB
    try:
        imgs = torchvision.io.decode_jpeg(list(blobs), mode=rgb, device=device)
    except RuntimeError:  # a file of the batch does not decode: one at a time
        imgs = []
        for b in blobs:
            try:
                imgs.append(torchvision.io.decode_jpeg(b, mode=rgb, device=device))
            except RuntimeError:
                try:
                    imgs.append(torchvision.io.decode_image(b, mode=rgb).to(device))
                except RuntimeError:
                    imgs.append(None)
    n, ok = len(imgs), [im is not None for im in imgs]
    src = [next((j % n for j in range(i, i + n) if ok[j % n]), i) for i in range(n)]
    blank = torch.zeros(3, 1, 1, dtype=torch.uint8, device=device)  # no file of the batch decodes
    return pad_images([blank if imgs[j] is None else shrink(imgs[j], max_side) for j in src]), src, ok


# ---- image files: DataLoader workers read or decode, the device crops
LARGE_MAX = 512  # a large image's longer side is shrunk to this before padding (bounded batch memory)


def _quiet_worker(_):  # DataLoader workers leave SIGINT / SIGTERM to the main process, which saves and stops
    signal.signal(signal.SIGINT, signal.SIG_IGN), signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _keep_freed_memory()


def _keep_freed_memory():
    """glibc's malloc in a worker: keep freed memory for the next batch (no trimming, decoded images on the heap)
    instead of handing it back to the OS and page-faulting it in again for every image (~0.5 ms per 500x375 image:
    benchmark.py --part data). The worker's memory stays at its largest batch. Other C libraries: left as they are."""
    import ctypes
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-1, 1 << 30), libc.mallopt(-3, 32 << 20)  # M_TRIM_THRESHOLD 1 GiB, M_MMAP_THRESHOLD 32 MiB
    except (OSError, AttributeError):
        pass


RING = 4  # padded batches a worker writes in turn, reusing their shared memory (it prefetches 2, the loop holds 1)
MAX_WORKERS = 256
_USE_COUNT = getattr(torch._C, "_storage_Use_Count", None)  # references to a storage (its tensors, views, wrappers)


class ImageFiles(torch.utils.data.Dataset):
    """Image files (paths, labels) read by DataLoader workers: "bytes" (the device decodes them), "decode" (read_image:
    uint8 (3, H, W), longer side <= LARGE_MAX), "small" (resized whole) or "eval" (resize + center crop). An unreadable
    file is replaced by the next readable one ("small": not), and `ok` = False tells the main process.

    "decode": a worker pads its batches into RING shared-memory buffers in turn instead of a new one each batch: the
    first write to fresh memory (page faults) costs a third as much as decoding (benchmark.py --part data). Its
    k-th batch reuses buffer k % RING once the main process holds no tensor of its batches before k - RING + 1
    (`taken`, in shared memory, written by `received`: the main process counts the references to each batch's memory,
    or copies it when torch cannot count them; with CUDA the pin-memory thread copies every batch anyway). A worker
    that finds no free buffer after 20 ms, or whose main process never calls `received`, takes a new one (`fresh`
    counts them): a buffer that the main process may still read is never written."""

    def __init__(self, files, size: int, mode: str):
        (self.paths, self.labels), self.size, self.mode = files, size, mode
        decode = mode == "decode"
        self.taken, self.fresh = (torch.zeros(n, dtype=torch.long).share_memory_() if decode else None
                                  for n in (MAX_WORKERS, 1))
        self.ring, self.made, self.held = [None] * RING, 0, {}  # worker: its buffers, batches; main: batches held

    def _buffer(self, w: int, k: int, nbytes: int):  # in worker w: the shared storage for its k-th batch
        t = time.monotonic()
        while self.taken[w] < k - RING + 1 and time.monotonic() - t < 0.02:
            time.sleep(0.0005)
        st = self.ring[k % RING]
        if self.taken[w] < k - RING + 1 or st is None or st.nbytes() < nbytes:  # not free, or too small
            st = self.ring[k % RING] = torch.UntypedStorage._new_shared(max(nbytes, st.nbytes() if st else 0))
            self.fresh += 1
        return st

    def received(self, batch):  # in the main process: ((x, hw, ticket), y, idx, ok) -> ((x, hw), y, idx, ok)
        if self.mode != "decode":
            return batch
        (x, hw, (w, k)), *rest = batch
        w, k = int(w), int(k)
        if w < 0:  # collated in the main process (no workers): not shared
            return ((x, hw), *rest)
        if x.is_pinned() or _USE_COUNT is None:  # a copy (the pin-memory thread's, or ours): the buffer is free
            x = x if x.is_pinned() else x.clone()
            self.taken[w] = max(int(self.taken[w]), k + 1)
            return ((x, hw), *rest)
        held = [(st, j) for st, j in self.held.get(w, []) if _USE_COUNT(st._cdata) > 1] + [(x.untyped_storage(), k)]
        self.held[w] = held  # batches of worker w that something in this process still uses (this one included)
        self.taken[w] = min(j for _, j in held)
        return ((x, hw), *rest)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        import torchvision.transforms.v2.functional as TF
        for j in [i] if self.mode == "small" else [(i + k) % len(self) for k in range(10)]:
            path = os.fsdecode(self.paths[j])
            try:
                x = (read_jpeg_bytes(path) if self.mode == "bytes" else
                     read_image(path, LARGE_MAX if self.mode == "decode" else 0))
            except (OSError, ValueError, SyntaxError, RuntimeError):  # truncated, corrupt or not an image
                continue
            x = (x if self.mode in ("bytes", "decode") else TF.resize(x, [self.size] * 2) if self.mode == "small" else
                 TF.center_crop(TF.resize(x, round(self.size * 8 / 7)), self.size))
            return x, int(self.labels[j]), i, j == i
        return torch.zeros(3, self.size or 1, self.size or 1, dtype=torch.uint8), -1, i, False

    def collate(self, batch):  # in the worker: one padded batch ("decode"); all bytes in one tensor + lengths ("bytes")
        x, y, idx, ok = zip(*batch)
        if self.mode == "decode":  # ticket (worker, its batch number); (-1, -1) from the main process
            info = torch.utils.data.get_worker_info()
            w, k = (info.id % MAX_WORKERS, self.made) if info else (-1, -1)
            self.made += 1
            x = (*pad_images(x, functools.partial(self._buffer, w, k) if info else None), torch.tensor([w, k]))
        else:
            x = (torch.utils.data.default_collate(x) if self.mode != "bytes" else
                 (torch.cat([b.view(-1) for b in x]), torch.tensor([b.numel() for b in x])))
        return x, torch.tensor(y), torch.tensor(idx), torch.tensor(ok)


def file_loader(dataset, batch_sampler, workers: int, persistent: bool = False):  # each worker prefetches 2 batches
    dataset.taken.zero_() if getattr(dataset, "taken", None) is not None else None  # new workers count from 0
    return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, num_workers=workers, persistent_workers=
                                       persistent, collate_fn=dataset.collate, pin_memory=torch.cuda.is_available(),
                                       worker_init_fn=_quiet_worker)


def _gray(x: Tensor) -> Tensor:  # luma 0.2989 R + 0.587 G + 0.114 B, (B, 1, H, W)
    r, g, b = x.unbind(1)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(1)


def rgb_to_grayscale(x: Tensor) -> Tensor:
    return _gray(x).expand_as(x).contiguous()


def jitter_op(j: int, x: Tensor, f: Tensor) -> Tensor:
    """ColorJitter's op j with per-sample factors f (B,): 0 brightness, 1 contrast, 2 saturation, 3 hue (adjust_hue)."""
    return adjust_hue(x, f) if j == 3 else _blend(x, f, (1 - f) * (j == 2), (1 - f) * (j == 1))


def _blend(x: Tensor, f: Tensor, w_gray: Tensor, w_mean: Tensor) -> Tensor:
    """clamp(x f + w_gray gray + w_mean mean(gray), 0, 1), gray = each image's grayscale version, weights (B,) per
    sample: brightness (blend with black) is w = (0, 0), contrast (with the mean gray) (0, 1 - f), saturation (with
    the gray image) (1 - f, 0), so one pass applies each sample's own op; f = 1, w = 0 returns x exactly (x in
    [0, 1])."""
    gray, (f, w_gray, w_mean) = _gray(x), (t.view(-1, 1, 1, 1) for t in (f, w_gray, w_mean))
    other = gray.mean((1, 2, 3), keepdim=True).mul_(w_mean)  # before gray is scaled in place
    return torch.addcmul(gray.mul_(w_gray).add_(other), x, f).clamp_(0, 1)


_HUE_RAMP = ((3.0, 2.0, 4.0), (1.0, 2.0, 2.0), (1.0, -1.0, -1.0))  # centre, offset, sign of R, G, B


@functools.lru_cache
def _hue_ramp(device) -> Tensor:  # built once per device: a tensor from Python numbers is a host-to-device copy
    return torch.tensor(_HUE_RAMP, device=device).view(3, 1, 3, 1, 1)


def adjust_hue(x: Tensor, hue: Tensor) -> Tensor:
    """Shift the HSV hue by `hue` (in [-0.5, 0.5], mod 1) as torchvision's RGB -> HSV -> RGB, branch-free (agrees to
    ~1e-6). With chroma = max - min and n = (x - min) / chroma the hue in sextants is h6 = n_g - n_b | 2 + n_b - n_r |
    4 + n_r - n_g if max is R | G | B; x = min + chroma * clamp(ramp(h6 mod 6), 0, 1), ramps R: |h6 - 3| - 1,
    G: 2 - |h6 - 2|, B: 2 - |h6 - 4|."""
    v, m = x.amax(1, keepdim=True), x.amin(1, keepdim=True)
    cr = v - m
    n = (x - m).div_(cr.clamp(min=1e-12))  # gray pixels: 0 / 1e-12 = 0 (any hue is fine there)
    nr, ng, nb = n.unbind(1)
    wr, fg = n[:, :2].floor().unbind(1)  # 1 on the max channel(s); R wins ties, as torchvision
    wg = fg * (1 - wr)
    h6 = wr * (ng - nb) + wg * (nb - nr + 2) + (1 - wr - wg) * (nr - ng + 4) + 6 * hue.view(-1, 1, 1)
    h6 = h6.sub_(h6.div(6).floor_().mul_(6)).unsqueeze(1)  # mod 6
    ctr, off, sgn = _hue_ramp(x.device)
    return torch.addcmul(m, (h6 - ctr).abs_().mul_(sgn).sub_(off * sgn).clamp_(0, 1), cr)


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int, mask: Tensor = None) -> Tensor:
    """Per-sample sigma, torchvision's normalized kernel exp(-x^2 / 2 sigma^2), reflect padding; separable, as a
    grouped conv over B * C groups. mask (B,): only those samples are blurred (the others get the kernel [0 .. 1 .. 0],
    which returns them exactly)."""
    B, C, H, W = x.shape
    k, p = kernel_size, kernel_size // 2
    ker = (torch.linspace(-p, p, k, device=x.device) / sigma[:, None]).pow_(2).mul_(-0.5).exp_()
    ker = ker / ker.sum(1, keepdim=True)
    ker = ker if mask is None else torch.where(mask[:, None], ker, (torch.arange(k, device=x.device) == p).float())
    ker = ker[:, None].expand(B, C, k).reshape(B * C, k)
    y = F.conv2d(F.pad(x.reshape(1, B * C, H, W), (p, p, p, p), mode="reflect"), ker.view(B * C, 1, k, 1), groups=B * C)
    return F.conv2d(y, ker.view(B * C, 1, 1, k), groups=B * C).view(B, C, H, W)


def color_jitter(x: Tensor, b: float, c: float, s: float, h: float, p: float, g: torch.Generator, shard=(0, 1),
                 return_params: bool = False):
    """RandomApply([ColorJitter(b, c, s, h)], p) with per-sample factors and op order (0 brightness, 1 contrast,
    2 saturation, 3 hue); returns a new tensor. Every sample goes through the same passes, without a host-device sync:
    3 blend passes (`_blend`: each sample's blend ops before its hue, right-aligned; f = 1 where it has none), hue
    (once, on all samples), 3 blend passes (its ops after hue, left-aligned); without hue only the first 3. Samples
    not jittered get f = 1 and keep their hue. return_params=True also returns (applied (B,) bool, order (B, 4),
    factors (B, 4))."""
    B = x.shape[0]
    applied, order = _rand(B, g, shard=shard) < p, _rand((B, 4), g, shard=shard).argsort(1)
    fac = torch.stack([_rand(B, g, max(0.0, 1 - b), 1 + b, shard), _rand(B, g, max(0.0, 1 - c), 1 + c, shard),
                       _rand(B, g, max(0.0, 1 - s), 1 + s, shard), _rand(B, g, -h, h, shard)], 1)
    is_hue = (order == 3).to(torch.uint8)
    blends = order.gather(1, is_hue.sort(dim=1, stable=True).indices[:, :3])  # (B, 3) the blend ops in drawn order
    n_pre = is_hue.argmax(1, keepdim=True) if h else torch.full_like(blends[:, :1], 3)  # (B, 1) blend ops before hue
    t = n_pre + torch.arange(-3, 3 if h else 0, device=x.device)  # (B, passes): pass k applies blend op t if 0 <= t < 3
    j = blends.gather(1, t.clamp(0, 2))
    f = torch.where(applied[:, None] & (t >= 0) & (t < 3), fac.gather(1, j), 1.0)  # f = 1: nothing in that pass
    w_gray, w_mean = ((1 - f) * (j == op) for op in (2, 1))  # saturation's and contrast's weights (see _blend)
    blend = lambda z, k: _blend(z, f[:, k], w_gray[:, k], w_mean[:, k]) if any((b, c, s)) else z  # noqa: E731
    for k in range(3):
        x = blend(x, k)
    if h:
        x = _apply(x, applied, adjust_hue, fac[:, 3])
        for k in range(3, 6):
            x = blend(x, k)
    return (x, (applied, order, fac)) if return_params else x


class Augment:
    """uint8 batch (B, 3, H, W) -> one normalized float32 view per ViewSpec. Per view, solo-learn's order: random
    resized crop, color jitter, grayscale, Gaussian blur (kernel: odd size nearest 10% of the view, >= 3), solarize,
    horizontal flip, normalize. x may also be (uint8 (B, 3, Hmax, Wmax), sizes (B, 2)) from pad_images (large images of
    different sizes): each crop is then cut with antialiasing (area_resized_crop). channels_last: the views' memory
    format (conv nets)."""

    def __init__(self, views: List[ViewSpec], mean: Sequence[float], std: Sequence[float], channels_last=False,
                 shard=(0, 1)):
        self.views, self.channels_last, self.shard = list(views), channels_last, shard
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.inv_std = 1.0 / torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, x, g: torch.Generator) -> List[Tensor]:
        if not isinstance(x, (list, tuple)):
            return [self.view(x, v, g) for v in self.views]
        img, (H, W), sh = x[0].float(), x[1].T, self.shard  # one float copy of the padded batch serves every view
        box = lambda v: rrc_params(len(img), H, W, v.scale, v.ratio, g, shard=sh)  # noqa: E731
        return [self.view(area_resized_crop(img, *box(v), v.size).div_(255), v, g, crop=False) for v in self.views]

    def view(self, x: Tensor, v: ViewSpec, g: torch.Generator, crop: bool = True) -> Tensor:
        (B, _, H, W), sh = x.shape, self.shard
        y = resized_crop(x, *rrc_params(B, H, W, v.scale, v.ratio, g, shard=sh), v.size) if crop else x.float()
        y = y.mul_(1.0 / 255) if x.dtype == torch.uint8 else y
        if v.jitter_p > 0:
            y = color_jitter(y, *v.jitter, v.jitter_p, g, sh)
        if v.gray_p > 0:
            y = _apply(y, _rand(B, g, shard=sh) < v.gray_p, _gray)
        if v.blur_p > 0:
            k, sigma = max(3, int(0.1 * v.size) // 2 * 2 + 1), _rand(B, g, *v.blur_sigma, sh)
            y = gaussian_blur(y, sigma, k, mask=_rand(B, g, shard=sh) < v.blur_p)
        if v.solarize_p > 0:
            y = _apply(y, _rand(B, g, shard=sh) < v.solarize_p, lambda z: torch.minimum(z, 1 - z))  # z >= .5: 1 - z
        if v.flip_p > 0:
            y = _apply(y, _rand(B, g, shard=sh) < v.flip_p, lambda z: z.flip(-1))
        if self.mean.device != y.device:  # moved once: a copy from the host each step would make the host wait
            self.mean, self.inv_std = self.mean.to(y.device), self.inv_std.to(y.device)
        y = y.sub_(self.mean).mul_(self.inv_std)
        return y.contiguous(memory_format=torch.channels_last) if self.channels_last else y

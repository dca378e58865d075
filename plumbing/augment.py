"""The batched augmentation (method files use it as common.ViewSpec, common.Augment, common.multicrop). On the training
device, per-sample random parameters from a torch.Generator; each op matches
torchvision's function on one image (tests/test_augment.py). Parameters are drawn for the global batch and each rank
keeps its rows (shard = (rank, world size)), so several processes see exactly the views that one process would.
Nothing asks the device for a value: a random op is computed on every sample and kept per sample (weights 0 or 1,
never the selected samples' indices), so the host queues a view's kernels without waiting (tests/test_sync.py).
Large images reach it decoded but uncropped, as a padded batch with their sizes (imagefiles.pad_images)."""
import functools
import math
from dataclasses import dataclass, replace
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F

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
    planes = torch.arange(B * C, device=x.device).view(B, C, 1) * H  # first row of each image plane
    flat = x.reshape(B * C * H, W)

    def rows(y: Tensor) -> Tensor:  # (B, C, size, W): source rows y (B, size) of every plane
        return flat.index_select(0, (planes + y[:, None]).view(-1)).view(B, C, size, W)

    ly, lx = ly[:, None, :, None], lx[:, None, None, :]
    t = (rows(y0) * (1 - ly)).addcmul_(rows(y1), ly)

    def cols(xi: Tensor) -> Tensor:  # (B, C, size, size): source columns xi (B, size) of the resized rows
        return t.gather(3, xi[:, None, None, :].expand(B, C, size, size))

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
    blends_any = any((b, c, s))
    for k in range(3):
        if blends_any:
            x = _blend(x, f[:, k], w_gray[:, k], w_mean[:, k])
    if h:
        x = _apply(x, applied, adjust_hue, fac[:, 3])
        for k in range(3, 6):
            if blends_any:
                x = _blend(x, f[:, k], w_gray[:, k], w_mean[:, k])
    return (x, (applied, order, fac)) if return_params else x


class Augment:
    """uint8 batch (B, 3, H, W) -> one normalized float32 view per ViewSpec. Per view, solo-learn's order: random
    resized crop, color jitter, grayscale, Gaussian blur (kernel: odd size nearest 10% of the view, >= 3), solarize,
    horizontal flip, normalize. x may also be (uint8 (B, 3, Hmax, Wmax), sizes (B, 2)) from pad_images (large images of
    different sizes): each crop is then cut with antialiasing (area_resized_crop). channels_last: the views' memory
    format (conv nets)."""

    def __init__(self, views: List[ViewSpec], mean: Sequence[float], std: Sequence[float], channels_last=False,
                 shard=(0, 1)):
        self.views = list(views)
        self.channels_last = channels_last
        self.shard = shard  # (rank, world size): this rank's rows of parameters drawn for the global batch
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.inv_std = 1.0 / torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, x, g: torch.Generator) -> List[Tensor]:
        if not isinstance(x, (list, tuple)):
            return [self.view(x, v, g) for v in self.views]
        img = x[0].float()  # one float copy of the padded batch serves every view
        H, W = x[1].T
        views = []
        for v in self.views:
            box = rrc_params(len(img), H, W, v.scale, v.ratio, g, shard=self.shard)
            views.append(self.view(area_resized_crop(img, *box, v.size).div_(255), v, g, crop=False))
        return views

    def view(self, x: Tensor, v: ViewSpec, g: torch.Generator, crop: bool = True) -> Tensor:
        B, _, H, W = x.shape
        sh = self.shard
        y = resized_crop(x, *rrc_params(B, H, W, v.scale, v.ratio, g, shard=sh), v.size) if crop else x.float()
        y = y.mul_(1.0 / 255) if x.dtype == torch.uint8 else y
        if v.jitter_p > 0:
            y = color_jitter(y, *v.jitter, v.jitter_p, g, sh)
        if v.gray_p > 0:
            y = _apply(y, _rand(B, g, shard=sh) < v.gray_p, _gray)
        if v.blur_p > 0:
            k = max(3, int(0.1 * v.size) // 2 * 2 + 1)
            sigma = _rand(B, g, *v.blur_sigma, sh)
            y = gaussian_blur(y, sigma, k, mask=_rand(B, g, shard=sh) < v.blur_p)
        if v.solarize_p > 0:
            y = _apply(y, _rand(B, g, shard=sh) < v.solarize_p, lambda z: torch.minimum(z, 1 - z))  # z >= .5: 1 - z
        if v.flip_p > 0:
            y = _apply(y, _rand(B, g, shard=sh) < v.flip_p, lambda z: z.flip(-1))
        if self.mean.device != y.device:  # moved once: a copy from the host each step would make the host wait
            self.mean, self.inv_std = self.mean.to(y.device), self.inv_std.to(y.device)
        y = y.sub_(self.mean).mul_(self.inv_std)
        return y.contiguous(memory_format=torch.channels_last) if self.channels_last else y

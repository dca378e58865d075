"""common.py's batched augmentation: every op against torchvision's per-image function, the random parameters against
torchvision's draws, the pipeline's determinism, sharding across processes and multi-crop."""
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF

from plumbing import augment as A
from plumbing import imagefiles


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: one thread is faster, and robust to a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _imgs(seed=0, shape=(4, 3, 32, 32)):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _rgb_imgs():
    """4 random 32x32 images with gray, r == g and pure red pixels (hue edge cases)."""
    x = _imgs()
    x[0, :, :4] = x[0, :1, :4]  # gray pixels: r = g = b
    x[1, 1, :4] = x[1, 0, :4]  # r == g
    x[2, :, :2] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    return x


def _close(a, b, atol=1e-5):
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, atol=atol, rtol=0)


def _per_image(fn, x, params):
    return torch.stack([fn(x[i], float(params[i])) for i in range(x.shape[0])])


# ------------------------------------------------------------------ geometry
@pytest.mark.parametrize("shape", [(5, 3, 32, 32), (3, 3, 20, 27)])
@pytest.mark.parametrize("size", [32, 16, 48, 7])
def test_resized_crop_matches_torchvision(shape, size):
    x = _imgs(1, shape)
    B, _, H, W = shape
    boxes = [(0, 0, H, W), (H - 5, W - 3, 5, 3), (2, 1, H - 2, W - 1), (0, W - 1, 1, 1),
             (3, 4, 11, 9)][:B]
    top, left, h, w = (torch.tensor(c) for c in zip(*boxes))
    out = A.resized_crop(x, top, left, h, w, size)
    ref = torch.stack([TF.resized_crop(x[i], *boxes[i], [size, size], antialias=False)
                       for i in range(B)])
    _close(out, ref)


def test_resized_crop_uint8_and_random_boxes():
    g = torch.Generator().manual_seed(3)
    x8 = torch.randint(0, 256, (16, 3, 40, 36), dtype=torch.uint8, generator=g)
    top, left, h, w = A.rrc_params(16, 40, 36, (0.08, 1.0), (3 / 4, 4 / 3), g)
    out = A.resized_crop(x8, top, left, h, w, 24)
    ref = torch.stack([TF.resized_crop(x8[i].float(), int(top[i]), int(left[i]), int(h[i]),
                                       int(w[i]), [24, 24], antialias=False) for i in range(16)])
    assert out.dtype == torch.float32
    _close(out, ref, atol=1e-3)  # 0..255 scale


def test_flip_of_selected_samples():
    x = _imgs()
    m = torch.tensor([True, False, True, False])
    ref = torch.stack([TF.hflip(x[i]) if m[i] else x[i] for i in range(4)])
    _close(A._apply(x.clone(), m, lambda z: z.flip(-1)), ref, atol=0)


@pytest.mark.parametrize("H,W,scale,ratio", [(32, 32, (0.08, 1.0), (3 / 4, 4 / 3)),
                                             (20, 27, (0.2, 1.0), (3 / 4, 4 / 3)),
                                             (40, 10, (0.5, 1.0), (0.9, 1.1))])
def test_rrc_params_statistics(H, W, scale, ratio):
    g = torch.Generator().manual_seed(0)
    n = 20000
    top, left, h, w = A.rrc_params(n, H, W, scale, ratio, g)
    assert all(t.dtype == torch.long and t.shape == (n,) for t in (top, left, h, w))
    assert (h > 0).all() and (w > 0).all() and (top >= 0).all() and (left >= 0).all()
    assert (top + h <= H).all() and (left + w <= W).all()
    torch.manual_seed(0)
    ref = torch.tensor([T.RandomResizedCrop.get_params(torch.empty(3, H, W), list(scale), list(ratio))
                        for _ in range(2000)], dtype=torch.float)
    frac, ref_frac = (h * w).float() / (H * W), ref[:, 2] * ref[:, 3] / (H * W)
    assert abs(frac.mean() - ref_frac.mean()) < 0.03
    assert abs(frac.std() - ref_frac.std()) < 0.03
    fb = ((h == ref[:, 2].mode().values) & (w == ref[:, 3].mode().values)).float().mean()
    ref_fb = ((ref[:, 2] == ref[:, 2].mode().values) & (ref[:, 3] == ref[:, 3].mode().values)).float().mean()
    assert abs(fb - ref_fb) < 0.05  # share of the most common box (the fallback when ratios clash)
    r = w.float() / h.float()  # rounding to whole pixels blurs the ratio on small crops
    big = h * w >= 100
    assert ((r[big] > ratio[0] * 0.8) & (r[big] < ratio[1] * 1.25)).float().mean() > 0.99 or fb > 0.5
    for t, rt, span in ((top.float(), ref[:, 0], H), (left.float(), ref[:, 1], W)):
        assert abs(t.mean() - rt.mean()) < 0.05 * span


def test_rrc_params_fallback_is_torchvision_central_crop():
    for H, W, ratio in ((40, 10, (0.9, 1.1)), (10, 40, (0.9, 1.1))):
        top, left, h, w = A.rrc_params(50, H, W, (0.9, 1.0), ratio, torch.Generator().manual_seed(0))
        ref = T.RandomResizedCrop.get_params(torch.empty(3, H, W), [0.9, 1.0], list(ratio))
        assert all(tuple(int(t[i]) for t in (top, left, h, w)) == ref for i in range(50))


def test_rrc_params_scale_08_1_mean_area():
    # torchvision gives ~0.488, not 0.54: large crops with extreme ratios get rejected and redrawn
    top, left, h, w = A.rrc_params(20000, 32, 32, (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(1))
    assert abs((h * w).float().mean() / 1024 - 0.488) < 0.02


# ------------------------------------------------------------------ photometric
FACTORS = torch.tensor([0.0, 0.5, 1.0, 1.7, 3.0])


@pytest.mark.parametrize("j,theirs", [(0, TF.adjust_brightness), (1, TF.adjust_contrast), (2, TF.adjust_saturation)])
def test_blend_ops(j, theirs):
    x = torch.cat([_rgb_imgs(), _imgs(5, (1, 3, 32, 32))])
    _close(A.jitter_op(j, x.clone(), FACTORS), _per_image(theirs, x, FACTORS))
    y = _imgs(2, (5, 3, 20, 27))
    _close(A.jitter_op(j, y.clone(), FACTORS.flip(0)), _per_image(theirs, y, FACTORS.flip(0)))


def test_adjust_hue():
    x = torch.cat([_rgb_imgs(), _imgs(6, (2, 3, 32, 32))])
    hue = torch.tensor([0.0, 0.5, -0.5, 0.1, -0.27, 0.33])
    _close(A.adjust_hue(x, hue), _per_image(TF.adjust_hue, x, hue))
    _close(A.jitter_op(3, x, hue), _per_image(TF.adjust_hue, x, hue))
    y = _imgs(7, (2, 3, 20, 27))
    _close(A.adjust_hue(y, hue[2:4]), _per_image(TF.adjust_hue, y, hue[2:4]))
    q = torch.randint(0, 4, (16, 3, 8, 8), generator=torch.Generator().manual_seed(9)) / 3.0  # many ties
    hq = torch.linspace(-0.5, 0.5, 16)
    _close(A.adjust_hue(q, hq), _per_image(TF.adjust_hue, q, hq))


def test_grayscale():
    x = _rgb_imgs()
    out = A.rgb_to_grayscale(x)
    _close(out, torch.stack([TF.rgb_to_grayscale(x[i], num_output_channels=3) for i in range(4)]))
    assert out.shape == x.shape and out.is_contiguous()


@pytest.mark.parametrize("k", [3, 9])
def test_gaussian_blur(k):
    for x in (_imgs(3), _imgs(4, (3, 3, 20, 27))):
        sigma = torch.tensor([0.1, 0.7, 2.0, 1.3])[: x.shape[0]]
        ref = torch.stack([TF.gaussian_blur(x[i], [k, k], [float(sigma[i])] * 2) for i in range(x.shape[0])])
        _close(A.gaussian_blur(x, sigma, k), ref, atol=1e-5)


def test_solarize():
    x = _imgs()
    x[0, 0, 0, :3] = torch.tensor([0.5, 0.4999, 0.5001])
    m = torch.tensor([True, False, True, True])
    ref = torch.stack([TF.solarize(x[i], 0.5) if m[i] else x[i] for i in range(4)])
    _close(A._apply(x.clone(), m, lambda z: torch.minimum(z, 1 - z)), ref, atol=0)  # as Augment does


# ------------------------------------------------------------------ color jitter
def test_color_jitter_identity_cases():
    x = _imgs()
    g = torch.Generator().manual_seed(0)
    _close(A.color_jitter(x.clone(), 0, 0, 0, 0, 1.0, g), x, atol=0)
    _close(A.color_jitter(x.clone(), 0.8, 0.8, 0.8, 0.2, 0.0, g), x, atol=0)


def test_color_jitter_matches_single_ops_in_drawn_order():
    x = _imgs(8, (64, 3, 16, 16))
    g = torch.Generator().manual_seed(4)
    out, (apply, order, fac) = A.color_jitter(x.clone(), 0.8, 0.8, 0.8, 0.2, 0.7, g, return_params=True)
    assert out.min() >= 0 and out.max() <= 1
    assert 0 < apply.sum() < 64
    assert (order.sort(1).values == torch.arange(4)).all()  # permutations
    lo = torch.tensor([0.2, 0.2, 0.2, -0.2])
    assert ((fac >= lo) & (fac <= torch.tensor([1.8, 1.8, 1.8, 0.2]))).all()
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for i in range(64):
        ref = x[i]
        if apply[i]:
            for j in order[i].tolist():
                ref = ops[j](ref, float(fac[i, j]))
        _close(out[i], ref, atol=1e-4)
    # same generator state -> same result
    out2 = A.color_jitter(x.clone(), 0.8, 0.8, 0.8, 0.2, 0.7, torch.Generator().manual_seed(4))
    _close(out, out2, atol=0)


def test_color_jitter_zero_strength_op_skipped():
    x = _imgs()
    out, (apply, order, fac) = A.color_jitter(x.clone(), 0.5, 0, 0, 0, 1.0, torch.Generator().manual_seed(1),
                                              return_params=True)
    _close(out, A.jitter_op(0, x.clone(), fac[:, 0]))


# ------------------------------------------------------------------ pipeline
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
SYMMETRIC = [A.ViewSpec(32, jitter=(0.8, 0.8, 0.8, 0.2), blur_p=0.5)] * 2  # SimCLR's CIFAR views
WEAK = [A.ViewSpec(32, jitter=(0.4, 0.4, 0.4, 0.1), blur_p=0.5)] * 2  # MoCo v2's and SimSiam's
ASYMMETRIC = [A.ViewSpec(32), A.ViewSpec(32, solarize_p=0.2)]  # BYOL's
VICREG = [A.ViewSpec(32, scale=(0.2, 1.0), solarize_p=0.1)] * 2


def _batch(B=8, H=32, W=32, seed=0):
    return torch.randint(0, 256, (B, 3, H, W), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("views", [SYMMETRIC, WEAK, ASYMMETRIC, VICREG], ids=["symmetric", "weak", "asymmetric",
                                                                             "vicreg"])
def test_augment_shapes_range_and_determinism(views):
    aug = A.Augment(views, MEAN, STD)
    x = _batch()
    x0 = x.clone()
    v1 = aug(x, torch.Generator().manual_seed(0))
    v2 = aug(x, torch.Generator().manual_seed(0))
    v3 = aug(x, torch.Generator().manual_seed(1))
    assert torch.equal(x, x0)
    assert len(v1) == 2
    for a, b, c in zip(v1, v2, v3):
        assert a.shape == (8, 3, 32, 32) and a.dtype == torch.float32 and torch.isfinite(a).all()
        assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(v1[0], v1[1])
    lo = (0 - torch.tensor(MEAN)) / torch.tensor(STD)
    hi = (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    for v in v1:
        assert (v >= lo.view(1, 3, 1, 1) - 1e-4).all() and (v <= hi.view(1, 3, 1, 1) + 1e-4).all()


def test_sharded_views_are_the_rows_of_the_global_batch():
    """Several processes: each rank draws the parameters of the global batch and keeps its rows, so the ranks' views
    together are exactly the views one process makes of the concatenated batch."""
    views = A.multicrop(SYMMETRIC, 2, 16, (0.05, 0.4), (0.4, 1.0))
    x = _batch(12)
    whole = A.Augment(views, MEAN, STD)(x, torch.Generator().manual_seed(3))
    parts = [A.Augment(views, MEAN, STD, shard=(r, 3))(x[4 * r:4 * (r + 1)], torch.Generator().manual_seed(3))
             for r in range(3)]
    for v, view in enumerate(whole):
        assert torch.equal(view, torch.cat([p[v] for p in parts])), v


def test_augment_multicrop():
    views = A.multicrop(SYMMETRIC, n_local=4, local_size=16, local_scale=(0.05, 0.4), global_scale=(0.4, 1.0))
    assert len(views) == 6 and [v.size for v in views] == [32, 32, 16, 16, 16, 16]
    assert views[0].scale == (0.4, 1.0) and views[2].scale == (0.05, 0.4)
    assert views[2].jitter == views[0].jitter
    out = A.Augment(views, MEAN, STD)(_batch(), torch.Generator().manual_seed(0))
    assert [tuple(o.shape) for o in out] == [(8, 3, 32, 32)] * 2 + [(8, 3, 16, 16)] * 4


def _padded(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    ims = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for h, w in sizes]
    return ims, imagefiles.pad_images(ims)


def test_augment_padded_batch_of_images_of_different_sizes():
    """Large images arrive as (zero-padded batch, sizes): views depend on neither the padding nor the process split."""
    ims, (x, hw) = _padded([(75, 100), (100, 67), (60, 90), (90, 90)])
    assert x.shape == (4, 3, 100, 100) and hw.tolist() == [[75, 100], [100, 67], [60, 90], [90, 90]]
    assert torch.equal(x[1, :, :, :67], ims[1]) and x[1, :, :, 67:].sum() == 0
    views = [A.ViewSpec(48, blur_p=1.0), A.ViewSpec(24, solarize_p=0.2)]
    out = A.Augment(views, MEAN, STD)((x, hw), torch.Generator().manual_seed(0))
    assert [tuple(o.shape) for o in out] == [(4, 3, 48, 48), (4, 3, 24, 24)]
    more = torch.zeros(4, 3, 130, 111, dtype=torch.uint8)
    more[:, :, :100, :100] = x
    again = A.Augment(views, MEAN, STD)((more, hw), torch.Generator().manual_seed(0))
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(out, again))  # more padding: the same views
    for r in range(2):  # rank r of 2: its two images, padded to its own maximum, and its rows of every draw
        part = imagefiles.pad_images(ims[2 * r:2 * r + 2])
        mine = A.Augment(views, MEAN, STD, shard=(r, 2))(part, torch.Generator().manual_seed(0))
        assert all(torch.allclose(a, b[2 * r:2 * r + 2], atol=1e-4) for a, b in zip(mine, out))


def test_rrc_params_with_a_size_per_sample_is_the_scalar_draw_row_by_row():
    sizes = torch.tensor([[375, 500], [500, 333], [40, 10], [10, 40], [7, 300]])
    for scale, ratio in (((0.08, 1.0), (3 / 4, 4 / 3)), ((0.9, 1.0), (0.9, 1.1))):  # the second: many fallbacks
        per = A.rrc_params(5, sizes[:, 0], sizes[:, 1], scale, ratio, torch.Generator().manual_seed(4))
        for i, (H, W) in enumerate(sizes.tolist()):
            one = A.rrc_params(5, H, W, scale, ratio, torch.Generator().manual_seed(4))
            assert [int(t[i]) for t in per] == [int(t[i]) for t in one], (i, H, W)


@pytest.mark.parametrize("size", [224, 96, 17, 300])
def test_area_resized_crop_is_torchvisions_antialiased_resized_crop(size):
    """Images of different sizes in one padded batch, random boxes from small (upscaled) to large (downscaled 4x):
    float images agree with torchvision's resized_crop(antialias=True) to 1e-5 (of 1); uint8 ones to 1.05 grey levels
    (torchvision rounds to uint8 after each of its two passes and uses fixed-point weights). The old bilinear crop
    (no antialiasing) is off by far more on a downscaled box, so the comparison can tell them apart."""
    ims, (x, hw) = _padded([(375, 500), (500, 333), (40, 50), (7, 300)], seed=size)
    g = torch.Generator().manual_seed(size)
    box = A.rrc_params(4, hw[:, 0], hw[:, 1], (0.08, 1.0), (3 / 4, 4 / 3), g)
    out = A.area_resized_crop(x.float() / 255, *box, size)
    for i in range(4):
        b = [int(t[i]) for t in box]
        ref8 = TF.resized_crop(ims[i], *b, [size, size], antialias=True)
        ref = TF.resized_crop(ims[i].float() / 255, *b, [size, size], antialias=True)
        _close(out[i], ref, atol=1e-5)
        _close(out[i] * 255, ref8.float(), atol=1.05)
    whole = [torch.tensor([v]) for v in (0, 0, 375, 500)]  # all of image 0 (375 x 500), downscaled
    aa, plain = (f(x[:1].float() / 255, *whole, size) for f in (A.area_resized_crop, A.resized_crop))
    _close(aa[0], TF.resized_crop(ims[0].float() / 255, 0, 0, 375, 500, [size, size], antialias=True), atol=1e-5)
    assert (aa - plain).abs().max() > 0.1


def test_augment_identity_spec_is_normalize_only_and_channels_last():
    spec = A.ViewSpec(32, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0, jitter_p=0, gray_p=0)
    x = _batch()
    out = A.Augment([spec], MEAN, STD)(x, torch.Generator().manual_seed(0))[0]
    ref = (x.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    _close(out, ref, atol=1e-5)
    cl = A.Augment([spec], MEAN, STD, channels_last=True)(x, torch.Generator().manual_seed(0))[0]
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, out)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_and_is_deterministic():
    x = _rgb_imgs()
    f, hue = torch.tensor([0.3, 1.0, 1.5, 2.0]), torch.tensor([-0.5, -0.1, 0.2, 0.5])
    for j, prm in ((1, f), (2, f), (3, hue)):
        _close(A.jitter_op(j, x.cuda(), prm.cuda()).cpu(), A.jitter_op(j, x.clone(), prm))
    _close(A.gaussian_blur(x.cuda(), f.cuda(), 5).cpu(), A.gaussian_blur(x, f, 5))
    top, left, h, w = (torch.tensor(c) for c in ((0, 3, 1, 20), (0, 5, 2, 9), (32, 10, 7, 12), (32, 20, 30, 23)))
    _close(A.resized_crop(x.cuda(), top.cuda(), left.cuda(), h.cuda(), w.cuda(), 24).cpu(),
           A.resized_crop(x, top, left, h, w, 24))
    aug = A.Augment(A.multicrop(SYMMETRIC, 2, 16, (0.05, 0.4), (0.4, 1.0)), MEAN, STD)
    xb = _batch().cuda()
    o1 = aug(xb, torch.Generator(device="cuda").manual_seed(0))
    o2 = aug(xb, torch.Generator(device="cuda").manual_seed(0))
    assert all(a.is_cuda and torch.equal(a, b) for a, b in zip(o1, o2))


def test_the_crop_of_a_padded_batch_never_makes_the_host_wait():
    """Per-sample sizes, boxes and the antialiased crop of every view: no op that reads a device value on the host
    (item, nonzero, boolean-mask indexing) and no shape that depends on the data, as CONVENTIONS.md asks of a step."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            bool_index = func.overloadpacket.__name__.startswith("index") and any(
                getattr(a, "dtype", None) == torch.bool for a in (args[1] if len(args) > 1 and
                                                                  isinstance(args[1], (list, tuple)) else []))
            seen.append("bool_index" if bool_index else func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    _, (x, hw) = _padded([(75, 100), (100, 67), (60, 90)])
    seen, img = [], x.float()
    with Ops():
        for size, scale in ((48, (0.4, 1.0)), (16, (0.05, 0.4))):
            box = A.rrc_params(3, hw[:, 0], hw[:, 1], scale, (3 / 4, 4 / 3), torch.Generator().manual_seed(0))
            out = A.area_resized_crop(img, *box, size)
    assert out.shape == (3, 3, 16, 16) and len(seen) > 20
    waits = {"_local_scalar_dense", "item", "nonzero", "masked_select", "is_nonzero", "bool_index", "unique"}
    assert not waits & set(seen), sorted(waits & set(seen))

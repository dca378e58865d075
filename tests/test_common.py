"""Plumbing: LARS, schedules, checkpoints, data loading from real on-disk formats, evaluation checks."""
import contextlib
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision
from PIL import Image

import common
import estimators


def test_lars_step_matches_hand_computation():
    w = nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    b = nn.Parameter(torch.tensor([1.0]))
    opt = common.LARS([dict(params=[w], weight_decay=0.1, lars_exclude=False),
                       dict(params=[b], weight_decay=0.0, lars_exclude=True)], lr=0.5, momentum=0.9, eta=0.02)
    w.grad, b.grad = torch.tensor([[0.0, 1.0]]), torch.tensor([2.0])  # ||g|| = 1
    opt.step()
    trust = min(0.02 * 5 / (1 + 0.1 * 5) / 0.5, 1.0)  # clipped ratio relative to the global lr
    step_w = 0.5 * trust * (torch.tensor([[0.0, 1.0]]) + 0.1 * torch.tensor([[3.0, 4.0]]))
    assert torch.allclose(w.detach(), torch.tensor([[3.0, 4.0]]) - step_w, atol=1e-7)
    assert torch.allclose(b.detach(), torch.tensor([1.0 - 0.5 * 2.0]))  # excluded: plain SGD, no decay
    w.grad, b.grad = torch.tensor([[0.0, 1.0]]), torch.tensor([2.0])
    w0 = w.detach().clone()
    opt.step()  # momentum: buffer = 0.9 * previous + new
    assert torch.allclose(b.detach(), torch.tensor([0.0 - 0.5 * (0.9 * 2 + 2)]))
    trust2 = min(0.02 * w0.norm() / (1 + 0.1 * w0.norm()) / 0.5, 1.0)
    g2 = trust2 * (torch.tensor([[0.0, 1.0]]) + 0.1 * w0)
    assert torch.allclose(w.detach(), w0 - 0.5 * (0.9 * step_w / 0.5 + g2), atol=1e-6)


def lars_reference(groups, state, lr, momentum=0.9, eta=0.02, eps=1e-8, clip=True):
    """solo-learn's LARS, one parameter at a time with Python branches (the naive second implementation)."""
    for grp in groups:
        for p in (p for p in grp["params"] if p.grad is not None):
            d, wd, p_norm, g_norm = p.grad.clone(), grp["weight_decay"], float(p.detach().norm()), float(p.grad.norm())
            if not grp["lars_exclude"] and p_norm != 0 and g_norm != 0:
                ratio = eta * p_norm / (g_norm + p_norm * wd + eps)
                d = (d + wd * p) * (min(ratio / lr, 1.0) if clip else ratio)
            state[p] = d if p not in state else momentum * state[p] + d
            p.data -= lr * state[p]


@pytest.mark.parametrize("clip", [True, False])
def test_lars_foreach_equals_per_parameter_reference(clip):
    """Random weights and gradients over 5 steps, with a zero weight, a zero gradient, a parameter without gradient
    and one that gets its first gradient late (buffer = its first gradient): the foreach LARS = the reference."""
    g = torch.Generator().manual_seed(0)
    shapes = [(8, 5), (16, 3, 3, 3), (7, 4), (3, 6), (5,), (5,), (4, 4)]
    ours = [nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    ours[2].data.zero_()  # ||w|| = 0: no ratio, no decay
    ref = [nn.Parameter(p.detach().clone()) for p in ours]
    split = lambda ps: [dict(params=ps[:4] + ps[6:], weight_decay=0.1, lars_exclude=False),  # noqa: E731
                        dict(params=ps[4:6], weight_decay=0.0, lars_exclude=True)]
    opt, state = common.LARS(split(ours), lr=0.3, clip=clip), {}
    for step in range(5):
        for i, (a, b) in enumerate(zip(ours, ref)):
            grad = torch.randn(a.shape, generator=g) * (0.0 if i == 3 else 10.0 ** (i % 3 - 1))  # ||g|| = 0: as is
            a.grad, b.grad = (None, None) if i == 6 and step < 2 else (grad.clone(), grad.clone())
        opt.step()
        lars_reference(split(ref), state, lr=0.3, clip=clip)
        for a, b in zip(ours, ref):
            assert torch.allclose(a, b, rtol=1e-6, atol=1e-6), (step, (a - b).abs().max())


def test_param_groups_exclude_bias_and_norm():
    m = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    decay, no_decay = common.param_groups(m, 1e-4)
    assert len(decay["params"]) == 1 and decay["weight_decay"] == 1e-4 and not decay["lars_exclude"]
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0 and no_decay["lars_exclude"]


def test_schedules():
    assert common.warmup_cosine(0, 100, 10, start=0.0) == pytest.approx(0.0, abs=1e-12)
    assert common.warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert common.warmup_cosine(55, 100, 10) == pytest.approx(0.5)
    assert common.warmup_cosine(100, 100, 10) == pytest.approx(0.0)
    assert common.cosine_schedule(0, 100, 0.99, 1.0) == pytest.approx(0.99)
    assert common.cosine_schedule(50, 100, 0.99, 1.0) == pytest.approx(0.995)
    assert common.cosine_schedule(100, 100, 0.99, 1.0) == pytest.approx(1.0)


def test_linspace_warmup_is_the_official_teacher_temperature_schedule():
    """DINO / iBOT: np.concatenate((np.linspace(start, final, W), final for the other epochs)), indexed by epoch: start
    at epoch 0, final from epoch W - 1 on (W = 1: start in epoch 0 only; W = 0: final from the start)."""
    for w in (0, 1, 2, 3, 30, 50):
        official = np.concatenate((np.linspace(0.04, 0.07, w), np.full(w + 3, 0.07)))
        ours = [common.linspace_warmup(e, w, 0.04, 0.07) for e in range(2 * w + 3)]
        assert np.allclose(ours, official, atol=1e-12, rtol=0), w
    assert abs(common.linspace_warmup(29, 30, 0.04, 0.07) - 0.07) < 1e-12  # the last warmup epoch: the final value
    assert abs(common.linspace_warmup(1, 3, 0.04, 0.07) - 0.055) < 1e-12  # halfway through epochs 0, 1, 2


def test_checkpoint_is_atomic_and_its_bytes_depend_on_the_state_alone(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    common.save_checkpoint(path, {"step": 1})
    common.save_checkpoint(tmp_path / "other.pt", {"step": 1})  # another name (torch.save stores a file's name)
    assert path.read_bytes() == (tmp_path / "other.pt").read_bytes()
    real_write = Path.write_bytes

    def full_disk(self, data):
        real_write(self, bytes(data)[:100])  # half written, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    with pytest.raises(OSError, match="No space left"):
        common.save_checkpoint(path, {"step": 2})
    assert torch.load(path, weights_only=True)["step"] == 1  # the previous checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "other.pt"]  # and no temporary file is left


def test_a_checkpoint_with_the_format_tag_but_missing_keys_is_one_line(tmp_path):
    import simclr
    args = simclr.Args()
    full = {"format": common.CKPT_FORMAT, "method": "simclr", "model": {}, "optimizers": [], "probe": {},
            "probe_opt": {}, "epoch": 0, "batch_in_epoch": 0, "rng": {}, "args": dataclasses.asdict(args)}  # no "step"
    for state in (full, {"format": common.CKPT_FORMAT}):
        torch.save(state, tmp_path / "bad.pt")
        with pytest.raises(common.UserError, match="not a complete cleanssl training checkpoint"):
            common.load_checkpoint(str(tmp_path / "bad.pt"), "simclr", args)


def test_knn_and_linear_probe_on_separable_features():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(600) % 3
    f = nn.functional.one_hot(y, 3).float() * 3 + 0.3 * torch.randn(600, 3, generator=g)
    assert estimators.knn_top1(f[:500], y[:500], f[500:], y[500:], 3) == 100.0
    noise = torch.randn(600, 3, generator=g)  # features unrelated to the labels: about chance
    assert estimators.knn_top1(noise[:500], y[:500], noise[500:], y[500:], 3) < 55
    backbone = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    assert estimators.linear_probe(backbone, f[:500], y[:500], f[500:], y[500:], 3) == 100.0


def test_linear_probe_refuses_a_changed_backbone(monkeypatch):
    backbone = nn.BatchNorm1d(3)
    f, y = torch.randn(64, 3), torch.arange(64) % 2
    real_adam = torch.optim.Adam

    def sneaky_adam(params, lr):  # a probe that also trains (or changes) the backbone must be caught
        backbone.running_mean.add_(1.0)
        return real_adam(params, lr=lr)

    monkeypatch.setattr(torch.optim, "Adam", sneaky_adam)
    with pytest.raises(AssertionError, match="BN stats"):
        estimators.linear_probe(backbone, f, y, f, y, 2, epochs=1)


@pytest.mark.parametrize("name,dim", [("tiny", 128), ("resnet18", 512)])
def test_backbones_and_strict_reload(name, dim):
    net, d = common.build_backbone(name, 32)
    assert d == dim and net(torch.randn(2, 3, 32, 32)).shape == (2, dim)
    again, _ = common.build_backbone(name, 32)
    again.load_state_dict(net.state_dict(), strict=True)
    if name == "resnet18":  # CIFAR stem for small images, torchvision's stem for large ones
        assert net.conv1.kernel_size == (3, 3) and isinstance(net.maxpool, nn.Identity)
        assert common.build_backbone(name, 224)[0].conv1.kernel_size == (7, 7)


def test_vit_mini_has_4_blocks_and_loads_into_torchvision():
    mini, dim = common.build_backbone("vit_mini", 32, 8)
    tiny, _ = common.build_backbone("vit_tiny", 32, 8)
    assert dim == 128 and len(mini.encoder.layers) == 4 and len(tiny.encoder.layers) == 12
    tv = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=4, num_heads=2, hidden_dim=128,
                                              mlp_dim=512)
    tv.heads = nn.Identity()
    tv.load_state_dict(mini.state_dict(), strict=True)  # the README's loading recipe
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(tv.eval()(x), mini.eval()(x), atol=1e-5)


def test_vit_masked_and_subset_forwards_equal_the_full_forward_when_nothing_is_removed():
    torch.manual_seed(0)
    vit, dim = common.build_backbone("vit_tiny", 32, 8)  # a 4 x 4 grid of patches
    x, token = torch.randn(3, 3, 32, 32), torch.randn(dim)
    full = vit.tokens(x)
    assert full.shape == (3, 17, dim)
    assert torch.allclose(full[:, 0], torchvision.models.VisionTransformer.forward(vit, x), atol=1e-5)
    nothing = torch.zeros(3, 16, dtype=torch.bool)
    assert torch.allclose(vit.tokens(x, mask=nothing, mask_token=token), full, atol=1e-5)
    assert torch.allclose(vit.tokens(x, keep=torch.arange(16).expand(3, -1)), full, atol=1e-5)
    perm = torch.stack([torch.randperm(16) for _ in range(3)])  # kept patches in another order: the same tokens
    got = vit.tokens(x, keep=perm)
    assert torch.allclose(got[:, 1:], full[:, 1:].gather(1, perm[..., None].expand(-1, -1, dim)), atol=1e-5)
    some = nothing.clone()
    some[:, :4] = True  # and masking something does change the output
    assert (vit.tokens(x, mask=some, mask_token=token) - full).abs().max() > 1e-2


def test_synthetic_is_seeded_and_balanced():
    x1, y1 = common.make_synthetic(200, 3)
    x2, y2 = common.make_synthetic(200, 3)
    x3, _ = common.make_synthetic(200, 4)
    assert x1.dtype == torch.uint8 and x1.shape == (200, 3, 32, 32)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    assert torch.bincount(y1).tolist() == [20] * 10


def _write_folder(root, size, n_per_class=6, classes=("cat", "dog"), split="val", fmt="png"):
    rng = np.random.default_rng(0)
    for s, n in (("train", n_per_class), (split, 2)):
        for c in classes:
            (root / s / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / s / c / f"{i}.{fmt}")


def test_imagefolder_small_images_are_decoded_once(tmp_path):
    _write_folder(tmp_path, 32)
    d = common.load_data("imagefolder", str(tmp_path), 0, "cpu")
    (x_all, y_all), (test, _) = d.splits["ssl"], d.splits["test"]
    assert not d.large and x_all.shape == (12, 3, 32, 32) and x_all.dtype == torch.uint8
    assert d.num_classes == 2 and test.shape[0] == 4 and sorted(y_all.tolist()) == [0] * 6 + [1] * 6
    first = Image.open(tmp_path / "train" / "cat" / "0.png")
    assert torch.equal(x_all[0], torch.from_numpy(np.array(first)).permute(2, 0, 1))
    x, y, idx = next(d.ssl_batches(4, 0, 0))
    assert x.shape == (4, 3, 32, 32) and torch.equal(x_all[idx], x) and torch.equal(y_all[idx], y)


def test_batches_are_seeded_resumable_and_shared_out_by_rank(monkeypatch):
    d = common.load_data("synthetic", "", 0, "cpu")
    epoch = [idx for _, _, idx in d.ssl_batches(512, 3, 7)]
    assert len(epoch) == 8 and torch.equal(torch.cat(epoch).sort().values, torch.arange(4096))  # a permutation
    assert all(torch.equal(a, b) for a, b in zip(epoch, [i for _, _, i in d.ssl_batches(512, 3, 7)]))  # seeded
    assert not torch.equal(epoch[0], next(d.ssl_batches(512, 4, 7))[2])  # a new order each epoch
    assert all(torch.equal(a, b) for a, b in zip(epoch[5:], [i for _, _, i in d.ssl_batches(512, 3, 7, start=5)]))
    for r in range(4):  # rank r of 4 takes the r-th quarter of every global batch
        monkeypatch.setattr(common, "rank", lambda: r)
        monkeypatch.setattr(common, "world_size", lambda: 4)
        shares = [i for _, _, i in d.ssl_batches(512, 3, 7)]
        assert all(torch.equal(s, e[128 * r:128 * (r + 1)]) for s, e in zip(shares, epoch))


def _write_large(root, corrupt=True):
    """ImageNet-sized JPEGs (375 x 500 and 500 x 333), 2 classes; train/dog/1.jpg truncated if `corrupt`."""
    rng = np.random.default_rng(0)
    for s, n in (("train", 6), ("val", 2)):
        for c in ("cat", "dog"):
            (root / s / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 255, (375, 500, 3) if i % 2 else (500, 333, 3), dtype=np.uint8)
                Image.fromarray(img).save(root / s / c / f"{i}.jpg")
    if corrupt:
        data = (root / "train" / "dog" / "1.jpg").read_bytes()
        (root / "train" / "dog" / "1.jpg").write_bytes(data[:len(data) // 3])
    return root


@pytest.mark.parametrize("decode", ["cpu", "gpu"])
def test_imagefolder_large_images_are_only_decoded_by_the_workers(tmp_path, capsys, decode):
    """Workers return decoded images (decode cpu) or the files' bytes (gpu: decoded by the device, here the CPU), padded
    into one batch with their sizes; the corrupt file is replaced by a readable one and counted, in both paths; the
    DataLoader and its workers persist across epochs; samples are numpy arrays."""
    d = common.load_data("imagefolder", str(_write_large(tmp_path)), 0, "cpu", workers=2, decode=decode)
    assert d.large and d.image_size == 224 and d.feed.persistent_workers and d.feed.num_workers == 2
    paths, labels = d.files["ssl"]
    assert isinstance(paths, np.ndarray) and paths.dtype.kind == "S" and labels.dtype == np.int64
    bad = [i for i, p in enumerate(paths) if p.endswith(b"dog/1.jpg")][0]
    seen = []
    for epoch in range(2):
        for (x, hw), y, idx in d.ssl_batches(4, epoch, 0):
            assert x.dtype == torch.uint8 and x.shape[:2] == (4, 3) and tuple(x.shape[2:]) == tuple(hw.amax(0).tolist())
            for k, i in enumerate(idx.tolist()):
                seen.append(i)
                h, w = hw[k].tolist()
                assert x[k, :, h:].sum() == 0 and x[k, :, :, w:].sum() == 0  # zero padding
                if i != bad:  # the image itself, as torchvision decodes it
                    ref = torchvision.io.decode_image(torchvision.io.read_file(paths[i].decode()))
                    assert torch.equal(x[k, :, :h, :w], ref) and y[k] == labels[i]
                else:  # another readable image in its place
                    assert (h, w) in ((375, 500), (500, 333)) and x[k].float().std() > 10
        assert d.feed._iterator is not None  # kept for the next epoch
        workers = d.feed._iterator._workers
    assert sorted(seen) == sorted(list(range(12)) * 2) and d.unreadable == 2
    full, resumed = list(d.ssl_batches(4, 1, 0)), list(d.ssl_batches(4, 1, 0, start=1))  # resume at batch 1
    assert all(torch.equal(a[0][0], b[0][0]) and torch.equal(a[2], b[2]) for a, b in zip(full[1:], resumed))
    assert d.feed._iterator._workers is workers  # the same worker processes in epoch 2
    assert capsys.readouterr().err.count("warning: unreadable image") == 4
    x, _ = next(d.eval_batches("test"))
    assert x.shape == (4, 3, 224, 224)


def test_decode_workers_reuse_their_shared_buffers_and_never_write_into_a_held_batch(tmp_path):
    """A worker pads its batches into RING shared buffers in turn (page faults of fresh memory cost a third of the
    decoding), reusing one only when the main process holds no tensor of it: a training loop lets it reuse them; a
    consumer that keeps every batch gets new ones, and its batches keep their pixels."""
    from augment import RING
    d = common.load_data("imagefolder", str(_write_large(tmp_path, corrupt=False)), 0, "cpu", workers=1)
    ds, paths = d.feed.dataset, d.files["ssl"][0]
    for epoch in range(4):  # 6 batches each, read and dropped, as a training step does
        for (x, hw), y, idx in d.ssl_batches(2, epoch, 0):
            assert x.float().mean() > 0
    assert 0 < ds.fresh.item() <= 2 * RING, ds.fresh  # the ring filled (and grown to a larger batch), then reused
    kept, before = list(d.ssl_batches(2, 4, 0)), ds.fresh.item()
    for _ in d.ssl_batches(2, 5, 0):  # another epoch while every batch of epoch 4 is still held
        pass
    assert ds.fresh.item() > before  # so the worker wrote into new buffers
    for (x, hw), y, idx in kept:
        for k, i in enumerate(idx.tolist()):
            h, w = hw[k].tolist()
            ref = torchvision.io.decode_image(torchvision.io.read_file(paths[i].decode()))
            assert torch.equal(x[k, :, :h, :w], ref)


def test_read_jpeg_bytes_refuses_a_truncated_jpeg_only(tmp_path):
    """--decode gpu's workers: a JPEG cut short raises (nvJPEG would decode it without an error); whole baseline and
    progressive JPEGs and other formats pass as their bytes."""
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    img.save(tmp_path / "a.jpg"), img.save(tmp_path / "p.jpg", progressive=True), img.save(tmp_path / "a.png")
    for name in ("a.jpg", "p.jpg", "a.png"):
        assert torch.equal(common.read_jpeg_bytes(str(tmp_path / name)), torchvision.io.read_file(str(tmp_path / name)))
    for name, cut in (("a.jpg", 2), ("p.jpg", 2), ("p.jpg", 4 / 3)):  # progressive: cut in its last scans too
        data = (tmp_path / name).read_bytes()
        (tmp_path / "cut.jpg").write_bytes(data[:int(len(data) / cut)])
        with pytest.raises(ValueError, match="truncated JPEG"):
            common.read_jpeg_bytes(str(tmp_path / "cut.jpg"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_decode_jpegs_on_cuda_is_nvjpeg_close_to_the_cpu_decoder_and_replaces_a_bad_file(tmp_path):
    """--decode gpu on a GPU: one batched nvJPEG decode gives the CPU decoder's pixels up to the IDCT's rounding (mean
    absolute difference < 1 level of 255, max <= 16) on JPEGs without chroma subsampling (4:4:4); a file nvJPEG cannot
    decode is replaced by the next image of the batch. (With 4:2:0 chroma, nvJPEG's chroma upsampling differs from
    libjpeg-turbo's: on the first H100 run, random-noise 4:2:0 images differed by 10 levels on average, 117 at most.)"""
    rng, blobs = np.random.default_rng(0), []
    for i in range(6):
        h, w = (375, 500) if i % 2 else (500, 333)
        yy, xx = np.mgrid[:h, :w]
        img = np.stack([128 + 100 * np.sin(xx / (20 + 5 * i)), 128 + 100 * np.cos(yy / 30), (xx + yy) % 256], -1)
        img = (img + rng.integers(-8, 9, img.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(tmp_path / f"{i}.jpg", quality=90, subsampling=0)
        blobs.append(common.read_jpeg_bytes(str(tmp_path / f"{i}.jpg")))
    bad = 2
    not_a_jpeg = torch.full((999,), 7, dtype=torch.uint8)
    for blobs_, has_bad in ((blobs, False), (blobs[:bad] + [not_a_jpeg] + blobs[bad + 1:], True)):
        (x, hw), src, ok = common.decode_jpegs(blobs_, "cuda", common.LARGE_MAX)
        (xc, hwc), srcc, okc = common.decode_jpegs(blobs_, "cpu", common.LARGE_MAX)
        assert x.is_cuda and x.dtype == torch.uint8 and torch.equal(hw.cpu(), hwc.cpu()) and src == srcc
        d = (x.cpu().float() - xc.float()).abs()
        assert d.mean() < 1.0 and d.max() <= 16, (d.mean(), d.max())
        assert ok == okc and (not has_bad or (ok.count(False) == 1 and src[bad] != bad))


def test_large_images_are_shrunk_to_large_max_and_read_in_other_formats(tmp_path):
    Image.fromarray(np.full((600, 1500, 3), 200, dtype=np.uint8)).save(tmp_path / "big.bmp")  # not a torchvision format
    x = common.read_image(str(tmp_path / "big.bmp"), common.LARGE_MAX)
    assert x.shape == (3, round(600 * 512 / 1500), 512) and (x.float() - 200).abs().max() < 1


def test_medmnist_npz(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "bloodmnist.npz"
    np.savez(path, train_images=rng.integers(0, 255, (20, 28, 28, 3), dtype=np.uint8), train_labels=rng.integers(0, 8, (20, 1)),
             test_images=rng.integers(0, 255, (6, 28, 28, 3), dtype=np.uint8), test_labels=rng.integers(0, 8, (6, 1)))
    d = common.load_data("medmnist", str(path), 0, "cpu")
    assert d.splits["ssl"][0].shape == (20, 3, 28, 28) and d.splits["test"][1].shape == (6,) and d.image_size == 28


@pytest.mark.parametrize("shape", [(20, 784), (20, 1, 28, 28, 3), (20, 28, 28, 2)], ids=["2-D", "5-D", "2 channels"])
def test_medmnist_images_of_another_shape_are_one_line(tmp_path, shape):
    path, labels = tmp_path / "odd.npz", np.zeros((20, 1), dtype=np.int64)
    np.savez(path, train_images=np.zeros(shape, np.uint8), train_labels=labels, test_images=np.zeros(shape, np.uint8),
             test_labels=labels)
    with pytest.raises(common.UserError, match=r"images \(N, H, W\) or \(N, H, W, 1 or 3\).*odd.npz is not one"):
        common.load_data("medmnist", str(path), 0, "cpu")


@pytest.mark.parametrize("name", ["imagefolder", "tinyimagenet", "medmnist"])
def test_missing_data_is_one_clear_line(tmp_path, name):
    with pytest.raises(common.UserError) as e:
        common.load_data(name, str(tmp_path / "nothing"), 0, "cpu")
    msg = str(e.value)
    assert "\n" not in msg and "nothing" in msg


def test_evaluation_leaves_batchnorm_statistics_alone(train):
    """MI metrics and evaluation run the model in eval mode: BN running statistics do not move."""
    import simclr
    t = train(simclr, "--dataset", "synthetic", "--backbone", "tiny", "--batch-size", 32, "--max-steps", 2,
              "--epochs", 1, "--eval-every", 0, "--mi-every", 0, "--save-every", 0, "--device", "cpu")
    run = t.run
    before = {k: v.clone() for k, v in run.model.state_dict().items() if "running" in k}
    run.log_representation()
    run.evaluate()
    after = run.model.state_dict()
    assert before and all(torch.equal(v, after[k]) for k, v in before.items())


def test_finetuning_trains_on_the_labelled_train_split(monkeypatch):
    """STL-10's layout: an SSL split of mostly unlabelled images (label -1) and a smaller labelled train split.
    Fine-tuning sees only the train split's images, all labelled, in shuffled batches of its size."""
    x, y = common.make_synthetic(160, 0)
    ssl = x, torch.where(torch.arange(160) < 64, y, -1)  # images 64... unlabelled
    d = common.Data("stl-like", 10, 32, (0.5,) * 3, (0.25,) * 3, splits={"ssl": ssl, "train": (x[:64], y[:64]),
                                                                           "test": (x[:16], y[:16])})
    seen, ce = [], common.labelled_cross_entropy
    monkeypatch.setattr(common, "labelled_cross_entropy", lambda logits, y: seen.append(y) or ce(logits, y))
    backbone, dim = common.build_backbone("tiny", 32)
    top1 = common.finetune(backbone, dim, d, lambda t: t.float() / 255, contextlib.nullcontext,
                           torch.amp.GradScaler("cpu", enabled=False), 2, 16, 0)
    assert len(seen) == 2 * 64 // 16 and all((s >= 0).all() for s in seen)
    assert torch.cat(seen[:4]).sort().values.tolist() == y[:64].sort().values.tolist()  # one epoch: each image once
    assert 0 <= top1 <= 100



def test_finetune_pool_mean_reads_the_mean_patch_token(monkeypatch):
    """MeanTokens = the mean of the patch tokens of torchvision's own encoder pass (CLS left out); finetune(pool="mean")
    puts it between the backbone copy and the head, pool "cls" does not."""
    vit, dim = common.build_backbone("vit_mini", 32, 8)
    x = torch.randn(3, 3, 32, 32)
    z = vit._process_input(x)  # torchvision: patch embedding (N, L, D)
    ref = vit.encoder(torch.cat([vit.class_token.expand(3, -1, -1), z], 1))[:, 1:].mean(1)
    assert torch.allclose(common.MeanTokens(vit)(x), ref, atol=1e-5)
    made, cls = [], common.MeanTokens
    monkeypatch.setattr(common, "MeanTokens", lambda v: made.append(v) or cls(v))
    d = common.Data("s", 10, 32, (0.5,) * 3, (0.25,) * 3, splits={s: common.make_synthetic(16, 0) for s in
                                                                   ("ssl", "train", "test")})
    for pool in ("cls", "mean"):
        common.finetune(vit, dim, d, lambda t: t.float() / 255, contextlib.nullcontext,
                        torch.amp.GradScaler("cpu", enabled=False), 1, 8, 0, pool)
        assert len(made) == (pool == "mean") and all(v is not vit for v in made)  # a copy, never the backbone


def test_finetune_head_comes_from_the_seed_not_the_global_random_state(monkeypatch):
    """Two backbones compared by fine-tuning (MAE against its random init) get the same head for the same seed, whatever
    ran before; another seed, another head; the global random state is left as it was."""
    heads, make = [], common.make_optimizer
    monkeypatch.setattr(common, "make_optimizer", lambda name, groups, lr: heads.append(
        [p.detach().clone() for g in groups for p in g["params"] if p.shape[0] == 10]) or make(name, groups, lr))
    backbone, dim = common.build_backbone("tiny", 32)
    d = common.Data("s", 10, 32, (0.5,) * 3, (0.25,) * 3, splits={s: common.make_synthetic(16, 0) for s in
                                                                   ("ssl", "train", "test")})
    for state, seed in ((1, 0), (2, 0), (1, 1)):
        torch.manual_seed(state)
        common.finetune(backbone, dim, d, lambda t: t.float() / 255, contextlib.nullcontext,
                        torch.amp.GradScaler("cpu", enabled=False), 1, 8, seed)
        assert torch.equal(torch.rand(3), torch.manual_seed(state) and torch.rand(3))  # the global state: untouched
    assert all(torch.equal(a, b) for a, b in zip(heads[0], heads[1])) and len(heads[0]) == 2  # head weight and bias
    assert not torch.equal(heads[0][0], heads[2][0])

def test_labelled_cross_entropy_of_two_ranks_with_unequal_labelled_counts_is_the_global_mean(monkeypatch):
    """Two ranks simulated in one process (world_size 2, all_reduce sums what both ranks reduce): the mean of their
    gradients (what average_gradients takes), their loss and top-1 are one process's on the whole batch."""
    logits = torch.randn(8, 5, generator=torch.Generator().manual_seed(0)).requires_grad_()
    y = torch.tensor([0, -1, 2, 3, -1, -1, -1, 1])  # rank 0 holds 3 labelled images, rank 1 holds 1
    loss, top1 = common.labelled_cross_entropy(logits, y)
    mask = y >= 0
    naive = nn.functional.cross_entropy(logits[mask], y[mask])
    assert loss.item() == pytest.approx(naive.item(), rel=1e-6)
    assert top1.item() == pytest.approx(100 * (logits[mask].argmax(1) == y[mask]).float().mean().item())
    grad, = torch.autograd.grad(naive, logits)
    shares, reduced = [(logits[:4], y[:4]), (logits[4:], y[4:])], []
    monkeypatch.setattr(common, "world_size", lambda: 2)
    monkeypatch.setattr(common.dist, "all_reduce", lambda t: reduced.append(t.clone()))  # what each rank reduces
    for lg, t in shares:
        common.labelled_cross_entropy(lg, t)
    monkeypatch.setattr(common.dist, "all_reduce", lambda t: t.copy_(reduced[0] + reduced[1]))
    mean_grad = 0
    for lg, t in shares:
        loss_r, top1_r = common.labelled_cross_entropy(lg, t)
        mean_grad = mean_grad + torch.autograd.grad(loss_r, logits)[0] / 2
        assert loss_r.item() == pytest.approx(naive.item(), rel=1e-6) and top1_r.item() == pytest.approx(top1.item())
    assert torch.allclose(mean_grad, grad, atol=1e-7, rtol=1e-5)

"""Plumbing: LARS, schedules, checkpoints, data loading from real on-disk formats, evaluation checks."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import common


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


def test_param_groups_exclude_bias_and_norm():
    m = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    decay, no_decay = common.param_groups(m, 1e-4)
    assert len(decay["params"]) == 1 and decay["weight_decay"] == 1e-4 and not decay["lars_exclude"]
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0 and no_decay["lars_exclude"]


def test_schedules():
    assert common.warmup_cosine(0, 100, 10, start=0.0) == 0.0
    assert common.warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert common.warmup_cosine(55, 100, 10) == pytest.approx(0.5)
    assert common.warmup_cosine(100, 100, 10) == pytest.approx(0.0)
    assert common.cosine_schedule(0, 100, 0.99, 1.0) == pytest.approx(0.99)
    assert common.cosine_schedule(50, 100, 0.99, 1.0) == pytest.approx(0.995)
    assert common.cosine_schedule(100, 100, 0.99, 1.0) == pytest.approx(1.0)
    assert common.scaled_lr(0.4, 512) == pytest.approx(0.8)


def test_checkpoint_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    common.save_checkpoint(path, {"step": 1})
    real_save = torch.save

    def crash(obj, f):
        real_save({"half": True}, f)
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(RuntimeError):
        common.save_checkpoint(path, {"step": 2})
    assert torch.load(path)["step"] == 1  # the previous checkpoint is intact


def test_knn_and_linear_probe_on_separable_features():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(600) % 3
    f = nn.functional.one_hot(y, 3).float() * 3 + 0.3 * torch.randn(600, 3, generator=g)
    assert common.knn_top1(f[:500], y[:500], f[500:], y[500:], 3) == 100.0
    noise = torch.randn(600, 3, generator=g)  # features unrelated to the labels: about chance
    assert common.knn_top1(noise[:500], y[:500], noise[500:], y[500:], 3) < 55
    backbone = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    assert common.linear_probe(backbone, f[:500], y[:500], f[500:], y[500:], 3) == 100.0


def test_linear_probe_refuses_a_changed_backbone(monkeypatch):
    backbone = nn.BatchNorm1d(3)
    f, y = torch.randn(64, 3), torch.arange(64) % 2
    real_adam = torch.optim.Adam

    def sneaky_adam(params, lr):  # a probe that also trains (or changes) the backbone must be caught
        backbone.running_mean.add_(1.0)
        return real_adam(params, lr=lr)

    monkeypatch.setattr(torch.optim, "Adam", sneaky_adam)
    with pytest.raises(AssertionError, match="BN statistics"):
        common.linear_probe(backbone, f, y, f, y, 2, epochs=1)


@pytest.mark.parametrize("name,dim", [("tiny", 128), ("resnet18", 512)])
def test_backbones_and_strict_reload(name, dim):
    net, d = common.build_backbone(name, 32)
    assert d == dim and net(torch.randn(2, 3, 32, 32)).shape == (2, dim)
    again, _ = common.build_backbone(name, 32)
    again.load_state_dict(net.state_dict(), strict=True)
    if name == "resnet18":  # CIFAR stem for small images, torchvision's stem for large ones
        assert net.conv1.kernel_size == (3, 3) and isinstance(net.maxpool, nn.Identity)
        assert common.build_backbone(name, 224)[0].conv1.kernel_size == (7, 7)


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
    assert not d.large and d.train.shape == (12, 3, 32, 32) and d.train.dtype == torch.uint8
    assert d.num_classes == 2 and d.test.shape[0] == 4 and sorted(d.train_labels.tolist()) == [0] * 6 + [1] * 6
    first = Image.open(tmp_path / "train" / "cat" / "0.png")
    assert torch.equal(d.train[0], torch.from_numpy(np.array(first)).permute(2, 0, 1))
    x, y, idx = next(d.ssl_batches(4, 0, 0))
    assert x.shape == (4, 3, 32, 32) and torch.equal(d.train[idx], x) and torch.equal(d.train_labels[idx], y)


def test_imagefolder_large_images_use_loader_crops(tmp_path):
    _write_folder(tmp_path, 160, split="test", fmt="jpg")
    d = common.load_data("imagefolder", str(tmp_path), 0, "cpu")
    assert d.large and d.image_size == 224
    views = common.symmetric_views(96)
    crops, y, idx = next(d.ssl_batches(4, 0, 0, views))
    assert [c.shape for c in crops] == [(4, 3, 96, 96)] * 2 and crops[0].dtype == torch.uint8
    x, _ = next(d.eval_batches("test"))
    assert x.shape == (4, 3, 224, 224)


def test_medmnist_npz(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "bloodmnist.npz"
    np.savez(path, train_images=rng.integers(0, 255, (20, 28, 28, 3), dtype=np.uint8), train_labels=rng.integers(0, 8, (20, 1)),
             test_images=rng.integers(0, 255, (6, 28, 28, 3), dtype=np.uint8), test_labels=rng.integers(0, 8, (6, 1)))
    d = common.load_data("medmnist", str(path), 0, "cpu")
    assert d.train.shape == (20, 3, 28, 28) and d.test_labels.shape == (6,) and d.image_size == 28


@pytest.mark.parametrize("name", ["imagefolder", "tinyimagenet", "medmnist"])
def test_missing_data_is_one_clear_line(tmp_path, name):
    with pytest.raises(common.UserError) as e:
        common.load_data(name, str(tmp_path / "nothing"), 0, "cpu")
    msg = str(e.value)
    assert "\n" not in msg and "nothing" in msg


def test_representation_metrics_keys():
    r, z1 = torch.randn(64, 16), torch.randn(64, 8)
    m = common.representation_metrics(r, z1, z1 + 0.1 * torch.randn(64, 8))
    for k in ("mi/cos_dv", "mi/infonce", "mi/jsd", "dim/erank_R", "dim/erank_Z", "dim/mi_RZ", "dim/eig_count_R",
              "dim/explained_var_top30_Z", "dim/uniformity_R"):
        assert math.isfinite(m[k]), k
    assert m["mi/infonce"] <= math.log(64) + 1e-6

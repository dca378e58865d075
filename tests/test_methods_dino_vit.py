"""DINO with a ViT (methods/dino_vit.py): the per-parameter gradient clipping on a hand-made example, the multi-crop
loss against explicit loops, local crops through the ViT with an interpolated position embedding, and end to end
(ViT-Tiny, patch 8, 8 local crops of 16 px): tags, checkpoint, backbone.pt (the teacher's) into torchvision's
VisionTransformer, the last layer frozen during epoch 0 and updated in epoch 1, the weight-decay and teacher-temperature
schedules as the loop ran them; the local crop size (dino_vit.py and ibot.py); methods/dino.py refusing a ViT."""
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision

import common
from plumbing import checkpoints
import dino
import dino_vit
import ibot
from conftest import TINY, check_the_teacher_is_the_main_result, events, naive_dino
from dino_vit import clip_gradients, dino_loss

# ViT-Tiny/8 at 32 px (16 patches; 16-px local crops: 4 patches), a small head: a few CPU seconds per step
VIT = ("--backbone", "vit_tiny", "--patch-size", 8, "--num-prototypes", 256, "--proj-hidden-dim", 128)
LAST = "student.1.last_layer.weight"  # the head's weight-normalized last layer V in the checkpoint


# ------------------------------------------------------------------------------------------------ gradient clipping
def test_clip_gradients_clips_each_parameter_on_its_own():
    m = nn.Module()
    m.big, m.small, m.edge, m.unused = (nn.Parameter(torch.zeros(s)) for s in ((2, 2), (2,), (2,), (3,)))
    m.big.grad = torch.tensor([[3.0, 4.0], [0.0, 0.0]]) * 2  # norm 10 > 3: scaled to norm 3
    m.small.grad = torch.tensor([1.0, 2.0])  # norm sqrt(5) < 3: untouched (a global-norm clip, 11.4 in all, would not)
    m.edge.grad = torch.tensor([0.0, 3.0])  # norm 3: the 1e-6 of the official code scales it by 3 / (3 + 1e-6)
    clip_gradients(m, 3.0)
    assert torch.allclose(m.big.grad, torch.tensor([[1.8, 2.4], [0.0, 0.0]]) * (10 / (10 + 1e-6)), atol=1e-7)
    assert abs(m.big.grad.norm().item() - 3.0) < 1e-5
    assert torch.allclose(m.small.grad, torch.tensor([1.0, 2.0]), atol=0, rtol=0)
    assert torch.allclose(m.edge.grad, torch.tensor([0.0, 3.0 * 3 / (3 + 1e-6)]), atol=1e-7)
    assert m.unused.grad is None  # parameters without a gradient are skipped
    clip_gradients(m, 0.0)  # 0: no clipping
    assert abs(m.big.grad.norm().item() - 3.0) < 1e-5 and torch.allclose(m.small.grad, torch.tensor([1.0, 2.0]))


# ---------------------------------------------------------------------------------------------------------- loss
def test_dino_loss_with_local_views_matches_explicit_loops():
    g = torch.Generator().manual_seed(7)
    t = torch.randn(2, 3, 6, generator=g, dtype=torch.float64)
    c = torch.randn(6, generator=g, dtype=torch.float64)
    for v in (2, 6, 10):  # 2 global views; 2 global + 4 local; 2 global + 8 local (the default)
        s = torch.randn(v, 3, 6, generator=g, dtype=torch.float64)
        for ts, tt in ((0.1, 0.04), (0.1, 0.07), (1.0, 1.0)):
            assert abs(dino_loss(s, t, c, ts, tt).item() - naive_dino(s, t, c, ts, tt)) < 1e-9


def test_dino_loss_gradient_reaches_the_student_only():
    s, t = torch.randn(4, 2, 5, requires_grad=True), torch.randn(2, 2, 5, requires_grad=True)
    dino_loss(s, t, torch.zeros(5), 0.1, 0.04).backward()
    assert t.grad is None and s.grad.abs().sum(dim=(1, 2)).min() > 0  # every view, local ones too, gets a gradient


# ------------------------------------------------------------------------------------------- ViT and local crops
def test_local_crops_go_through_the_vit_with_an_interpolated_position_embedding():
    torch.manual_seed(0)
    vit, dim = common.build_backbone("vit_tiny", 32, 8)
    assert dim == 192 and vit.patch_size == 8
    x32, x16 = torch.randn(2, 3, 32, 32), torch.randn(5, 3, 16, 16)
    assert vit(x16).shape == (5, 192) and vit.tokens(x16).shape == (5, 1 + 4, 192)  # a 2 x 2 grid of 8-px patches
    # at the trained size: the original embedding, and the token path is torchvision's own forward
    assert torch.equal(vit.position_embedding(4, 4), vit.encoder.pos_embedding)
    assert torch.allclose(vit(x32), torchvision.models.VisionTransformer.forward(vit, x32), atol=1e-5)
    # at another size: CLS position kept, the grid resampled; a grid constant per channel stays that constant
    with torch.no_grad():
        vit.encoder.pos_embedding[:, 1:] = torch.linspace(-1, 1, 192)
    for grid in ((2, 2), (8, 8), (2, 3)):
        pos = vit.position_embedding(*grid)
        assert pos.shape == (1, 1 + grid[0] * grid[1], 192)
        assert torch.equal(pos[:, 0], vit.encoder.pos_embedding[:, 0])
        assert torch.allclose(pos[0, 1:], torch.linspace(-1, 1, 192).expand(grid[0] * grid[1], -1), atol=1e-5)


class Built(Exception):
    """Raised where the run would build its augmentation: the views are known, nothing is built or trained."""


@pytest.mark.parametrize("module", [dino_vit, ibot], ids=lambda m: m.__name__)
def test_the_default_local_crop_size_is_a_multiple_of_the_patch_and_others_are_refused(cli, tmp_path, monkeypatch,
                                                                                      module):
    """28-px images (MedMNIST, Fashion-MNIST), patch 4: local views of 12 px (3 x 3 patches; half the image, 14, was
    refused by dino_vit.py and silently cut to 3 x 3 by ibot.py's patch embedding); 32 px: 16. A hand-given 14: one
    line, exit 2."""
    rng, sizes = np.random.default_rng(0), {}
    for px in (28, 32):  # a MedMNIST-style .npz of px-pixel images
        images = [rng.integers(0, 255, (n, px, px, 3), dtype=np.uint8) for n in (32, 8)]
        np.savez(tmp_path / f"{px}.npz", train_images=images[0], train_labels=rng.integers(0, 8, (32, 1)),
                 test_images=images[1], test_labels=rng.integers(0, 8, (8, 1)))

    def built(run, views):
        sizes[run.data.image_size] = sorted({v.size for v in views})
        raise Built

    monkeypatch.setattr(common.Run, "augment", built)
    flags = ("--backbone", "vit_tiny", "--batch-size", 16, "--device", "cpu", "--num-local-crops", 2)
    for px in (28, 32):
        with pytest.raises(Built):
            cli(module, "--dataset", "medmnist", "--data-dir", tmp_path / f"{px}.npz", *flags)
    assert sizes == {28: [12, 28], 32: [16, 32]}
    vit, dim = common.build_backbone("vit_tiny", 28)  # a 12-px crop: a 3 x 3 grid, its position embedding interpolated
    assert vit.patch_size == 4 and vit.tokens(torch.zeros(2, 3, 12, 12)).shape == (2, 1 + 9, dim)
    code, _, err = cli(module, "--dataset", "medmnist", "--data-dir", tmp_path / "28.npz", "--local-crop-size", 14,
                       *flags)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--local-crop-size 14" in err and "patch size 4" in err


# --------------------------------------------------------------------------------------------------- refusals
def test_dino_refuses_a_vit_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["dino.py", "--backbone", "vit_tiny", "--dataset", "synthetic"])
    with pytest.raises(SystemExit) as e:
        common.cli(dino.main, dino.Args)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "methods/dino_vit.py" in err, err


def test_dino_vit_refuses_a_resnet():
    with pytest.raises(common.UserError, match="methods/dino.py"):
        dino_vit.main(dino_vit.Args(dataset="synthetic", backbone="tiny"))


# ------------------------------------------------------------------------------------------------ end to end
def test_end_to_end_vit_tiny_and_the_last_layer_frozen_in_epoch_0(train, probe_inputs, capsys):
    """64 images, batch 32: 2 steps per epoch; stopping at step 2 is the end of epoch 0."""
    t = train(dino_vit, *TINY, *VIT, "--max-steps", 2, "--eval-every", 1, "--mi-every", 1, "--save-every", 1,
              images=64)
    ckpt = torch.load(t.dir / "last.pt", weights_only=True)
    assert ckpt["format"] == checkpoints.CKPT_FORMAT and ckpt["method"] == "dino_vit" and ckpt["step"] == 2
    assert "center" in ckpt["model"] and ckpt["model"]["center"].abs().sum() > 0  # the center is state, and moved
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=12, num_heads=3, hidden_dim=192,
                                               mlp_dim=768)
    vit.heads = nn.Identity()
    vit.load_state_dict(torch.load(t.dir / "backbone.pt", weights_only=True), strict=True)
    tags = set(events(t.dir).Tags()["scalars"])
    for tag in ("losses/dino", "losses/total", "losses/online_linear", "charts/online_linear_train_top1",
                "charts/learning_rate", "charts/momentum", "charts/teacher_temp", "charts/weight_decay",
                "charts/views_per_sec", "mi/cos_dv", "mi/infonce", "mi/jsd", "mi_same/cos_dv",
                "mi_same/cos_dv_student", "dim/erank_R", "dim/erank_Z", "dim/mi_RZ",
                "eval/knn_top1", "eval/knn_top1_student", "eval/linear_top1", "eval/linear_top1_student",
                "eval/online_linear_top1", "dim/erank_R_student"):
        assert tag in tags, (tag, sorted(tags))
    assert 0 <= t.results["knn_top1"] <= 100 and 0 <= t.results["knn_top1_student"] <= 100
    out = capsys.readouterr().out
    assert t.results["views_per_image"] == 10 and "H(R)" in out
    check_the_teacher_is_the_main_result(t, probe_inputs, out)
    sizes = [(v.size, v.scale, v.solarize_p, v.blur_p, v.jitter) for v in t.run.view_specs]
    glob = [(32, (0.4, 1.0), p, 0.0, (0.4, 0.4, 0.2, 0.1)) for p in (0.0, 0.2)]
    assert sizes == glob + [(16, (0.05, 0.4), 0.0, 0.0, (0.4, 0.4, 0.2, 0.1))] * 8
    # epoch 0: the last layer is exactly as initialized (no step, no weight decay), student and teacher; the rest moved
    assert torch.equal(ckpt["model"][LAST], t.before[LAST])
    assert torch.equal(ckpt["model"]["teacher.1.last_layer.weight"], t.before[LAST])
    for k in ("student.1.mlp.0.weight", "student.0.encoder.pos_embedding", "teacher.1.mlp.4.weight"):
        assert (ckpt["model"][k] - t.before[k]).abs().max() > 1e-7, k


def test_last_layer_moves_in_epoch_1_and_the_schedules_as_the_loop_ran_them(train):
    """2 epochs of 2 steps (64 images, batch 32): the whole schedule, T = 4 steps."""
    t = train(dino_vit, *TINY, *VIT, "--save-every", 1, "--warmup-teacher-temp-epochs", 2, "--num-local-crops", 2,
              images=64)
    ckpt = torch.load(t.dir / "last.pt", weights_only=True)
    assert ckpt["step"] == 4 == t.run.total_steps
    assert (ckpt["model"][LAST] - t.before[LAST]).abs().max() > 1e-6  # updated in epoch 1
    # weight decay: cosine 0.04 -> 0.4 over T steps, wd(t) = 0.4 - 0.36 (cos(pi t / T) + 1) / 2 at step t + 1
    wd = {e.step: e.value for e in events(t.dir).Scalars("charts/weight_decay")}
    formula = lambda s: 0.4 - (0.4 - 0.04) * (math.cos(math.pi * s / 4) + 1) / 2  # noqa: E731
    assert abs(wd[1] - 0.04) < 1e-7 and abs(wd[3] - 0.22) < 1e-7  # step 0 and the middle of the schedule
    assert all(abs(wd[s + 1] - formula(s)) < 1e-7 for s in range(4)) and wd[4] > 0.34  # the end, rising to 0.4
    decayed, free = t.run.optimizers[0].param_groups
    assert abs(decayed["weight_decay"] - formula(3)) < 1e-9 and abs(free["weight_decay"]) < 1e-12  # biases, norms: none
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim <= 1 for p in free["params"])
    # teacher temperature: 0.04 in epoch 0, 0.07 from the last warmup epoch on (np.linspace(0.04, 0.07, 2))
    temp = {e.step: e.value for e in events(t.dir).Scalars("charts/teacher_temp")}
    assert all(abs(temp[s] - 0.04) < 1e-7 for s in (1, 2)) and all(abs(temp[s] - 0.07) < 1e-7 for s in (3, 4))

"""iBOT: the masked-patch loss and the CLS loss against explicit loops, the stop-gradients, the block masks (counts
against their targets, the ratio mixture, determinism, the same distribution as a transcription of the official
per-image loop), the centers, and a 3-step run (tensorboard tags, checkpoint, the mask token (1, D) and decayed,
backbone.pt (the teacher's) in torchvision's ViT, the online probe on the teacher's features)."""
import math
import random

import numpy as np

import pytest
import torch
import torch.nn as nn
import torchvision

import common
import ibot
from conftest import TINY, check_the_teacher_is_the_main_result, events
from ibot import block_masks, dino_loss, ibot_patch_loss, patch_teacher_temp, update_center


# ------------------------------------------------------------------------------------------------- objectives
def softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def naive_patch_loss(s, t, mask, c, ts, tt):
    """Per image, the mean over its masked patches of -sum_k P_t log P_s (0 without any); then the mean over images."""
    per_image = []
    for n in range(s.shape[0]):
        terms = []
        for l in range(s.shape[1]):
            if not mask[n, l]:
                continue
            pt = softmax([(float(t[n, l, k]) - float(c[k])) / tt for k in range(s.shape[2])])
            ps = softmax([float(x) / ts for x in s[n, l]])
            terms.append(-sum(a * math.log(b) for a, b in zip(pt, ps)))
        per_image.append(sum(terms) / len(terms) if terms else 0.0)
    return sum(per_image) / len(per_image)


def test_patch_loss_matches_explicit_loops():
    g = torch.Generator().manual_seed(0)
    s, t = (torch.randn(5, 6, 7, generator=g, dtype=torch.float64) for _ in range(2))
    c = torch.randn(7, generator=g, dtype=torch.float64)
    mask = torch.rand(5, 6, generator=g) < 0.4
    mask[1] = False  # an image without masked patches: contributes 0, but counts in the mean over images
    mask[2] = True  # every patch masked
    for ts, tt in ((0.1, 0.04), (0.1, 0.07), (1.0, 1.0)):
        assert abs(ibot_patch_loss(s, t, mask, c, ts, tt).item() - naive_patch_loss(s, t, mask, c, ts, tt)) < 1e-9


def test_patch_loss_hand_value_averages_per_image():
    # teacher uniform after centering; student P_s = (1/4, 3/4) at image 0's masked patch, anything elsewhere
    s = torch.tensor([[[0.0, math.log(3)], [5.0, -5.0]], [[1.0, 2.0], [3.0, 4.0]]])
    t, c = torch.full((2, 2, 2), 2.0), torch.tensor([1.0, 1.0])
    mask = torch.tensor([[True, False], [False, False]])  # image 1 has no masked patch
    h = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    assert abs(ibot_patch_loss(s, t, mask, c, 1.0, 0.04).item() - h / 2) < 1e-6  # (h + 0) / 2 images
    mask[0, 1] = True  # two masked patches in image 0: their mean, not their sum
    h2 = -0.5 * torch.log_softmax(torch.tensor([5.0, -5.0]), 0).sum().item()
    assert abs(ibot_patch_loss(s, t, mask, c, 1.0, 0.04).item() - (h + h2) / 2 / 2) < 1e-6


def test_patch_loss_gradient_only_to_the_student_at_masked_patches():
    s = torch.randn(3, 4, 5, requires_grad=True)
    t, c = torch.randn(3, 4, 5, requires_grad=True), torch.randn(5, requires_grad=True)
    mask = torch.tensor([[True, False, True, False], [False] * 4, [False, True, False, False]])
    ibot_patch_loss(s, t, mask, c, 0.1, 0.04).backward()
    assert t.grad is None and c.grad is None
    norms = s.grad.norm(dim=-1)  # (3, 4)
    assert (norms[mask] > 0).all() and (norms[~mask] == 0).all()


def test_cls_loss_matches_explicit_loops():
    g = torch.Generator().manual_seed(1)
    t, c = torch.randn(2, 3, 6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    s = torch.randn(4, 3, 6, generator=g, dtype=torch.float64)  # 2 global + 2 local views
    terms = []
    for i in range(2):
        for v in (v for v in range(4) if v != i):
            for n in range(3):
                pt = softmax([(float(t[i, n, k]) - float(c[k])) / 0.04 for k in range(6)])
                ps = softmax([float(x) / 0.1 for x in s[v, n]])
                terms.append(-sum(a * math.log(b) for a, b in zip(pt, ps)))
    assert abs(dino_loss(s, t, c, 0.1, 0.04).item() - sum(terms) / len(terms)) < 1e-9


def test_centers_are_moving_averages_of_the_batch_mean():
    c = torch.tensor([1.0, 0.0, -1.0])
    t = torch.tensor([[[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]], [[0.0, 0.0, 0.0], [4.0, 4.0, 4.0]]])  # mean (2, 2, 2)
    update_center(c, t, 0.9)
    assert torch.allclose(c, torch.tensor([0.9 + 0.2, 0.2, -0.9 + 0.2]))
    # the patch center as main() feeds it: per-image patch means (2, n, K) give the mean over all 2n x L patches
    t_patch, cp = torch.randn(2 * 3, 5, 4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    expect = 0.9 * cp + 0.1 * t_patch.mean(dim=(0, 1))
    update_center(cp, t_patch.mean(1).view(2, 3, -1), 0.9)
    assert torch.allclose(cp, expect)


# ------------------------------------------------------------------------------------------------ block masks
def official_block_mask(target: float, gh: int, gw: int, rng: random.Random) -> torch.Tensor:
    """One image's mask by the official generator (iBOT's ImageFolderMask, after BEiT), transcribed, Python's random."""
    mask, count, low = [[False] * gw for _ in range(gh)], 0, (min(gh, gw) // 3) ** 2
    while count < target:
        room, added = target - count, 0
        for _ in range(10):
            area, r = rng.uniform(low, room), math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
            h, w = int(round(math.sqrt(area * r))), int(round(math.sqrt(area / r)))
            if w < gw and h < gh:
                top, left = rng.randint(0, gh - h), rng.randint(0, gw - w)
                cells = [(i, j) for i in range(top, top + h) for j in range(left, left + w) if not mask[i][j]]
                if 0 < len(cells) <= room:
                    for i, j in cells:
                        mask[i][j] = True
                    added = len(cells)
            if added:
                break
        if not added:
            break
        count += added
    return torch.tensor(mask).flatten()


def test_block_mask_counts_are_close_to_their_targets():
    # bound: never above the target; below it by less than 3 patches on 8 x 8 (less than 2 on 4 x 4), the block
    # granularity near the end (the last rectangles must fit in the room left); exact for this seed, 4096 images
    for grid, below in ((8, 3.0), (4, 2.0)):
        masks, target = block_masks(4096, grid, grid, (0.0, 0.3), (0.0, 0.2), torch.Generator().manual_seed(0))
        count = masks.sum(1).float()
        assert masks.shape == (4096, grid * grid) and masks.dtype == torch.bool
        assert (count <= target + 1e-4).all() and (count > target - below).all()
        assert (count[target == 0] == 0).all()
        assert (target - count).mean() < 1.0  # usually within a patch of the target


def test_block_mask_ratios_are_half_zero_half_uniform():
    _, target = block_masks(8192, 8, 8, (0.0, 0.3), (0.0, 0.2), torch.Generator().manual_seed(1))
    ratio = target / 64
    zero = ratio == 0
    assert abs(zero.float().mean().item() - 0.5) < 0.02
    assert ratio[~zero].min() >= 0.1 - 1e-6 and ratio[~zero].max() <= 0.5 + 1e-6
    assert abs(ratio[~zero].mean().item() - 0.3) < 0.01 and abs(ratio[~zero].std().item() - 0.4 / 12 ** 0.5) < 0.01


def test_block_masks_are_deterministic_for_a_seed():
    a, ta = block_masks(256, 8, 8, (0.0, 0.3), (0.0, 0.2), torch.Generator().manual_seed(5))
    b, tb = block_masks(256, 8, 8, (0.0, 0.3), (0.0, 0.2), torch.Generator().manual_seed(5))
    c, _ = block_masks(256, 8, 8, (0.0, 0.3), (0.0, 0.2), torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and torch.equal(ta, tb) and not torch.equal(a, c)


def test_block_masks_have_the_official_loops_distribution():
    """The vectorized rounds draw the same masks in distribution as the official per-image loop: masked count, rows
    spanned, elongation |rows - columns spanned| (the aspect ratios) and how often each position is masked. Tolerances
    are about 4 standard errors at 1000 images; an aspect range of (0.5, 2) or a minimum area of 1 fails them."""
    rng, n = random.Random(0), 1000
    for ratio in (0.15, 0.3, 0.5):
        ref = torch.stack([official_block_mask(ratio * 64, 8, 8, rng) for _ in range(n)]).view(n, 8, 8)
        ours = block_masks(n, 8, 8, (ratio,), (0.0,), torch.Generator().manual_seed(2))[0].view(n, 8, 8)
        rows, cols = (lambda m: m.any(2).sum(1).float()), (lambda m: m.any(1).sum(1).float())  # noqa: E731
        assert abs(ref.sum((1, 2)).float().mean() - ours.sum((1, 2)).float().mean()) < 0.2
        assert abs(rows(ref).mean() - rows(ours).mean()) < 0.2
        assert abs((rows(ref) - cols(ref)).abs().mean() - (rows(ours) - cols(ours)).abs().mean()) < 0.2
        assert (ref.float().mean(0) - ours.float().mean(0)).abs().max() < 0.1


# ------------------------------------------------------------------------------------------------- end to end
def test_ibot_runs_end_to_end(train, probe_inputs, capsys):
    t = train(ibot, *TINY, "--backbone", "vit_tiny", "--patch-size", 8, "--max-steps", 3, "--out-dim", 256,
              "--num-local-crops", 2, "--save-every", 1, images=256)
    acc = events(t.dir)
    assert {"losses/cls", "losses/patch", "losses/total", "losses/online_linear", "charts/weight_decay",
            "charts/teacher_patch_temp"} <= set(acc.Tags()["scalars"])
    for tag in ("losses/cls", "losses/patch", "losses/total"):
        assert [e.step for e in acc.Scalars(tag)] == [1, 2, 3] and all(math.isfinite(e.value) for e in acc.Scalars(tag))
    total = [e.value for e in acc.Scalars("losses/total")]
    parts = [a.value + b.value for a, b in zip(acc.Scalars("losses/cls"), acc.Scalars("losses/patch"))]
    assert all(abs(a - b) < 1e-4 * max(1.0, abs(a)) for a, b in zip(total, parts))
    assert t.results["steps"] == 3 and t.results["views_per_image"] == 4 and t.results["batch_size"] == 32
    ckpt = torch.load(t.dir / "last.pt", weights_only=True)
    assert ckpt["step"] == 3 and {"mask_token", "center", "center_patch"} <= set(ckpt["model"])
    after = t.run.model.state_dict()
    assert not torch.equal(t.before["mask_token"], after["mask_token"])  # the student's mask token trains
    decayed = {id(p) for p in t.run.optimizers[0].param_groups[0]["params"]}  # (1, D), as the official: weight decay
    assert after["mask_token"].shape == (1, 192) and id(t.run.model.mask_token) in decayed
    assert torch.equal(t.before["student.1.last_layer.weight"], after["student.1.last_layer.weight"])  # frozen epoch 1
    assert not torch.equal(t.before["student.1.mlp.0.weight"], after["student.1.mlp.0.weight"])
    assert after["center"].abs().sum() > 0 and after["center_patch"].abs().sum() > 0
    wd = t.run.optimizers[0].param_groups[0]["weight_decay"]
    assert abs(wd - common.cosine_schedule(2, t.run.total_steps, 0.04, 0.4)) < 1e-12 and wd > 0.04
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=12, num_heads=3, hidden_dim=192,
                                               mlp_dim=768)
    vit.heads = nn.Identity()
    vit.load_state_dict(torch.load(t.dir / "backbone.pt", weights_only=True), strict=True)
    check_the_teacher_is_the_main_result(t, probe_inputs, capsys.readouterr().out)


def test_masking_starts_after_pred_start_epochs_and_the_momentum_can_be_held(train):
    """8 steps an epoch, --pred-start-epochs 0.5: steps 1-4 mask nothing (the patch loss is 0: DINO's loss alone),
    steps 5-6 mask; --tau-base 0.99 --tau-final 0.99 holds the momentum, and the teacher moves without becoming the student."""
    t = train(ibot, *TINY, "--backbone", "vit_tiny", "--patch-size", 8, "--max-steps", 6, "--out-dim", 256,
              "--num-local-crops", 0, "--pred-start-epochs", 0.5, "--tau-base", 0.99, "--tau-final", 0.99, images=256)
    acc = events(t.dir)
    patch = [e.value for e in acc.Scalars("losses/patch")]
    assert len(patch) == 6 and all(abs(v) < 1e-9 for v in patch[:4]) and all(v > 0.1 for v in patch[4:]), patch
    assert all(abs(e.value - 0.99) < 1e-6 for e in acc.Scalars("charts/momentum"))  # float32 events
    model = t.run.model
    student, teacher = dict(model.student.named_parameters()), dict(model.teacher.named_parameters())
    before = {n: t.before["teacher." + n] for n in teacher}
    assert all(not torch.equal(before[n], teacher[n]) for n in ("0.conv_proj.weight", "1.mlp.0.weight"))
    assert all(not torch.equal(student[n], teacher[n]) for n in ("0.conv_proj.weight", "1.mlp.0.weight"))


def test_ibot_refuses_a_resnet_and_unpaired_mask_ratios(train):
    with pytest.raises(common.UserError, match="ViT"):
        train(ibot, *TINY)
    with pytest.raises(common.UserError, match="pred-ratio-var"):
        train(ibot, *TINY, "--backbone", "vit_tiny", "--pred-ratio", 0.3)


def official_patch_temps(start, final, warmup, epochs, mim_start):
    """iBOTLoss's teacher_temp2_schedule, transcribed: with mim_start_epoch > 0, `start` until then, then the
    linspace from there."""
    if mim_start == 0:
        return np.concatenate((np.linspace(start, final, warmup), np.ones(epochs - warmup) * final))
    return np.concatenate((np.ones(mim_start) * start, np.linspace(start, final, warmup),
                           np.ones(epochs - warmup - mim_start) * final))


@pytest.mark.parametrize("pred_start", [0, 1, 10, 10.5])
def test_the_patch_teacher_temperature_warms_up_from_the_epoch_masking_starts_in(pred_start):
    """10 pred-start epochs and a 30-epoch warmup: epoch 10 gets 0.04 and epoch 30 0.0607 (not 0.0503 and 0.07); a
    fraction of an epoch starts the warmup in the epoch masking starts in."""
    official = official_patch_temps(0.04, 0.07, 30, 100, int(pred_start))
    ours = [patch_teacher_temp(e, pred_start, 30, 0.04, 0.07) for e in range(100)]
    assert np.allclose(ours, official, atol=1e-12, rtol=0)
    if pred_start == 10:
        assert abs(ours[10] - 0.04) < 1e-12 and abs(ours[30] - (0.04 + 0.03 * 20 / 29)) < 1e-12


def test_a_run_logs_the_delayed_patch_temperature(train):
    """3 epochs of 2 steps, masking from epoch 1, a 3-epoch warmup: the CLS teacher temperature 0.04, 0.055, 0.07
    and the patch one 0.04, 0.04, 0.055, per step as logged."""
    t = train(ibot, *TINY, "--backbone", "vit_tiny", "--patch-size", 8, "--epochs", 3, "--out-dim", 64,
              "--num-local-crops", 0, "--pred-start-epochs", 1, "--warmup-teacher-temp-epochs", 3, images=64)
    acc = events(t.dir)
    cls = [round(e.value, 6) for e in acc.Scalars("charts/teacher_temp")]
    patch = [round(e.value, 6) for e in acc.Scalars("charts/teacher_patch_temp")]
    assert cls == [0.04, 0.04, 0.055, 0.055, 0.07, 0.07] and patch == [0.04, 0.04, 0.04, 0.04, 0.055, 0.055], patch

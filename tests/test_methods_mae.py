"""MAE (methods/mae.py): random masking, the order restoration of the decoder's tokens, patchify, the fixed sin-cos
position embedding, the masked norm-pix loss against hand values and explicit loops, the reconstruction picture, and an
end-to-end run (tensorboard tags, fine-tuning, backbone.pt in torchvision's ViT, position embeddings left fixed)."""
import math

import pytest
import torch
import torch.nn as nn
import torchvision

import common
import mae
from conftest import TINY, events


@pytest.mark.parametrize("num_patches", [16, 64])
@pytest.mark.parametrize("ratio", [0.5, 0.6, 0.75, 0.9])
def test_random_masking_keeps_an_exact_count_per_image(num_patches, ratio):
    n, n_keep = 12, round(num_patches * (1 - ratio))
    keep, mask = mae.random_masking(n, num_patches, ratio, torch.Generator().manual_seed(1))
    assert keep.shape == (n, n_keep) and keep.dtype == torch.long and mask.shape == (n, num_patches)
    for i in range(n):
        kept = set(keep[i].tolist())
        assert len(kept) == n_keep  # distinct patches
        want = torch.tensor([0.0 if j in kept else 1.0 for j in range(num_patches)])
        assert torch.equal(mask[i].float(), want)  # the mask marks exactly the patches that are not kept
    assert len({tuple(row.tolist()) for row in keep}) > n // 2  # the masks differ across images
    again, mask2 = mae.random_masking(n, num_patches, ratio, torch.Generator().manual_seed(1))
    other, _ = mae.random_masking(n, num_patches, ratio, torch.Generator().manual_seed(2))
    assert torch.equal(keep, again) and torch.equal(mask, mask2) and not torch.equal(keep, other)


def test_random_masking_is_uniform_over_positions():
    keep, mask = mae.random_masking(4000, 16, 0.75, torch.Generator().manual_seed(0))
    freq = mask.float().mean(0)  # each position is masked with probability 0.75
    assert (freq - 0.75).abs().max() < 0.04


def test_restore_order_puts_every_visible_token_back_at_its_position():
    n, num_patches, d = 5, 16, 3
    keep, _ = mae.random_masking(n, num_patches, 0.75, torch.Generator().manual_seed(3))
    visible = keep[..., None].float().expand(-1, -1, d).clone().requires_grad_()  # each token holds its own index
    mask_token = torch.full((1, 1, d), -1.0, requires_grad=True)
    full = mae.restore_order(visible, keep, mask_token, num_patches)  # (n, L, d)
    assert full.shape == (n, num_patches, d)
    for i in range(n):
        kept = set(keep[i].tolist())
        for j in range(num_patches):
            assert torch.allclose(full[i, j], torch.full((d,), float(j) if j in kept else -1.0))
    full.sum().backward()  # gradients reach the visible tokens (once each) and the mask token (once per masked slot)
    assert torch.allclose(visible.grad, torch.ones_like(visible))
    assert torch.allclose(mask_token.grad, torch.full((1, 1, d), float(n * (num_patches - keep.shape[1]))))


def test_patchify_matches_a_naive_loop_and_unpatchify_inverts_it():
    x, p = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)), 4
    got = mae.patchify(x, p)  # (2, 4, 48)
    want = torch.stack([torch.stack([torch.tensor([x[b, c, i * p + u, j * p + v].item() for u in range(p)
                                                   for v in range(p) for c in range(3)])
                                     for i in range(2) for j in range(2)]) for b in range(2)])
    assert got.shape == (2, 4, 48) and torch.allclose(got, want)
    assert torch.equal(mae.unpatchify(got, p, 8), x)


def test_patch_order_is_the_vit_token_order():
    """Token l of conv_proj is the linear map of patchify's patch l, so mask positions mean the same patches."""
    torch.manual_seed(0)
    vit, _ = common.build_backbone("vit_tiny", 32, 8)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = vit.conv_proj(x).flatten(2).transpose(1, 2)  # (2, 16, 192)
        w = vit.conv_proj.weight.permute(0, 2, 3, 1).reshape(192, -1)  # (D, p, p, 3) flattened as patchify
        assert torch.allclose(tokens, mae.patchify(x, 8) @ w.T + vit.conv_proj.bias, atol=1e-4)


def test_sincos_position_embedding_shape_and_known_values():
    d, g = 16, 4
    pe = mae.sincos_pos_embed(d, g)
    assert pe.shape == (1, 1 + g * g, d) and pe.dtype == torch.float32
    assert torch.equal(pe[0, 0], torch.zeros(d))  # the CLS position
    q = d // 4  # patch (row 0, col 0): sin 0 = 0, cos 0 = 1 in both halves
    assert torch.allclose(pe[0, 1], torch.tensor([0.0] * q + [1.0] * q + [0.0] * q + [1.0] * q))
    col1, row1 = pe[0, 1 + 1], pe[0, 1 + g]  # patch (row 0, col 1) and patch (row 1, col 0)
    assert math.isclose(col1[0], math.sin(1.0), abs_tol=1e-6) and math.isclose(col1[q], math.cos(1.0), abs_tol=1e-6)
    assert math.isclose(col1[1], math.sin(10000 ** (-1 / q)), abs_tol=1e-6) and col1[2 * q] == 0.0
    assert math.isclose(row1[2 * q], math.sin(1.0), abs_tol=1e-6) and row1[0] == 0.0
    row, col, k = 3, 2, 3  # any entry, from the formula
    assert math.isclose(pe[0, 1 + row * g + col, 3 * q + k], math.cos(row * 10000 ** (-k / q)), abs_tol=1e-6)
    assert mae.sincos_pos_embed(d, g, cls=False).shape == (1, g * g, d)


def test_mae_loss_hand_value_with_norm_pix_targets():
    """Patch 1 pixel: the patches are the pixels' 3 channels. Image 0: pixels (1, 2, 3) and (0, 0, 6): normalized
    (-1, 0, 1) / sqrt(1 + eps) and (-2, -2, 4) / sqrt(12 + eps). A constant prediction c has MSE (3 c^2 + 2) / 3 against
    a normalized patch (mean 0, sum of squares 2). Only the masked patch of each image counts: image 0 masks patch 0
    (prediction 0: 2/3), image 1 masks patch 1 (prediction 1: 5/3); the others are predicted badly and must not count."""
    img = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 6.0]]).view(1, 3, 1, 2).repeat(2, 1, 1, 1)
    target = mae.patch_targets(img, 1, norm_pix=True)  # (2, 2, 3)
    assert torch.allclose(target[0, 0], torch.tensor([-1.0, 0.0, 1.0]) / math.sqrt(1 + 1e-6))
    assert torch.allclose(target[0, 1], torch.tensor([-2.0, -2.0, 4.0]) / math.sqrt(12 + 1e-6))
    pred = torch.tensor([[[0.0] * 3, [50.0] * 3], [[-30.0] * 3, [1.0] * 3]])
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    want = (2 / 3 / (1 + 1e-6) + (3 + 2 * 12 / (12 + 1e-6)) / 3) / 2  # = 7/6 up to eps
    assert math.isclose(mae.mae_loss(pred, target, mask).item(), want, rel_tol=1e-6)
    assert math.isclose(mae.mae_loss(pred, target, mask.bool()).item(), want, rel_tol=1e-6)
    raw = mae.patch_targets(img, 1, norm_pix=False)
    assert torch.allclose(raw[0], torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]]))


def test_mae_loss_matches_an_explicit_loop():
    g = torch.Generator().manual_seed(0)
    img, p = torch.randn(3, 3, 8, 8, generator=g), 4
    pred = torch.randn(3, 4, 48, generator=g)
    _, mask = mae.random_masking(3, 4, 0.5, g)
    total, count = 0.0, 0
    for b in range(3):
        for i in range(2):
            for j in range(2):
                if mask[b, i * 2 + j] == 1:
                    patch = img[b, :, i * p:(i + 1) * p, j * p:(j + 1) * p].permute(1, 2, 0).reshape(-1)
                    mu = patch.sum() / 48
                    var = ((patch - mu) ** 2).sum() / 47  # unbiased, as the official torch.var
                    total += (((pred[b, i * 2 + j] - (patch - mu) / torch.sqrt(var + 1e-6)) ** 2).sum() / 48).item()
                    count += 1
    got = mae.mae_loss(pred, mae.patch_targets(img, p, norm_pix=True), mask)
    assert math.isclose(got.item(), total / count, rel_tol=1e-5)


def test_mae_loss_of_the_batch_is_the_mean_of_its_shards():
    """Equal masked counts per image: the mean over processes of their losses is the global batch's (no gather)."""
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(8, 16, 12, generator=g), torch.randn(8, 16, 12, generator=g)
    _, mask = mae.random_masking(8, 16, 0.75, g)
    halves = [mae.mae_loss(pred[s], target[s], mask[s]) for s in (slice(0, 4), slice(4, 8))]
    assert torch.allclose(mae.mae_loss(pred, target, mask), (halves[0] + halves[1]) / 2)


def test_reconstruction_picture_undoes_the_patch_normalization():
    """A decoder that predicts the exact norm-pix target gives back the image in the third column."""
    torch.manual_seed(0)
    vit, _ = common.build_backbone("vit_tiny", 32, 8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    img = torch.rand(3, 3, 32, 32)  # pixels in [0, 1]
    x = (img - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    perfect = lambda tokens, keep: mae.patch_targets(x, 8, norm_pix=True)  # noqa: E731
    grid = mae.reconstruction_grid(vit, perfect, x, mae.Args(), mean, std)  # 3 rows of 3 pictures, padding 2
    cell = lambda r, c: grid[:, 2 + r * 34:2 + r * 34 + 32, 2 + c * 34:2 + c * 34 + 32]  # noqa: E731
    for r in range(3):
        assert torch.allclose(cell(r, 0), img[r], atol=1e-5) and torch.allclose(cell(r, 2), img[r], atol=1e-4)
        gray = (cell(r, 1) == 0.5).all(0).float()  # masked patches are gray: 12 of the 16 8x8 patches
        assert math.isclose(gray.mean().item(), 0.75, abs_tol=0.02)


def test_mae_runs_end_to_end(train, capsys):
    """32 images, batch 32: 1 step per epoch; --eval-every 2 evaluates after step 2 (epoch 2) and at the end (step 3,
    the --max-steps stop in epoch 3): images/reconstruction comes with both evaluations."""
    small = ("--decoder-dim", 32, "--decoder-depth", 1, "--decoder-heads", 4)
    t = train(mae, *TINY, "--backbone", "vit_tiny", "--patch-size", 8, "--max-steps", 3, "--finetune-epochs", 1,
              "--epochs", 4, "--eval-every", 2, *small, images=32)
    acc = events(t.dir)
    assert [e.step for e in acc.Images("images/reconstruction")] == [2, 3]
    assert [e.step for e in acc.Scalars("eval/knn_top1")] == [2, 3, 3]  # the last one from run.finish
    assert {"losses/reconstruction", "losses/total", "losses/online_linear"} <= set(acc.Tags()["scalars"])
    assert all(math.isfinite(e.value) for e in acc.Scalars("losses/reconstruction"))
    assert 0 <= t.results["finetune_top1"] <= 100 and t.results["steps"] == 3
    assert "fine-tune top-1" in (out := capsys.readouterr().out) and "the head reads the mean patch token" in out
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=12, num_heads=3, hidden_dim=192,
                                               mlp_dim=768)
    vit.heads = nn.Identity()
    vit.load_state_dict(torch.load(t.dir / "backbone.pt", weights_only=True), strict=True)
    after = t.run.model.state_dict()
    for k, grid, d in (("backbone.encoder.pos_embedding", 4, 192), ("decoder.blocks.pos_embedding", 4, 32)):
        assert torch.equal(t.before[k], after[k]) and torch.allclose(after[k], mae.sincos_pos_embed(d, grid)), k
    assert torch.allclose(vit.encoder.pos_embedding, mae.sincos_pos_embed(192, 4))
    for k in ("decoder.mask_token", "backbone.conv_proj.weight", "decoder.pred.weight"):  # these did train
        assert not torch.equal(t.before[k], after[k]), k
    trained = {id(p) for grp in t.run.optimizers[0].param_groups for p in grp["params"]}
    assert id(t.run.model.backbone.encoder.pos_embedding) not in trained
    assert t.run.args.finetune_epochs == 1 and mae.Args().finetune_epochs == 10  # on by default for MAE


def test_mae_resume_is_exact(train):
    """64 images: 2 steps per epoch. 5 steps straight against 3 steps (mid-epoch 2), then --resume to step 5: the masks
    come from run.gen (reseeded every step) and the mask token and position embeddings from the checkpoint."""
    flags = [*TINY, "--backbone", "vit_tiny", "--patch-size", 8, "--epochs", 3, "--save-every", 1, "--decoder-dim", 32,
             "--decoder-depth", 1, "--decoder-heads", 4, "--finetune-epochs", 0]
    straight = train(mae, *flags, "--max-steps", 5, "--exp-name", "straight", images=64)
    half = train(mae, *flags, "--max-steps", 3, "--exp-name", "halves", images=64)
    train(mae, *flags, "--max-steps", 5, "--exp-name", "halves", "--resume", half.dir / "last.pt", images=64)
    a, b = (torch.load(d / "last.pt", weights_only=True) for d in (straight.dir, half.dir))
    assert a["step"] == b["step"] == 5 and a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_mae_refuses_a_resnet(train):
    with pytest.raises(common.UserError, match="ViT"):
        train(mae, *TINY)

"""Self-distillation methods (a predictor or a teacher behind a stop-gradient): BYOL, SimSiam, DINO (ResNet).
Objectives against hand-worked values and explicit loops, the stop-gradients, the EMA, SimSiam's fixed predictor lr
in one real step, DINO's center and weight-normalized head, and a short DINO run: the teacher temperature per epoch as
the loop ran it, the teacher as the main result."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import common
import dino
import simsiam
from byol import ema_update, regression_loss
from conftest import TINY, check_the_teacher_is_the_main_result, events, naive_dino
from dino import DINOHead, dino_loss, update_center
from simsiam import negative_cosine

# ----------------------------------------------------------------------------------------------------- BYOL
def test_regression_loss_hand_values():
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    z = torch.tensor([[0.0, 3.0], [1.0, 1.0], [5.0, 0.0]])
    expect = (2 + (2 - 2 / math.sqrt(2)) + 0) / 3
    assert abs(regression_loss(p, z).item() - expect) < 1e-6


def test_regression_loss_stops_gradient_into_target():
    p, z = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    regression_loss(p, z).backward()
    assert p.grad is not None and z.grad is None


def test_ema_update_is_the_convex_combination():
    online, target = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.detach().clone() for p in target.parameters()]
    ema_update(online, target, 0.9)
    for b, o, t in zip(before, online.parameters(), target.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * o.detach(), atol=1e-7)
    ema_update(online, target, 1.0)  # tau = 1 leaves the target as it is
    ema_update(online, target, 0.0)  # tau = 0 copies the online network
    for o, t in zip(online.parameters(), target.parameters()):
        assert torch.equal(t, o.detach())


# -------------------------------------------------------------------------------------------------- SimSiam
def test_negative_cosine_hand_values():
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    z = torch.tensor([[0.0, 3.0], [1.0, 1.0], [5.0, 0.0]])
    expect = -(0.0 + 1 / math.sqrt(2) + 1.0) / 3  # cos = 0, 1/sqrt(2), 1
    assert abs(negative_cosine(p, z).item() - expect) < 1e-6
    assert abs(negative_cosine(z, z).item() + 1) < 1e-6  # the minimum, -1, at p = z


def test_negative_cosine_stops_gradient_into_z():
    p, z = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    negative_cosine(p, z).backward()
    assert p.grad is not None and p.grad.abs().sum() > 0 and z.grad is None


@pytest.mark.parametrize("fix", [True, False])
def test_simsiam_predictor_lr_is_fixed_while_the_rest_follows_the_schedule(train, fix):
    t = train(simsiam, *TINY, "--max-steps", 1, "--fix-pred-lr" if fix else "--no-fix-pred-lr", "--pred-hidden-dim", 16,
              "--proj-hidden-dim", 64, "--proj-output-dim", 32, images=256)
    model, (opt,), run = t.run.model, t.run.optimizers, t.run
    pred_ids = {id(p) for p in model["predictor"].parameters()}
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
    base = simsiam.Args.lr * 32 / 256
    factor = common.warmup_cosine(0, run.total_steps, run.steps_per_epoch)  # step 1, in warmup
    assert factor < 1e-3
    for g in opt.param_groups:
        if not g["params"]:
            continue
        is_pred = {id(p) for p in g["params"]} <= pred_ids
        assert is_pred or not ({id(p) for p in g["params"]} & pred_ids)  # groups do not mix predictor and encoder
        expect = base if (is_pred and fix) else base * factor
        assert g["base_lr"] == pytest.approx(base) and g["lr"] == pytest.approx(expect)


# ----------------------------------------------------------------------------------------------------- DINO
def test_dino_loss_matches_explicit_loops():
    g = torch.Generator().manual_seed(4)
    t = torch.randn(2, 3, 6, generator=g, dtype=torch.float64)
    c = torch.randn(6, generator=g, dtype=torch.float64)
    for v in (2, 5):  # two global views only; two global + three local views
        s = torch.randn(v, 3, 6, generator=g, dtype=torch.float64)
        for ts, tt in ((0.1, 0.04), (0.1, 0.07), (1.0, 1.0)):
            assert abs(dino_loss(s, t, c, ts, tt).item() - naive_dino(s, t, c, ts, tt)) < 1e-9


def test_dino_loss_hand_value_and_gradient_only_to_the_student():
    # teacher output uniform after centering -> P_t uniform; student logits (0, log 3): P_s = (1/4, 3/4)
    t = torch.tensor([[[2.0, 2.0]], [[5.0, 5.0]]], requires_grad=True)
    s = torch.tensor([[[0.0, math.log(3)]], [[0.0, math.log(3)]]], requires_grad=True)
    loss = dino_loss(s, t, torch.tensor([1.0, 1.0]), 1.0, 0.04)
    assert abs(loss.item() - (-(0.5 * math.log(0.25) + 0.5 * math.log(0.75)))) < 1e-6
    loss.backward()
    assert s.grad is not None and t.grad is None


def test_center_update_is_the_moving_average():
    c = torch.tensor([1.0, 0.0, -1.0])
    t = torch.tensor([[[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]], [[0.0, 0.0, 0.0], [4.0, 4.0, 4.0]]])  # mean (2, 2, 2)
    update_center(c, t, 0.9)
    assert torch.allclose(c, torch.tensor([0.9 + 0.2, 0.2, -0.9 + 0.2]))


def test_dino_head_last_layer_is_weight_normalized():
    torch.manual_seed(0)
    head = DINOHead(8, 16, 4, 10)
    r = torch.randn(5, 8)
    out = head(r)
    assert out.shape == (5, 10) and out.abs().max() <= 1 + 1e-6  # cosines between unit vectors
    with torch.no_grad():
        head.last_layer.weight.mul_(torch.rand(10, 1) * 10 + 0.1)  # rescaling a prototype changes nothing
    assert torch.allclose(head(r), out, atol=1e-6)



def test_dino_warms_the_teacher_temperature_up_per_epoch_and_reports_the_teacher(train, probe_inputs, capsys):
    """3 epochs of 2 steps (64 images, batch 32), a 2-epoch warmup: np.linspace(0.04, 0.07, 2) gives 0.04 in epoch 0
    and 0.07 from epoch 1 on (the old epoch / W gave 0.055 in epoch 1, the final value one epoch late)."""
    t = train(dino, *TINY, "--epochs", 3, "--warmup-teacher-temp-epochs", 2, "--save-every", 3, "--num-prototypes", 64,
              "--proj-hidden-dim", 64, images=64)
    temp = {e.step: e.value for e in events(t.dir).Scalars("charts/teacher_temp")}
    assert sorted(temp) == [1, 2, 3, 4, 5, 6]
    assert all(abs(temp[s] - 0.04) < 1e-7 for s in (1, 2)) and all(abs(temp[s] - 0.07) < 1e-7 for s in (3, 4, 5, 6))
    check_the_teacher_is_the_main_result(t, probe_inputs, capsys.readouterr().out)

"""SimCLR and BYOL objectives against hand-worked values and naive second implementations."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from byol import ema_update, regression_loss
from simclr import info_nce_loss


def naive_nt_xent(z1, z2, t):
    z = [F.normalize(v, dim=0) for v in torch.cat([z1, z2])]
    n2, n = len(z), len(z1)
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2  # partner
        num = math.exp(float(z[i] @ z[j]) / t)
        den = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n2) if k != i)
        total += -math.log(num / den)
    return total / n2


def test_info_nce_matches_naive_loop():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 7, generator=g, dtype=torch.float64), torch.randn(5, 7, generator=g, dtype=torch.float64)
    for t in (0.1, 0.5, 1.0):
        assert abs(info_nce_loss(z1, z2, t).item() - naive_nt_xent(z1, z2, t)) < 1e-9


def test_info_nce_hand_value():
    # two orthogonal pairs: views identical. Each anchor: positive cos 1, negatives cos 0 (two of them).
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    t = 0.5
    expect = -math.log(math.exp(2) / (math.exp(2) + 2))
    assert abs(info_nce_loss(z1, z1.clone(), t).item() - expect) < 1e-12


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

"""LARS against a hand computation and a naive per-parameter twin; parameter groups; the schedules."""
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

from plumbing import optim


def test_lars_step_matches_hand_computation():
    w = nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    b = nn.Parameter(torch.tensor([1.0]))
    opt = optim.LARS([dict(params=[w], weight_decay=0.1, lars_exclude=False),
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
    opt, state = optim.LARS(split(ours), lr=0.3, clip=clip), {}
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
    decay, no_decay = optim.param_groups(m, 1e-4)
    assert len(decay["params"]) == 1 and decay["weight_decay"] == 1e-4 and not decay["lars_exclude"]
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0 and no_decay["lars_exclude"]


def test_schedules():
    assert optim.warmup_cosine(0, 100, 10, start=0.0) == pytest.approx(0.0, abs=1e-12)
    assert optim.warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert optim.warmup_cosine(55, 100, 10) == pytest.approx(0.5)
    assert optim.warmup_cosine(100, 100, 10) == pytest.approx(0.0)
    assert optim.cosine_schedule(0, 100, 0.99, 1.0) == pytest.approx(0.99)
    assert optim.cosine_schedule(50, 100, 0.99, 1.0) == pytest.approx(0.995)
    assert optim.cosine_schedule(100, 100, 0.99, 1.0) == pytest.approx(1.0)


def test_linspace_warmup_is_the_official_teacher_temperature_schedule():
    """DINO / iBOT: np.concatenate((np.linspace(start, final, W), final for the other epochs)), indexed by epoch: start
    at epoch 0, final from epoch W - 1 on (W = 1: start in epoch 0 only; W = 0: final from the start)."""
    for w in (0, 1, 2, 3, 30, 50):
        official = np.concatenate((np.linspace(0.04, 0.07, w), np.full(w + 3, 0.07)))
        ours = [optim.linspace_warmup(e, w, 0.04, 0.07) for e in range(2 * w + 3)]
        assert np.allclose(ours, official, atol=1e-12, rtol=0), w
    assert abs(optim.linspace_warmup(29, 30, 0.04, 0.07) - 0.07) < 1e-12  # the last warmup epoch: the final value
    assert abs(optim.linspace_warmup(1, 3, 0.04, 0.07) - 0.055) < 1e-12  # halfway through epochs 0, 1, 2

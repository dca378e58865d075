"""SDMI and JMI objectives (Sabby et al. 2025) against hand-worked values, naive loops and estimators.dv_bound;
SDMI's alternation schedule; and short synthetic runs showing that neither collapses."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import estimators
from jmi import jmi_objective
from sdmi import sdmi_objective, sdmi_phase


def naive_scores(a, b, tau):
    return [[float(F.cosine_similarity(a[i], b[j], dim=0)) / tau for j in range(len(b))] for i in range(len(a))]


def naive_dv(a, b, tau):
    s, n = naive_scores(a, b, tau), len(a)
    joint = sum(s[i][i] for i in range(n)) / n
    off = [s[i][j] for i in range(n) for j in range(n) if i != j]
    return joint - math.log(sum(math.exp(v) for v in off) / len(off))


def naive_taylor(a, b, tau):
    s, n = naive_scores(a, b, tau), len(a)
    joint = sum(s[i][i] for i in range(n)) / n
    off = [s[i][j] for i in range(n) for j in range(n) if i != j]
    mean = sum(off) / len(off)
    var = sum((v - mean) ** 2 for v in off) / len(off)
    return joint - (mean + var / 2)


def _pair(n=6, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)


# ----------------------------------------------------------------------------- hand-worked values
# p = (e1, e2), z = (e1, (e1 + e2)/|.|): S = [[1, 1/sqrt2], [0, 1/sqrt2]] / tau.
P2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
Z2 = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=torch.float64)  # norms do not matter (cosine critic)
TAU = 0.5
JOINT2 = (1 + 1 / math.sqrt(2)) / 2 / TAU
OFF2 = (1 / math.sqrt(2) / TAU, 0.0)  # S_12, S_21


def test_sdmi_hand_values():
    dv = JOINT2 - math.log((math.exp(OFF2[0]) + math.exp(OFF2[1])) / 2)
    assert abs(sdmi_objective(P2, Z2, TAU, "dv").item() - dv) < 1e-12
    assert abs(sdmi_objective(P2, Z2, TAU, "predictor").item() - JOINT2) < 1e-12


def test_jmi_hand_values():
    dv = JOINT2 - math.log((math.exp(OFF2[0]) + math.exp(OFF2[1])) / 2)
    mean, var = sum(OFF2) / 2, ((OFF2[0] - OFF2[1]) / 2) ** 2  # plug-in variance of two values
    assert abs(jmi_objective(P2, Z2, TAU, "dv").item() - dv) < 1e-12
    assert abs(jmi_objective(P2, Z2, TAU, "taylor").item() - (JOINT2 - mean - var / 2)) < 1e-12


def test_orthonormal_pairs_reach_one_over_tau():
    # identical orthonormal views: joint term 1/tau, every marginal pair scores 0 -> log-mean-exp 0, var 0
    z = torch.eye(4, dtype=torch.float64)
    for tau in (0.1, 0.2):
        assert abs(sdmi_objective(z, z, tau, "dv").item() - 1 / tau) < 1e-12
        for m in ("dv", "taylor"):
            assert abs(jmi_objective(z, z, tau, m).item() - 1 / tau) < 1e-12


def test_collapsed_embeddings_score_zero():
    # all embeddings equal: joint and marginal scores coincide, the DV (and Taylor) objective is 0
    z = torch.ones(5, 3, dtype=torch.float64)
    assert abs(sdmi_objective(z, z, 0.1, "dv").item()) < 1e-9
    assert abs(jmi_objective(z, z, 0.1, "dv").item()) < 1e-9
    assert abs(jmi_objective(z, z, 0.1, "taylor").item()) < 1e-9
    assert abs(sdmi_objective(z, z, 0.1, "predictor").item() - 10.0) < 1e-9  # joint-only: collapse is optimal


# ----------------------------------------------------------------------------- naive loops and estimators
@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
def test_dv_forms_match_naive_loop_and_estimators(tau):
    p, z = _pair()
    ref = estimators.dv_bound(estimators.cosine_scores(p, z, tau)).item()
    for value in (sdmi_objective(p, z, tau, "dv").item(), jmi_objective(p, z, tau, "dv").item()):
        assert abs(value - naive_dv(p, z, tau)) < 1e-9
        assert abs(value - ref) < 1e-12


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_taylor_and_joint_only_match_naive_loops(tau):
    p, z = _pair(seed=1)
    assert abs(jmi_objective(p, z, tau, "taylor").item() - naive_taylor(p, z, tau)) < 1e-9
    joint = sum(naive_scores(p, z, tau)[i][i] for i in range(len(p))) / len(p)
    assert abs(sdmi_objective(p, z, tau, "predictor").item() - joint) < 1e-9


def test_jmi_is_symmetric_both_directions():
    # S^T has the same diagonal and off-diagonal values: one direction equals the average of the two
    z1, z2 = _pair(seed=2)
    for m in ("dv", "taylor"):
        both = (jmi_objective(z1, z2, 0.2, m) + jmi_objective(z2, z1, 0.2, m)) / 2
        assert abs(jmi_objective(z1, z2, 0.2, m).item() - both.item()) < 1e-12
    s = estimators.cosine_scores(z1, z2, 0.2)
    two_directions = (estimators.dv_bound(s) + estimators.dv_bound(s.T)) / 2
    assert abs(jmi_objective(z1, z2, 0.2, "dv").item() - two_directions.item()) < 1e-12


def test_taylor_is_close_to_dv_for_small_scores():
    # log E[exp T] = E[T] + Var[T]/2 + O(third cumulant): near-equal for scores of small spread (large tau)
    z1, z2 = _pair(n=16, d=8, seed=3)
    assert abs(jmi_objective(z1, z2, 20.0, "taylor").item() - jmi_objective(z1, z2, 20.0, "dv").item()) < 1e-4
    assert abs(jmi_objective(z1, z2, 0.1, "taylor").item() - jmi_objective(z1, z2, 0.1, "dv").item()) > 0.1


def test_objectives_pass_gradients_to_both_sides():
    # no stop-gradient inside the objectives: SDMI's caller decides which side is held fixed; JMI needs both
    p, z = (t.float().requires_grad_() for t in _pair())
    sdmi_objective(p, z, 0.1, "dv").backward()
    assert p.grad.abs().sum() > 0 and z.grad.abs().sum() > 0
    z1, z2 = (t.float().requires_grad_() for t in _pair())
    jmi_objective(z1, z2, 0.1, "taylor").backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0


def test_sdmi_phase_schedule():
    assert [sdmi_phase(t, 1) for t in range(1, 7)] == [0, 1, 0, 1, 0, 1]
    assert [sdmi_phase(t, 3) for t in range(1, 10)] == [0, 0, 0, 1, 1, 1, 0, 0, 0]


# ----------------------------------------------------------------------------- no collapse on synthetic data
# Ten Gaussian clusters in 64-d (class means 0.45 * N(0, I), unit noise); a view adds N(0, 0.25) noise and drops 20%
# of the coordinates. Encoders: MLP 64-128-32 (BN, ReLU); SDMI predictor 32-64-32; Adam 1e-3, batch 256,
# 200 steps, tau 0.2. Effective rank (estimators.effective_rank) of Z on 512 held-out points, out of 32; a random
# network gives ~26. Seen (seeds 0-2): SDMI dv ~26 (f) / ~24.5 (g), kNN ~90% (random init 50-57%); the same run
# with the joint term only and no predictor (nothing stands in for the marginal term) falls to ~9 with kNN ~56%;
# JMI dv / taylor ~29.8 / ~29.1. Threshold: RANK_MIN = 16 of 32.
RANK_MIN = 16.0


def _clusters(n, g):
    means = torch.randn(10, 64, generator=torch.Generator().manual_seed(123)) * 0.45
    y = torch.randint(0, 10, (n,), generator=g)
    return means[y] + torch.randn(n, 64, generator=g), y


def _view(x, g):
    return (x + 0.5 * torch.randn(x.shape, generator=g)) * (torch.rand(x.shape, generator=g) > 0.2)


def _mlp(i, h, o):
    return nn.Sequential(nn.Linear(i, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Linear(h, o))


def _rank_and_knn(enc):
    g = torch.Generator().manual_seed(999)
    (xtr, ytr), (xte, yte) = _clusters(2000, g), _clusters(512, g)
    enc.eval()
    with torch.no_grad():
        ztr, zte = F.normalize(enc(xtr), dim=1), F.normalize(enc(xte), dim=1)
    pred = ytr[(zte @ ztr.T).topk(20, dim=1).indices].mode(dim=1).values  # 20-NN majority vote
    return estimators.effective_rank(zte), 100 * (pred == yte).float().mean().item()


def _train_sdmi(marginal, use_predictor, steps=200, tau=0.2, seed=0):
    """SDMI's loop in miniature: alternate f-steps and g-steps, the held-fixed side under no_grad."""
    torch.manual_seed(seed)
    g_data = torch.Generator().manual_seed(seed)
    f, g = _mlp(64, 128, 32), _mlp(64, 128, 32)
    h = _mlp(32, 64, 32) if use_predictor else nn.Identity()
    opt_f = torch.optim.Adam([*f.parameters(), *h.parameters()], 1e-3)
    opt_g = torch.optim.Adam(g.parameters(), 1e-3)
    for t in range(1, steps + 1):
        x, _ = _clusters(256, g_data)
        x1, x2 = _view(x, g_data), _view(x, g_data)
        phase = sdmi_phase(t, 1)
        with torch.set_grad_enabled(phase == 0):
            p1, p2 = h(f(x1)), h(f(x2))
        with torch.set_grad_enabled(phase == 1):
            z1, z2 = g(x1), g(x2)
        loss = -(sdmi_objective(p1, z2, tau, marginal) + sdmi_objective(p2, z1, tau, marginal)) / 2
        opt = opt_f if phase == 0 else opt_g
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return f, g


def test_sdmi_dv_does_not_collapse_and_learns(one_thread):
    torch.manual_seed(0)
    _, knn_random = _rank_and_knn(_mlp(64, 128, 32))
    f, g = _train_sdmi("dv", use_predictor=True)
    (rank_f, knn_f), (rank_g, knn_g) = _rank_and_knn(f), _rank_and_knn(g)
    assert rank_f > RANK_MIN and rank_g > RANK_MIN, (rank_f, rank_g)
    assert knn_f > knn_random + 20 and knn_g > knn_random + 20, (knn_random, knn_f, knn_g)


def test_sdmi_without_any_marginal_surrogate_loses_rank(one_thread):
    # control: the same loop with the joint term only and no predictor drops below the threshold,
    # so the threshold above does detect (dimensional) collapse
    f, g = _train_sdmi("predictor", use_predictor=False)
    rank_f, rank_g = _rank_and_knn(f)[0], _rank_and_knn(g)[0]
    assert rank_f < RANK_MIN and rank_g < RANK_MIN, (rank_f, rank_g)


@pytest.mark.parametrize("marginal", ["dv", "taylor"])
def test_jmi_does_not_collapse(one_thread, marginal):
    torch.manual_seed(0)
    g_data = torch.Generator().manual_seed(0)
    f = _mlp(64, 128, 32)
    opt = torch.optim.Adam(f.parameters(), 1e-3)
    for _ in range(200):
        x, _ = _clusters(256, g_data)
        loss = -jmi_objective(f(_view(x, g_data)), f(_view(x, g_data)), 0.2, marginal)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    rank, knn = _rank_and_knn(f)
    assert rank > RANK_MIN and knn > 80, (rank, knn)

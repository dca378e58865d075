"""Redundancy reduction (second-order statistics of the batch): Barlow Twins and VICReg, against hand-worked values
and naive loops."""
import math

import torch

import barlow_twins
from barlow_twins import barlow_twins_loss
from vicreg import vicreg_loss

# -------------------------------------------------------------------------------------------- Barlow Twins
def naive_barlow(z1, z2, lambd, eps=1e-5):
    n, d = z1.shape

    def standardized(z, j):  # column j minus its mean, over its biased std (BatchNorm1d without affine)
        col = [float(z[b, j]) for b in range(n)]
        mu = sum(col) / n
        sd = math.sqrt(sum((c - mu) ** 2 for c in col) / n + eps)
        return [(c - mu) / sd for c in col]

    a = [standardized(z1, j) for j in range(d)]
    b = [standardized(z2, j) for j in range(d)]
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(a[i][t] * b[j][t] for t in range(n)) / n
            loss += (1 - c_ij) ** 2 if i == j else lambd * c_ij ** 2
    return loss


def test_barlow_twins_matches_naive_loop():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(7, 4, generator=g, dtype=torch.float64), torch.randn(7, 4, generator=g, dtype=torch.float64)
    for lambd in (0.0051, 0.5):
        total, on, off = barlow_twins_loss(z1, z2, lambd)
        assert abs(total.item() - naive_barlow(z1, z2, lambd)) < 1e-9
        assert abs(total.item() - (on + lambd * off).item()) < 1e-12


def test_barlow_twins_hand_values():
    # columns +-1 with mean 0 and biased variance 1, orthogonal: C = I / (1 + eps) for identical views
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    c = 1 / (1 + 1e-5)
    total, on, off = barlow_twins_loss(z, z.clone(), 0.0051)
    assert abs(on.item() - 2 * (1 - c) ** 2) < 1e-15 and abs(off.item()) < 1e-24  # round-off C_ij ~ 1e-16, squared
    # view 2 = view 1 with its columns swapped: C = [[0, c], [c, 0]], on-diagonal 2, off-diagonal 2 c^2
    total, on, off = barlow_twins_loss(z, z.flip(1), 0.5)
    assert abs(on.item() - 2) < 1e-12 and abs(off.item() - 2 * c ** 2) < 1e-12
    assert abs(total.item() - (2 + 0.5 * 2 * c ** 2)) < 1e-12


def test_barlow_twins_is_invariant_to_per_dimension_affine_maps_and_trains_both_views():
    g = torch.Generator().manual_seed(2)
    z1 = torch.randn(16, 3, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(16, 3, generator=g, dtype=torch.float64, requires_grad=True)
    scale, shift = torch.tensor([3.0, 0.5, 7.0], dtype=torch.float64), torch.tensor([5.0, -2.0, 0.1], dtype=torch.float64)
    a = barlow_twins_loss(z1, z2, 0.0051)[0]
    b = barlow_twins_loss(z1 * scale + shift, z2, 0.0051)[0]
    assert abs(a.item() - b.item()) < 1e-5  # only the eps inside the std differs
    a.backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0  # no stop-gradient: both branches learn


def test_barlow_twins_scale_loss_default_is_solo_learn_cifar():
    assert barlow_twins.Args.scale_loss == 0.1 and barlow_twins.Args.lambd == 0.0051


# -------------------------------------------------------------------------------------------------- VICReg
def test_vicreg_three_terms_by_hand_on_a_4x3_example():
    z1 = torch.tensor([[2.0, 0, 0], [-2, 0, 0], [0, 2, 0], [0, -2, 0]], dtype=torch.float64)
    z2 = torch.tensor([[1.0, 1, 0], [-1, -1, 0], [1, 1, 0], [-1, -1, 0]], dtype=torch.float64)
    total, inv, var, cov = vicreg_loss(z1, z2)
    # invariance: z1 - z2 rows (1,-1,0), (-1,1,0), (-1,1,0), (1,-1,0): squares sum to 8, over 4 x 3 entries
    assert abs(inv.item() - 8 / 12) < 1e-12
    # variance: z1 columns 0, 1 have unbiased variance 8/3 (std > 1, no hinge), column 2 is constant:
    # std = sqrt(0 + 1e-4) = 0.01, hinge 0.99; v(Z1) = 0.99 / 3. z2: columns 0, 1 variance 4/3, column 2 the same.
    assert abs(var.item() - 2 * 0.99 / 3) < 1e-12
    # covariance: z1's columns are orthogonal (c = 0); z2's columns 0 and 1 are equal, C_01 = C_10 = 4/3:
    # c(Z2) = 2 (4/3)^2 / 3 = 32/27
    assert abs(cov.item() - 32 / 27) < 1e-12
    assert abs(total.item() - (25 * 8 / 12 + 25 * 2 * 0.99 / 3 + 32 / 27)) < 1e-10
    total2 = vicreg_loss(z1, z2, sim_coeff=1.0, std_coeff=2.0, cov_coeff=3.0)[0]
    assert abs(total2.item() - (8 / 12 + 2 * 2 * 0.99 / 3 + 3 * 32 / 27)) < 1e-12


def naive_vicreg(z1, z2, lam, mu, nu):
    n, d = z1.shape
    s = sum(float(z1[b, j] - z2[b, j]) ** 2 for b in range(n) for j in range(d)) / (n * d)
    v = c = 0.0
    for z in (z1, z2):
        cols = [[float(z[b, j]) for b in range(n)] for j in range(d)]
        means = [sum(col) / n for col in cols]
        cov = [[sum((cols[i][b] - means[i]) * (cols[j][b] - means[j]) for b in range(n)) / (n - 1) for j in range(d)]
               for i in range(d)]
        v += sum(max(0.0, 1 - math.sqrt(cov[j][j] + 1e-4)) for j in range(d)) / d
        c += sum(cov[i][j] ** 2 for i in range(d) for j in range(d) if i != j) / d
    return lam * s + mu * v + nu * c, s, v, c


def test_vicreg_matches_naive_loop():
    g = torch.Generator().manual_seed(3)
    z1 = 0.7 * torch.randn(9, 5, generator=g, dtype=torch.float64)  # std around 0.7: the hinge is active
    z2 = z1 + 0.3 * torch.randn(9, 5, generator=g, dtype=torch.float64)
    for coeffs in ((25.0, 25.0, 1.0), (1.0, 3.0, 0.5)):
        got = vicreg_loss(z1, z2, *coeffs)
        want = naive_vicreg(z1, z2, *coeffs)
        for a, b in zip(got, want):
            assert abs(a.item() - b) < 1e-9
    assert want[2] > 0  # the hinge was active, so the variance term was really tested


def test_vicreg_variance_hinge_is_zero_above_one_and_gradients_reach_both_views():
    g = torch.Generator().manual_seed(4)
    z1 = (5 * torch.randn(64, 4, generator=g, dtype=torch.float64)).requires_grad_()
    z2 = (5 * torch.randn(64, 4, generator=g, dtype=torch.float64)).requires_grad_()
    total, inv, var, cov = vicreg_loss(z1, z2)
    assert abs(var.item()) < 1e-12  # every std is about 5, far above the hinge at 1
    total.backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0


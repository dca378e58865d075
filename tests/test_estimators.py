"""estimators.py: MI bounds against closed forms, matrix information and spectrum metrics against definitions."""

import math

import numpy as np
import pytest
import torch

import estimators as E

RHO, D, N = 0.8, 5, 512
TRUE_MI = -(D / 2) * math.log(1 - RHO ** 2)  # 2.554 nats
BOUNDS = (E.dv_bound, E.infonce_bound, E.jsd_bound, E.nwj_bound)


def _correlated_gaussians(n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g, dtype=torch.float64)
    y = RHO * x + math.sqrt(1 - RHO ** 2) * torch.randn(n, D, generator=g, dtype=torch.float64)
    return x, y, g


def _optimal_critic(x, y):
    """S_ij = log p(y_j | x_i) - log p(y_j), with y_k | x_k ~ N(rho x_k, 1 - rho^2), y_k ~ N(0, 1):
    T(x, y) = sum_k [ -1/2 log(1 - rho^2) - (y_k - rho x_k)^2 / (2 (1 - rho^2)) + y_k^2 / 2 ]."""
    s2 = 1 - RHO ** 2
    xi, yj = x[:, None, :], y[None, :, :]
    return (-0.5 * math.log(s2) - (yj - RHO * xi) ** 2 / (2 * s2) + yj ** 2 / 2).sum(-1)


def _gaussian_joint_cov():
    # (x_1..x_d, y_1..y_d): Var = 1, Cov(x_k, y_k) = rho, everything else 0
    eye = np.eye(D)
    return np.block([[eye, RHO * eye], [RHO * eye, eye]])


# ------------------------------------------------------------------ 1. Gaussian MI
def test_bounds_with_optimal_critic_on_correlated_gaussians():
    x, y, g = _correlated_gaussians()
    S = _optimal_critic(x, y)
    dv, nce, jsd, nwj = (float(f(S)) for f in BOUNDS)

    assert abs(dv - TRUE_MI) < 0.25
    # NWJ is tight for T + 1; with the DV-optimal critic T it gives I - 1/e instead.
    assert abs(float(E.nwj_bound(S + 1)) - TRUE_MI) < 0.25
    assert abs(nwj - (TRUE_MI - 1 / math.e)) < 0.25
    assert nce <= math.log(N) + 1e-6
    assert TRUE_MI - 0.25 < nce < min(TRUE_MI, math.log(N)) + 0.1
    # at the optimum the JSD estimator is 2 JSD - log 4 in [-log 4, 0]
    assert math.isfinite(jsd) and -math.log(4) < jsd < 0

    # Same critic on shuffled (independent) pairs: no spurious MI. The diagonal now
    # samples p(x)p(y), so DV ~ E_{p(x)p(y)}[T] = -KL(p(x)p(y) || p(x,y)), which is
    # d/2 (2/(1-rho^2) - 2 + log(1-rho^2)) = 6.33 nats below zero here.
    Sh = S[:, torch.randperm(N, generator=g)]
    kl = D / 2 * (2 / (1 - RHO ** 2) - 2 + math.log(1 - RHO ** 2))
    assert abs(float(E.dv_bound(Sh)) + kl) < 0.5
    for f in BOUNDS:
        assert float(f(Sh)) < float(f(S)) - 1.0


def test_uninformative_constant_critic_gives_zero():
    S = torch.full((7, 7), 0.3, dtype=torch.float64)
    assert abs(float(E.dv_bound(S))) < 1e-12
    assert abs(float(E.infonce_bound(S))) < 1e-12
    assert float(E.nwj_bound(S)) == pytest.approx(0.3 - math.exp(0.3 - 1), abs=1e-12)
    sp = math.log1p(math.exp(0.3)) + math.log1p(math.exp(-0.3))
    assert float(E.jsd_bound(S)) == pytest.approx(-sp, abs=1e-12)


# ------------------------------------------------------- 2. bounds vs naive loops
def _naive_bounds(S):
    n = len(S)
    diag = sum(S[i][i] for i in range(n)) / n
    off = [S[i][j] for i in range(n) for j in range(n) if i != j]
    dv = diag - math.log(sum(math.exp(s) for s in off) / len(off))
    nce = sum(S[i][i] - math.log(sum(math.exp(S[i][j]) for j in range(n))) for i in range(n)) / n + math.log(n)
    softplus = lambda v: math.log(1 + math.exp(v))  # noqa: E731
    jsd = -sum(softplus(-S[i][i]) for i in range(n)) / n - sum(softplus(s) for s in off) / len(off)
    nwj = diag - sum(math.exp(s - 1) for s in off) / len(off)
    return dv, nce, jsd, nwj


def test_bounds_match_naive_loops():
    S = torch.randn(6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2
    for f, ref in zip(BOUNDS, _naive_bounds(S.tolist())):
        out = f(S)
        assert out.dim() == 0 and out.dtype == torch.float64
        assert abs(float(out) - ref) < 1e-10, f.__name__


# ---------------------------------------------------------------- 3. cosine scores
def test_cosine_scores_match_naive_loop():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    S = E.cosine_scores(a, b, 0.2)
    assert S.shape == (5, 5)
    for i in range(5):
        for j in range(5):
            ref = float(a[i] @ b[j]) / (math.sqrt(float(a[i] @ a[i])) * math.sqrt(float(b[j] @ b[j]))) / 0.2
            assert abs(float(S[i, j]) - ref) < 1e-12


# ------------------------------------------------------------ 4. Gaussian closed form
def test_gaussian_mi():
    cov = _gaussian_joint_cov()
    assert E.gaussian_mi(cov, D) == pytest.approx(TRUE_MI, abs=1e-10)
    assert E.gaussian_mi(torch.tensor(cov), D) == pytest.approx(TRUE_MI, abs=1e-10)
    block = np.zeros((5, 5))
    block[:2, :2] = [[2.0, 0.5], [0.5, 1.0]]
    block[2:, 2:] = np.diag([1.0, 3.0, 0.5])
    block[3, 4] = block[4, 3] = 0.4
    assert abs(E.gaussian_mi(block, 2)) < 1e-12
    singular = _gaussian_joint_cov()
    singular[0, D] = singular[D, 0] = 1.0  # x_1 == y_1
    with pytest.raises(ValueError, match="positive definite"):
        E.gaussian_mi(singular, D)
    with pytest.raises(ValueError, match="positive definite"):
        E.gaussian_mi(np.array([[1.0, 2.0], [2.0, 1.0]]), 1)  # indefinite


# ---------------------------------------------------------------- 5. effective rank
def test_effective_rank():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(4000, 16, generator=g, dtype=torch.float64)
    assert abs(E.effective_rank(z) - 16) < 0.5
    shifted = z + 100.0  # a large common mean dominates the uncentered spectrum
    assert E.effective_rank(shifted) < 2
    assert abs(E.effective_rank(shifted, center=True) - 16) < 0.5
    u, v = torch.randn(50, 1, generator=g), torch.randn(1, 8, generator=g)
    assert abs(E.effective_rank(u @ v) - 1) < 1e-6
    ref = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert abs(E.effective_rank(torch.diag(torch.tensor([3.0, 1.0]))) - ref) < 1e-9


# ------------------------------------------------ 6. matrix-based Renyi entropy / MI
def test_renyi_entropy_known_spectra():
    n = 8
    for alpha in (2.0, 1.0, 0.5, 3.0):
        assert E.renyi_entropy(torch.eye(n) / n, alpha) == pytest.approx(math.log(n), abs=1e-10)
        v = torch.randn(n, 1, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        rank1 = v @ v.T / float(v.T @ v)
        assert abs(E.renyi_entropy(rank1, alpha)) < 1e-9
    lam = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    A = torch.diag(lam)
    assert E.renyi_entropy(A, 2.0) == pytest.approx(-math.log(0.25 + 0.09 + 0.04), abs=1e-12)
    assert E.renyi_entropy(A, 1.0) == pytest.approx(-float((lam * lam.log()).sum()), abs=1e-12)


def test_gram_is_trace_normalized():
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(5))
    A = E.gram(x)
    assert A.dtype == torch.float64 and A.shape == (6, 6)
    assert float(torch.trace(A)) == pytest.approx(1.0, abs=1e-12)
    assert torch.allclose(torch.diagonal(A), torch.full((6,), 1 / 6, dtype=torch.float64))
    K = x.double() @ x.double().T
    assert torch.allclose(E.gram(x, normalize=False), K / torch.trace(K))


def test_matrix_mutual_information():
    # In general I(x; x) = 2 S(A) - S(A o A / tr(A o A)), which equals S(A) only when
    # A o A is proportional to A -- e.g. one-hot rows (4 classes): A o A = A / n.
    onehot = torch.eye(4).repeat(6, 1)  # 24 samples, 4 balanced classes
    assert E.matrix_entropy(onehot) == pytest.approx(math.log(4), abs=1e-10)
    for alpha in (2.0, 1.0):
        assert E.matrix_mutual_information(onehot, onehot, alpha) == pytest.approx(
            E.matrix_entropy(onehot, alpha), abs=1e-10)

    # balanced factorial design of two independent binary labels -> I = 0 exactly
    a = torch.tensor([[1.0, 0], [1, 0], [0, 1], [0, 1]])
    b = torch.tensor([[1.0, 0], [0, 1], [1, 0], [0, 1]])
    assert abs(E.matrix_mutual_information(a, b)) < 1e-10
    assert E.matrix_mutual_information(a, a) == pytest.approx(math.log(2), abs=1e-10)

    # generic features: not an identity, check the hand-written formula instead
    g = torch.Generator().manual_seed(6)
    x, noise = torch.randn(30, 4, generator=g), torch.randn(30, 4, generator=g)
    A = E.gram(x)
    AA = A * A / torch.trace(A * A)
    ref = 2 * E.renyi_entropy(A) - E.renyi_entropy(AA)
    i_xx = E.matrix_mutual_information(x, x)
    assert i_xx == pytest.approx(ref, abs=1e-10)
    assert abs(i_xx - E.matrix_entropy(x)) > 1e-3
    assert i_xx > E.matrix_mutual_information(x, noise)


# ------------------------------------------------------------ 7. hypersphere metrics
def test_uniformity_square():
    square = torch.tensor([[1.0, 0], [0, 1], [-1, 0], [0, -1]])
    ref = math.log((4 * math.exp(-2 * 2) + 2 * math.exp(-2 * 4)) / 6)  # d^2 = 2,2,2,2,4,4
    assert E.uniformity(square) == pytest.approx(ref, abs=1e-12)
    assert E.uniformity(3 * square) == pytest.approx(ref, abs=1e-12)  # rows are normalized
    ref_t1 = math.log((4 * math.exp(-2) + 2 * math.exp(-4)) / 6)
    assert E.uniformity(square, t=1.0) == pytest.approx(ref_t1, abs=1e-12)


def test_alignment():
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(7))
    assert abs(E.alignment(x, x)) < 1e-12
    assert E.alignment(x, 2 * x) == pytest.approx(0.0, abs=1e-12)
    assert E.alignment(x, -x) == pytest.approx(4.0, abs=1e-12)
    assert E.alignment(x, -x, alpha=1.0) == pytest.approx(2.0, abs=1e-12)
    assert E.alignment(torch.tensor([[1.0, 0]]), torch.tensor([[0.0, 5]])) == pytest.approx(2.0, abs=1e-12)


# ------------------------------------------------ 8. covariance-spectrum metrics
def _data_with_exact_cov(variances, n=50, seed=8):
    """Rows whose (N-1)-normalized sample covariance is exactly diag(variances)."""
    z = torch.randn(n, len(variances), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    q, _ = torch.linalg.qr(z - z.mean(0))  # orthonormal columns, still centered
    return q * torch.tensor(variances, dtype=torch.float64).sqrt() * math.sqrt(n - 1) + 7.0


def test_eigen_count_and_explained_variance_exact():
    var = [10.0, 5.0, 1.0, 0.001]  # fractions .625, .3125, .0625, 6e-5
    x = _data_with_exact_cov(var)
    assert E.eigen_count(x) == 3
    assert E.eigen_count(x, threshold=0.1) == 2
    assert E.eigen_count(x, threshold=0.5) == 1
    total = sum(var)
    assert E.explained_variance(x) == pytest.approx(15 / total, abs=1e-10)  # ceil(0.3*4) = 2
    assert E.explained_variance(x, top_frac=0.2) == pytest.approx(10 / total, abs=1e-10)
    assert E.explained_variance(x, top_frac=1.0) == pytest.approx(1.0, abs=1e-10)
    # 0.28 * 25 is 7.000000000000001 in floating point: still the top 7, not 8
    x25 = _data_with_exact_cov([float(v) for v in range(25, 0, -1)])
    assert E.explained_variance(x25, top_frac=0.28) == pytest.approx(154 / 325, abs=1e-10)


def test_eigen_count_and_explained_variance_sampled():
    var = torch.tensor([10.0, 5.0, 1.0, 0.001], dtype=torch.float64)
    x = torch.randn(20000, 4, generator=torch.Generator().manual_seed(9), dtype=torch.float64) * var.sqrt()
    assert E.eigen_count(x) == 3
    assert E.explained_variance(x) == pytest.approx(15 / 16.001, abs=0.01)


# --------------------------------------------------------------------- 9. gradients
def test_bounds_are_differentiable_and_keep_dtype():
    g = torch.Generator().manual_seed(10)
    a = torch.randn(16, 8, generator=g, requires_grad=True)
    b = torch.randn(16, 8, generator=g, requires_grad=True)
    loss = -E.dv_bound(E.cosine_scores(a, b, 0.1))
    assert loss.dim() == 0 and loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all() and a.grad.abs().sum() > 0
    for f in BOUNDS:
        out = f(E.cosine_scores(a, b, 0.1))
        assert out.dtype == torch.float32 and out.requires_grad


def test_bad_score_shape_raises():
    with pytest.raises(ValueError):
        E.dv_bound(torch.zeros(3, 4))


def test_representation_metrics_keys():
    r, z1 = torch.randn(64, 16), torch.randn(64, 8)
    m = E.representation_metrics(r, z1, z1 + 0.1 * torch.randn(64, 8))
    for k in ("mi/cos_dv", "mi/infonce", "mi/jsd", "dim/erank_R", "dim/erank_Z", "dim/mi_RZ", "dim/eig_count_R",
              "dim/explained_var_top30_Z", "dim/uniformity_R"):
        assert math.isfinite(m[k]), k
    assert m["mi/infonce"] <= math.log(64) + 1e-6

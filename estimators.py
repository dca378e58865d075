"""Mutual-information bounds and representation metrics (information in nats; the JSD estimator is not in nats).

Pure functions; the only training is the linear probe's own classifier on frozen features.

* Bounds (``dv_bound``, ``infonce_bound``, ``jsd_bound``, ``nwj_bound``) take an
  (N, N) critic score matrix ``S`` with ``S_ij = T(x_i, y_j)``: positive (joint)
  pairs on the diagonal, off-diagonal pairs are samples of the product of
  marginals. They return 0-dim tensors in the input dtype and stay
  differentiable, so they can be used as (negated) losses.
* Metrics compute in float64 on detached inputs and return Python numbers.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

PD_MARGIN = 1e-12  # gaussian_mi: positive definite means smallest eigenvalue > PD_MARGIN x largest
MI_TEMPERATURE = 0.1  # critic temperature of the logged MI estimates (fixed, so curves compare across methods)


def _as64(x):
    """Detached float64 tensor from a tensor or array-like."""
    if isinstance(x, np.ndarray) or not torch.is_tensor(x):
        x = torch.as_tensor(np.asarray(x))
    return x.detach().double()


def _check_scores(scores):
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1] or scores.shape[0] < 2:
        raise ValueError(f"scores must be a square (N, N) matrix with N >= 2, got {tuple(scores.shape)}")
    return scores.shape[0]


def _offdiag(scores):
    n = scores.shape[0]
    return scores[~torch.eye(n, dtype=torch.bool, device=scores.device)]


# ----------------------------------------------------------------------------- bounds
def cosine_scores(a, b, tau):
    """Cosine critic: S_ij = <a_i, b_j> / (|a_i| |b_j| tau), shape (N, N).

    a, b are (N, D) paired batches, so positives are on the diagonal.
    """
    return F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / tau


def dv_bound(scores):
    """Donsker-Varadhan lower bound on I(X; Y) (MINE).

    I_DV = mean_i S_ii - log( 1/(N(N-1)) sum_{i != j} exp(S_ij) ),
    with the log-mean-exp computed as logsumexp(off-diag) - log(N(N-1)).
    Refs: Donsker & Varadhan 1983; Belghazi et al. 2018 (MINE).
    "cos-DV" is ``dv_bound(cosine_scores(a, b, tau))``.
    """
    n = _check_scores(scores)
    return scores.diagonal().mean() - (torch.logsumexp(_offdiag(scores), 0) - math.log(n * (n - 1)))


def infonce_bound(scores):
    """InfoNCE lower bound: I_NCE = mean_i (S_ii - logsumexp_j S_ij) + log N.

    The sum over j includes the positive j = i, hence I_NCE <= log N always.
    Refs: van den Oord et al. 2018 (CPC); Poole et al. 2019.
    """
    n = _check_scores(scores)
    return (scores.diagonal() - torch.logsumexp(scores, dim=1)).mean() + math.log(n)


def jsd_bound(scores):
    """Jensen-Shannon estimator of Deep InfoMax (Hjelm et al. 2019).

    I_JSD = E_joint[-softplus(-S_ii)] - E_marginal[softplus(S_ij)], i != j.
    This is a (shifted) variational estimate of the JS divergence between joint
    and product of marginals, sup_T I_JSD = 2 JSD(p || p_x p_y) - log 4; it lies
    in [-log 4, 0] at the optimum and is NOT a bound on the MI in nats in general.
    """
    _check_scores(scores)
    return -F.softplus(-scores.diagonal()).mean() - F.softplus(_offdiag(scores)).mean()


def nwj_bound(scores):
    """NWJ / f-GAN KL lower bound (Nguyen, Wainwright & Jordan 2010).

    I_NWJ = mean_i S_ii - mean_{i != j} exp(S_ij - 1).
    Tight for the critic T = 1 + log p(y|x)/p(y) (note the +1 compared with DV).
    """
    _check_scores(scores)
    return scores.diagonal().mean() - torch.exp(_offdiag(scores) - 1).mean()


# ----------------------------------------------------------------- closed-form MI
def gaussian_mi(cov, dx):
    """MI of jointly Gaussian (X, Y) with joint covariance ``cov``; X = first dx coords.

    I(X; Y) = 1/2 (log det S_X + log det S_Y - log det S)   (Cover & Thomas, ch. 8),
    log-determinants from the eigenvalues. Raises ValueError unless each of the three
    matrices is positive definite with a margin: smallest eigenvalue > 1e-12 x largest
    (an exactly singular covariance computes to ~1e-16 x largest on any machine, a
    ridge of 1e-8 on unit-scale data to ~1e-10, so round-off never decides).
    """
    cov = _as64(cov)
    if cov.dim() != 2 or cov.shape[0] != cov.shape[1]:
        raise ValueError(f"cov must be a square matrix, got shape {tuple(cov.shape)}")
    if not 0 < dx < cov.shape[0]:
        raise ValueError(f"dx must be in [1, {cov.shape[0] - 1}], got {dx}")
    logdets = []
    for m in (cov, cov[:dx, :dx], cov[dx:, dx:]):
        lam = torch.linalg.eigvalsh((m + m.T) / 2)  # ascending
        if lam[0] <= PD_MARGIN * lam[-1].abs():
            raise ValueError(f"covariance is not positive definite: smallest eigenvalue {lam[0].item():.3g} <= "
                             f"{PD_MARGIN:g} x largest {lam[-1].item():.3g} (singular or indefinite)")
        logdets.append(torch.log(lam).sum())
    return float(0.5 * (logdets[1] + logdets[2] - logdets[0]))


# ------------------------------------------------------- matrix-based information
def gram(x, normalize=True):
    """Trace-normalized Gram matrix A = K / tr(K), K = x x^T (rows L2-normalized if
    ``normalize``). Returns a float64 (N, N) tensor with trace 1."""
    x = _as64(x)
    if normalize:
        x = F.normalize(x, dim=1)
    k = x @ x.T
    return k / torch.trace(k)


def renyi_entropy(A, alpha=2.0):
    """Matrix-based Renyi alpha-entropy (Sanchez Giraldo, Rao & Principe 2014).

    S_alpha(A) = 1/(1 - alpha) * log( sum_i lambda_i(A)^alpha )   (natural log: nats),
    for A symmetric PSD with trace 1; alpha = 1 gives von Neumann -sum lambda log lambda.
    Round-off eigenvalues (below N * eps * lambda_max, incl. negative ones) are set
    to 0; otherwise, for alpha < 1, ~1e-16 null-space noise would add spurious entropy.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    lam = torch.linalg.eigvalsh(_as64(A))
    tol = lam.shape[0] * torch.finfo(lam.dtype).eps * lam.abs().max()
    lam = torch.where(lam > tol, lam, torch.zeros_like(lam))
    if math.isclose(alpha, 1.0):
        return float(-torch.xlogy(lam, lam).sum())
    return float(torch.log((lam ** alpha).sum()) / (1.0 - alpha))


def matrix_entropy(x, alpha=2.0):
    """S_alpha(gram(x)): matrix-based Renyi entropy of features x (N, D)."""
    return renyi_entropy(gram(x), alpha)


def matrix_mutual_information(x, y, alpha=2.0):
    """Matrix-based MI (Sanchez Giraldo et al. 2014): I = S(A) + S(B) - S(A o B / tr(A o B)),
    A = gram(x), B = gram(y), o = Hadamard product.

    Note I(x; x) = 2 S(A) - S(A o A / tr) equals S(A) only when A o A is
    proportional to A (e.g. rows that are one-hot / orthonormal clusters).
    """
    A, B = gram(x), gram(y)
    if A.shape != B.shape:
        raise ValueError(f"x and y must have the same number of rows, got {A.shape[0]} and {B.shape[0]}")
    joint = A * B
    joint = joint / torch.trace(joint)
    return renyi_entropy(A, alpha) + renyi_entropy(B, alpha) - renyi_entropy(joint, alpha)


# --------------------------------------------------------- spectrum-based metrics
def effective_rank(x, eps=1e-12, center=False):
    """Effective rank (Roy & Vetterli 2007), as in RankMe (Garrido et al. 2023).

    p_k = sigma_k / sum_j sigma_j + eps over the singular values of x (N, D),
    erank = exp(-sum_k p_k log p_k). No centering unless ``center=True``.
    """
    x = _as64(x)
    if center:
        x = x - x.mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(x)
    p = s / s.sum() + eps
    return float(torch.exp(-(p * torch.log(p)).sum()))


def _cov_eigvals(x):
    """Eigenvalues (descending, clamped >= 0) of the (N-1)-normalized covariance of x."""
    x = _as64(x)
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"x must be (N, D) with N >= 2, got {tuple(x.shape)}")
    xc = x - x.mean(dim=0, keepdim=True)
    # the nonzero eigenvalues of xc^T xc (D x D) and xc xc^T (N x N) agree: decompose the smaller one
    m = xc.T @ xc if x.shape[1] <= x.shape[0] else xc @ xc.T
    return (torch.linalg.eigvalsh(m) / (x.shape[0] - 1)).clamp(min=0).flip(0)


def eigen_count(x, threshold=0.01):
    """Number of covariance eigenvalues with lambda_k / sum_j lambda_j > threshold."""
    lam = _cov_eigvals(x)
    return int((lam / lam.sum() > threshold).sum())


def explained_variance(x, top_frac=0.3):
    """Fraction of total variance held by the top k = ceil(top_frac * min(N, D))
    covariance eigenvalues of centered x (k clipped to [1, min(N, D)])."""
    lam = _cov_eigvals(x)
    d = min(x.shape[0], x.shape[1])
    k = min(max(math.ceil(round(top_frac * d, 9)), 1), d)  # round: 0.28*25 = 7.000000000000001 -> 7
    return float(lam[:k].sum() / lam.sum())


# ------------------------------------------------------------ hypersphere metrics
def uniformity(x, t=2.0):
    """Uniformity (Wang & Isola 2020): log mean_{i<j} exp(-t |x^_i - x^_j|^2),
    x^ = L2-normalized rows. Lower is more uniform."""
    d2 = torch.pdist(F.normalize(_as64(x), dim=1)).pow(2)
    return float(torch.logsumexp(-t * d2, 0) - math.log(d2.numel()))


def alignment(x, y, alpha=2.0):
    """Alignment (Wang & Isola 2020): mean_i |x^_i - y^_i|^alpha on L2-normalized rows."""
    xn, yn = F.normalize(_as64(x), dim=1), F.normalize(_as64(y), dim=1)
    return float((xn - yn).norm(dim=1).pow(alpha).mean())


# ---------------------------------------------------------------- evaluation
KNN_PROTOCOL = ("weighted kNN: cosine, k=200, T=0.1, backbone features of un-augmented images, train split "
                "as memory, test split as queries")
LINEAR_PROTOCOL = ("offline linear probe: frozen backbone (eval mode), precomputed features of un-augmented images, "
                   "standardized with train statistics; Adam lr 1e-2 cosine, 100 epochs, batch 256, no weight decay")


@torch.no_grad()
def knn_top1(train_f, train_y, test_f, test_y, num_classes, k=200, T=0.1, chunk=1024) -> float:
    """kNN top-1 (%) of test features against train features, weighted as Wu et al. 2018 (instance discrimination):
    cosine similarity, the top-k neighbours vote for their label with weight exp(sim / T)."""
    train_f, test_f = F.normalize(train_f, dim=1), F.normalize(test_f, dim=1)
    k, correct = min(k, len(train_f)), 0
    for i in range(0, len(test_f), chunk):
        sim, idx = (test_f[i:i + chunk] @ train_f.T).topk(k, dim=1)
        votes = torch.zeros(len(sim), num_classes, device=sim.device).scatter_add_(1, train_y[idx], (sim / T).exp())
        correct += (votes.argmax(1) == test_y[i:i + chunk]).sum().item()
    return 100.0 * correct / len(test_f)


def fit_linear_classifier(train_f, train_y, num_classes, epochs=100, batch_size=256, seed=0):
    """The linear classifier of LINEAR_PROTOCOL fitted on precomputed features: (classifier on standardized features,
    mean, std), the classifier's initialization and batch order from `seed` alone (the global RNG is left as it is)."""
    mu, sd = train_f.mean(0), train_f.std(0) + 1e-6
    train_f = (train_f - mu) / sd
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # a seeded classifier init, leaving the global RNG untouched
        torch.manual_seed(seed)
        clf = torch.nn.Linear(train_f.shape[1], num_classes).to(train_f.device)
    opt = torch.optim.Adam(clf.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * math.ceil(len(train_f) / batch_size))
    for _ in range(epochs):
        perm = torch.randperm(len(train_f), generator=g).to(train_f.device)
        for i in range(0, len(train_f), batch_size):
            loss = F.cross_entropy(clf(train_f[perm[i:i + batch_size]]), train_y[perm[i:i + batch_size]])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return clf, mu, sd


def linear_probe(backbone: torch.nn.Module, train_f, train_y, test_f, test_y, num_classes, epochs=100, batch_size=256,
                 seed=0) -> float:
    """Offline linear probe on frozen precomputed features (LINEAR_PROTOCOL). Checks that it trained only its two
    tensors and that the backbone (weights, BN statistics, gradients) is unchanged afterwards."""
    before = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
    grads = [p.grad for p in backbone.parameters()]
    clf, mu, sd = fit_linear_classifier(train_f, train_y, num_classes, epochs, batch_size, seed)
    params = list(clf.parameters())
    assert len(params) == 2 and [tuple(p.shape) for p in params] == [(num_classes, train_f.shape[1]), (num_classes,)]
    assert all(p.grad is g0 for p, g0 in zip(backbone.parameters(), grads)), "linear probe: backbone got gradients"
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "linear probe: backbone weights or BN stats changed"
    with torch.no_grad():
        return 100.0 * (clf((test_f - mu) / sd).argmax(1) == test_y).float().mean().item()


# ------------------------------------------------- what the training scripts log
def mi_estimates(z1, z2):
    """cos-DV and InfoNCE lower bounds (nats) and the JSD estimator (not in nats: see jsd_bound) between paired
    embeddings (N, D), cosine critic at T=MI_TEMPERATURE."""
    s = cosine_scores(z1, z2, MI_TEMPERATURE)
    return {"mi/cos_dv": dv_bound(s).item(), "mi/infonce": infonce_bound(s).item(), "mi/jsd": jsd_bound(s).item()}


def representation_metrics(r, z1, z2):
    """mi_estimates between the two views' embeddings z1, z2, the matrix Renyi-2 I(R;Z1) of L2-normalized rows, and
    the dimensionality of R and Z1 (effective rank, eigenvalues above 0.01, top-30% explained variance, uniformity)."""
    out = mi_estimates(z1, z2)
    out["dim/mi_RZ"] = matrix_mutual_information(F.normalize(r, dim=1), F.normalize(z1, dim=1))
    for name, x in (("R", r), ("Z", z1)):
        out[f"dim/erank_{name}"] = effective_rank(x)
        out[f"dim/eig_count_{name}"] = eigen_count(x, 0.01)
        out[f"dim/explained_var_top30_{name}"] = explained_variance(x, 0.3)
        out[f"dim/uniformity_{name}"] = uniformity(x)
    return out

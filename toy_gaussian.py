"""Controlled experiments on synthetic Gaussian data, from two papers.

Sabby, Sui, Wu, Cresswell, Wu 2025, "Self-Supervised Representation Learning as Mutual Information Maximization"
(arXiv:2510.01345), Figures 2 and 3; Kokilepersaud, Prabhushankar, AlRegib 2025, "AdaDim: Dimensionality Adaptation
for SSL Representational Dynamics" (arXiv:2505.12576), Figure 2 and appendix Figure 11. Our reading of the setups
from the papers' text; their code was not available to us.

    python toy_gaussian.py --experiment trajectories               # Sabby et al. Fig. 3 + Fig. 2's form
    python toy_gaussian.py --experiment trajectories --methods sdmi simclr byol
    python toy_gaussian.py --experiment pca                        # AdaDim Fig. 2
    python toy_gaussian.py --experiment mlp                        # AdaDim Fig. 11
    python toy_gaussian.py --experiment pca --draws 3 --n-features-sweep 10 50   # seconds

Each experiment runs on a CPU in about 3 minutes or less at its default size and writes PNG figures (matplotlib,
headless) and tensorboard scalars to runs/toy_gaussian__{experiment}__{seed}__{unix time}/, printing the paths.

1. trajectories: a mixture of 5 isotropic Gaussian clusters in R^dim (centers uniform in [-center_box, center_box]^dim,
   seeded); the two views of a sample are the sample plus independent N(0, aug_std^2) noise. Every method trains the
   same encoder (Linear-BN-ReLU x2 + Linear, `--hidden-dim`, `--embed-dim`) with its own objective, imported from
   methods/ (SDMI, JMI, SimCLR, BYOL, SimSiam, Barlow Twins, VICReg), with the same seed, data,
   views and Adam optimizer. Every `--record-every` steps: the (eval-mode) embeddings of the 5 noise-free cluster
   centers, and cos-DV / InfoNCE / JSD (critic: cosine, T = estimators.MI_TEMPERATURE) on a fixed held-out pair of
   views.
   Figures: trajectories.png (one panel per method; PCA to 2-D fitted once on the final embeddings of held-out
   samples; opacity grows with training), mi.png (one panel per estimator, one curve per method). At the end a
   table: separation = between-center spread / within-cluster spread of the L2-normalized embeddings (and of the raw
   ones, and of the input data for reference).
2. pca: R = make_blobs data (numpy equivalent of sklearn's: centers uniform in [-10, 10]^n_features), Z = its PCA
   projection on 2 or 10 components. I(R;Z) = 1/2 log det S_Z / det(S_Z - S_ZR S_R^-1 S_RZ) (Schur complement),
   computed as estimators.gaussian_mi of the joint sample covariance S of (R, Z), the same quantity. Z is a
   deterministic function of R, so the exact value is infinite: a ridge eps*I is added to S (`ridged_joint_cov`),
   which is the MI of R and Z observed with independent N(0, eps) noise. Default eps = 1e-3 x the mean variance of R
   (`--ridge 1e-3 --ridge-scale shared`), the same for the R and Z blocks since Z is in R's units; then
   I ~ 1/2 sum_i log(lambda_i / 2 eps) over the top-k eigenvalues lambda_i of S_R: how much of R's variance the k
   components hold. Sweeps over n_features and over cluster_std, mean +- std over `--draws` draws: pca.png.
3. mlp: 25 features, cluster_std 0.01, 5 centers, 1000 samples; encoder MLP 5 x 20 units (ReLU), projector
   Linear(20, 5)-ReLU-Linear(5, 5); views = data + N(0, 0.5^2); Adam lr 1e-4, betas (0.9, 0.999), batch 256; SimCLR
   loss against VICReg loss (same initial weights, batches and views). Each epoch, the closed-form Gaussian I(X;R)
   between the clean data X and the encoder output R, and I(X;Z) with the projector output Z, with the ridge
   relative to each block's mean variance (`--ridge-scale per_block`: X and the network outputs have unrelated
   units, and SimCLR's output scale is arbitrary): mlp.png.

Implementation details:
1. No GPU code: the networks are tiny and run fastest on one CPU thread (`--threads`).
2. Objectives are imported from methods/, never re-implemented here. SDMI as methods/sdmi.py: encoders f (with
   predictor h) and g alternate every step, the other side held fixed (no gradient); f is the one recorded and
   evaluated. BYOL: EMA target via byol.ema_update with a fixed `--ema-tau` (no cosine schedule). SimSiam:
   predictor + stop-gradient. One Adam optimizer per method (no weight decay, so it equals SDMI's two optimizers:
   parameters without a gradient in a step are skipped).
3. Temperature 0.1 for SimCLR, SDMI and JMI (`--temperature`); Barlow Twins' lambda 0.05 (`--barlow-lambda`;
   0.0051 is tuned for 2048-d embeddings, here 16-d); VICReg 25/25/1.
4. MI estimates (trajectories) are between f's embeddings of the two views of the same 512 held-out samples,
   as estimators.representation_metrics; they are estimates, not the MI the objectives maximize (SDMI's is between
   h(f(.)) and g(.)). Separation is computed in the full embedding space, not on the 2-D PCA of the figure.
"""
import copy
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Tuple

import matplotlib

matplotlib.use("Agg")  # headless
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "methods"))
import common  # noqa: E402
import estimators  # noqa: E402

from barlow_twins import barlow_twins_loss  # noqa: E402  (the objectives, from the method files)
from byol import ema_update, regression_loss  # noqa: E402
from jmi import jmi_objective  # noqa: E402
from sdmi import sdmi_objective, sdmi_phase  # noqa: E402
from simclr import info_nce_loss  # noqa: E402
from simsiam import negative_cosine  # noqa: E402
from vicreg import vicreg_loss  # noqa: E402

MethodName = Literal["sdmi", "jmi", "simclr", "byol", "simsiam", "barlow_twins", "vicreg"]
ALL_METHODS: Tuple[MethodName, ...] = ("sdmi", "jmi", "simclr", "byol", "simsiam", "barlow_twins", "vicreg")
MI_NAMES = {"mi/cos_dv": "cos-DV", "mi/infonce": "InfoNCE", "mi/jsd": "JSD"}


@dataclass
class Args:
    experiment: Literal["trajectories", "pca", "mlp"] = "trajectories"
    """which experiment: Sabby et al. Fig. 3 (trajectories), AdaDim Fig. 2 (pca) or AdaDim Fig. 11 (mlp)"""
    seed: int = 0
    """seed of data, weights, views and draws"""
    threads: int = 1
    """CPU threads of torch (tiny networks run fastest on one)"""
    ridge: float = 1e-3
    """ridge delta added to the joint covariance of the closed-form Gaussian MI (pca, mlp): the exact MI of a
    deterministic function is infinite"""
    ridge_scale: Literal["auto", "shared", "per_block", "absolute"] = "auto"
    """what the ridge is relative to (see ridged_joint_cov); auto: shared for pca (Z in R's units), per_block for mlp"""
    # trajectories
    methods: Tuple[MethodName, ...] = ALL_METHODS
    """trajectories: methods to train"""
    dim: int = 10
    """trajectories: input dimension d"""
    n_samples: int = 2000
    """trajectories: training samples (a fixed held-out set of the same size is drawn for evaluation)"""
    cluster_std: float = 1.0
    """trajectories: standard deviation of each isotropic cluster"""
    center_box: float = 3.0
    """trajectories: cluster centers are uniform in [-center_box, center_box]^d"""
    aug_std: float = 0.5
    """trajectories: views = sample + N(0, aug_std^2) noise, independently per view"""
    steps: int = 2000
    """trajectories: optimizer steps per method"""
    batch_size: int = 256
    """trajectories: samples per step (two views each)"""
    lr: float = 1e-3
    """trajectories: Adam learning rate"""
    hidden_dim: int = 64
    """trajectories: encoder (and predictor) hidden width"""
    embed_dim: int = 16
    """trajectories: embedding dimension (PCA to 2-D for the plot if larger than 2)"""
    record_every: int = 25
    """trajectories: record center embeddings and MI estimates every K steps"""
    temperature: float = 0.1
    """trajectories and mlp: temperature of SimCLR, SDMI and JMI (0.1: the MI paper's command)"""
    sdmi_marginal: Literal["dv", "predictor"] = "dv"
    """trajectories: SDMI marginal term (methods/sdmi.py --marginal)"""
    jmi_marginal: Literal["dv", "taylor"] = "dv"
    """trajectories: JMI marginal term (methods/jmi.py --marginal)"""
    ema_tau: float = 0.99
    """trajectories: BYOL target EMA momentum (fixed)"""
    barlow_lambda: float = 0.05
    """trajectories: Barlow Twins off-diagonal weight"""
    # pca
    draws: int = 100
    """pca: random data sets per sweep point (mean +- std)"""
    pca_samples: int = 1000
    """pca: samples per data set"""
    components: Tuple[int, ...] = (2, 10)
    """pca: PCA components of Z"""
    n_features_sweep: Tuple[int, ...] = (10, 20, 50, 100, 200, 500)
    """pca: n_features values (at cluster_std = fixed_cluster_std)"""
    cluster_std_sweep: Tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
    """pca: cluster_std values (at n_features = fixed_n_features)"""
    fixed_cluster_std: float = 1.0
    """pca: cluster_std of the n_features sweep"""
    fixed_n_features: int = 50
    """pca: n_features of the cluster_std sweep"""
    # mlp
    epochs: int = 1000
    """mlp: training epochs of each network"""
    mlp_features: int = 25
    """mlp: input features"""
    mlp_cluster_std: float = 0.01
    """mlp: cluster std of the data"""
    mlp_noise_std: float = 0.5
    """mlp: views = data + N(0, mlp_noise_std^2)"""
    mlp_lr: float = 1e-4
    """mlp: Adam learning rate (betas 0.9, 0.999)"""
    mlp_batch_size: int = 256
    """mlp: samples per step"""


# ------------------------------------------------------------------------------------------------ data
def make_blobs(n_samples, n_features, centers, cluster_std, rng, center_box=(-10.0, 10.0)):
    """numpy equivalent of sklearn.datasets.make_blobs: centers uniform in center_box^n_features, samples split
    evenly among them (shuffled), x = center + cluster_std * N(0, I). Returns x (N, D), labels (N,), centers (C, D)."""
    c = rng.uniform(center_box[0], center_box[1], size=(centers, n_features))
    return (*sample_blobs(c, n_samples, cluster_std, rng), c)


def sample_blobs(c, n_samples, cluster_std, rng):
    """n_samples around the given centers c (C, D), split evenly and shuffled: returns x (N, D), labels (N,)."""
    y = rng.permutation(np.arange(n_samples) % len(c))
    return c[y] + cluster_std * rng.standard_normal((n_samples, c.shape[1])), y


def pca_project(r, k):
    """Z = (R - mean) V_k, V_k the top-k eigenvectors of the sample covariance of R (N, D) -> (N, k), float64.
    The first j < k columns are the j-component projection."""
    rc = torch.as_tensor(r, dtype=torch.float64)
    rc = rc - rc.mean(0)
    _, vecs = torch.linalg.eigh(rc.T @ rc)  # ascending eigenvalues
    return rc @ vecs.flip(1)[:, :k]


# ----------------------------------------------------------------------------------- closed-form MI
def ridged_joint_cov(r, z, ridge=1e-3, scale="per_block"):
    """Sample covariance of the joint (R, Z) (rows are samples, centered) plus ridge * I: float64 (Dr+Dz, Dr+Dz).

    Adding eps * I is the covariance of (R + n_R, Z + n_Z) with independent N(0, eps I) noise, so the ridged MI is
    the MI of slightly noisy observations: finite even when Z is a deterministic function of R (exact MI: infinite).
    scale: what eps is relative to, so that the value does not depend on units, like the exact MI:
      per_block: each block is divided by its RMS scale sqrt(tr S / D) first (eps = ridge x its mean variance),
                 for variables in unrelated units (data and network outputs);
      shared:    both blocks are divided by R's RMS scale (eps = ridge x mean variance of R, the same noise on R and
                 Z), for Z in R's units (a projection of R);
      absolute:  eps = ridge.
    A constant block is left unscaled. For Z = PCA_k(R) with shared or absolute eps and eigenvalues lambda_i of
    S_R, I = 1/2 sum_{i<=k} log((lambda_i + eps)^2 / (eps (2 lambda_i + eps))) ~ 1/2 sum_i log(lambda_i / 2 eps).
    """
    r, z = (torch.as_tensor(np.asarray(v) if not torch.is_tensor(v) else v).detach().double().reshape(len(v), -1)
            for v in (r, z))
    r, z = r - r.mean(0), z - z.mean(0)

    def rms(x):
        s = (x.pow(2).sum() / ((x.shape[0] - 1) * x.shape[1])).sqrt()
        return s if s > 0 else torch.ones((), dtype=x.dtype)

    if scale == "per_block":
        r, z = r / rms(r), z / rms(z)
    elif scale == "shared":
        s = rms(r)
        r, z = r / s, z / s
    elif scale != "absolute":
        raise ValueError(f"scale must be per_block, shared or absolute, got {scale!r}")
    j = torch.cat([r, z], 1)
    return j.T @ j / (j.shape[0] - 1) + ridge * torch.eye(j.shape[1], dtype=j.dtype)


def gaussian_mi_rz(r, z, ridge=1e-3, scale="per_block"):
    """Closed-form Gaussian I(R;Z) in nats of the ridged joint sample covariance S (`ridged_joint_cov`):
    1/2 (log det S_R + log det S_Z - log det S) = 1/2 log det S_Z / det(S_Z - S_ZR S_R^-1 S_RZ) (Schur complement)."""
    return estimators.gaussian_mi(ridged_joint_cov(r, z, ridge, scale), np.shape(r)[1])


def ridge_caption(ridge, scale):
    return {"per_block": f"ridge {ridge:g} x each block's mean variance added to the joint covariance",
            "shared": f"ridge {ridge:g} x mean variance of R added to the joint covariance",
            "absolute": f"ridge {ridge:g} x I added to the joint covariance"}[scale]


# --------------------------------------------------------------------------------------------- logging
def run_dir(args) -> Path:
    d = Path("runs") / f"toy_gaussian__{args.experiment}__{args.seed}__{int(time.time())}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def writer(path: Path, args=None):
    from torch.utils.tensorboard import SummaryWriter
    w = SummaryWriter(str(path))
    if args is not None:
        table = "\n".join(f"|{k}|{v}|" for k, v in vars(args).items())
        w.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}")
    return w


# -------------------------------------------------------------------- 1. trajectories: the methods
# Each method: step(m, x1, x2, a, t) -> (loss to minimize, {term: value}); m.f is the encoder whose embeddings
# are recorded; t is the 0-based step. The objectives themselves come from methods/ (imported above).
def encoder(a):  # the same network for every method
    return common.mlp(a.dim, a.hidden_dim, a.embed_dim, layers=3)


def predictor(a):
    return common.mlp(a.embed_dim, a.hidden_dim, a.embed_dim, layers=2)


def sdmi_step(m, x1, x2, a, t):
    # as methods/sdmi.py: f (with its predictor h) and g take turns; f-step: h(f(.)) against sg(g(.)), g-step: g(.)
    # against sg(h(f(.))); the held-fixed side runs without gradient (the stop-gradient). Views swapped symmetrically.
    phase = sdmi_phase(t + 1, 1)  # 1-based step; alternate every step
    with torch.set_grad_enabled(phase == 0):
        p1, p2 = m.h(m.f(x1)), m.h(m.f(x2))  # (N, E)
    with torch.set_grad_enabled(phase == 1):
        z1, z2 = m.g(x1), m.g(x2)  # (N, E)
    value = (sdmi_objective(p1, z2, a.temperature, a.sdmi_marginal)
             + sdmi_objective(p2, z1, a.temperature, a.sdmi_marginal)) / 2
    return -value, {"neg_sdmi": -value}


def jmi_step(m, x1, x2, a, t):
    value = jmi_objective(m.f(x1), m.f(x2), a.temperature, a.jmi_marginal)
    return -value, {"neg_jmi": -value}


def simclr_step(m, x1, x2, a, t):
    loss = info_nce_loss(m.f(x1), m.f(x2), a.temperature)
    return loss, {"info_nce": loss}


def byol_step(m, x1, x2, a, t):
    p1, p2 = m.h(m.f(x1)), m.h(m.f(x2))
    with torch.no_grad():
        zt1, zt2 = m.target(x1), m.target(x2)  # the EMA target, no gradient
    loss = regression_loss(p1, zt2) + regression_loss(p2, zt1)
    return loss, {"regression": loss}


def byol_ema(m, a, t):  # after the optimizer step: the target follows the updated online encoder
    ema_update(m.f, m.target, a.ema_tau)


def simsiam_step(m, x1, x2, a, t):
    z1, z2 = m.f(x1), m.f(x2)
    p1, p2 = m.h(z1), m.h(z2)
    loss = 0.5 * (negative_cosine(p1, z2) + negative_cosine(p2, z1))  # stop-gradient on z inside
    return loss, {"negative_cosine": loss}


def barlow_twins_step(m, x1, x2, a, t):
    total, invariance, redundancy = barlow_twins_loss(m.f(x1), m.f(x2), a.barlow_lambda)
    return total, {"invariance": invariance, "redundancy": redundancy}


def vicreg_step(m, x1, x2, a, t):
    total, invariance, variance, covariance = vicreg_loss(m.f(x1), m.f(x2))
    return total, {"invariance": invariance, "variance": variance, "covariance": covariance}


# name -> (modules besides the encoder f, loss, after-step hook)
METHODS = {
    "sdmi": (lambda a: dict(h=predictor(a), g=encoder(a)), sdmi_step, None),
    "jmi": (lambda a: {}, jmi_step, None),
    "simclr": (lambda a: {}, simclr_step, None),
    "byol": (lambda a: dict(h=predictor(a)), byol_step, byol_ema),
    "simsiam": (lambda a: dict(h=predictor(a)), simsiam_step, None),
    "barlow_twins": (lambda a: {}, barlow_twins_step, None),
    "vicreg": (lambda a: {}, vicreg_step, None),
}


def build(name, a):
    m = nn.ModuleDict(dict(f=encoder(a), **METHODS[name][0](a)))
    if name == "byol":  # why a copy: the target starts as the online encoder and only follows it by EMA
        m["target"] = copy.deepcopy(m["f"]).requires_grad_(False)
    return m


# --------------------------------------------------------------------------- 1. trajectories: the run
def separation(e, y):
    """Between-center spread / within-cluster spread: mean squared distance of the cluster means to their mean,
    over the mean squared distance of the samples to their own cluster mean."""
    e = np.asarray(e, dtype=np.float64)
    means = np.stack([e[y == c].mean(0) for c in np.unique(y)])
    within = np.mean(((e - means[np.searchsorted(np.unique(y), y)]) ** 2).sum(1))
    return float(((means - means.mean(0)) ** 2).sum(1).mean() / max(within, 1e-300))


@torch.no_grad()
def evaluate(m, x_centers, xv1, xv2, x_eval):
    m.eval()
    centers = m.f(x_centers)
    z1, z2 = m.f(xv1), m.f(xv2)
    e = m.f(x_eval)
    mi = estimators.mi_estimates(z1, z2)  # the same estimates every method script logs
    m.train()
    return centers.numpy(), mi, e.numpy()


def train_trajectories(name, a, data, w):
    x, xv1, xv2, x_eval, centers = data
    torch.manual_seed(a.seed)  # the same initial encoder and the same batches and views for every method
    g = torch.Generator().manual_seed(a.seed + 1)
    m = build(name, a)
    loss_fn, after = METHODS[name][1], METHODS[name][2]
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=a.lr)
    rec = {"step": [], "centers": [], **{k: [] for k in MI_NAMES}}
    t0 = time.time()
    for t in range(a.steps + 1):
        if t % a.record_every == 0 or t == a.steps:
            c, mi, e = evaluate(m, centers, xv1, xv2, x_eval)
            rec["step"].append(t)
            rec["centers"].append(c)
            for k, v in mi.items():
                rec[k].append(v)
                w.add_scalar(k, v, t)
        if t == a.steps:
            break
        xb = x[torch.randint(len(x), (a.batch_size,), generator=g)]
        x1 = xb + a.aug_std * torch.randn(xb.shape, generator=g)
        x2 = xb + a.aug_std * torch.randn(xb.shape, generator=g)
        loss, terms = loss_fn(m, x1, x2, a, t)
        opt.zero_grad(set_to_none=True)  # why set_to_none: Adam skips the parameters SDMI does not update this step
        loss.backward()
        opt.step()
        if after is not None:
            after(m, a, t)
        if t % a.record_every == 0:
            for k, v in terms.items():
                w.add_scalar(f"losses/{k}", float(v.detach()), t)
            w.add_scalar("losses/total", loss.item(), t)
    rec["centers"] = np.stack(rec["centers"])
    rec["final_embed"] = e
    rec["seconds"] = time.time() - t0
    return rec


def plot_trajectories(recs, y_eval, path):
    n = len(recs)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.0 * rows), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for ax, (name, rec) in zip(axes.flat, recs.items()):
        e, traj = rec["final_embed"], rec["centers"]  # (N, E), (T, 5, E)
        mean = e.mean(0)
        basis = np.linalg.svd(e - mean, full_matrices=False)[2][:2].T if e.shape[1] > 2 else np.eye(e.shape[1])
        proj = (traj - mean) @ basis  # (T, 5, 2): PCA fitted once, on the final embeddings
        ax.scatter(*((e - mean) @ basis).T, s=2, c=[colors[c] for c in y_eval], alpha=0.08, linewidths=0)
        alpha = np.linspace(0.1, 1.0, len(traj))
        for c in range(proj.shape[1]):
            seg = np.stack([proj[:-1, c], proj[1:, c]], 1)
            rgba = np.array([(*colors[c], al) for al in alpha[1:]])
            ax.add_collection(LineCollection(seg, colors=rgba, linewidths=1.5))
            ax.scatter(proj[:, c, 0], proj[:, c, 1], s=8, color=[(*colors[c], al) for al in alpha], linewidths=0)
            ax.scatter(*proj[-1, c], s=60, color=colors[c], edgecolors="k", zorder=3, label=f"center {c}")
        ax.set_title(f"{name}  (separation {rec['sep_cos']:.2f})")
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="best")
    fig.suptitle("Embeddings of the 5 cluster centers during training (faint: early, opaque: late; dots: final "
                 "embeddings of held-out samples)\nPCA to 2-D fitted on each method's final embeddings", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_mi(recs, n_pairs, path):
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (k, title) in zip(axes, MI_NAMES.items()):
        for name, rec in recs.items():
            ax.plot(rec["step"], rec[k], label=name)
        if k == "mi/infonce":  # InfoNCE <= log N
            bound = ax.axhline(math.log(n_pairs), color="gray", ls="--", lw=1, label=f"log N = {math.log(n_pairs):.2f}")
            ax.legend(handles=[bound], fontsize=8, loc="lower right")
        ax.set_title(f"{title} (cosine critic, T = {estimators.MI_TEMPERATURE})")
        ax.set_xlabel("step")
        ax.set_ylabel("nats" if k != "mi/jsd" else "JSD estimate")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"MI estimates between the two views' embeddings on a fixed held-out set of {n_pairs} pairs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_trajectories(a, out):
    rng = np.random.default_rng(a.seed)
    x, _, c = make_blobs(a.n_samples, a.dim, 5, a.cluster_std, rng, (-a.center_box, a.center_box))
    x_eval, y_eval = sample_blobs(c, a.n_samples, a.cluster_std, rng)  # held out: same centers, fresh samples
    xv = x_eval[:512]
    noise = rng.standard_normal((2,) + xv.shape) * a.aug_std
    arrays = (x, xv + noise[0], xv + noise[1], x_eval, c)
    data = tuple(torch.tensor(v, dtype=torch.float32) for v in arrays)
    recs = {}
    for name in a.methods:
        w = writer(out / name, a)
        recs[name] = rec = train_trajectories(name, a, data, w)
        rec["sep_cos"] = separation(F.normalize(torch.tensor(rec["final_embed"]), dim=1).numpy(), y_eval)
        rec["sep_raw"] = separation(rec["final_embed"], y_eval)
        w.add_scalar("eval/separation", rec["sep_cos"], a.steps)
        w.add_scalar("eval/separation_raw", rec["sep_raw"], a.steps)
        w.close()
        print(f"[{name}] {a.steps} steps in {rec['seconds']:.1f}s; separation {rec['sep_cos']:.3f} "
              f"cos-DV {rec['mi/cos_dv'][-1]:.3f}", flush=True)
    paths = [out / "trajectories.png", out / "mi.png"]
    plot_trajectories(recs, y_eval, paths[0])
    plot_mi(recs, len(xv), paths[1])
    header = (f"{'method':<14}{'separation (L2-normalized)':>28}{'separation (raw)':>18}"
              f"{'cos-DV':>9}{'InfoNCE':>9}{'JSD':>8}")
    x_norm = x_eval / np.linalg.norm(x_eval, axis=1, keepdims=True)
    lines = [header, f"{'input data':<14}{separation(x_norm, y_eval):>28.3f}{separation(x_eval, y_eval):>18.3f}"]
    lines += [f"{n:<14}{r['sep_cos']:>28.3f}{r['sep_raw']:>18.3f}{r['mi/cos_dv'][-1]:>9.3f}{r['mi/infonce'][-1]:>9.3f}"
              f"{r['mi/jsd'][-1]:>8.3f}" for n, r in recs.items()]
    print("\n".join(lines))
    results = {n: {"separation": r["sep_cos"], "separation_raw": r["sep_raw"], "seconds": r["seconds"],
                   **{k: r[k][-1] for k in MI_NAMES}} for n, r in recs.items()}
    results["input_separation"] = separation(x_eval, y_eval)
    return paths, results


# --------------------------------------------------------------------------------------------- 2. pca
def run_pca(a, out):
    rng = np.random.default_rng(a.seed)
    scale = "shared" if a.ridge_scale == "auto" else a.ridge_scale
    sweeps = {"n_features": [(d, a.fixed_cluster_std) for d in a.n_features_sweep],
              "cluster_std": [(a.fixed_n_features, s) for s in a.cluster_std_sweep]}
    res = {sw: np.zeros((len(a.components), len(pts), a.draws)) for sw, pts in sweeps.items()}
    t0 = time.time()
    for i in range(a.draws):
        for sw, pts in sweeps.items():
            for j, (d, s) in enumerate(pts):
                r, _, _ = make_blobs(a.pca_samples, d, 5, s, rng)
                z = pca_project(r, max(a.components))
                for ci, k in enumerate(a.components):
                    res[sw][ci, j, i] = gaussian_mi_rz(r, z[:, :k], a.ridge, scale)
    w = writer(out, a)
    fig, axes = plt.subplots(len(a.components), 2, figsize=(10, 3.6 * len(a.components)), squeeze=False)
    for ci, k in enumerate(a.components):
        for col, (sw, pts) in enumerate(sweeps.items()):
            xs = [p[col] for p in pts]
            mean, std = res[sw][ci].mean(1), res[sw][ci].std(1)
            ax = axes[ci, col]
            ax.errorbar(xs, mean, yerr=std, marker="o", capsize=3)
            ax.set_xscale("log")
            fixed = (f"cluster_std = {a.fixed_cluster_std}" if sw == "n_features"
                     else f"n_features = {a.fixed_n_features}")
            ax.set_title(f"{k} components, {fixed}")
            ax.set_xlabel(sw)
            ax.set_ylabel("I(R;Z) [nats]")
            for j, v in enumerate(mean):
                w.add_scalar(f"pca_k{k}/I_RZ_vs_{sw}", v, j)
                w.add_scalar(f"pca_k{k}/{sw}_value", xs[j], j)
    w.close()
    ridge_txt = ridge_caption(a.ridge, scale)
    fig.suptitle(f"I(R;Z), R = make_blobs data (5 centers, {a.pca_samples} samples), Z = PCA(R); closed-form Gaussian "
                 f"MI of the sample covariance.\nZ is a deterministic function of R, so the exact MI is infinite: "
                 f"{ridge_txt}. Mean +- std over {a.draws} draws.", fontsize=9)
    fig.tight_layout()
    path = out / "pca.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    results = {sw: {f"k{k}": {"x": [p[0 if sw == "n_features" else 1] for p in sweeps[sw]],
                              "mean": res[sw][ci].mean(1).tolist(), "std": res[sw][ci].std(1).tolist()}
                    for ci, k in enumerate(a.components)} for sw in sweeps}
    for sw in sweeps:
        for k, v in results[sw].items():
            print(f"I(R;Z) {k} vs {sw}: "
                  + ", ".join(f"{x:g}: {m:.2f}+-{s:.2f}" for x, m, s in zip(v["x"], v["mean"], v["std"])))
    print(f"{a.draws} draws in {time.time() - t0:.1f}s")
    return [path], results


# --------------------------------------------------------------------------------------------- 3. mlp
def mlp_nets(in_dim):
    layers, d = [], in_dim
    for _ in range(5):  # encoder: 5 layers x 20 units
        layers += [nn.Linear(d, 20), nn.ReLU()]
        d = 20
    return nn.Sequential(*layers[:-1]), nn.Sequential(nn.Linear(20, 5), nn.ReLU(), nn.Linear(5, 5))


MLP_LOSSES = {"simclr": lambda z1, z2, a: info_nce_loss(z1, z2, a.temperature),
              "vicreg": lambda z1, z2, a: vicreg_loss(z1, z2)[0]}


def run_mlp(a, out):
    rng = np.random.default_rng(a.seed)
    x_np, _, _ = make_blobs(1000, a.mlp_features, 5, a.mlp_cluster_std, rng)
    x = torch.tensor(x_np, dtype=torch.float32)
    names = list(MLP_LOSSES)
    scale, curves = "per_block" if a.ridge_scale == "auto" else a.ridge_scale, {}
    for name in names:
        torch.manual_seed(a.seed)  # same initial networks for both losses
        g = torch.Generator().manual_seed(a.seed + 1)
        enc, proj = mlp_nets(a.mlp_features)
        opt = torch.optim.Adam([*enc.parameters(), *proj.parameters()], lr=a.mlp_lr, betas=(0.9, 0.999))
        w = writer(out / name, a)
        step = 0
        t0 = time.time()
        curve = {"epoch": [], "I_XR": [], "I_XZ": []}
        for epoch in range(a.epochs + 1):
            with torch.no_grad():
                r = enc(x)
                i_xr, i_xz = gaussian_mi_rz(x, r, a.ridge, scale), gaussian_mi_rz(x, proj(r), a.ridge, scale)
            curve["epoch"].append(epoch)
            curve["I_XR"].append(i_xr)
            curve["I_XZ"].append(i_xz)
            w.add_scalar("mi/I_XR", i_xr, step)
            w.add_scalar("mi/I_XZ", i_xz, step)
            if epoch == a.epochs:
                break
            for idx in torch.randperm(len(x), generator=g).split(a.mlp_batch_size):
                xb = x[idx]
                x1 = xb + a.mlp_noise_std * torch.randn(xb.shape, generator=g)
                x2 = xb + a.mlp_noise_std * torch.randn(xb.shape, generator=g)
                loss = MLP_LOSSES[name](proj(enc(x1)), proj(enc(x2)), a)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
            w.add_scalar(f"losses/{name}", loss.item(), step)
        w.close()
        curves[name] = curve
        print(f"[{name}] {a.epochs} epochs in {time.time() - t0:.1f}s; I(X;R) {curve['I_XR'][0]:.2f} -> "
              f"{curve['I_XR'][-1]:.2f} (max {max(curve['I_XR']):.2f}), I(X;Z) {curve['I_XZ'][0]:.2f} -> "
              f"{curve['I_XZ'][-1]:.2f}", flush=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in ((axes[0], "I_XR", "I(X;R), R = encoder output (20-d)"),
                           (axes[1], "I_XZ", "I(X;Z), Z = projector output (5-d)")):
        for name, c in curves.items():
            ax.plot(c["epoch"], c[key], label=name)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel("nats")
    axes[0].legend()
    ridge_txt = ridge_caption(a.ridge, scale)
    fig.suptitle(f"Closed-form Gaussian MI between the clean data X (5 blobs, std {a.mlp_cluster_std}, "
                 f"{a.mlp_features}-d) and the network outputs, SimCLR vs VICReg loss\n{ridge_txt}", fontsize=9)
    fig.tight_layout()
    path = out / "mlp.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path], {n: {"I_XR": c["I_XR"][-1], "I_XZ": c["I_XZ"][-1], "I_XR_max": max(c["I_XR"])}
                    for n, c in curves.items()}


def check(a: Args):
    """Flag errors of the chosen experiment, before anything is written."""
    if a.ridge < 0:
        raise common.UserError("--ridge must be >= 0.")
    if a.experiment == "trajectories":
        if a.steps < 1 or a.record_every < 1 or a.batch_size < 2 or a.n_samples < 512:
            raise common.UserError("--steps and --record-every must be >= 1, --batch-size >= 2, --n-samples >= 512.")
        if not a.methods:
            raise common.UserError("--methods needs at least one method.")
    if a.experiment == "pca" and (a.draws < 1 or not a.components or any(
            k < 1 or k > min(a.n_features_sweep + (a.fixed_n_features,)) for k in a.components)):
        raise common.UserError("--draws must be >= 1 and every --components at most every n_features of the sweeps.")
    if a.experiment == "mlp" and (a.epochs < 1 or a.mlp_batch_size < 2):
        raise common.UserError("--epochs must be >= 1 and --mlp-batch-size >= 2.")


def main(args: Args):
    check(args)
    torch.set_num_threads(args.threads)
    out = run_dir(args)
    print(f"[toy_gaussian] experiment {args.experiment}; run dir {out}", flush=True)
    paths, results = {"trajectories": run_trajectories, "pca": run_pca, "mlp": run_mlp}[args.experiment](args, out)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    for p in paths:
        print(f"figure: {p}")
    print(f"results: {out / 'results.json'}   tensorboard --logdir {out}")


if __name__ == "__main__":
    common.cli(main, Args)

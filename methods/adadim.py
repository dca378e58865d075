"""AdaDim: Dimensionality Adaptation for SSL Representational Dynamics.
Kokilepersaud, Prabhushankar, AlRegib, 2025, arXiv:2505.12576. No official code; this file is our reading.

One encoder, two views, and a loss that moves from feature decorrelation to sample uniformity as the representation
R spreads out: L = alpha * L_NCE + (1 - alpha) * L_VICReg + beta * gamma * I(R;Z). L_NCE is SimCLR's InfoNCE
(uniform spread of samples), L_VICReg the VICReg loss (decorrelated features); alpha is the effective rank of R
divided by its largest possible value, re-measured every --alpha-every epochs, so it grows from about 0 towards 1.
Collapse is prevented by both terms: VICReg's variance hinge and covariance penalty keep every dimension alive, and
InfoNCE's in-batch negatives make a constant embedding costly. I(R;Z) is the matrix-based Renyi-2 mutual information
between backbone output R and projection Z on the batch. Sign: a positive --beta PENALIZES I(R;Z) (the loss is
minimized); the paper's text can be read either way, so negative values (rewarding I(R;Z)) are allowed and the term
is logged on its own as losses/mi_RZ.
MI reading (Sabby et al. 2025): JMI paradigm, one shared encoder; in-batch negatives (weight alpha) and VICReg's
variance-covariance regularizer (weight 1 - alpha) stand in for the marginal term.

    python methods/adadim.py --dataset cifar100
    python methods/adadim.py --dataset synthetic --backbone tiny --epochs 5 --alpha-every 1   # CPU, no files needed
    python methods/adadim.py --dataset cifar100 --alpha-mode fixed --alpha 0.5               # the paper's ablations

L_NCE and L_VICReg are written here again (nce_loss, vicreg_terms), so the file stands alone; a test checks that
they equal simclr.info_nce_loss and vicreg.vicreg_loss.
Implementation details (defaults = the paper's CIFAR setting where it gives one):
1. Symmetric (SimCLR) augmentation: crop scale 0.08-1, jitter (0.8, 0.8, 0.8, 0.2) p 0.8, grayscale 0.2, blur p 0.5.
2. Projector 2048-2048-2048 (paper), laid out as VICReg's: (Linear-BN-ReLU) x 2 + Linear.
3. LARS (eta 0.02, clipped, biases/norms excluded), lr 0.4 x batch/256, wd 1e-4, batch 256, 400 epochs (paper);
   10 warmup epochs then cosine (solo-learn). Backbone ResNet-18; the paper used ResNet-50 on CIFAR (--backbone
   resnet50) and ResNet-18 on ImageNet-100.
4. L_NCE: NT-Xent with temperature 0.1, the value the paper's Table 17 gives for its SimCLR component
   (--temperature). L_VICReg: invariance 25, variance 25, covariance 1 (VICReg paper).
5. alpha (--alpha-mode ada) = mean effective rank (Roy & Vetterli 2007, estimators.effective_rank, uncentered) over
   10 random training batches (--alpha-batches), one augmented view each, divided by
   min(batch size, dimension). The paper says "scale by the maximum possible dimensionality"; dividing by the
   dimension alone could never reach 1 with 256 samples and 512-d R, so we divide by the rank's largest possible
   value. Measured at the start of every --alpha-every (20) epochs, first at epoch 0. The paper's method text uses
   R, a review of it says Z: --alpha-space R|Z (default R). The batches and their augmentation come from their own
   (seed, epoch)-seeded generators, so measuring alpha does not change the training views (ablations see the same
   data). BatchNorm uses the batch statistics, as in training, and its running statistics are not updated: in eval
   mode an untrained network's running statistics are still at their initial values, which distorts R (the
   effective rank of ResNet-18 at init is about 27 in eval mode against 63 in train mode). The paper does not say.
6. Ablations: --alpha-mode fixed --alpha A (the paper: 0, 0.5, 1); linear (alpha = t/T) and cosine
   (alpha = (1 - cos(pi t/T)) / 2) growth from 0 to 1 over all steps.
7. beta 1e-4 (paper), gamma = alpha (--gamma ada) or 1 (--gamma one). I(R;Z) is computed differentiably on each
   view's (R, Z) pair and averaged; Renyi order 2, where S_2(A) = -log ||A||_F^2 needs no eigendecomposition, on
   trace-normalized Gram matrices of L2-normalized rows (equal to estimators.matrix_mutual_information).
8. alpha is a buffer of the model passed to run.track (checkpointed, --resume exact); charts/alpha is logged every
   step, dim/alpha_erank whenever alpha is re-measured; losses/nce and losses/vicreg are the unweighted terms.
9. Several processes: R and Z are gathered with gradients, so both terms and I(R;Z) are those of the global batch,
   and alpha is measured on global batches; --sync-bn on by default (as solo-learn's recipes; BN in the projector).
10. Evaluation: R = backbone output, Z = projector output.
"""
import itertools
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402  (before torch: Ctrl-C while it loads exits quietly)
import torch
import torch.nn as nn
import torch.nn.functional as F
import estimators  # noqa: E402


@dataclass
class Args:
    dataset: common.DatasetName = "cifar10"
    """dataset; `synthetic` needs no files, `imagefolder` reads DATA_DIR/train and DATA_DIR/val (or test)"""
    data_dir: str = "data"
    """where the dataset lives or is downloaded to (medmnist: the .npz file)"""
    workers: int = 0
    """DataLoader processes per process for large images (0: this node's cores / its processes, at least 1)"""
    decode: common.Decoder = "cpu"
    """large images: the DataLoader workers decode them (cpu), or only read the files and the device decodes (gpu)"""
    backbone: common.BackboneName = "resnet18"
    """backbone (ResNets get the CIFAR stem for images <= 64 px); `tiny` is a narrow ResNet for CPU runs"""
    patch_size: int = 0
    """ViT patch size (0: 4 up to 32 px, 8 up to 64 px, 16 above)"""
    epochs: int = 400
    """training epochs"""
    batch_size: int = 256
    """images per optimizer step, all processes together"""
    optimizer: common.OptimizerName = "lars"
    """optimizer of the SSL parameters"""
    lr: float = 0.4
    """base learning rate at batch 256 (scaled by batch_size/256)"""
    weight_decay: float = 1e-4
    """weight decay (not applied to biases and norm parameters)"""
    warmup_epochs: float = 10
    """linear warmup epochs before the cosine decay (a fraction of an epoch allowed, e.g. 0.1)"""
    seed: int = 0
    """seed of weights, data order and augmentations"""
    device: str = "auto"
    """auto (cuda if available), cpu, cuda, cuda:1...; under torchrun each process takes its local GPU"""
    precision: common.Precision = "auto"
    """autocast dtype; auto = bf16 on GPUs with native bf16 (sm 8.0+), fp16 + loss scaling on older GPUs, fp32 on CPU"""
    deterministic: bool = False
    """deterministic kernels (slower on GPU)"""
    compile: bool = False
    """torch.compile every network the method calls (ViT token path included); minutes to start on a CPU"""
    sync_bn: bool = True
    """under torchrun: BatchNorm statistics of the global batch (SyncBatchNorm; GPUs only)"""
    eval_every: int = 50
    """kNN and online-probe test accuracy every N epochs (0: only at the end)"""
    mi_every: int = 500
    """MI estimates and dimensionality metrics on a fixed held-out batch every N steps (0: never)"""
    finetune_epochs: int = 0
    """at the end, also fine-tune a copy of the backbone end to end for N epochs and report test top-1"""
    save_every: int = 50
    """checkpoint every N epochs and at the end (0: not by epoch)"""
    save_every_minutes: float = 10.0
    """also checkpoint every N minutes (0: not by time); SIGINT / SIGTERM always save before stopping"""
    max_steps: int = 0
    """stop after N optimizer steps (0: run all epochs); the schedules still span all epochs"""
    resume: Optional[str] = None
    """continue exactly from this checkpoint (a run's last.pt), in its run directory"""
    run_dir: Optional[str] = None
    """the run directory, which must not exist yet (default: runs/{dataset}__{exp_name}__{seed}__{time}-{pid})"""
    exp_name: str = ""
    """run name in the default run directory (default: the method)"""
    # method-specific
    temperature: float = 0.1
    """NT-Xent temperature of L_NCE"""
    proj_hidden_dim: int = 2048
    """projector hidden width"""
    proj_output_dim: int = 2048
    """projector output width (Z)"""
    alpha_mode: Literal["ada", "fixed", "linear", "cosine"] = "ada"
    """ada: alpha from the effective rank; fixed: --alpha; linear/cosine: growth from 0 to 1 over training"""
    alpha: float = 0.5
    """alpha of --alpha-mode fixed (the paper's ablations: 0, 0.5, 1)"""
    alpha_every: int = 20
    """re-measure alpha at the start of every N epochs (--alpha-mode ada)"""
    alpha_batches: int = 10
    """random training batches over which the effective rank is averaged"""
    alpha_space: Literal["R", "Z"] = "R"
    """measure alpha on the representation R (paper's method text) or on the embedding Z"""
    beta: float = 1e-4
    """weight of I(R;Z); positive penalizes I(R;Z), negative rewards it"""
    gamma: Literal["ada", "one"] = "ada"
    """gamma = alpha (ada) or 1 (one) in the beta * gamma * I(R;Z) term"""


def nce_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """L_NCE, SimCLR's NT-Xent over the 2N views: view i's positive is its partner, the 2N-2 others are negatives."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # (2N, D)
    sim = (z @ z.T / temperature).masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    return F.cross_entropy(sim, torch.arange(2 * n, device=z.device).roll(n))  # partner index: n..2N-1, 0..n-1


def vicreg_terms(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """L_VICReg = 25 s(Z, Z') + 25 [v(Z) + v(Z')] + 1 [c(Z) + c(Z')], VICReg's loss with its default weights."""
    n, d = z1.shape
    loss = 25.0 * F.mse_loss(z1, z2)  # invariance
    for z in (z1, z2):
        loss = loss + 25.0 * F.relu(1 - torch.sqrt(z.var(dim=0) + 1e-4)).mean()  # variance hinge at 1
        z = z - z.mean(dim=0)
        cov = z.T @ z / (n - 1)  # (D, D)
        loss = loss + cov.masked_fill(torch.eye(d, dtype=torch.bool, device=z.device), 0).pow(2).sum() / d
    return loss


def renyi2_mutual_information(r: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Matrix-based Renyi-2 MI (Sanchez Giraldo et al. 2014), differentiable: I = S_2(A) + S_2(B) - S_2(A o B / tr),
    A, B trace-normalized Gram matrices of the L2-normalized rows of r (N, D_R) and z (N, D_Z), o = Hadamard product.
    For symmetric A with trace 1, S_2(A) = -log sum_i lambda_i^2 = -log ||A||_F^2."""
    def gram(x):
        x = F.normalize(x, dim=1)
        k = x @ x.T  # (N, N)
        return k / k.diagonal().sum()  # = trace; torch.trace's backward reads the gradient on the host (a sync)

    def s2(a):
        return -torch.log((a * a).sum())

    a, b = gram(r), gram(z)
    ab = a * b
    return s2(a) + s2(b) - s2(ab / ab.diagonal().sum())


def adadim_loss(r1, r2, z1, z2, alpha, gamma, beta: float, temperature: float):
    """L = alpha * L_NCE + (1 - alpha) * L_VICReg + beta * gamma * I(R;Z) on R (N, D_R) and Z (N, D_Z) of the two views.
    Returns (L, L_NCE, L_VICReg, beta * gamma * I(R;Z)); alpha and gamma are constants (floats or 0-dim tensors)."""
    nce = nce_loss(z1, z2, temperature)  # sample uniformity
    vic = vicreg_terms(z1, z2)  # feature decorrelation
    mi = (renyi2_mutual_information(r1, z1) + renyi2_mutual_information(r2, z2)) / 2
    mi_term = beta * gamma * mi
    return alpha * nce + (1 - alpha) * vic + mi_term, nce, vic, mi_term


def dimensionality_alpha(feats):
    """alpha = mean_b erank(F_b) / min(N, D) over batches F_b (N, D): about 0 for a collapsed representation, 1 when
    all min(N, D) singular values are equal. Returns (alpha, mean effective rank)."""
    erank = sum(estimators.effective_rank(f) for f in feats) / len(feats)
    return erank / min(feats[0].shape), erank


def main(args: Args):
    if args.alpha_every < 1 or args.alpha_batches < 1:
        raise common.UserError("--alpha-every and --alpha-batches must be >= 1.")
    run = common.Run(args, "adadim")
    size = run.data.image_size
    aug = run.augment([common.ViewSpec(size, jitter=(0.8, 0.8, 0.8, 0.2), blur_p=0.5)] * 2)  # symmetric views
    backbone, feat_dim = common.build_backbone(args.backbone, size, args.patch_size)
    projector = common.mlp(feat_dim, args.proj_hidden_dim, args.proj_output_dim, layers=3)
    model = nn.ModuleDict(dict(backbone=backbone, projector=projector))
    model.register_buffer("alpha", torch.tensor(args.alpha if args.alpha_mode == "fixed" else 0.0))
    model = run.prepare(model)
    optimizer = common.make_optimizer(args.optimizer, common.param_groups(model, args.weight_decay),
                                      args.lr * args.batch_size / 256)
    probe = common.OnlineProbe(feat_dim, run.data.num_classes, run.device)
    run.track(model, optimizer, {"main": (backbone, projector)}, probe)
    run.restart_from_checkpoint()  # --resume: the tracked weights and states, step and RNG as saved

    @torch.no_grad()
    def measure_alpha(epoch: int):
        """dimensionality_alpha of R (or Z) on --alpha-batches random global batches, one view each; BatchNorm on
        batch statistics with its running statistics left as they are (see 5.)."""
        g = torch.Generator(device=run.device).manual_seed((args.seed + 1) * 100_003 + epoch)  # not run.gen: see 5.
        batches = run.data.ssl_batches(args.batch_size, epoch, args.seed + 1)
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for m in norms:
            m.track_running_stats = False  # in train mode: batch statistics, running ones untouched
        feats = []
        for x, _, _ in itertools.islice(batches, args.alpha_batches):
            v = aug(x, g)[0]  # outside autocast, as in training (under it the blur came back in bf16: a crash)
            with run.autocast():
                r = backbone(v)  # (n, feat_dim)
                feats.append(common.gather((r if args.alpha_space == "R" else projector(r)).float()))  # global batch
        for m in norms:
            m.track_running_stats = True
        return dimensionality_alpha(feats)

    for epoch in run.epochs():
        if args.alpha_mode == "ada" and epoch % args.alpha_every == 0 and not run.resumed_mid_epoch:
            alpha, erank = measure_alpha(epoch)
            model.alpha.fill_(alpha)
            run.log({"dim/alpha_erank": erank})
        for x, y in run.batches(epoch):
            lr = run.update_lr()
            if args.alpha_mode in ("linear", "cosine"):
                t = (run.step_count - 1) / run.total_steps
                model.alpha.fill_(t if args.alpha_mode == "linear" else (1 - math.cos(math.pi * t)) / 2)
            gamma = model.alpha if args.gamma == "ada" else 1.0
            x1, x2 = aug(x, run.gen)
            with run.autocast():
                r1, r2 = backbone(x1), backbone(x2)  # R: (n, feat_dim)
                z1, z2 = projector(r1), projector(r2)  # Z: (n, proj_output_dim)
            r1g, r2g, z1, z2 = (common.gather(t.float()) for t in (r1, r2, z1, z2))  # (N, .): the global batch
            loss, nce, vic, mi_term = adadim_loss(r1g, r2g, z1, z2, model.alpha, gamma, args.beta, args.temperature)
            optimizer.zero_grad(set_to_none=True)
            run.scaler.scale(loss).backward()  # fp16: times the loss scale (else 1)
            common.average_gradients(model)  # several processes: the global batch's gradient on every one
            run.scaler.step(optimizer)  # fp16: on the unscaled gradient, skipped if not finite
            run.scaler.update()
            probe_loss, probe_acc = probe.update(r1, y)
            run.log({"losses/nce": nce, "losses/vicreg": vic, "losses/mi_RZ": mi_term, "losses/total": loss,
                     "losses/online_linear": probe_loss, "charts/online_linear_train_top1": probe_acc,
                     "charts/learning_rate": lr, "charts/alpha": model.alpha})
    run.finish()


if __name__ == "__main__":
    common.cli(main, Args)

"""SDMI: Self-Distillation Mutual Information maximization.
Sabby, Sui, Wu, Cresswell, Wu, "Self-Supervised Representation Learning as Mutual Information Maximization",
2025, arXiv:2510.01345 (our reading of the paper; its official code was not available to us).

Two encoders, f = (backbone, projector) with a predictor h, and g = (backbone, projector), both trained by gradient
(no EMA), maximize the Donsker-Varadhan lower bound I(Z_A; Z_B) >= E_p(za,zb)[T] - log E_p(za)p(zb)[exp T] with the
cosine critic T(a, b) = cos(a, b) / tau ("cos-DV"). They take turns: an f-step maximizes the bound between h(f(x_a))
and sg(g(x_b)); a g-step maximizes it between sg(h(f(x_a))) and g(x_b). The stop-gradient is what realizes "hold
the other encoder fixed" of the alternating optimization. Collapse is prevented by the marginal term: the
log-mean-exp of T over the in-batch pairs (i != j) is large when h(f(x_i)) is close to g(x_j) for different
images, so a constant embedding gets a bound of 0 while spread-out embeddings get up to 1/tau. With
`--marginal predictor` the marginal term is dropped and only the predictor (with the alternation) stands in for
it, as in BYOL/SimSiam (an ablation).
MI reading (Sabby et al. 2025): SDMI paradigm; the log-mean-exp over in-batch negatives (default) or the predictor h
alone (--marginal predictor) stands in for the marginal term.

    python methods/sdmi.py --dataset cifar10
    python methods/sdmi.py --dataset synthetic --backbone tiny --epochs 5      # CPU, no files needed

Implementation details (defaults = the paper's example command where it gives a value, guesses marked as such):
1. Two encoders built independently (different random init; `--g-init copy` starts g as a copy of f; the paper
   does not say). Phase of step t (1-based): floor((t - 1) / K) mod 2, 0 = f-step first, K = `--alternate-every`
   (default 1: the encoders alternate every step; our guess). Each encoder has its own optimizer (own momentum),
   stepped only in its own phase, so weight decay also acts only then. Views swapped symmetrically: the step
   maximizes the mean of the bound over (view 1 -> view 2) and (view 2 -> view 1).
2. The held-fixed side runs under no_grad (the stop-gradient), in train mode on batch statistics like BYOL's
   target; the predictor h belongs to f: it is trained in f-steps and held fixed in g-steps.
3. `--marginal dv` (default): the full cos-DV bound, marginal term = log of the mean of exp(S_ij) over the
   N(N-1) off-diagonal pairs of the batch, as the paper's objective. `--marginal predictor`: joint term only.
   `--no-predictor`: h = identity (ablation; with `--marginal predictor` too, nothing stands in for the marginal
   term). Our short CPU comparison of the three is in docs/results.md.
4. From the paper's command: temperature 0.1, batch 64, lr 0.05 at batch 64 (`--lr 0.2` here: the base lr is
   given at batch 256 and scaled by batch/256), weight decay 1e-4, 10 warmup epochs, 800 epochs, projection 256
   with 3 layers ((Linear-BN-ReLU) x 2 + Linear, no final BN). Guessed: its `--feature_dim 512` read as the
   projector's hidden width (the backbone's own width is fixed by the backbone); the optimizer, which the command
   does not name: SGD with momentum 0.9 (the usual pairing with lr 0.05 at batch 64), cosine decay after the
   warmup; the predictor Linear(4096)-BN-ReLU-Linear(256) (solo-learn's BYOL predictor; `--pred-hidden-dim`).
   The paper's backbone is a ResNet-50 (`--backbone resnet50`); ResNet-18 is the default here, as for every method.
5. Asymmetric (BYOL) augmentation: jitter (0.4, 0.4, 0.2, 0.1) p 0.8, grayscale 0.2, no blur, solarization 0.0 on
   view 1 and 0.2 on view 2; both encoders see both views (the paper gives no CIFAR augmentation: our choice).
6. Several processes: p and z are gathered with gradients (the held side has none), so the marginal term is over
   the global batch's N(N-1) pairs; --sync-bn on by default (as solo-learn's recipes; BN in both projectors).
7. Evaluation of both encoders, as the paper's Table 1: kNN and linear probe on f (tags without suffix) and on g
   (suffix _g); online probe on f's backbone features of view 1; R = backbone output, Z = projector output (not h).
8. Logged: losses/joint = -mean_i S_ii (minus the joint term), losses/marginal = +log-mean-exp term (0 with
   `--marginal predictor`), losses/total = their sum = -objective; charts/phase (0 = f-step, 1 = g-step).
"""
import copy
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
    epochs: int = 800
    """training epochs"""
    batch_size: int = 64
    """images per optimizer step, all processes together"""
    optimizer: common.OptimizerName = "sgd"
    """optimizer of the SSL parameters"""
    lr: float = 0.2
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
    """critic temperature tau: T(a, b) = cos(a, b) / tau"""
    marginal: Literal["dv", "predictor"] = "dv"
    """dv: joint term minus log-mean-exp over in-batch negatives; predictor: joint term only (h is the surrogate)"""
    predictor: bool = True
    """use the predictor h on the f side (--no-predictor: h = identity, an ablation)"""
    alternate_every: int = 1
    """K: optimizer steps per phase (K f-steps, then K g-steps, ...)"""
    g_init: Literal["independent", "copy"] = "independent"
    """g's initial weights: its own random init, or a copy of f's"""
    proj_hidden_dim: int = 512
    """projector hidden width (the paper's --feature_dim, our reading)"""
    proj_output_dim: int = 256
    """projector output width (Z)"""
    proj_layers: int = 3
    """projector depth (Linear layers)"""
    pred_hidden_dim: int = 4096
    """predictor hidden width"""


def sdmi_objective(p: torch.Tensor, z: torch.Tensor, temperature: float, marginal: str) -> torch.Tensor:
    """cos-DV between p = h(f(x_a)) and z = g(x_b), to MAXIMIZE: mean_i S_ii - log mean_{i != j} exp(S_ij)
    with S_ij = cos(p_i, z_j) / tau; marginal='predictor' keeps the joint term only. No stop-gradient here:
    the caller holds one side fixed (f-step: z; g-step: p)."""
    s = F.normalize(p, dim=1) @ F.normalize(z, dim=1).T / temperature  # S: (N, N), positives on the diagonal
    joint = s.diagonal().mean()  # E_p(za,zb)[T]
    if marginal == "predictor":
        return joint
    n = s.shape[0]
    off = s.flatten()[1:].view(n - 1, n + 1)[:, :-1].reshape(-1)  # S_ij, i != j: samples of p(za)p(zb)
    # (N(N-1),), row-major as s[~eye] but a fixed-size view: boolean indexing would make the host wait
    return joint - (torch.logsumexp(off, 0) - math.log(n * (n - 1)))  # log E_p(za)p(zb)[exp T]


def sdmi_phase(step: int, alternate_every: int) -> int:
    """0 (f-step) or 1 (g-step) for the 1-based optimizer step: K f-steps, then K g-steps, and so on."""
    return (step - 1) // alternate_every % 2


def main(args: Args):
    if args.alternate_every < 1:
        raise common.UserError("--alternate-every must be >= 1.")
    run = common.Run(args, "sdmi")
    size = run.data.image_size
    aug = run.augment([common.ViewSpec(size), common.ViewSpec(size, solarize_p=0.2)])  # asymmetric views
    f_backbone, feat_dim = common.build_backbone(args.backbone, size, args.patch_size)
    f_projector = common.mlp(feat_dim, args.proj_hidden_dim, args.proj_output_dim, layers=args.proj_layers)
    h = common.mlp(args.proj_output_dim, args.pred_hidden_dim, args.proj_output_dim)  # predictor h (part of f's side)
    h = h if args.predictor else nn.Identity()  # h built either way: g's init does not depend on --no-predictor
    if args.g_init == "copy":
        g_backbone, g_projector = copy.deepcopy(f_backbone), copy.deepcopy(f_projector)
    else:
        g_backbone, _ = common.build_backbone(args.backbone, size, args.patch_size)
        g_projector = common.mlp(feat_dim, args.proj_hidden_dim, args.proj_output_dim, layers=args.proj_layers)
    f, g = nn.Sequential(f_backbone, f_projector), nn.Sequential(g_backbone, g_projector)
    model = run.prepare(nn.ModuleDict(dict(f=f, predictor=h, g=g)))
    lr = args.lr * args.batch_size / 256
    opt_f = common.make_optimizer(args.optimizer, common.param_groups(nn.ModuleList([f, h]), args.weight_decay), lr)
    opt_g = common.make_optimizer(args.optimizer, common.param_groups(g, args.weight_decay), lr)
    probe = common.OnlineProbe(feat_dim, run.data.num_classes, run.device)
    run.track(model, [opt_f, opt_g], {"main": (f_backbone, f_projector), "g": (g_backbone, g_projector)}, probe,
              branches=(nn.Sequential(f, h), g))  # mi/*: h(f(x_a)) against g(x_b), what the bound compares
    run.restart_from_checkpoint()  # --resume: the tracked weights and states, step and RNG as saved

    for epoch in run.epochs():
        for x, y in run.batches(epoch):
            lr = run.update_lr()
            phase = sdmi_phase(run.step_count, args.alternate_every)
            optimizer = opt_f if phase == 0 else opt_g
            x1, x2 = aug(x, run.gen)
            with run.autocast():
                with torch.set_grad_enabled(phase == 0):  # why: in a g-step f and h are held fixed (stop-gradient)
                    r1, r2 = f_backbone(x1), f_backbone(x2)  # R: (n, feat_dim)
                    p1, p2 = h(f_projector(r1)), h(f_projector(r2))  # h(f(x)): (n, proj_output_dim)
                with torch.set_grad_enabled(phase == 1):  # why: in an f-step g is held fixed (stop-gradient)
                    z1, z2 = g(x1), g(x2)  # g(x): (n, proj_output_dim)
            p1, p2, z1, z2 = (common.gather(t.float()) for t in (p1, p2, z1, z2))  # (N, proj_output_dim): global
            objective = (sdmi_objective(p1, z2, args.temperature, args.marginal)
                         + sdmi_objective(p2, z1, args.temperature, args.marginal)) / 2
            loss = -objective
            optimizer.zero_grad(set_to_none=True)
            run.scaler.scale(loss).backward()  # fp16: times the loss scale (else 1)
            common.average_gradients(model)  # several processes: the global batch's gradient on every one
            run.scaler.step(optimizer)  # fp16: on the unscaled gradient, skipped if not finite
            run.scaler.update()
            with torch.no_grad():
                joint = (F.cosine_similarity(p1, z2).mean() + F.cosine_similarity(p2, z1).mean()) / 2 / args.temperature
            probe_loss, probe_acc = probe.update(r1, y)
            run.log({"losses/joint": -joint, "losses/marginal": joint - objective, "losses/total": loss,
                     "losses/online_linear": probe_loss, "charts/online_linear_train_top1": probe_acc,
                     "charts/learning_rate": lr, "charts/phase": phase})
    run.finish()


if __name__ == "__main__":
    common.cli(main, Args)

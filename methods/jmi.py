"""JMI: Joint Mutual Information maximization.
Sabby, Sui, Wu, Cresswell, Wu, "Self-Supervised Representation Learning as Mutual Information Maximization",
2025, arXiv:2510.01345 (our reading of the paper; its official code was not available to us).

One shared encoder (backbone + projector) embeds both views, and both views get gradients in the same step: a
symmetric architecture with no stop-gradient and no predictor. It maximizes the Donsker-Varadhan lower bound
I(Z_1; Z_2) >= E_p(z1,z2)[T] - log E_p(z1)p(z2)[exp T] with the cosine critic T(a, b) = cos(a, b) / tau, the
expectations taken over a batch: joint term = mean of the diagonal of S, marginal term over the off-diagonal pairs.
Collapse is prevented by the marginal term: if all embeddings were equal, the off-diagonal scores would equal the
diagonal ones and the objective would be 0, while spread-out embeddings reach up to 1/tau. `--marginal taylor`
replaces the log-mean-exp by its second-order expansion, mean + 1/2 variance of the off-diagonal scores, the
statistical regularizer that the paper links to Barlow Twins.
MI reading (Sabby et al. 2025): JMI paradigm; the log-mean-exp over in-batch negatives (default) or its mean + variance
Taylor surrogate (--marginal taylor) stands in for the marginal term.

    python methods/jmi.py --dataset cifar10
    python methods/jmi.py --dataset synthetic --backbone tiny --epochs 5      # CPU, no files needed

Implementation details (optimizer = solo-learn's tuned SimCLR recipe for CIFAR, scripts/pretrain/cifar/simclr.yaml):
1. Symmetric augmentation: crop scale 0.08-1, jitter (0.8, 0.8, 0.8, 0.2) p 0.8, grayscale 0.2, blur p 0.5 (JMI
   is symmetric, as SimCLR; the paper does not give CIFAR augmentations).
2. Projector 3 layers, (Linear-BN-ReLU) x 2 + Linear to 256, no final BN (paper: "projection 256 with 3 layers");
   hidden width 2048, not given by the paper (`--proj-hidden-dim`).
3. LARS (eta 0.02, clipped, biases/norms excluded), lr 0.4 x batch/256, wd 1e-4, 10 warmup epochs, cosine
   (solo-learn SimCLR). The paper's command uses lr 0.05 at batch 64, wd 1e-4 (about `--optimizer sgd --lr 0.2`).
4. Temperature 0.1 (the paper's example command).
5. "Both directions": S_ij = T(z1_i, z2_j) and S^T (view 2 -> view 1) have the same diagonal and the same set of
   off-diagonal values, so the pooled log-mean-exp (and the mean and variance) is the same in both directions and
   one matrix gives the symmetric objective exactly (tests check this against the average of the two).
6. `--marginal dv` (default, the paper's exact bound): log-mean-exp over the N(N-1) off-diagonal pairs.
   `--marginal taylor`: log E[exp T] ~ E[T] + Var[T] / 2 (second-order cumulant expansion, which drops the third
   and higher cumulants), with the plug-in (1/M) variance over the M = N(N-1) off-diagonal scores. Our short CPU
   comparison of the two is in docs/results.md.
7. Several processes: z1, z2 are gathered with gradients, so the marginal term is over the global batch's N(N-1)
   pairs; --sync-bn on by default (as solo-learn's recipes; BN in the projector).
8. Evaluation: docs/methods.md, "Evaluation protocols" (online probe, kNN, linear probe); R = backbone
   output, Z = projector output.
9. Logged: losses/joint = -mean_i S_ii (minus the joint term), losses/marginal = +marginal term (log-mean-exp or
   its Taylor surrogate), losses/total = their sum = -objective.
"""
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
    epochs: int = 1000
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
    """critic temperature tau: T(a, b) = cos(a, b) / tau"""
    marginal: Literal["dv", "taylor"] = "dv"
    """dv: exact log-mean-exp over the off-diagonal pairs; taylor: their mean + variance / 2"""
    proj_hidden_dim: int = 2048
    """projector hidden width"""
    proj_output_dim: int = 256
    """projector output width (Z)"""
    proj_layers: int = 3
    """projector depth (Linear layers)"""


def jmi_objective(z1: torch.Tensor, z2: torch.Tensor, temperature: float, marginal: str) -> torch.Tensor:
    """cos-DV between the two views' embeddings, to MAXIMIZE: mean_i S_ii - log mean_{i != j} exp(S_ij) with
    S_ij = cos(z1_i, z2_j) / tau; marginal='taylor' uses mean + var / 2 of the S_ij (i != j) instead. Both z1 and
    z2 get gradients (no stop-gradient); symmetric in (z1, z2), see implementation detail 5."""
    s = F.normalize(z1, dim=1) @ F.normalize(z2, dim=1).T / temperature  # S: (N, N), positives on the diagonal
    n = s.shape[0]
    off = s.flatten()[1:].view(n - 1, n + 1)[:, :-1].reshape(-1)  # S_ij, i != j: samples of p(z1)p(z2)
    # (N(N-1),), row-major as s[~eye] but a fixed-size view: boolean indexing would make the host wait
    if marginal == "dv":
        log_mean_exp = torch.logsumexp(off, 0) - math.log(n * (n - 1))  # log E_p(z1)p(z2)[exp T]
    else:
        log_mean_exp = off.mean() + 0.5 * off.var(unbiased=False)  # its 2nd-order Taylor (cumulant) expansion
    return s.diagonal().mean() - log_mean_exp  # E_p(z1,z2)[T] - marginal term


def main(args: Args):
    run = common.Run(args, "jmi")
    size = run.data.image_size
    aug = run.augment([common.ViewSpec(size, jitter=(0.8, 0.8, 0.8, 0.2), blur_p=0.5)] * 2)  # symmetric views
    backbone, feat_dim = common.build_backbone(args.backbone, size, args.patch_size)
    projector = common.mlp(feat_dim, args.proj_hidden_dim, args.proj_output_dim, layers=args.proj_layers)
    model = run.prepare(nn.ModuleDict(dict(backbone=backbone, projector=projector)))
    optimizer = common.make_optimizer(args.optimizer, common.param_groups(model, args.weight_decay),
                                      args.lr * args.batch_size / 256)
    probe = common.OnlineProbe(feat_dim, run.data.num_classes, run.device)
    run.track(model, optimizer, {"main": (backbone, projector)}, probe)
    run.restart_from_checkpoint()  # --resume: the tracked weights and states, step and RNG as saved

    for epoch in run.epochs():
        for x, y in run.batches(epoch):
            lr = run.update_lr()
            x1, x2 = aug(x, run.gen)
            with run.autocast():
                r1, r2 = backbone(x1), backbone(x2)  # R: (n, feat_dim)
                z1, z2 = projector(r1), projector(r2)  # Z: (n, proj_output_dim)
            z1, z2 = common.gather(z1.float()), common.gather(z2.float())  # (N, proj_output_dim): the global batch
            objective = jmi_objective(z1, z2, args.temperature, args.marginal)
            loss = -objective
            optimizer.zero_grad(set_to_none=True)
            run.scaler.scale(loss).backward()  # fp16: times the loss scale (else 1)
            common.average_gradients(model)  # several processes: the global batch's gradient on every one
            run.scaler.step(optimizer)  # fp16: on the unscaled gradient, skipped if not finite
            run.scaler.update()
            with torch.no_grad():
                joint = F.cosine_similarity(z1, z2).mean() / args.temperature
            probe_loss, probe_acc = probe.update(r1, y)
            run.log({"losses/joint": -joint, "losses/marginal": joint - objective, "losses/total": loss,
                     "losses/online_linear": probe_loss, "charts/online_linear_train_top1": probe_acc,
                     "charts/learning_rate": lr})
    run.finish()


if __name__ == "__main__":
    common.cli(main, Args)

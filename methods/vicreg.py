"""VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised Learning.
Bardes, Ponce, LeCun, 2022, arXiv:2105.04906.

One encoder (backbone + projector) embeds both views; three terms on the embeddings: invariance (mean squared
distance between the two views' embeddings), variance (a hinge keeping the batch standard deviation of every
dimension above 1, separately for each view) and covariance (the off-diagonal entries of each view's covariance
matrix pushed to 0). Collapse is prevented by the variance term, which forbids a constant embedding, and
dimensional collapse by the covariance term, which decorrelates the dimensions; no negatives, no stop-gradient.
MI reading (Sabby et al. 2025): JMI paradigm, one shared encoder; the variance and covariance terms (second-order
statistics) stand in for the marginal term (the Taylor view: mean + 1/2 variance of the scores).

    python methods/vicreg.py --dataset cifar10
    python methods/vicreg.py --dataset synthetic --backbone tiny --epochs 5      # CPU, no files needed

Implementation details (defaults = solo-learn's tuned CIFAR recipe, scripts/pretrain/cifar/vicreg.yaml):
1. VICReg augmentation (solo-learn): crop scale 0.2-1, jitter (0.4, 0.4, 0.2, 0.1) p 0.8, grayscale 0.2, no blur,
   solarization 0.1 on both views (the paper on ImageNet: BYOL's asymmetric blur and solarization).
2. Projector (Linear-BN-ReLU) x 2 then Linear, widths 2048-2048-2048 (solo-learn; the paper: 8192-8192-8192).
3. LARS (eta 0.02, clipped, biases/norms excluded), lr 0.3 x batch/256, wd 1e-4, 10 warmup epochs, cosine
   (solo-learn; the paper: LARS base lr 0.2 x batch/256, wd 1e-6, batch 2048).
4. Loss = lambda s(Z, Z') + mu [v(Z) + v(Z')] + nu [c(Z) + c(Z')], lambda = mu = 25, nu = 1 (the paper's Eq. 6):
   s = mean over N and D of (z - z')^2 (the official code's mse_loss; the paper's Eq. 5 sums over D instead of
   averaging, the coefficients 25/25/1 go with the code's convention); v(Z) = mean_j max(0, 1 - sqrt(Var(z^j) +
   1e-4)) with the unbiased batch variance (gamma = 1, eps = 1e-4, as the paper); c(Z) = sum_{i != j} C(Z)_ij^2 / D
   with C(Z) the unbiased (1/(N-1)) covariance. v and c are summed over the two views as Eq. 6 and solo-learn (the
   official code averages the two variance terms: `--std-coeff 12.5` reproduces it).
5. `losses/invariance`, `losses/variance`, `losses/covariance` are the unweighted s, v(Z) + v(Z'), c(Z) + c(Z').
6. Several processes: the embeddings are gathered with gradients and the loss is computed on the global batch,
   so the variance and covariance are those of the global batch (the official code's FullGatherLayer); the
   invariance, a per-image mean, is the same on the gathered batch. --sync-bn on by default (solo-learn).
7. Evaluation: docs/methods.md, "Evaluation protocols" (online probe, kNN, linear probe); R = backbone
   output, Z = projector output.
"""
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

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
    lr: float = 0.3
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
    sim_coeff: float = 25.0
    """weight lambda of the invariance term s(Z, Z')"""
    std_coeff: float = 25.0
    """weight mu of the variance term v(Z) + v(Z')"""
    cov_coeff: float = 1.0
    """weight nu of the covariance term c(Z) + c(Z')"""
    proj_hidden_dim: int = 2048
    """projector hidden width"""
    proj_output_dim: int = 2048
    """projector output width (Z)"""


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, sim_coeff: float = 25.0, std_coeff: float = 25.0,
                cov_coeff: float = 1.0):
    """lambda s(Z, Z') + mu [v(Z) + v(Z')] + nu [c(Z) + c(Z')]. Returns (total, invariance s, variance v(Z) + v(Z'),
    covariance c(Z) + c(Z')), the three terms unweighted; `vicreg_loss(z1, z2)[0]` is the loss to minimize."""
    n, d = z1.shape
    invariance = F.mse_loss(z1, z2)  # s(Z, Z'): mean over N and D of (z - z')^2
    eye = torch.eye(d, dtype=torch.bool, device=z1.device)
    variance, covariance = 0.0, 0.0
    for z in (z1, z2):
        std = torch.sqrt(z.var(dim=0) + 1e-4)  # (D,) S(z^j, eps), unbiased batch variance
        variance = variance + F.relu(1 - std).mean()  # v(Z): hinge at gamma = 1
        z = z - z.mean(dim=0)
        cov = z.T @ z / (n - 1)  # (D, D) C(Z)
        covariance = covariance + cov.masked_fill(eye, 0).pow(2).sum() / d  # c(Z): off-diagonal only
    total = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
    return total, invariance, variance, covariance


def main(args: Args):
    run = common.Run(args, "vicreg")
    size = run.data.image_size
    aug = run.augment([common.ViewSpec(size, scale=(0.2, 1.0), solarize_p=0.1)] * 2)  # VICReg's views (solo-learn)
    backbone, feat_dim = common.build_backbone(args.backbone, size, args.patch_size)
    projector = common.mlp(feat_dim, args.proj_hidden_dim, args.proj_output_dim, layers=3)
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
            loss, invariance, variance, covariance = vicreg_loss(z1, z2, args.sim_coeff, args.std_coeff, args.cov_coeff)
            optimizer.zero_grad(set_to_none=True)
            run.scaler.scale(loss).backward()  # fp16: times the loss scale (else 1)
            common.average_gradients(model)  # several processes: the global batch's gradient on every one
            run.scaler.step(optimizer)  # fp16: on the unscaled gradient, skipped if not finite
            run.scaler.update()
            probe_loss, probe_acc = probe.update(r1, y)
            run.log({"losses/invariance": invariance, "losses/variance": variance, "losses/covariance": covariance,
                     "losses/total": loss, "losses/online_linear": probe_loss,
                     "charts/online_linear_train_top1": probe_acc, "charts/learning_rate": lr})
    run.finish()


if __name__ == "__main__":
    common.cli(main, Args)

"""Barlow Twins: Self-Supervised Learning via Redundancy Reduction.
Zbontar, Jing, Misra, LeCun, Deny, 2021, arXiv:2103.03230.

One encoder (backbone + projector) embeds both views. Each embedding dimension is standardized over the batch, and
the D x D cross-correlation matrix C between the two views' embeddings is driven to the identity: its diagonal to 1
(the views agree, invariance) and its off-diagonal to 0 (different dimensions carry different information,
redundancy reduction). Collapse is prevented by construction: a standardized dimension that is constant over the
batch is 0 and cannot reach C_ii = 1, so the invariance term itself makes every dimension vary across images, and
the off-diagonal term stops the dimensions from all copying one direction (dimensional collapse).
MI reading (Sabby et al. 2025): JMI paradigm, one shared encoder; a second-order (variance/covariance) regularizer
on the standardized embeddings stands in for the marginal term (the Taylor view: mean + 1/2 variance of the scores).

    python methods/barlow_twins.py --dataset cifar10
    python methods/barlow_twins.py --dataset synthetic --backbone tiny --epochs 5      # CPU, no files needed

Implementation details (defaults = solo-learn's tuned CIFAR recipe, scripts/pretrain/cifar/barlow.yaml):
1. Asymmetric augmentation: jitter (0.4, 0.4, 0.2, 0.1) p 0.8, grayscale 0.2, no blur on CIFAR (the paper blurs
   view 1 with p 1.0 and view 2 with p 0.1 on ImageNet), solarization 0.0 on view 1 and 0.2 on view 2.
2. Projector (Linear-BN-ReLU) x 2 then Linear, widths 2048-2048-2048 (solo-learn; the paper: 8192-8192-8192).
3. LARS (eta 0.02, clipped, biases/norms excluded), lr 0.3 x batch/256, wd 1e-4, 10 warmup epochs, cosine
   (solo-learn; the paper: LARS lr 0.2 for weights and 0.0048 for biases/BN x batch/256, wd 1.5e-6, batch 2048).
4. Loss L = sum_i (1 - C_ii)^2 + lambda sum_i sum_{j != i} C_ij^2, lambda 0.0051 (the paper and its code).
   C = z1_hat^T z2_hat / N, with z_hat each dimension minus its batch mean over its biased (1/N) batch std, eps 1e-5
   inside the square root: the paper's Eq. (2) and the official code (BatchNorm1d without affine). The paper's
   pseudocode divides by the unbiased std instead, which scales C by (N-1)/N. No flag.
5. scale_loss: solo-learn backpropagates scale_loss * L with scale_loss 0.1 in its CIFAR recipe (its default 0.024,
   from the first official code release); the paper has no such factor: `--scale-loss 1`. Under LARS the factor
   mostly cancels for the weights (trust ratio) but scales the steps of biases and norm parameters. `losses/total`
   logs the paper's L, unscaled; `losses/invariance` = sum_i (1 - C_ii)^2, `losses/redundancy` = sum_{i!=j} C_ij^2.
6. Several processes: the embeddings are gathered with gradients, so the standardization and C are over the
   global batch (the official code all-reduces C); --sync-bn on by default (solo-learn, and the official code).
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
    lambd: float = 0.0051
    """weight lambda of the off-diagonal (redundancy reduction) term"""
    scale_loss: float = 0.1
    """factor on the loss before backward (solo-learn's CIFAR recipe; 1 = the paper)"""
    proj_hidden_dim: int = 2048
    """projector hidden width"""
    proj_output_dim: int = 2048
    """projector output width (Z)"""


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float):
    """L_BT = sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2 on the cross-correlation C of the batch-standardized
    embeddings. Returns (L_BT, invariance sum_i (1 - C_ii)^2, redundancy sum_{i != j} C_ij^2)."""
    n, d = z1.shape
    z1 = (z1 - z1.mean(dim=0)) / torch.sqrt(z1.var(dim=0, unbiased=False) + 1e-5)  # (N, D), as BatchNorm1d
    z2 = (z2 - z2.mean(dim=0)) / torch.sqrt(z2.var(dim=0, unbiased=False) + 1e-5)
    c = z1.T @ z2 / n  # (D, D) cross-correlation C_ij between dimension i of view 1 and dimension j of view 2
    eye = torch.eye(d, dtype=torch.bool, device=c.device)
    invariance = (1 - c.diagonal()).pow(2).sum()
    redundancy = c.masked_fill(eye, 0).pow(2).sum()
    return invariance + lambd * redundancy, invariance, redundancy


def main(args: Args):
    run = common.Run(args, "barlow_twins")
    size = run.data.image_size
    aug = run.augment([common.ViewSpec(size), common.ViewSpec(size, solarize_p=0.2)])  # asymmetric views
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
            loss, invariance, redundancy = barlow_twins_loss(z1, z2, args.lambd)
            optimizer.zero_grad(set_to_none=True)
            run.scaler.scale(args.scale_loss * loss).backward()  # why scaled: solo-learn's recipe (docstring, item 5)
            common.average_gradients(model)  # several processes: the global batch's gradient on every one
            run.scaler.step(optimizer)  # fp16: on the unscaled gradient, skipped if not finite
            run.scaler.update()
            probe_loss, probe_acc = probe.update(r1, y)
            run.log({"losses/invariance": invariance, "losses/redundancy": redundancy, "losses/total": loss,
                     "losses/online_linear": probe_loss, "charts/online_linear_train_top1": probe_acc,
                     "charts/learning_rate": lr})
    run.finish()


if __name__ == "__main__":
    common.cli(main, Args)

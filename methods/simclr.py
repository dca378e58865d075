"""SimCLR: A Simple Framework for Contrastive Learning of Visual Representations.
Chen, Kornblith, Norouzi, Hinton, 2020, arXiv:2002.05709.

Two augmented views of each image are pulled together and pushed away from the other 2N-2 views of the batch
with the NT-Xent (normalized-temperature cross-entropy) loss. Collapse is prevented by the in-batch negatives:
a constant embedding would make every negative as similar as the positive.
MI reading (Sabby et al. 2025): JMI paradigm, one shared encoder; in-batch negatives estimate the marginal term.

    python methods/simclr.py --dataset cifar10
    python methods/simclr.py --dataset synthetic --backbone tiny --epochs 5      # CPU, no files needed

Implementation details (defaults = solo-learn's tuned CIFAR recipe, scripts/pretrain/cifar/simclr.yaml):
1. Symmetric augmentation: crop scale 0.08-1, jitter (0.8, 0.8, 0.8, 0.2) p 0.8, grayscale 0.2, blur p 0.5.
2. Projector Linear(2048)-ReLU-Linear(256) without BatchNorm, as solo-learn (the paper's projector has BN).
3. LARS (eta 0.02, clipped, biases/norms excluded), lr 0.4 x batch/256, wd 1e-4, 10 warmup epochs, cosine.
4. Temperature 0.2 (the paper uses 0.5 at batch 4096 on ImageNet; 0.2 is solo-learn's CIFAR value).
5. Evaluation: see README (online probe, kNN, offline linear probe); R = backbone output, Z = projector output.
"""
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402


@dataclass
class Args:
    dataset: common.DatasetName = "cifar10"
    """dataset; `synthetic` needs no files, `imagefolder` reads DATA_DIR/train and DATA_DIR/val (or test)"""
    data_dir: str = "data"
    """where the dataset lives or is downloaded to (medmnist: the .npz file)"""
    backbone: common.BackboneName = "resnet18"
    """backbone (CIFAR stem for images <= 64 px); `tiny` is a narrow ResNet for CPU runs"""
    epochs: int = 1000
    """training epochs"""
    batch_size: int = 256
    """images per step (two views each)"""
    optimizer: common.OptimizerName = "lars"
    """optimizer of the SSL parameters"""
    lr: float = 0.4
    """base learning rate at batch 256 (scaled by batch_size/256)"""
    weight_decay: float = 1e-4
    """weight decay (not applied to biases and norm parameters)"""
    warmup_epochs: int = 10
    """linear warmup epochs before the cosine decay"""
    seed: int = 0
    """seed of weights, data order and augmentations"""
    device: str = "auto"
    """auto (cuda if available), cpu, cuda, cuda:1..."""
    precision: common.Precision = "auto"
    """autocast dtype; auto = bf16 on CUDA, fp32 on CPU"""
    deterministic: bool = False
    """deterministic kernels (slower on GPU)"""
    compile: bool = False
    """torch.compile the backbone"""
    eval_every: int = 50
    """kNN and online-probe test accuracy every N epochs (0: only at the end)"""
    mi_every: int = 500
    """MI estimates and dimensionality metrics on a fixed held-out batch every N steps (0: never)"""
    save_every: int = 50
    """checkpoint every N epochs, and at the end (0: only backbone.pt at the end)"""
    max_steps: int = 0
    """stop after N optimizer steps (0: run all epochs); the schedules still span all epochs"""
    resume: Optional[str] = None
    """continue from this checkpoint (its run directory is reused)"""
    exp_name: str = ""
    """run name in runs/{dataset}__{exp_name}__{seed}__{time} (default: the method)"""
    # method-specific
    temperature: float = 0.2
    """NT-Xent temperature"""
    proj_hidden_dim: int = 2048
    """projector hidden width"""
    proj_output_dim: int = 256
    """projector output width (Z)"""


def info_nce_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over the 2N views: for view i the positive is its partner, the 2N-2 other views are negatives."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # (2N, D)
    sim = z @ z.T / temperature  # (2N, 2N)
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))  # drop self-pairs
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)  # partner index
    return F.cross_entropy(sim, targets)


def main(args: Args):
    run = common.Run(args, "simclr")
    aug = run.augment(common.symmetric_views(run.data.image_size))
    backbone, feat_dim = common.build_backbone(args.backbone, run.data.image_size)
    projector = nn.Sequential(nn.Linear(feat_dim, args.proj_hidden_dim), nn.ReLU(inplace=True),
                              nn.Linear(args.proj_hidden_dim, args.proj_output_dim))
    model = run.prepare(nn.ModuleDict(dict(backbone=backbone, projector=projector)))
    optimizer = common.make_optimizer(args.optimizer, common.param_groups(model, args.weight_decay),
                                      common.scaled_lr(args.lr, args.batch_size))
    run.track(model, optimizer, {"main": (backbone, projector)}, feat_dim)

    for epoch in run.epochs():
        for x, y in run.batches(epoch):
            lr = run.update_lr()
            x1, x2 = aug(x, run.gen)
            with run.autocast():
                r1, r2 = backbone(run.cl(x1)), backbone(run.cl(x2))  # R: (N, feat_dim)
                z1, z2 = projector(r1), projector(r2)  # Z: (N, proj_output_dim)
            loss = info_nce_loss(z1.float(), z2.float(), args.temperature)
            run.step(loss, optimizer)
            run.log(r1, y, losses__info_nce=loss, losses__total=loss, charts__learning_rate=lr)
    run.finish()


if __name__ == "__main__":
    common.cli(main, Args)

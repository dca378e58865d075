"""SimSiam: Exploring Simple Siamese Representation Learning.
Chen, He, 2021, arXiv:2011.10566.

One encoder (backbone + projector) embeds both views; a predictor MLP on one branch regresses the other branch's
projection, which is treated as a constant (stop-gradient); the negative cosine is symmetrized over the two views.
There are no negatives, no momentum encoder and no large batch. Collapse is a solution of the loss, and what keeps
the network away from it is the stop-gradient together with the predictor: without the stop-gradient the output
collapses to a constant at once (paper, Fig. 2). `charts/z_std`, the std of the l2-normalized projection per
dimension averaged over dimensions, is the paper's collapse monitor: ~0 when collapsed, ~1/sqrt(D) when not.
MI reading (Sabby et al. 2025): SDMI paradigm, g = the same encoder frozen by the stop-gradient; the predictor with
the stop-gradient stands in for the marginal term.

    python methods/simsiam.py --dataset cifar10
    python methods/simsiam.py --dataset synthetic --backbone tiny --epochs 5      # CPU, no files needed

Implementation details (defaults = solo-learn's tuned CIFAR recipe, scripts/pretrain/cifar/simsiam.yaml):
1. Symmetric weak augmentation (the paper's, from MoCo v2): crop scale 0.08-1, jitter (0.4, 0.4, 0.4, 0.1) p 0.8,
   grayscale 0.2, blur p 0.5.
2. Projector (Linear-BN-ReLU) x 2 then Linear(2048)-BN, BN on every layer including the output, as the paper's
   ImageNet projector; the output BN has no affine parameters and the Linear layers before BNs no bias, as the
   official code and solo-learn. The paper's CIFAR variant has 2 layers: `--proj-layers 2`. 3 is the default
   because solo-learn's CIFAR recipe, whose lr/wd we use and whose 90.51 / 66.04 we compare to, has 3.
3. Predictor Linear(2048, 512)-BN-ReLU-Linear(512, 2048), no BN on its output, as the paper.
4. SGD (momentum 0.9), lr 0.5 x batch/256, wd 1e-5 (solo-learn; the paper on ImageNet: 0.05 x batch/256, wd 1e-4),
   10 warmup epochs then cosine (solo-learn; the paper has no warmup at batch 512: `--warmup-epochs 0`). Weight
   decay skips biases and norm parameters (the paper decays all; no flag).
5. The predictor's lr is kept at the batch-scaled base lr all run long, through warmup and cosine (paper, Sec. 4.2
   and Table 1: slightly better; official code and solo-learn likewise); `--no-fix-pred-lr` schedules it too.
6. Loss L = D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2 with D(p, z) = -cos(p, z), as the paper (minimum -1).
7. Several processes: no gather. The loss is a mean of per-image terms, so each process's mean over its share,
   averaged by common.average_gradients, is the global mean; images meet only in BatchNorm, hence --sync-bn on by
   default (solo-learn; the paper syncs BN on 8 GPUs).
8. Evaluation: docs/methods.md, "Evaluation protocols" (online probe, kNN, linear probe); R = backbone
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
    optimizer: common.OptimizerName = "sgd"
    """optimizer of the SSL parameters"""
    lr: float = 0.5
    """base learning rate at batch 256 (scaled by batch_size/256)"""
    weight_decay: float = 1e-5
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
    proj_hidden_dim: int = 2048
    """projector hidden width"""
    proj_output_dim: int = 2048
    """projector output width (Z)"""
    proj_layers: int = 3
    """projector Linear layers (3: the paper's ImageNet design and solo-learn; 2: the paper's CIFAR variant)"""
    pred_hidden_dim: int = 512
    """predictor bottleneck width"""
    fix_pred_lr: bool = True
    """keep the predictor's lr at the base lr (no warmup, no cosine), as the paper"""


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, z) = -cos(p, sg(z)), averaged over the batch; z is a constant here (the stop-gradient)."""
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()  # p, z: (N, D)


def main(args: Args):
    if args.proj_layers < 1:
        raise common.UserError("--proj-layers must be >= 1.")
    run = common.Run(args, "simsiam")
    size = run.data.image_size
    aug = run.augment([common.ViewSpec(size, jitter=(0.4, 0.4, 0.4, 0.1), blur_p=0.5)] * 2)  # symmetric weak views
    backbone, feat_dim = common.build_backbone(args.backbone, size, args.patch_size)
    projector = common.mlp(feat_dim, args.proj_hidden_dim, args.proj_output_dim, layers=args.proj_layers,
                           last_bn=True, last_bn_affine=False)
    predictor = common.mlp(args.proj_output_dim, args.pred_hidden_dim, args.proj_output_dim)
    model = run.prepare(nn.ModuleDict(dict(backbone=backbone, projector=projector, predictor=predictor)))
    groups = (common.param_groups(nn.ModuleList([backbone, projector]), args.weight_decay)
              + common.param_groups(predictor, args.weight_decay, fixed_lr=args.fix_pred_lr))  # why: paper, Table 1
    optimizer = common.make_optimizer(args.optimizer, groups, args.lr * args.batch_size / 256)
    probe = common.OnlineProbe(feat_dim, run.data.num_classes, run.device)
    run.track(model, optimizer, {"main": (backbone, projector)}, probe,  # mi/*: what the loss compares
              branches=(nn.Sequential(backbone, projector, predictor), nn.Sequential(backbone, projector)))
    run.restart_from_checkpoint()  # --resume: the tracked weights and states, step and RNG as saved

    for epoch in run.epochs():
        for x, y in run.batches(epoch):
            lr = run.update_lr()
            x1, x2 = aug(x, run.gen)
            with run.autocast():
                r1, r2 = backbone(x1), backbone(x2)  # R: (n, feat_dim)
                z1, z2 = projector(r1), projector(r2)  # Z: (n, proj_output_dim)
                p1, p2 = predictor(z1), predictor(z2)  # (n, proj_output_dim)
            loss = negative_cosine(p1.float(), z2.float()) / 2 + negative_cosine(p2.float(), z1.float()) / 2
            optimizer.zero_grad(set_to_none=True)
            run.scaler.scale(loss).backward()  # fp16: times the loss scale (else 1)
            common.average_gradients(model)  # several processes: the global batch's gradient on every one
            run.scaler.step(optimizer)  # fp16: on the unscaled gradient, skipped if not finite
            run.scaler.update()
            z_std = F.normalize(z1.detach().float(), dim=1).std(dim=0).mean()  # collapse monitor (paper, Fig. 2)
            probe_loss, probe_acc = probe.update(r1, y)
            run.log({"losses/negative_cosine": loss, "losses/total": loss, "losses/online_linear": probe_loss,
                     "charts/online_linear_train_top1": probe_acc, "charts/learning_rate": lr, "charts/z_std": z_std})
    run.finish()


if __name__ == "__main__":
    common.cli(main, Args)

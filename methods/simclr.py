"""SimCLR: A Simple Framework for Contrastive Learning of Visual Representations.
Chen, Kornblith, Norouzi, Hinton, 2020, arXiv:2002.05709.

Two augmented views of each image are pulled together and pushed away from the other 2N-2 views of the batch
with the NT-Xent (normalized-temperature cross-entropy) loss. Collapse is prevented by the in-batch negatives:
a constant embedding would make every negative as similar as the positive.
MI reading (Sabby et al. 2025): JMI paradigm, one shared encoder; in-batch negatives estimate the marginal term.

    python methods/simclr.py --dataset cifar10
    python methods/simclr.py --dataset synthetic --backbone tiny --epochs 5      # CPU, no files needed
    torchrun --nproc_per_node 4 methods/simclr.py --dataset cifar10             # 4 GPUs, the same global batch

Implementation details (defaults = solo-learn's tuned CIFAR recipe, scripts/pretrain/cifar/simclr.yaml):
1. Symmetric augmentation: crop scale 0.08-1, jitter (0.8, 0.8, 0.8, 0.2) p 0.8, grayscale 0.2, blur p 0.5 (kernel 10%
   of the side: 3 taps at 32 px, weaker than solo-learn's PIL blur; docs/methods.md, "Gaussian blur on small images").
2. Projector Linear(2048)-ReLU-Linear(256) without BatchNorm, as solo-learn; `--proj-bn`: Linear-BN-ReLU-Linear, the
   paper's (it learns faster in short runs: the ten-minute CPU recipe of docs/searches.md uses it).
3. LARS (eta 0.02, clipped, biases/norms excluded), lr 0.4 x batch/256, wd 1e-4, 10 warmup epochs, cosine.
4. Temperature 0.2, solo-learn's CIFAR value (the official code: 0.1 for ImageNet at batch 4096; its CIFAR-10 command
   uses 0.5 at batch 512, with blur off and colour jitter strength 0.5).
5. Several processes: the embeddings are gathered with gradients, so NT-Xent sees the 2N views of the global batch
   (the paper's "global BN" and all-device negatives); --sync-bn on by default (solo-learn, and the paper's global BN:
   per-process BatchNorm statistics would let the views of a small local batch find each other through them).
6. Evaluation: docs/methods.md, "Evaluation protocols" (online probe, kNN, linear probe); R = backbone
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
    temperature: float = 0.2
    """NT-Xent temperature"""
    proj_hidden_dim: int = 2048
    """projector hidden width"""
    proj_output_dim: int = 256
    """projector output width (Z)"""
    proj_bn: bool = False
    """BatchNorm after the projector's hidden layer (the paper's projector; solo-learn's has none)"""


def info_nce_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over the 2N views: for view i the positive is its partner, the 2N-2 other views are negatives.
    N = the global batch (all processes' images; the loop's n is one process's share)."""
    N = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # (2N, D)
    sim = z @ z.T / temperature  # (2N, 2N)
    sim = sim.masked_fill(torch.eye(2 * N, dtype=torch.bool, device=z.device), float("-inf"))  # drop self-pairs
    targets = torch.arange(2 * N, device=z.device).roll(N)  # partner index: N..2N-1, then 0..N-1
    return F.cross_entropy(sim, targets)


def main(args: Args):
    run = common.Run(args, "simclr")
    size = run.data.image_size
    aug = run.augment([common.ViewSpec(size, jitter=(0.8, 0.8, 0.8, 0.2), blur_p=0.5)] * 2)  # symmetric views
    backbone, feat_dim = common.build_backbone(args.backbone, size, args.patch_size)
    if args.proj_bn:  # the paper's projector: Linear-BN-ReLU-Linear
        projector = common.mlp(feat_dim, args.proj_hidden_dim, args.proj_output_dim)
    else:  # solo-learn's: Linear-ReLU-Linear
        projector = nn.Sequential(nn.Linear(feat_dim, args.proj_hidden_dim), nn.ReLU(inplace=True),
                                  nn.Linear(args.proj_hidden_dim, args.proj_output_dim))
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
                r1, r2 = backbone(x1), backbone(x2)  # R: (n, feat_dim), n = this process's share of the batch
                z1, z2 = projector(r1), projector(r2)  # Z: (n, proj_output_dim)
            z1, z2 = common.gather(z1.float()), common.gather(z2.float())  # (N, proj_output_dim), the global batch
            loss = info_nce_loss(z1, z2, args.temperature)
            optimizer.zero_grad(set_to_none=True)
            run.scaler.scale(loss).backward()  # fp16: times the loss scale (else 1)
            common.average_gradients(model)  # several processes: the global batch's gradient on every one
            run.scaler.step(optimizer)  # fp16: on the unscaled gradient, skipped if not finite
            run.scaler.update()
            probe_loss, probe_acc = probe.update(r1, y)
            run.log({"losses/info_nce": loss, "losses/total": loss, "losses/online_linear": probe_loss,
                     "charts/online_linear_train_top1": probe_acc, "charts/learning_rate": lr})
    run.finish()


if __name__ == "__main__":
    common.cli(main, Args)

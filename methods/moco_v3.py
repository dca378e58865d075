"""MoCo v3: An Empirical Study of Training Self-Supervised Vision Transformers.
Chen, Xie, He, 2021, arXiv:2104.02057.

A query encoder (backbone, projector, predictor) and a momentum encoder (backbone, projector), an exponential moving
average (EMA) of the query encoder's backbone and projector that receives no gradient. The query of one view must
pick out the key of the same image, from the other view, among the keys of the whole batch (InfoNCE, symmetrized
over the two views). There is no queue: the other images of the batch are the negatives. Collapse is prevented by
these in-batch negatives; the slowly moving key encoder keeps the targets consistent.
MI reading (Sabby et al. 2025): SDMI paradigm, g = the EMA momentum encoder; in-batch negatives estimate the
marginal term.

    python methods/moco_v3.py --dataset cifar10
    python methods/moco_v3.py --dataset synthetic --backbone tiny --epochs 5      # CPU, no files needed

Implementation details (defaults = solo-learn's tuned CIFAR recipe, scripts/pretrain/cifar/mocov3.yaml):
1. Asymmetric augmentation: jitter (0.4, 0.4, 0.2, 0.1) p 0.8, grayscale 0.2, no blur on CIFAR (the paper blurs
   view 1 with p 1.0 and view 2 with p 0.1 on ImageNet), solarization 0.0 on view 1 and 0.2 on view 2.
2. Projector Linear(4096)-BN-ReLU-Linear(256)-BN, the last BN without affine parameters; predictor
   Linear(4096)-BN-ReLU-Linear(256). This is the official ResNet code and solo-learn (2-layer projector; the
   paper's 3-layer projector is the ViT one).
3. LARS (eta 0.02, clipped, biases/norms excluded), lr 0.3 x batch/256, wd 1e-6, 10 warmup epochs, cosine
   (the paper, ResNet-50 on ImageNet: LARS lr 0.3-0.6 x batch/256, wd 1e-6 to 1.5e-6, batch 4096).
4. EMA tau_t = 1 - (1 - tau_base) * (cos(pi t / T) + 1) / 2 per step, tau_base 0.99 -> 1.0, as the paper's ResNet
   recipe (official `--moco-m-cos`). The EMA covers parameters only; the momentum encoder runs in train mode on
   batch statistics, so its BatchNorm statistics are not averaged (official code likewise).
5. Loss ctr(q1, k2) + ctr(q2, k1) with ctr(q, k) = 2 tau * CE(q k^T / tau, identity) on l2-normalized q, k, as the
   paper's pseudocode (the factor 2 tau keeps the gradient scale independent of tau). Temperature 0.2
   (solo-learn; the official ResNet-50 recipe uses 1.0, the ViT one 0.2): `--temperature`.
6. Several processes: queries and keys are gathered (keys without gradient), so each query meets the keys of the
   whole global batch, its positive at its global index (the official code gathers the keys and offsets the labels
   by rank); --sync-bn on by default (solo-learn; the paper's ResNet recipe syncs BN).
7. Evaluation uses the query backbone; R = query backbone output, Z = query projector output (before the predictor).
"""
import copy
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
    weight_decay: float = 1e-6
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
    """InfoNCE temperature tau"""
    proj_hidden_dim: int = 4096
    """projector hidden width"""
    proj_output_dim: int = 256
    """projector output width (Z)"""
    pred_hidden_dim: int = 4096
    """predictor hidden width"""
    tau_base: float = 0.99
    """EMA momentum of the momentum encoder at step 0"""
    tau_final: float = 1.0
    """EMA momentum of the momentum encoder at the last step (cosine schedule per step)"""


def contrastive_loss(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """ctr(q, k) of the paper: InfoNCE of query i against the batch's keys, positive key i, scaled by 2 tau."""
    q, k = F.normalize(q, dim=1), F.normalize(k.detach(), dim=1)  # (N, D); keys come from the momentum encoder
    logits = q @ k.T / temperature  # (N, N): row i, column j = query i against key j
    labels = torch.arange(q.shape[0], device=q.device)  # the positive key is on the diagonal
    return 2 * temperature * F.cross_entropy(logits, labels)


@torch.no_grad()
def ema_update(online: nn.Module, target: nn.Module, tau: float):
    """target <- tau * target + (1 - tau) * online, parameter by parameter."""
    for po, pt in zip(online.parameters(), target.parameters()):
        pt.lerp_(po, 1 - tau)


def main(args: Args):
    run = common.Run(args, "moco_v3")
    size = run.data.image_size
    aug = run.augment([common.ViewSpec(size), common.ViewSpec(size, solarize_p=0.2)])  # asymmetric views
    backbone, feat_dim = common.build_backbone(args.backbone, size, args.patch_size)
    projector = common.mlp(feat_dim, args.proj_hidden_dim, args.proj_output_dim, last_bn=True, last_bn_affine=False)
    predictor = common.mlp(args.proj_output_dim, args.pred_hidden_dim, args.proj_output_dim)
    online = nn.Sequential(backbone, projector)
    momentum = copy.deepcopy(online).requires_grad_(False)  # why: the key encoder only follows the query one by EMA
    model = run.prepare(nn.ModuleDict(dict(online=online, predictor=predictor, momentum=momentum)))
    optimizer = common.make_optimizer(args.optimizer, common.param_groups(model, args.weight_decay),
                                      args.lr * args.batch_size / 256)
    probe = common.OnlineProbe(feat_dim, run.data.num_classes, run.device)
    run.track(model, optimizer, {"main": (backbone, projector)}, probe,
              branches=(nn.Sequential(online, predictor), momentum))  # mi/*: queries against keys
    run.restart_from_checkpoint()  # --resume: the tracked weights and states, step and RNG as saved

    for epoch in run.epochs():
        for x, y in run.batches(epoch):
            lr = run.update_lr()
            tau = common.cosine_schedule(run.step_count - 1, run.total_steps, args.tau_base, args.tau_final)
            x1, x2 = aug(x, run.gen)
            with run.autocast():
                r1, r2 = backbone(x1), backbone(x2)  # R: (n, feat_dim)
                q1, q2 = predictor(projector(r1)), predictor(projector(r2))  # queries (n, proj_output_dim)
                with torch.no_grad():
                    k1, k2 = momentum(x1), momentum(x2)  # keys (n, proj_output_dim)
            q1, q2, k1, k2 = (common.gather(t.float()) for t in (q1, q2, k1, k2))  # (N, proj_output_dim): global batch
            loss = contrastive_loss(q1, k2, args.temperature) + contrastive_loss(q2, k1, args.temperature)  # summed
            optimizer.zero_grad(set_to_none=True)
            run.scaler.scale(loss).backward()  # fp16: times the loss scale (else 1)
            common.average_gradients(model)  # several processes: the global batch's gradient on every one
            run.scaler.step(optimizer)  # fp16: on the unscaled gradient, skipped if not finite
            run.scaler.update()
            ema_update(online, momentum, tau)  # why after the step: the keys follow the updated query encoder
            probe_loss, probe_acc = probe.update(r1, y)
            run.log({"losses/contrastive": loss, "losses/total": loss, "losses/online_linear": probe_loss,
                     "charts/online_linear_train_top1": probe_acc, "charts/learning_rate": lr, "charts/momentum": tau})
    run.finish()


if __name__ == "__main__":
    common.cli(main, Args)

"""MoCo v2: Improved Baselines with Momentum Contrastive Learning.
Chen, Fan, Girshick, He, 2020, arXiv:2003.04297 (MoCo: He, Fan, Wu, Xie, Girshick, 2019, arXiv:1911.05722).

A query encoder (backbone + MLP projector) learns to pick, for each view, the key of the other view of the same
image among a queue of keys from past batches (InfoNCE over 1 positive + K negatives). Keys come from a momentum
encoder, an exponential moving average (EMA) of the query encoder that receives no gradient, so the keys in the
queue change slowly and stay comparable. Collapse is prevented by the negatives: a constant embedding would match
every queued key as well as its positive.
MI reading (Sabby et al. 2025): SDMI paradigm (EMA key encoder behind a stop-gradient); the queue of past keys
estimates the marginal term.

    python methods/moco_v2.py --dataset cifar10
    python methods/moco_v2.py --dataset synthetic --backbone tiny --epochs 5      # CPU, no files needed

Implementation details (defaults = solo-learn's tuned MoCo v2+ CIFAR recipe, scripts/pretrain/cifar/mocov2plus.yaml):
1. Symmetric weak augmentation: crop scale 0.08-1, jitter (0.4, 0.4, 0.4, 0.1) p 0.8, grayscale 0.2, blur p 0.5
   (the paper's MoCo v2 augmentation, at 32 px).
2. Projector Linear(2048)-ReLU-Linear(256) without BatchNorm (paper: 2048 -> 128); queries and keys L2-normalized.
3. SGD (momentum 0.9), lr 0.3 x batch/256, wd 1e-4, 10 warmup epochs, cosine (paper: lr 0.03 at batch 256,
   cosine, no warmup, 200/800 ImageNet epochs).
4. Temperature 0.2 (paper 0.2). Queue 32768 keys (paper 65536, flag --queue-size), one queue per view as solo-learn,
   initialized with random unit vectors; the keys of a batch are enqueued (FIFO) after the loss is computed.
5. Symmetric loss, solo-learn's "MoCo v2+": (L(q1, k2, queue of view-2 keys) + L(q2, k1, queue of view-1 keys)) / 2.
   The paper's loss is one-directional (one query view per image); symmetrizing is the v2+ change.
6. EMA tau_t = 0.999 - (0.999 - 0.99) * (cos(pi t / T) + 1) / 2 per step (paper: constant m = 0.999), after the
   optimizer step, over parameters only; the key encoder runs in train mode on batch statistics. No shuffling BN
   (paper: BN shuffled across GPUs so batch statistics cannot leak the positive; solo-learn has none either): with
   --sync-bn the statistics are those of the whole global batch, which dilutes that leak but does not remove it.
7. Queues and their pointer are buffers of the model passed to run.track, so --resume continues exactly.
   Several processes: the loss is per query (its key and the shared queue), so it needs no gather; the keys of the
   global batch are gathered and enqueued on every process, so the queues stay identical (as the official code's
   concat_all_gather). --sync-bn on by default (solo-learn). Shuffling BN is not done (see 6.).
8. Evaluation uses the query backbone; R = query backbone output, Z = query projector output.
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
    optimizer: common.OptimizerName = "sgd"
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
    temperature: float = 0.2
    """InfoNCE temperature"""
    proj_hidden_dim: int = 2048
    """projector hidden width"""
    proj_output_dim: int = 256
    """projector output width (Z)"""
    queue_size: int = 32768
    """keys kept per view in the queue of negatives"""
    tau_base: float = 0.99
    """EMA momentum of the key encoder at step 0"""
    tau_final: float = 0.999
    """EMA momentum of the key encoder at the last step (cosine schedule per step)"""


class KeyQueue(nn.Module):
    """FIFO queues of the last `size` keys (unit vectors), one per view; buffers, so they are checkpointed."""

    def __init__(self, views: int, size: int, dim: int):
        super().__init__()
        self.register_buffer("keys", F.normalize(torch.randn(views, size, dim), dim=-1))  # (views, K, D)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, k: torch.Tensor):
        """Enqueue k (views, N, D) in place of the N oldest keys (wrapping around the end)."""
        idx = (self.ptr + torch.arange(k.shape[1], device=k.device)) % self.keys.shape[1]  # (N,)
        self.keys[:, idx] = k.to(self.keys.dtype)
        self.ptr.copy_((self.ptr + k.shape[1]) % self.keys.shape[1])


def moco_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with one positive key per query and the queue as negatives:
    -log e^(q.k+/T) / (e^(q.k+/T) + sum_j e^(q.k_j/T))."""
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1).detach()  # (N, D); why detach: keys get no gradient
    pos = (q * k).sum(1, keepdim=True)  # (N, 1)
    neg = q @ queue.T  # (N, K)
    logits = torch.cat([pos, neg], dim=1) / temperature  # (N, 1 + K), the positive is class 0
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


@torch.no_grad()
def ema_update(online: nn.Module, target: nn.Module, tau: float):
    """target <- tau * target + (1 - tau) * online, parameter by parameter."""
    for po, pt in zip(online.parameters(), target.parameters()):
        pt.lerp_(po, 1 - tau)


def main(args: Args):
    if args.queue_size < args.batch_size:
        raise common.UserError(f"--queue-size {args.queue_size} must be at least --batch-size {args.batch_size}.")
    run = common.Run(args, "moco_v2")
    size = run.data.image_size
    aug = run.augment([common.ViewSpec(size, jitter=(0.4, 0.4, 0.4, 0.1), blur_p=0.5)] * 2)  # symmetric weak views
    backbone, feat_dim = common.build_backbone(args.backbone, size, args.patch_size)
    projector = nn.Sequential(nn.Linear(feat_dim, args.proj_hidden_dim), nn.ReLU(inplace=True),
                              nn.Linear(args.proj_hidden_dim, args.proj_output_dim))
    online = nn.Sequential(backbone, projector)
    momentum = copy.deepcopy(online).requires_grad_(False)  # why: the key encoder only follows the query encoder by EMA
    queue = KeyQueue(2, args.queue_size, args.proj_output_dim)
    model = run.prepare(nn.ModuleDict(dict(online=online, momentum=momentum, queue=queue)))
    optimizer = common.make_optimizer(args.optimizer, common.param_groups(model, args.weight_decay),
                                      args.lr * args.batch_size / 256)
    probe = common.OnlineProbe(feat_dim, run.data.num_classes, run.device)
    run.track(model, optimizer, {"main": (backbone, projector)}, probe, branches=(online, momentum))  # query, key
    run.restart_from_checkpoint()  # --resume: the tracked weights and states, step and RNG as saved

    for epoch in run.epochs():
        for x, y in run.batches(epoch):
            lr = run.update_lr()
            tau = common.cosine_schedule(run.step_count - 1, run.total_steps, args.tau_base, args.tau_final)
            x1, x2 = aug(x, run.gen)
            with run.autocast():
                r1, r2 = backbone(x1), backbone(x2)  # R: (n, feat_dim)
                q1, q2 = projector(r1), projector(r2)  # queries (n, proj_output_dim)
                with torch.no_grad():
                    k1, k2 = momentum(x1), momentum(x2)  # keys (n, proj_output_dim)
            k1, k2 = F.normalize(k1.float(), dim=1), F.normalize(k2.float(), dim=1)
            loss = (moco_loss(q1.float(), k2, queue.keys[1], args.temperature)
                    + moco_loss(q2.float(), k1, queue.keys[0], args.temperature)) / 2
            optimizer.zero_grad(set_to_none=True)
            run.scaler.scale(loss).backward()  # fp16: times the loss scale (else 1)
            common.average_gradients(model)  # several processes: the global batch's gradient on every one
            run.scaler.step(optimizer)  # fp16: on the unscaled gradient, skipped if not finite
            run.scaler.update()
            ema_update(online, momentum, tau)  # why after the step: the keys follow the updated query encoder
            queue.push(torch.stack([common.gather(k1), common.gather(k2)]))  # after the loss: they were positives
            probe_loss, probe_acc = probe.update(r1, y)
            run.log({"losses/info_nce": loss, "losses/total": loss, "losses/online_linear": probe_loss,
                     "charts/online_linear_train_top1": probe_acc, "charts/learning_rate": lr, "charts/momentum": tau})
    run.finish()


if __name__ == "__main__":
    common.cli(main, Args)

"""NNCLR: With a Little Help from My Friends: Nearest-Neighbor Contrastive Learning of Visual Representations.
Dwibedi, Aytar, Tompson, Sermanet, Zisserman, 2021, arXiv:2104.14548.

SimCLR with a different positive: for view 1 of an image, the positive is its nearest neighbour in a support set
(a FIFO queue of past projections), which must identify the prediction of view 2 of the same image among the
batch's predictions (InfoNCE). The neighbour is another image, so the positives carry more semantic variation than
two crops of one image. Collapse is prevented by the in-batch negatives, as in SimCLR; the neighbour comes from the
support set and receives no gradient.
MI reading (Sabby et al. 2025): JMI paradigm, one shared encoder; in-batch negatives estimate the marginal term (the
positive is a support-set neighbour).

    python methods/nnclr.py --dataset cifar10
    python methods/nnclr.py --dataset synthetic --backbone tiny --epochs 5      # CPU, no files needed

Implementation details (defaults = solo-learn's tuned CIFAR recipe, scripts/pretrain/cifar/nnclr.yaml):
1. Asymmetric augmentation: jitter (0.4, 0.4, 0.2, 0.1) p 0.8, grayscale 0.2, no blur on CIFAR, solarization 0.0 on
   view 1 and 0.2 on view 2 (the paper uses BYOL's ImageNet augmentation, with blur).
2. Projector Linear(2048)-BN-ReLU-Linear(2048)-BN-ReLU-Linear(256)-BN, predictor Linear(4096)-BN-ReLU-Linear(256),
   as the paper.
3. LARS (eta 0.02, clipped, biases/norms excluded), lr 0.4 x batch/256, wd 1e-5, 10 warmup epochs, cosine
   (paper: batch 4096, wd 1e-6, 1000 ImageNet epochs).
4. Temperature 0.2 (paper 0.1), support set 65536 (paper 98304, flag --queue-size), initialized with random unit
   vectors; it is filled FIFO with the L2-normalized projections of view 1, after the loss (as the paper's pseudocode).
5. Nearest neighbour by cosine similarity over the whole support set (exact, no approximate search).
6. Symmetric loss (L(NN(z1), p2) + L(NN(z2), p1)) / 2, as the paper and solo-learn.
7. charts/nn_label_acc: how often the neighbour of view 1 has the image's label (a diagnostic only; labels are
   stored next to the support set and never reach the loss).
8. The support set, its labels and pointer are buffers of the model passed to run.track, so --resume is exact.
   Several processes: projections and predictions are gathered (with gradient), so the InfoNCE is over the global
   batch, and the global batch's projections are enqueued on every process (identical support sets); --sync-bn on
   by default (solo-learn).
9. Evaluation: R = backbone output, Z = projector output.
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
    temperature: float = 0.2
    """InfoNCE temperature"""
    proj_hidden_dim: int = 2048
    """projector hidden width"""
    proj_output_dim: int = 256
    """projector output width (Z)"""
    pred_hidden_dim: int = 4096
    """predictor hidden width"""
    queue_size: int = 65536
    """size of the support set of past projections in which nearest neighbours are searched"""


class SupportSet(nn.Module):
    """FIFO queue Q of the last `size` projections (unit vectors) and their labels; buffers, hence checkpointed."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("z", F.normalize(torch.randn(size, dim), dim=1))  # (Q, D)
        self.register_buffer("y", torch.full((size,), -1, dtype=torch.long))  # labels, diagnostics only
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, z: torch.Tensor, y: torch.Tensor):
        """Enqueue z (N, D) in place of the N oldest entries (wrapping around the end)."""
        idx = (self.ptr + torch.arange(len(z), device=z.device)) % len(self.z)  # (N,)
        self.z[idx], self.y[idx] = z.to(self.z.dtype), y
        self.ptr.copy_((self.ptr + len(z)) % len(self.z))


@torch.no_grad()
def nearest_neighbour(z: torch.Tensor, support: torch.Tensor):
    """NN(z, Q) = argmax_{q in Q} cos(z, q) for each row of z (N, D); support Q (K, D) holds unit vectors.
    Returns (indices (N,), neighbours (N, D))."""
    idx = (F.normalize(z, dim=1) @ support.T).argmax(dim=1)  # (N,)
    return idx, support[idx]


def nnclr_loss(nn_z: torch.Tensor, p: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE: NN(z_i) must pick p_i (the other view's prediction of image i) among the batch's N predictions."""
    nn_z, p = F.normalize(nn_z, dim=1), F.normalize(p, dim=1)  # (N, D)
    logits = nn_z @ p.T / temperature  # (N, N), positives on the diagonal
    return F.cross_entropy(logits, torch.arange(len(p), device=p.device))


def main(args: Args):
    if args.queue_size < args.batch_size:
        raise common.UserError(f"--queue-size {args.queue_size} must be at least --batch-size {args.batch_size}.")
    run = common.Run(args, "nnclr")
    size = run.data.image_size
    aug = run.augment([common.ViewSpec(size), common.ViewSpec(size, solarize_p=0.2)])  # asymmetric views
    backbone, feat_dim = common.build_backbone(args.backbone, size, args.patch_size)
    projector = common.mlp(feat_dim, args.proj_hidden_dim, args.proj_output_dim, layers=3, last_bn=True)
    predictor = common.mlp(args.proj_output_dim, args.pred_hidden_dim, args.proj_output_dim)
    support = SupportSet(args.queue_size, args.proj_output_dim)
    model = run.prepare(nn.ModuleDict(dict(backbone=backbone, projector=projector, predictor=predictor,
                                           support=support)))
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
                p1, p2 = predictor(z1), predictor(z2)  # (n, proj_output_dim)
            z1, z2 = (common.gather(F.normalize(z.float(), dim=1)) for z in (z1, z2))  # (N, D): the global batch
            p1, p2 = common.gather(p1.float()), common.gather(p2.float())
            y_all = common.gather(y)
            idx1, nn1 = nearest_neighbour(z1, support.z)  # why no gradient: the neighbour is a stored projection
            _, nn2 = nearest_neighbour(z2, support.z)
            loss = (nnclr_loss(nn1, p2, args.temperature) + nnclr_loss(nn2, p1, args.temperature)) / 2
            optimizer.zero_grad(set_to_none=True)
            run.scaler.scale(loss).backward()  # fp16: times the loss scale (else 1)
            common.average_gradients(model)  # several processes: the global batch's gradient on every one
            run.scaler.step(optimizer)  # fp16: on the unscaled gradient, skipped if not finite
            run.scaler.update()
            labeled = y_all >= 0
            nn_acc = 100 * ((support.y[idx1] == y_all) & labeled).sum() / labeled.sum().clamp(min=1)
            support.push(z1.detach(), y_all)  # why after the loss: the batch must not find itself as neighbour
            probe_loss, probe_acc = probe.update(r1, y)
            run.log({"losses/nnclr": loss, "losses/total": loss, "losses/online_linear": probe_loss,
                     "charts/online_linear_train_top1": probe_acc, "charts/learning_rate": lr,
                     "charts/nn_label_acc": nn_acc})
    run.finish()


if __name__ == "__main__":
    common.cli(main, Args)

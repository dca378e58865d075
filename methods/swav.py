"""SwAV: Unsupervised Learning of Visual Features by Contrasting Cluster Assignments.
Caron, Misra, Mairal, Goyal, Bojanowski, Joulin, 2020, arXiv:2006.09882.

Each view's embedding z is scored against K learnable prototypes. The scores of a global view are turned into soft
cluster assignments ("codes") q by a few Sinkhorn-Knopp iterations, and every other view must predict those codes
(swapped prediction: cross-entropy between q and the softmax of its own scores). Collapse is prevented by the
equipartition constraint of Sinkhorn-Knopp: the codes of a batch (plus a queue of recent embeddings) must share the
prototypes equally, so mapping every image to the same cluster is not a solution; the codes get no gradient.
MI reading (Sabby et al. 2025): JMI paradigm, one shared encoder and every view gets gradients; the Sinkhorn
equipartition of the codes over the prototypes stands in for the marginal term.

    python methods/swav.py --dataset cifar10
    python methods/swav.py --dataset synthetic --backbone tiny --epochs 5      # CPU, no files needed
    python methods/swav.py --dataset cifar10 --num-local-crops 6               # multi-crop: 2 x 32 px + 6 x 16 px

Implementation details (defaults = solo-learn's tuned CIFAR recipe, scripts/pretrain/cifar/swav.yaml):
1. Symmetric augmentation: crop scale 0.08-1, jitter (0.8, 0.8, 0.8, 0.2) p 0.8, grayscale 0.2, blur p 0.5.
   No multi-crop on CIFAR (solo-learn); the paper uses 2 x 224 + 6 x 96 px on ImageNet: --num-local-crops N adds N
   views of --local-crop-size px (default half the image) with crop scale 0.05-0.14, the global ones 0.14-1 (paper).
2. Projector Linear(2048)-BN-ReLU-Linear(128) (paper, solo-learn); z = l2-normalized projector output.
3. 3000 prototypes c_k (a bias-free Linear), re-normalized to unit norm before every step (paper's code; solo-learn
   uses a weight-normalized layer instead). They get no gradient during the first 2 epochs (solo-learn; the paper
   freezes them during the first epoch): --freeze-prototypes-epochs.
4. Codes: Sinkhorn-Knopp (epsilon 0.05, 3 iterations), without gradient, computed for the two global views only
   (paper); every view (the other global one and the local ones) predicts them with softmax temperature 0.1.
5. Queue of the last 3840 embeddings of each global view, filled from the first step, its scores (with the current
   prototypes) appended to the batch's for Sinkhorn from epoch 50 on, once full (solo-learn; the paper's batch-256
   ImageNet script starts it at epoch 15): --queue-size (0: no queue), --queue-start-epoch.
6. Loss: mean over the (global view i, other view v) pairs of -sum_k q_ik log softmax(z_v . c / T)_k (paper).
7. LARS (eta 0.02, clipped, biases/norms excluded), lr 0.6 x batch/256, wd 1e-6, 10 warmup epochs, cosine to 0
   (the paper's batch-256 script: final lr 0.0006; not exposed).
8. Several processes: the embeddings are gathered with gradients, so Sinkhorn equipartitions the codes over the
   global batch (the official code all-reduces its sums and uses the global batch size) and the queue holds the
   global batch's embeddings on every process; --sync-bn on by default (solo-learn, and the paper).
9. Evaluation: docs/methods.md, "Evaluation protocols" (online probe, kNN, linear probe); R = backbone
   output, Z = projector output.
"""
import math
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
    lr: float = 0.6
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
    temperature: float = 0.1
    """softmax temperature of the predictions"""
    proj_hidden_dim: int = 2048
    """projector hidden width"""
    proj_output_dim: int = 128
    """projector output width (Z), the dimension of the prototypes"""
    num_prototypes: int = 3000
    """number of prototypes K"""
    sinkhorn_epsilon: float = 0.05
    """entropic regularization of Sinkhorn-Knopp (smaller: harder codes)"""
    sinkhorn_iterations: int = 3
    """Sinkhorn-Knopp iterations"""
    queue_size: int = 3840
    """embeddings kept per global view and scored with the batch in Sinkhorn (0: no queue)"""
    queue_start_epoch: int = 50
    """first epoch whose codes use the queue"""
    freeze_prototypes_epochs: int = 2
    """the prototypes get no gradient during the first N epochs"""
    num_local_crops: int = 0
    """extra small views for multi-crop (0: only the two global views, as solo-learn on CIFAR)"""
    local_crop_size: int = 0
    """size in px of the multi-crop local views (0: half the image size)"""


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """Codes Q (B, K) for the scores z_b . c_k (B, K): Q proportional to exp(scores / epsilon), rescaled alternately
    per prototype and per sample (Sinkhorn-Knopp, iterations >= 1) towards the transportation polytope where every
    prototype receives B/K samples and every sample one unit of mass. The last rescaling is per sample, so each row of
    Q sums to 1 exactly. Computed with logs: the same numbers, but exp(scores / epsilon) can neither overflow nor
    underflow."""
    B, K = scores.shape
    log_q = scores / epsilon  # (B, K)
    for _ in range(iterations):
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(K)  # each prototype: mass 1/K
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - math.log(B)  # each sample: mass 1/B
    return torch.exp(log_q) * B  # (B, K), each row a distribution over the prototypes


def swav_loss(p: torch.Tensor, q: torch.Tensor, temperature: float) -> torch.Tensor:
    """Swapped prediction: the codes q_i of global view i are predicted from the scores of every other view v.
    p: (V, N, K) prototype scores of all views, global views first; q: (G, N, K) codes of the G global views."""
    log_p = F.log_softmax(p / temperature, dim=-1)  # (V, N, K)
    ce = -torch.einsum("ink,vnk->iv", q, log_p) / p.shape[1]  # (G, V): batch mean of -sum_k q log p
    pairs = ~torch.eye(*ce.shape, dtype=torch.bool, device=ce.device)  # v != i: a view does not predict itself
    return ce.masked_fill(~pairs, 0).sum() / pairs.sum()  # their mean (not ce[pairs]: no host-device sync)


@torch.no_grad()
def update_queue(queue: torch.Tensor, z: torch.Tensor):
    """First in, first out: queue (G, L, D) <- the batch's embeddings z (G, N, D), then the L - N newest older ones."""
    n = z.shape[1]
    queue[:, n:] = queue[:, :-n].clone()
    queue[:, :n] = z


def main(args: Args):
    if 0 < args.queue_size < args.batch_size:
        raise common.UserError(f"--queue-size {args.queue_size} must be 0 or >= --batch-size {args.batch_size}.")
    run = common.Run(args, "swav")
    size = run.data.image_size
    views = [common.ViewSpec(size, jitter=(0.8, 0.8, 0.8, 0.2), blur_p=0.5)] * 2  # symmetric views
    if args.num_local_crops:  # paper's multi-crop scales: local 0.05-0.14, global 0.14-1
        local_size = args.local_crop_size or size // 2
        views = common.multicrop(views, args.num_local_crops, local_size, (0.05, 0.14), (0.14, 1))
    aug = run.augment(views)
    backbone, feat_dim = common.build_backbone(args.backbone, size, args.patch_size)
    projector = common.mlp(feat_dim, args.proj_hidden_dim, args.proj_output_dim)
    prototypes = nn.Linear(args.proj_output_dim, args.num_prototypes, bias=False)  # weight: C (K, D)
    model = nn.ModuleDict(dict(backbone=backbone, projector=projector, prototypes=prototypes))
    model.register_buffer("queue", torch.zeros(2, args.queue_size, args.proj_output_dim))  # a buffer: checkpointed
    model = run.prepare(model)
    optimizer = common.make_optimizer(args.optimizer, common.param_groups(model, args.weight_decay),
                                      args.lr * args.batch_size / 256)
    probe = common.OnlineProbe(feat_dim, run.data.num_classes, run.device)
    run.track(model, optimizer, {"main": (backbone, projector)}, probe)
    run.restart_from_checkpoint()  # --resume: the tracked weights and states, step and RNG as saved

    for epoch in run.epochs():
        prototypes.requires_grad_(epoch >= args.freeze_prototypes_epochs)  # frozen: no gradient, not updated
        for x, y in run.batches(epoch):
            lr = run.update_lr()
            with torch.no_grad():
                prototypes.weight.copy_(F.normalize(prototypes.weight, dim=1))  # unit-norm prototypes
            views = aug(x, run.gen)
            with run.autocast():
                r = [backbone(v) for v in views]  # R: V x (n, feat_dim)
                z = [projector(r_v) for r_v in r]  # V x (n, proj_output_dim)
            z = torch.stack([common.gather(F.normalize(z_v.float(), dim=-1)) for z_v in z])  # (V, N, D): global batch
            p = z @ prototypes.weight.T  # scores (V, N, K)
            n = z.shape[1]
            queue_full = (run.step_count - 1) * n >= args.queue_size  # filled on every earlier step
            use_queue = args.queue_size > 0 and epoch >= args.queue_start_epoch and queue_full
            with torch.no_grad():
                scores = p[:2]  # (2, N, K): codes come from the global views only
                if use_queue:  # more samples for the equipartition than one small batch
                    scores = torch.cat([scores, model.queue @ prototypes.weight.T], dim=1)  # (2, N + L, K)
                q = torch.stack([sinkhorn(s, args.sinkhorn_epsilon, args.sinkhorn_iterations)[:n] for s in scores])
                if args.queue_size:
                    update_queue(model.queue, z[:2])
            loss = swav_loss(p, q, args.temperature)
            optimizer.zero_grad(set_to_none=True)
            run.scaler.scale(loss).backward()  # fp16: times the loss scale (else 1)
            common.average_gradients(model)  # several processes: the global batch's gradient on every one
            run.scaler.step(optimizer)  # fp16: on the unscaled gradient, skipped if not finite
            run.scaler.update()
            probe_loss, probe_acc = probe.update(r[0], y)
            run.log({"losses/swav": loss, "losses/total": loss, "losses/online_linear": probe_loss,
                     "charts/online_linear_train_top1": probe_acc, "charts/learning_rate": lr,
                     "charts/queue_in_use": float(use_queue)})
    run.finish()


if __name__ == "__main__":
    common.cli(main, Args)

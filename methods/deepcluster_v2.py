"""DeepCluster-v2, from: Unsupervised Learning of Visual Features by Contrasting Cluster Assignments.
Caron, Misra, Mairal, Goyal, Bojanowski, Joulin, 2020, arXiv:2006.09882 (the DeepCluster-v2 variant of SwAV's paper).

The embeddings of every training image are kept in a memory. At the start of each epoch, spherical k-means clusters
that memory (three independent clusterings into 3000 clusters); during the epoch, every view of an image is trained to
recognize the cluster of that image: a cross-entropy over the scores z . c_k against the centroids c_k, which act as
fixed prototypes. Collapse is prevented by the clustering: the targets are recomputed on the whole data set each epoch
and the 2999 other centroids, spread over the data, act as negatives, so an embedding that ignores the image cannot
score its own cluster above the others.
MI reading (Sabby et al. 2025): JMI paradigm, one shared encoder and every view gets gradients; k-means clustering of
the whole memory (its centroids as the competing classes) stands in for the marginal term.

    python methods/deepcluster_v2.py --dataset cifar10
    python methods/deepcluster_v2.py --dataset synthetic --backbone tiny --epochs 5      # CPU, no files needed

Implementation details (defaults = solo-learn's tuned CIFAR recipe, scripts/pretrain/cifar/deepclusterv2.yaml):
1. Symmetric augmentation: crop scale 0.08-1, jitter (0.8, 0.8, 0.8, 0.2) p 0.8, grayscale 0.2, blur p 0.5.
   No multi-crop on CIFAR (solo-learn); the paper uses SwAV's 2 x 224 + 6 x 96 px on ImageNet: --num-local-crops N
   adds N views of --local-crop-size px (default half the image), crop scale 0.05-0.14, global views 0.14-1.
2. Projector Linear(2048)-BN-ReLU-Linear(128) (paper, solo-learn); z = l2-normalized projector output.
3. Memory (2, N_images, 128): z of the two global views of every training image, indexed by its dataset index
   (run.batch_index), overwritten after each step (paper). Head h clusters the memory of global view h mod 2 (paper).
4. First epoch: no clustering exists yet, so epoch 0 only fills the memory (no SSL loss, no optimizer step; the
   online probe trains) and the clustering loss starts in epoch 1, on k-means of that memory (solo-learn). The paper's
   code instead fills the memory before training with one extra no-grad pass over the data (init_memory). Images that
   the drop_last batching skips keep their previous entry (a random unit vector before their first visit).
5. k-means: spherical (cosine), 10 iterations, 3 heads x 3000 centroids (paper, solo-learn), initialized with random
   memory entries drawn from a generator seeded by (seed, epoch), so --resume is exact; an empty cluster keeps its
   previous centroid (paper). The centroids are the prototypes (buffers: they get no gradient).
6. Loss: mean over heads of the cross-entropy between softmax(z . c / T), T 0.1, and the image's cluster, over all
   views (paper).
7. LARS (eta 0.02, clipped, biases/norms excluded), lr 0.6 x batch/256, wd 1e-6, 10 warmup epochs, cosine to 0;
   solo-learn's yaml sets 11 warmup epochs (--warmup-epochs 11) and a minimum lr of 0.0006 (not exposed).
8. Several processes: the loss is per image (its cluster, fixed prototypes), so it needs no gather; the global
   batch's embeddings and indices are gathered into the memory of every process, so the memories are identical;
   k-means on the GPU is not bitwise reproducible (index_add_ sums with atomics), so rank 0's assignments and
   centroids are broadcast to the others after each clustering. --sync-bn on by default (solo-learn). A run resumed
   in the middle of an epoch keeps that epoch's checkpointed clustering (run.resumed_mid_epoch) instead of
   clustering again.
9. Evaluation: docs/methods.md, "Evaluation protocols" (online probe, kNN, linear probe); R = backbone
   output, Z = projector output.
"""
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

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
    """softmax temperature of the cluster predictions"""
    proj_hidden_dim: int = 2048
    """projector hidden width"""
    proj_output_dim: int = 128
    """projector output width (Z), the dimension of the memory and the centroids"""
    num_prototypes: Tuple[int, ...] = (3000, 3000, 3000)
    """clusters of each k-means head (one number per head)"""
    kmeans_iterations: int = 10
    """k-means iterations at the start of every epoch"""
    num_local_crops: int = 0
    """extra small views for multi-crop (0: only the two global views, as solo-learn on CIFAR)"""
    local_crop_size: int = 0
    """size in px of the multi-crop local views (0: half the image size)"""


@torch.no_grad()
def kmeans(x: torch.Tensor, centroids: torch.Tensor, iterations: int, chunk: int = 8192):
    """Spherical k-means of unit vectors x (N, D) from initial centroids (K, D): `iterations` rounds of (assign each
    point to its most similar centroid; centroid = normalized mean of its points, an empty cluster keeps its
    centroid), then a last assignment. Returns centroids (K, D) and assignments (N,)."""
    def assign(c):  # chunks keep the (chunk, K) similarity matrix small
        return torch.cat([(x[i:i + chunk] @ c.T).argmax(dim=1) for i in range(0, len(x), chunk)])

    for _ in range(iterations):
        a = assign(centroids)  # (N,)
        sums = torch.zeros_like(centroids).index_add_(0, a, x)  # (K, D)
        counts = torch.bincount(a, minlength=len(centroids))  # (K,)
        centroids = torch.where(counts[:, None] > 0, F.normalize(sums, dim=1), centroids)
    return centroids, assign(centroids)


def deepcluster_loss(p: List[torch.Tensor], assignments: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy between softmax(p / T) and the image's cluster, over all views, averaged over the heads.
    p: one (V, N, K_h) tensor of scores z . c per head h; assignments: (H, N) cluster of each image per head."""
    losses = [F.cross_entropy(p_h.flatten(0, 1) / temperature, a_h.repeat(p_h.shape[0]))  # (V * N, K_h), view-major
              for p_h, a_h in zip(p, assignments)]
    return sum(losses) / len(losses)


def main(args: Args):
    run = common.Run(args, "deepcluster_v2")
    if max(args.num_prototypes) > len(run.data):
        raise common.UserError(f"--num-prototypes {max(args.num_prototypes)} exceeds the {len(run.data)} images.")
    size = run.data.image_size
    views = [common.ViewSpec(size, jitter=(0.8, 0.8, 0.8, 0.2), blur_p=0.5)] * 2  # symmetric views
    if args.num_local_crops:  # SwAV's multi-crop scales: local 0.05-0.14, global 0.14-1
        local_size = args.local_crop_size or size // 2
        views = common.multicrop(views, args.num_local_crops, local_size, (0.05, 0.14), (0.14, 1))
    aug = run.augment(views)
    backbone, feat_dim = common.build_backbone(args.backbone, size, args.patch_size)
    projector = common.mlp(feat_dim, args.proj_hidden_dim, args.proj_output_dim)
    model = nn.ModuleDict(dict(backbone=backbone, projector=projector))
    # buffers, so they are checkpointed: the memory, and per head the centroids and the cluster of every image
    model.register_buffer("memory", F.normalize(torch.randn(2, len(run.data), args.proj_output_dim), dim=-1))
    model.register_buffer("assignments", torch.full((len(args.num_prototypes), len(run.data)), -1, dtype=torch.long))
    for h, k in enumerate(args.num_prototypes):
        model.register_buffer(f"prototypes{h}", torch.zeros(k, args.proj_output_dim))
    model = run.prepare(model)
    prototypes = [getattr(model, f"prototypes{h}") for h in range(len(args.num_prototypes))]
    optimizer = common.make_optimizer(args.optimizer, common.param_groups(model, args.weight_decay),
                                      args.lr * args.batch_size / 256)
    probe = common.OnlineProbe(feat_dim, run.data.num_classes, run.device)
    run.track(model, optimizer, {"main": (backbone, projector)}, probe)
    run.restart_from_checkpoint()  # --resume: the tracked weights and states, step and RNG as saved

    for epoch in run.epochs():
        if epoch > 0 and not run.resumed_mid_epoch:  # k-means of the memory of the previous epochs -> prototypes
            g = torch.Generator().manual_seed(args.seed * 100_003 + epoch)
            for h, c in enumerate(prototypes):
                memory = model.memory[h % 2]  # (N_images, D)
                init = memory[torch.randperm(len(memory), generator=g)[:len(c)].to(memory.device)]
                centroids, model.assignments[h] = kmeans(memory, init, args.kmeans_iterations)
                c.copy_(centroids)
            # rank 0's clustering on every rank (CUDA's atomics may differ)
            common.broadcast_tensors(model.assignments, *prototypes)
        clusters_used = sum((torch.bincount(a[a >= 0]) > 0).sum() for a in model.assignments) / len(prototypes)
        for x, y in run.batches(epoch):
            lr = run.update_lr()
            views = aug(x, run.gen)
            with run.autocast(), torch.set_grad_enabled(epoch > 0):  # epoch 0 only fills the memory
                r = [backbone(v) for v in views]  # R: V x (n, feat_dim)
                z = [projector(r_v) for r_v in r]  # V x (n, proj_output_dim)
            z = F.normalize(torch.stack(z).float(), dim=-1)  # (V, n, D)
            logs = {}
            if epoch > 0:
                p = [z @ c.T for c in prototypes]  # H x (V, n, K_h) scores against the fixed centroids
                loss = deepcluster_loss(p, model.assignments[:, run.batch_index], args.temperature)
                optimizer.zero_grad(set_to_none=True)
                run.scaler.scale(loss).backward()  # fp16: times the loss scale (else 1)
                common.average_gradients(model)  # several processes: the global batch's gradient on every one
                run.scaler.step(optimizer)  # fp16: on the unscaled gradient, skipped if not finite
                run.scaler.update()
                logs = {"losses/deepcluster": loss, "losses/total": loss, "charts/clusters_used": clusters_used}
            z_all, index = common.gather(z[:2].detach().transpose(0, 1)), common.gather(run.batch_index)  # (N, 2, D)
            model.memory[:, index] = z_all.transpose(0, 1)  # the global views' embeddings, for the next clustering
            probe_loss, probe_acc = probe.update(r[0], y)
            run.log({"losses/online_linear": probe_loss, "charts/online_linear_train_top1": probe_acc,
                     "charts/learning_rate": lr, **logs})
    run.finish()


if __name__ == "__main__":
    common.cli(main, Args)

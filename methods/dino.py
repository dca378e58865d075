"""DINO: Emerging Properties in Self-Supervised Vision Transformers (self-distillation with no labels).
Caron, Touvron, Misra, Jegou, Mairal, Bojanowski, Joulin, 2021, arXiv:2104.14294. ResNet backbone here.

A student network (backbone and a head ending in K prototypes) is trained so that, for every view, its softmax
output matches the teacher's softmax output for the other global views (a cross-entropy). The teacher is an
exponential moving average (EMA) of the student and receives no gradient. Collapse is prevented by two opposite
operations on the teacher's output: centering (subtracting a running mean of the teacher logits) keeps one prototype
from dominating but pushes towards the uniform distribution, and sharpening (a low teacher temperature) pushes away
from the uniform distribution; with the stop-gradient and the slowly moving teacher, neither collapse wins.
MI reading (Sabby et al. 2025): SDMI paradigm (EMA teacher as g, student as f); centering + sharpening of the teacher's
distribution stand in for the marginal term.

    python methods/dino.py --dataset cifar10
    python methods/dino.py --dataset synthetic --backbone tiny --epochs 5      # CPU, no files needed
    python methods/dino.py --dataset cifar10 --num-local-crops 6               # multi-crop: 2 x 32 px + 6 x 16 px

Implementation details (defaults = solo-learn's tuned CIFAR recipe, scripts/pretrain/cifar/dino.yaml):
1. Asymmetric augmentation: jitter (0.4, 0.4, 0.2, 0.1) p 0.8, grayscale 0.2, no blur on CIFAR (the paper blurs view 1
   with p 1.0 and view 2 with p 0.1 on ImageNet), solarization 0.0 on view 1 and 0.2 on view 2. No multi-crop on CIFAR
   (solo-learn); the paper uses 2 x 224 + 6 to 10 x 96 px: --num-local-crops N adds N views of --local-crop-size px
   (default half the image), crop scale 0.05-0.4, the global ones 0.4-1 (paper). Local views go to the student only.
2. Head: Linear(2048)-GELU-Linear(2048)-GELU-Linear(256) without BN (paper's default, solo-learn's use_bn_in_head
   False), truncated-normal init std 0.02, l2-normalization, then a weight-normalized bias-free Linear(256, 4096) whose
   norm g is fixed to 1 (norm_last_layer True, paper and solo-learn). The last layer gets no gradient during the first
   epoch (paper, solo-learn): --freeze-last-layer-epochs.
3. Teacher = EMA of the student's backbone and head, tau_t = 1 - (1 - tau_base)(cos(pi t / T) + 1) / 2 per step,
   0.9995 -> 1.0 (solo-learn; paper 0.996 -> 1). Parameters only; the teacher's BatchNorm runs on batch statistics.
4. Temperatures: student 0.1; teacher 0.04 -> 0.07 linearly over the first 50 epochs (epoch 0: 0.04, epoch 49: 0.07,
   the official np.linspace), then 0.07 (paper: over 30 epochs; solo-learn's former default 50, its current default
   0 = constant 0.07): --warmup-teacher-temp-epochs.
5. Center c <- 0.9 c + 0.1 mean of the teacher logits over the batch and both global views, after the loss (paper).
6. Loss: mean over the (teacher global view i, student view v != i) pairs of -sum_k P_t(i)_k log P_s(v)_k with
   P_t = softmax((t - c) / T_t), P_s = softmax(s / T_s) (paper).
7. LARS (eta 0.02, clipped, biases/norms excluded), lr 0.3 x batch/256, wd 1e-6, 10 warmup epochs, cosine (solo-learn;
   the paper's ViTs use AdamW and a weight-decay schedule). No gradient clipping (solo-learn; paper 3.0; not exposed).
8. Several processes: the loss is per image (teacher and student views of the same image), so it needs no gather;
   the center is the mean of the teacher logits over the global batch (gathered; the paper all-reduces it), so it
   stays identical on every process. --sync-bn on by default (solo-learn; the ResNet backbone has BatchNorm).
9. Evaluation: main = the teacher's backbone (the paper and its official kNN / linear scripts evaluate the teacher;
   backbone.pt holds it), reported beside it: the student's (solo-learn's main, results *_student). The online probe
   trains on the teacher's R of view 1 (detached; the network the other numbers measure). R = backbone output, Z =
   head's 256-d bottleneck (before the l2-normalization).
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
    proj_hidden_dim: int = 2048
    """head hidden width"""
    proj_output_dim: int = 256
    """head bottleneck width (Z), the dimension of the prototypes"""
    num_prototypes: int = 4096
    """output dimension K of the head (rows of the weight-normalized last layer)"""
    tau_base: float = 0.9995
    """EMA momentum of the teacher at step 0"""
    tau_final: float = 1.0
    """EMA momentum of the teacher at the last step (cosine schedule per step)"""
    student_temp: float = 0.1
    """student softmax temperature"""
    teacher_temp: float = 0.07
    """teacher softmax temperature after the warmup (sharpening)"""
    warmup_teacher_temp: float = 0.04
    """teacher softmax temperature at epoch 0"""
    warmup_teacher_temp_epochs: int = 50
    """epochs of linear warmup of the teacher temperature (0: teacher_temp from the start)"""
    center_momentum: float = 0.9
    """momentum of the running center of the teacher logits"""
    freeze_last_layer_epochs: int = 1
    """the head's last layer gets no gradient during the first N epochs"""
    num_local_crops: int = 0
    """extra small views for multi-crop, student only (0: only the two global views, as solo-learn on CIFAR)"""
    local_crop_size: int = 0
    """size in px of the multi-crop local views (0: half the image size)"""


class DINOHead(nn.Module):
    """MLP to a bottleneck, l2-normalization, then K prototypes: a bias-free Linear with weight norm, W = g V / ||V||
    row by row, g fixed to 1, so each logit is a cosine similarity."""

    def __init__(self, in_dim: int, hidden_dim: int, bottleneck_dim: int, num_prototypes: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, bottleneck_dim))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = nn.Linear(bottleneck_dim, num_prototypes, bias=False)  # V (K, bottleneck_dim)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        u = F.normalize(self.mlp(r), dim=-1)  # (N, bottleneck_dim)
        with torch.autocast(r.device.type, enabled=False):  # why fp32: cosines / 0.04 are beyond bf16's 8-bit mantissa
            return F.linear(u.float(), F.normalize(self.last_layer.weight, dim=1))  # logits (N, K)


def dino_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, center: torch.Tensor, student_temp: float,
              teacher_temp: float) -> torch.Tensor:
    """Cross-entropy H(P_t(i), P_s(v)) between the centered, sharpened teacher distribution of global view i and the
    student distribution of every other view v, averaged over the pairs and the batch.
    student_out: (V, N, K) logits of all views, global views first; teacher_out: (2, N, K); center: (K,)."""
    p_t = F.softmax((teacher_out - center) / teacher_temp, dim=-1).detach()  # (2, N, K), no gradient to the teacher
    log_p_s = F.log_softmax(student_out / student_temp, dim=-1)  # (V, N, K)
    ce = -torch.einsum("ink,vnk->iv", p_t, log_p_s) / student_out.shape[1]  # (2, V): batch mean of -sum_k P_t log P_s
    pairs = ~torch.eye(*ce.shape, dtype=torch.bool, device=ce.device)  # v != i: a view does not predict itself
    return ce.masked_fill(~pairs, 0).sum() / pairs.sum()  # their mean (not ce[pairs]: no host-device sync)


@torch.no_grad()
def update_center(center: torch.Tensor, teacher_out: torch.Tensor, momentum: float):
    """c <- m c + (1 - m) mean of the teacher logits (2, N, K) over both global views and the batch, in place."""
    center.mul_(momentum).add_(teacher_out.mean(dim=(0, 1)), alpha=1 - momentum)


@torch.no_grad()
def ema_update(online: nn.Module, target: nn.Module, tau: float):
    """target <- tau * target + (1 - tau) * online, parameter by parameter."""
    for po, pt in zip(online.parameters(), target.parameters()):
        pt.lerp_(po, 1 - tau)


def main(args: Args):
    if args.backbone.startswith("vit"):
        raise common.UserError("DINO with a ViT has its own recipe: python methods/dino_vit.py --backbone vit_tiny.")
    run = common.Run(args, "dino")
    size = run.data.image_size
    views = [common.ViewSpec(size), common.ViewSpec(size, solarize_p=0.2)]  # asymmetric views
    if args.num_local_crops:  # paper's multi-crop scales: local 0.05-0.4, global 0.4-1
        views = common.multicrop(views, args.num_local_crops, args.local_crop_size or size // 2, (0.05, 0.4), (0.4, 1))
    aug = run.augment(views)
    backbone, feat_dim = common.build_backbone(args.backbone, size, args.patch_size)
    head = DINOHead(feat_dim, args.proj_hidden_dim, args.proj_output_dim, args.num_prototypes)
    student = nn.Sequential(backbone, head)
    teacher = copy.deepcopy(student).requires_grad_(False)  # why: the teacher only follows the student by EMA
    model = nn.ModuleDict(dict(student=student, teacher=teacher))
    model.register_buffer("center", torch.zeros(args.num_prototypes))  # a buffer: checkpointed
    model = run.prepare(model)
    optimizer = common.make_optimizer(args.optimizer, common.param_groups(model, args.weight_decay),
                                      args.lr * args.batch_size / 256)
    probe = common.OnlineProbe(feat_dim, run.data.num_classes, run.device)
    run.track(model, optimizer, {"teacher": (teacher[0], teacher[1].mlp), "student": (backbone, head.mlp)}, probe,
              branches=(student, teacher))  # mi/*: student against teacher outputs, what the loss compares
    run.restart_from_checkpoint()  # --resume: the tracked weights and states, step and RNG as saved

    for epoch in run.epochs():
        head.last_layer.requires_grad_(epoch >= args.freeze_last_layer_epochs)  # frozen: no gradient, not updated
        teacher_temp = common.linspace_warmup(epoch, args.warmup_teacher_temp_epochs, args.warmup_teacher_temp,
                                              args.teacher_temp)  # per epoch, the official np.linspace schedule
        for x, y in run.batches(epoch):
            lr = run.update_lr()
            tau = common.cosine_schedule(run.step_count - 1, run.total_steps, args.tau_base, args.tau_final)
            views = aug(x, run.gen)
            with run.autocast():
                r = [backbone(v) for v in views]  # R: V x (n, feat_dim)
                s = torch.stack([head(r_v) for r_v in r])  # student logits (V, n, K)
                with torch.no_grad():
                    r_t = [teacher[0](v) for v in views[:2]]  # the teacher's R of the global views
                    t = torch.stack([teacher[1](r_v) for r_v in r_t])  # teacher logits, global views (2, n, K)
            loss = dino_loss(s.float(), t.float(), model.center, args.student_temp, teacher_temp)
            optimizer.zero_grad(set_to_none=True)
            run.scaler.scale(loss).backward()  # fp16: times the loss scale (else 1)
            common.average_gradients(model)  # several processes: the global batch's gradient on every one
            run.scaler.step(optimizer)  # fp16: on the unscaled gradient, skipped if not finite
            run.scaler.update()
            update_center(model.center, common.gather(t.float().transpose(0, 1)).transpose(0, 1), args.center_momentum)
            ema_update(student, teacher, tau)  # why after the step: the teacher follows the updated student
            probe_loss, probe_acc = probe.update(r_t[0], y)  # the teacher's R of view 1: the network evaluated
            run.log({"losses/dino": loss, "losses/total": loss, "losses/online_linear": probe_loss,
                     "charts/online_linear_train_top1": probe_acc, "charts/learning_rate": lr, "charts/momentum": tau,
                     "charts/teacher_temp": teacher_temp})
    run.finish()


if __name__ == "__main__":
    common.cli(main, Args)

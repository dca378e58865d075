"""DINO: Emerging Properties in Self-Supervised Vision Transformers (self-distillation with no labels).
Caron, Touvron, Misra, Jegou, Mairal, Bojanowski, Joulin, 2021, arXiv:2104.14294. ViT, the paper's recipe.

A student network (ViT and a head ending in K prototypes) is trained so that, for every view, its softmax output
matches the teacher's softmax output for the other global views (a cross-entropy). The teacher is an exponential
moving average (EMA) of the student and receives no gradient. Collapse is prevented by two opposite operations on the
teacher's output: centering (subtracting a running mean of the teacher logits) keeps one prototype from dominating but
pushes towards the uniform distribution, and sharpening (a low teacher temperature) pushes away from the uniform
distribution; with the stop-gradient and the slowly moving teacher, neither collapse wins.
MI reading (Sabby et al. 2025): SDMI paradigm (EMA teacher as g, student as f); centering + sharpening of the teacher's
distribution stand in for the marginal term.

    python methods/dino_vit.py --dataset cifar10                                  # ViT-Tiny/4, 2 x 32 px + 8 x 16 px
    python methods/dino_vit.py --dataset cifar100 --backbone vit_small
    python methods/dino_vit.py --dataset synthetic --patch-size 8 --batch-size 64 --epochs 2 --warmup-epochs 1  # CPU
    python methods/dino_vit.py --dataset cifar10 --blur-p 1.0 0.1 0.5            # the paper's ImageNet blur

Implementation details (defaults = the paper's / official main_dino.py ViT recipe, scaled to 32 px; methods/dino.py is
solo-learn's ResNet recipe):
1. Backbone: torchvision's ViT (common.ViT), vit_tiny (192-d, 12 layers, 3 heads) by default or vit_small; patch 4 at
   32 px (64 patches + CLS; the paper: 16 at 224 px; Gani et al., BMVC 2022, CIFAR DINO-ViT: 4). R = the CLS token
   after the final LayerNorm. No drop-path (torchvision's ViT has none; the paper: 0.1). ResNets are refused (dino.py).
2. Multi-crop: 2 global views of 32 px, crop scale 0.4-1, and --num-local-crops 8 (paper) local views of
   --local-crop-size px (0: the largest multiple of the patch at most half the image: 16 px at 32 px, 4 x 4 patches;
   12 px at 28 px; the paper's 96/224; another size must be a multiple of the patch), scale 0.05-0.4 (paper;
   Gani et al. use 0.7-1 and 0.2-0.5): --global-crops-scale, --local-crops-scale. Local views go to the student only,
   through the same ViT with a bicubically interpolated position embedding. Views of one size are batched together
   (the official MultiCropWrapper; exact, since nothing in the ViT or the head couples the images of a batch).
3. Augmentation: jitter (0.4, 0.4, 0.2, 0.1) p 0.8, grayscale 0.2, flip, solarization 0.2 on global view 2 (paper).
   Blur: none by default (solo-learn's CIFAR choice: sigma 0.1-2 px is a large blur of a 32-px image, 2/224 of the view
   on ImageNet); the paper's 1.0 / 0.1 / 0.5 (global 1, global 2, locals) with --blur-p 1.0 0.1 0.5.
4. Head: Linear(2048)-GELU-Linear(2048)-GELU-Linear(256) without BN (paper), truncated-normal init std 0.02,
   l2-normalization, then a weight-normalized bias-free Linear(256, K) with norm g fixed to 1 (norm_last_layer, paper).
   K = 4096 (paper 65536, for ImageNet; 4096 as solo-learn's CIFAR DINO, Gani et al. 1024): --num-prototypes.
5. Teacher = EMA of the student's backbone and head after each optimizer step, tau_t = 1 - (1 - tau_base)(cos(pi t / T)
   + 1) / 2 per step, 0.996 -> 1 (paper; solo-learn 0.9995 at batch 256): --tau-base.
6. Temperatures: student 0.1; teacher 0.04 -> 0.07 linearly over the first 30 epochs (epoch 0: 0.04, epoch 29: 0.07,
   the official np.linspace), then 0.07 (paper): --warmup-teacher-temp-epochs.
7. Loss: mean over the (teacher global view i, student view v != i) pairs of -sum_k P_t(i)_k log P_s(v)_k with
   P_t = softmax((t - c) / T_t), P_s = softmax(s / T_s); center c <- 0.9 c + 0.1 mean of the teacher logits (paper).
8. AdamW (0.9, 0.999), lr 5e-4 x batch/256 (paper), 10 warmup epochs, cosine per step (common.warmup_cosine: warmup
   from 7.5e-5 x lr, end 0; official: from 0, end 1e-6). Weight decay cosine 0.04 -> 0.4 per step on weights (biases,
   LayerNorms: 0; class token and position embedding are decayed, as the official get_params_groups), set each step.
9. Gradient clipping: each parameter's gradient norm clipped to 3.0 on its own (the official clip_gradients, not a
   global norm; --clip-grad 0: none); then the last layer's gradient is cancelled during the first epoch, so it is not
   updated (no step, no weight decay): --freeze-last-layer-epochs.
10. 200 epochs (Gani et al.'s CIFAR DINO-ViT; the paper runs 100-800 on ImageNet), batch 256 (paper 1024). Precision
   auto: bf16 autocast, or fp16 with loss scaling on GPUs without native bf16 (paper fp16 with loss scaling; solo-learn
   runs its ViTs in fp32: --precision fp32); the prototypes' cosines, the loss and the center are computed in fp32.
11. Several processes: the loss is per image (teacher and student views of the same image), so it needs no gather;
   gradients are averaged before the clipping, so the clip sees the global batch's gradient. The center is the mean of
   the teacher logits over the global batch (gathered; the paper all-reduces it). --sync-bn off by default: neither the
   ViT nor the head has BatchNorm.
12. Evaluation: main = the teacher's backbone (the paper and its official kNN / linear scripts evaluate the teacher;
   backbone.pt holds it), reported beside it: the student's (results *_student). The online probe trains on the
   teacher's R of global view 1 (detached). R = backbone output (CLS), Z = head's 256-d bottleneck (before the
   l2-normalization).
13. Still differs from the official code: (a) ViT init: torchvision's (patch conv trunc-normal sqrt(1/fan_in), MLPs and
   the attention's input projection xavier-uniform, position embedding normal 0.02, class token 0), not
   trunc_normal(0.02) for every Linear, the class token and the position embedding (the class as torchvision builds it;
   the effect is not measured). (b) Local crops' position embedding: bicubic to the local grid's size; the official
   passes scale_factor (g' + 0.1) / g, which samples the trained grid shrunk towards its top-left corner by up to 0.17
   cell (8 x 8 -> 4 x 4). (c) --finetune-epochs (common.finetune, every method's short protocol) reads the CLS token
   with a default-initialized Linear, plain cross-entropy (no label smoothing, mixup or cutmix) and decays the class
   token and position embedding; the paper fine-tunes with DeiT's recipe (smoothing 0.1, mixup, cutmix, no decay on
   those tokens). The linear probe reads the last CLS token (the official eval_linear.py: the last 4 blocks' CLS tokens
   concatenated for ViT-S).
"""
import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

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
    backbone: common.BackboneName = "vit_tiny"
    """backbone (ResNets get the CIFAR stem for images <= 64 px); `tiny` is a narrow ResNet for CPU runs"""
    patch_size: int = 0
    """ViT patch size (0: 4 up to 32 px, 8 up to 64 px, 16 above)"""
    epochs: int = 200
    """training epochs"""
    batch_size: int = 256
    """images per optimizer step, all processes together"""
    optimizer: common.OptimizerName = "adamw"
    """optimizer of the SSL parameters"""
    lr: float = 5e-4
    """base learning rate at batch 256 (scaled by batch_size/256)"""
    weight_decay: float = 0.04
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
    sync_bn: bool = False
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
    weight_decay_end: float = 0.4
    """weight decay at the last step (cosine per step from --weight-decay)"""
    clip_grad: float = 3.0
    """maximal gradient norm of each parameter (0: no clipping)"""
    proj_hidden_dim: int = 2048
    """head hidden width"""
    proj_output_dim: int = 256
    """head bottleneck width (Z), the dimension of the prototypes"""
    num_prototypes: int = 4096
    """output dimension K of the head (rows of the weight-normalized last layer)"""
    tau_base: float = 0.996
    """EMA momentum of the teacher at step 0"""
    tau_final: float = 1.0
    """EMA momentum of the teacher at the last step (cosine schedule per step)"""
    student_temp: float = 0.1
    """student softmax temperature"""
    teacher_temp: float = 0.07
    """teacher softmax temperature after the warmup (sharpening)"""
    warmup_teacher_temp: float = 0.04
    """teacher softmax temperature at epoch 0"""
    warmup_teacher_temp_epochs: int = 30
    """epochs of linear warmup of the teacher temperature (0: teacher_temp from the start)"""
    center_momentum: float = 0.9
    """momentum of the running center of the teacher logits"""
    freeze_last_layer_epochs: int = 1
    """the head's last layer gets no update during the first N epochs (its gradient is cancelled)"""
    num_local_crops: int = 8
    """local views for multi-crop, student only (0: only the two global views)"""
    local_crop_size: int = 0
    """size in px of the local views, a multiple of the patch size (0: the largest one at most half the image)"""
    global_crops_scale: Tuple[float, float] = (0.4, 1.0)
    """random-resized-crop area range of the two global views"""
    local_crops_scale: Tuple[float, float] = (0.05, 0.4)
    """random-resized-crop area range of the local views"""
    blur_p: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Gaussian blur probability of global view 1, global view 2 and the local views (paper: 1.0 0.1 0.5)"""


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
    student distribution of every other view v (global and local), averaged over the pairs and the batch.
    student_out: (V, N, K) logits of all views, the 2 global views first; teacher_out: (2, N, K); center: (K,)."""
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


@torch.no_grad()
def clip_gradients(module: nn.Module, clip: float):
    """Per parameter, g <- g * min(1, clip / (||g||_2 + 1e-6)): each tensor's gradient norm is at most `clip` on its own
    (the official DINO's clip_gradients; not torch's clip_grad_norm_ over all parameters). clip <= 0: nothing."""
    for p in (p for p in module.parameters() if p.grad is not None and clip > 0):
        p.grad.mul_((clip / (p.grad.norm() + 1e-6)).clamp(max=1.0))  # a tensor op: no host sync per parameter


def main(args: Args):
    if not args.backbone.startswith("vit"):
        raise common.UserError(f"DINO with a ResNet has its own recipe: python methods/dino.py --backbone "
                               f"{args.backbone}.")
    run = common.Run(args, "dino_vit")
    size, p = run.data.image_size, args.patch_size or common.default_patch(run.data.image_size)
    local_size = args.local_crop_size or max(p, size // 2 // p * p)  # 0: the largest multiple of p <= size / 2
    if local_size % p or local_size < 0:
        raise common.UserError(f"--local-crop-size {local_size} is not a positive multiple of the patch size {p}.")
    views = [common.ViewSpec(size, scale=args.global_crops_scale, blur_p=args.blur_p[0]),
             common.ViewSpec(size, scale=args.global_crops_scale, blur_p=args.blur_p[1], solarize_p=0.2)]
    views += [common.ViewSpec(local_size, scale=args.local_crops_scale, blur_p=args.blur_p[2])] * args.num_local_crops
    aug = run.augment(views)
    backbone, feat_dim = common.build_backbone(args.backbone, size, p)
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
        teacher_temp = common.linspace_warmup(epoch, args.warmup_teacher_temp_epochs, args.warmup_teacher_temp,
                                              args.teacher_temp)  # per epoch, the official np.linspace schedule
        for x, y in run.batches(epoch):
            lr = run.update_lr()
            wd = common.cosine_schedule(run.step_count - 1, run.total_steps, args.weight_decay, args.weight_decay_end)
            optimizer.param_groups[0]["weight_decay"] = wd  # group 0 = weights; biases and norms stay at 0
            tau = common.cosine_schedule(run.step_count - 1, run.total_steps, args.tau_base, args.tau_final)
            views, n = aug(x, run.gen), len(y)
            with run.autocast():
                r = backbone(torch.cat(views[:2]))  # R of both global views (2n, feat_dim)
                r_local = [backbone(torch.cat(views[2:]))] if views[2:] else []  # local views (Ln, feat_dim)
                s = head(torch.cat([r, *r_local])).view(len(views), n, -1)  # student logits, all views (V, n, K)
                with torch.no_grad():
                    r_t = teacher[0](torch.cat(views[:2]))  # the teacher's R of both global views (2n, feat_dim)
                    t = teacher[1](r_t).view(2, n, -1)  # teacher logits, global views only (2, n, K)
            loss = dino_loss(s.float(), t.float(), model.center, args.student_temp, teacher_temp)
            optimizer.zero_grad(set_to_none=True)
            run.scaler.scale(loss).backward()  # fp16: times the loss scale (else 1)
            common.average_gradients(model)  # several processes: the global batch's gradient on every one
            run.scaler.unscale_(optimizer)  # fp16: clip the true gradient
            clip_gradients(student, args.clip_grad)  # each parameter's gradient norm <= 3 (after the average)
            if epoch < args.freeze_last_layer_epochs:
                head.last_layer.weight.grad = None  # cancelled: AdamW skips it (no step, no weight decay)
            run.scaler.step(optimizer)  # fp16: on the unscaled gradient, skipped if not finite
            run.scaler.update()
            update_center(model.center, common.gather(t.float().transpose(0, 1)).transpose(0, 1), args.center_momentum)
            ema_update(student, teacher, tau)  # why after the step: the teacher follows the updated student
            probe_loss, probe_acc = probe.update(r_t[:n], y)  # the teacher's R of global view 1: the network evaluated
            run.log({"losses/dino": loss, "losses/total": loss, "losses/online_linear": probe_loss,
                     "charts/online_linear_train_top1": probe_acc, "charts/learning_rate": lr, "charts/momentum": tau,
                     "charts/teacher_temp": teacher_temp, "charts/weight_decay": wd})
    run.finish()


if __name__ == "__main__":
    common.cli(main, Args)

"""iBOT: Image BERT Pre-Training with Online Tokenizer (masked image modelling with self-distillation).
Zhou, Wei, Wang, Shen, Xie, Yuille, Kong, 2022 (ICLR), arXiv:2111.07832. ViT only.

DINO on the CLS token plus masked image modelling on patch tokens: the student sees the global views with some patches
replaced by a learned mask token, the EMA teacher (the "online tokenizer", no gradient) sees them intact, and at each
masked patch the student's softmax over K prototypes must match the teacher's. Collapse is prevented as in DINO, on both
outputs (centering against sharpening, stop-gradient, slow teacher). MI reading (ours): DINO's SDMI one, on patches too.

    python methods/ibot.py --dataset cifar10                                  # ViT-Tiny/4, 2 x 32 px + 10 x 16 px
    python methods/ibot.py --dataset synthetic --patch-size 8 --epochs 2 --out-dim 1024   # CPU, no files needed

Implementation details (defaults = official main_ibot.py ViT-S command at 32 px, else methods/dino_vit.py's choices):
1. ViT-Tiny, patch 4 at 32 px (8 x 8; paper 16 at 224), no drop-path (official 0.1), no BN. Colour as dino_vit.py. Mask
   token (1, D), zeros at init, replaces masked patch embeddings before the position embedding (official).
2. Views: 2 global of 32 px, scale 0.4-1; 10 local (paper) of --local-crop-size px (0: the largest multiple of the patch
   <= size / 2), scale 0.05-0.4 (DINO's; paper 0.25-1 / 0.05-0.25), student only, unmasked, CLS loss only.
3. Masks (official ImageFolderMask) per global view and image: fraction --pred-ratio 0 0.3 --pred-ratio-var 0 0.2 (half
   unmasked, half U[0.1, 0.5]), in rectangles (count <= target, < 3 short on 8 x 8), drawn for the global batch; none
   before --pred-start-epochs (official --pred_start_epoch, 0; a fraction allowed), so the patch loss is 0 until then.
4. One head for CLS and patches (official --shared_head): MLP 2048-2048-256 (GELU), l2-norm, weight-normalized
   Linear(256, K), norm fixed to 1 (official default; its ViT-S command learns it), K = 4096 (paper 8192): --out-dim.
   EMA 0.996 -> 1 (cosine; --tau-final). Temperatures: student 0.1, teacher CLS and patch 0.04 -> 0.07 in 30 epochs,
   the patch one from the epoch masking starts in (official mim_start_epoch).
5. Loss = CLS + patch (lambda1 = lambda2 = 1). CLS: DINO's (teacher global view i, student views v != i). Patch: student
   masked view i vs teacher view i; per image the sum of H(P_t, P_s) over its masked patches / max(1, count) (0 if none,
   official), mean over images. P_t = softmax((t - c) / T_t); centers c <- 0.9 c + 0.1 mean of the global batch
   (gathered; patch center: of per-image means). Per-image losses: several processes need no gather.
6. AdamW, lr 5e-4 x batch/256, 10 warmup epochs, cosine to 0 (official 1e-6); weight decay 0.04 -> 0.4 cosine per step
   on weights, class and mask tokens, position embedding (official; biases, norms: 0); each parameter's gradient norm
   clipped to 3.0 (official); last layer frozen in epoch 1. 200 epochs (paper 800), batch 256 (1024), bf16/fp16
   (paper fp16).
7. Eval: main = the teacher (the official scripts evaluate it; backbone.pt), the student beside it (*_student); online
   probe on the teacher's CLS of global view 1 (unmasked). R = CLS, Z = 256-d bottleneck. Else: dino_vit.py item 13.
"""
import copy
import math
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
    out_dim: int = 4096
    """output dimension K of the shared CLS / patch head (rows of the weight-normalized last layer)"""
    tau_base: float = 0.996
    """EMA momentum of the teacher at step 0"""
    tau_final: float = 1.0
    """EMA momentum of the teacher at the last step (cosine schedule per step)"""
    student_temp: float = 0.1
    """student softmax temperature (CLS and patches)"""
    teacher_temp: float = 0.07
    """teacher CLS softmax temperature after the warmup (sharpening)"""
    warmup_teacher_temp: float = 0.04
    """teacher CLS and patch softmax temperature at epoch 0"""
    teacher_patch_temp: float = 0.07
    """teacher patch softmax temperature after the warmup (from --warmup-teacher-temp)"""
    warmup_teacher_temp_epochs: int = 30
    """epochs of linear warmup of both teacher temperatures (0: the final values from the start)"""
    center_momentum: float = 0.9
    """momentum of the running centers of the teacher CLS and patch logits"""
    pred_ratio: Tuple[float, ...] = (0.0, 0.3)
    """mean masked fractions; per view one is chosen uniformly (official --pred_ratio 0 0.3)"""
    pred_ratio_var: Tuple[float, ...] = (0.0, 0.2)
    """half-widths of the uniform masked fraction around each --pred-ratio (official --pred_ratio_var 0 0.2)"""
    pred_start_epochs: float = 0.0
    """epochs before masking starts: until then the student's views are intact and the loss is DINO's alone"""
    freeze_last_layer_epochs: int = 1
    """the head's last layer gets no update during the first N epochs (its gradient is cancelled)"""
    num_local_crops: int = 10
    """local views for multi-crop, student only, CLS loss only (0: only the two global views)"""
    local_crop_size: int = 0
    """size in px of the local views, a multiple of the patch size (0: the largest one at most half the image)"""
    global_crops_scale: Tuple[float, float] = (0.4, 1.0)
    """random-resized-crop area range of the two global views"""
    local_crops_scale: Tuple[float, float] = (0.05, 0.4)
    """random-resized-crop area range of the local views"""


class DINOHead(nn.Module):
    """MLP to a bottleneck, l2-norm, K prototypes: bias-free Linear, rows W = V / ||V|| (weight norm, g = 1)."""

    def __init__(self, in_dim: int, hidden_dim: int, bottleneck_dim: int, num_prototypes: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, bottleneck_dim))
        for m in self.mlp[::2]:  # the Linear layers
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        self.last_layer = nn.Linear(bottleneck_dim, num_prototypes, bias=False)  # V (K, bottleneck_dim)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        u = F.normalize(self.mlp(r), dim=-1)  # (..., bottleneck_dim)
        with torch.autocast(r.device.type, enabled=False):  # why fp32: cosines / 0.04 are beyond bf16's 8-bit mantissa
            return F.linear(u.float(), F.normalize(self.last_layer.weight, dim=1))  # logits (..., K)


def block_masks(n: int, gh: int, gw: int, pred_ratio, pred_ratio_var, g: torch.Generator, tries: int = 10):
    """n masks (n, gh * gw) bool, targets (n,): fraction U[mean - var, mean + var], (mean, var) drawn per image; each
    round, every unfinished image adds its first valid rectangle of `tries` (h < gh, w < gw, 1..room new patches)."""
    dev = g.device
    k, u = torch.randint(len(pred_ratio), (n,), generator=g, device=dev), torch.rand(n, generator=g, device=dev)
    frac = sum((k == i) * (m + v * (2 * u - 1)) for i, (m, v) in enumerate(zip(pred_ratio, pred_ratio_var)))
    target, mask = frac * (gh * gw), torch.zeros(n, gh, gw, dtype=torch.bool, device=dev)  # no host-to-device copy
    rows, cols, idx = (torch.arange(d, device=dev) for d in (gh, gw, n))
    low = (min(gh, gw) // 3) ** 2  # the official minimum area
    a0 = math.log(0.3)  # aspect ratios in (0.3, 1 / 0.3)
    active = target > 0
    # >= 1 patch a round for each active image: ceil(largest target) rounds finish all (fixed: the host reads nothing)
    for _ in range(min(gh * gw, math.ceil(max(map(sum, zip(pred_ratio, pred_ratio_var))) * gh * gw) + 1)):
        room = target - mask.flatten(1).sum(1)  # (N,) the official max_mask_patches
        u = torch.rand(4, n, tries, generator=g, device=dev)
        area, r = low + u[0] * (room[:, None] - low), (a0 - 2 * a0 * u[1]).exp()  # (N, tries)
        h, w = (area * r).sqrt().round(), (area / r).sqrt().round()  # round half to even, as Python's round
        top, left = (u[2] * (gh - h + 1)).floor(), (u[3] * (gw - w + 1)).floor()  # random.randint(0, gh - h)
        in_r = (rows >= top[..., None]) & (rows < (top + h)[..., None])  # (N, tries, gh)
        rect = in_r[..., :, None] & ((cols >= left[..., None]) & (cols < (left + w)[..., None]))[..., None, :]
        new = (rect & ~mask[:, None]).flatten(2).sum(2)  # (N, tries) patches a rectangle would add
        ok = (h < gh) & (w < gw) & (new > 0) & (new <= room[:, None]) & active[:, None]
        first, found = ok.to(torch.uint8).argmax(1), ok.any(1)  # the first valid try, as the official loop's break
        mask |= rect[idx, first] & found[:, None, None]
        active = found & (new[idx, first] < room)  # official: while mask_count < target
    return mask.flatten(1), target


def dino_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, center: torch.Tensor, student_temp: float,
              teacher_temp: float) -> torch.Tensor:
    """CLS loss: H(P_t(i), P_s(v)), teacher global view i, student view v != i, mean over pairs and images.
    student_out: (V, N, K) logits of all views, the 2 global views first; teacher_out: (2, N, K)."""
    p_t = F.softmax((teacher_out - center) / teacher_temp, dim=-1).detach()  # (2, N, K), no gradient to the teacher
    log_p_s = F.log_softmax(student_out / student_temp, dim=-1)  # (V, N, K)
    ce = -torch.einsum("ink,vnk->iv", p_t, log_p_s) / student_out.shape[1]  # (2, V): batch mean of -sum_k P_t log P_s
    pairs = ~torch.eye(*ce.shape, dtype=torch.bool, device=ce.device)  # v != i: a view does not predict itself
    return ce.masked_fill(~pairs, 0).sum() / pairs.sum()  # their mean (not ce[pairs]: no host-device sync)


def ibot_patch_loss(student_patch_logits: torch.Tensor, teacher_patch_logits: torch.Tensor, mask: torch.Tensor,
                    center: torch.Tensor, student_temp: float, teacher_temp: float) -> torch.Tensor:
    """Per image, sum over its masked patches l of H(P_t(l), P_s(l)) / max(1, count) (none masked: 0), mean over images.
    Logits (N, L, K) of the same view; mask (N, L) bool, True = masked in the student's input; center (K,)."""
    p_t = F.softmax((teacher_patch_logits - center) / teacher_temp, dim=-1).detach()  # (N, L, K), no gradient
    log_p_s = F.log_softmax(student_patch_logits / student_temp, dim=-1)  # (N, L, K)
    ce = -(p_t * log_p_s).sum(-1)  # (N, L) cross-entropy at every position
    return ((ce * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()  # visible patches do not count


@torch.no_grad()
def update_center(center: torch.Tensor, teacher_out: torch.Tensor, momentum: float):
    """c <- m c + (1 - m) mean of the teacher logits (2, N, K) over both global views and the batch, in place."""
    center.mul_(momentum).add_(teacher_out.mean(dim=(0, 1)), alpha=1 - momentum)


@torch.no_grad()
def patch_teacher_temp(epoch: int, pred_start_epochs: float, warmup_epochs: int, start: float, final: float) -> float:
    """The official iBOTLoss(mim_start_epoch=pred_start_epoch): the patch teacher temperature holds `start` until the
    epoch masking starts in, then warms up to `final` as the CLS one does (np.linspace per epoch) from there."""
    return common.linspace_warmup(max(0, epoch - int(pred_start_epochs)), warmup_epochs, start, final)


def clip_gradients(module: nn.Module, clip: float):
    """Per parameter g <- g min(1, clip / (||g|| + 1e-6)), as the official clip_gradients (not clip_grad_norm_)."""
    for p in (p for p in module.parameters() if p.grad is not None and clip > 0):
        p.grad.mul_((clip / (p.grad.norm() + 1e-6)).clamp(max=1.0))  # a tensor op: no host sync per parameter


def main(args: Args):
    if not args.backbone.startswith("vit") or not 0 < len(args.pred_ratio) == len(args.pred_ratio_var):
        raise common.UserError("iBOT needs a ViT (--backbone vit_tiny, vit_mini...), one --pred-ratio-var per ratio.")
    run = common.Run(args, "ibot")
    size, p = run.data.image_size, args.patch_size or common.default_patch(run.data.image_size)  # p: the ViT's patch
    grid = size // p  # grid x grid patches
    gs, ls = args.global_crops_scale, args.local_crops_scale
    local_size = args.local_crop_size or max(p, size // 2 // p * p)  # 0: the largest multiple of p <= size / 2
    if local_size % p or local_size < 0:
        raise common.UserError(f"--local-crop-size {local_size} is not a positive multiple of the patch size {p}.")
    views = [common.ViewSpec(size, gs), common.ViewSpec(size, gs, solarize_p=0.2)]  # global views: masked, teacher
    aug = run.augment(views + [common.ViewSpec(local_size, ls)] * args.num_local_crops)  # + locals: student, CLS loss
    backbone, feat_dim = common.build_backbone(args.backbone, size, p)
    head = DINOHead(feat_dim, args.proj_hidden_dim, args.proj_output_dim, args.out_dim)  # shared: CLS and patches
    student = nn.Sequential(backbone, head)
    teacher = copy.deepcopy(student).requires_grad_(False)  # why: the teacher only follows the student by EMA
    model = nn.ModuleDict(dict(student=student, teacher=teacher))
    model.mask_token = nn.Parameter(torch.zeros(1, feat_dim))  # the student's, outside backbone.pt; (1, D): decayed
    model.register_buffer("center", torch.zeros(args.out_dim))  # CLS center; buffers: checkpointed
    model.register_buffer("center_patch", torch.zeros(args.out_dim))
    model = run.prepare(model)
    optimizer = common.make_optimizer(args.optimizer, common.param_groups(model, args.weight_decay),
                                      args.lr * args.batch_size / 256)
    probe = common.OnlineProbe(feat_dim, run.data.num_classes, run.device)
    run.track(model, optimizer, {"teacher": (teacher[0], teacher[1].mlp), "student": (backbone, head.mlp)}, probe,
              branches=(student, teacher))  # mi/*: student against teacher outputs, what the loss compares
    run.restart_from_checkpoint()  # --resume: the tracked weights and states, step and RNG as saved

    for epoch in run.epochs():
        w, t0 = args.warmup_teacher_temp_epochs, args.warmup_teacher_temp  # per epoch, as np.linspace
        teacher_temp = common.linspace_warmup(epoch, w, t0, args.teacher_temp)
        patch_temp = patch_teacher_temp(epoch, args.pred_start_epochs, w, t0, args.teacher_patch_temp)
        for x, y in run.batches(epoch):
            lr = run.update_lr()
            wd = common.cosine_schedule(run.step_count - 1, run.total_steps, args.weight_decay, args.weight_decay_end)
            optimizer.param_groups[0]["weight_decay"] = wd  # group 0 = weights; biases and norms stay at 0
            tau = common.cosine_schedule(run.step_count - 1, run.total_steps, args.tau_base, args.tau_final)
            views, n = aug(x, run.gen), len(y)
            drawn, _ = block_masks(2 * args.batch_size, grid, grid, args.pred_ratio, args.pred_ratio_var, run.gen)
            drawn &= run.step_count - 1 >= args.pred_start_epochs * run.steps_per_epoch  # drawn anyway: same stream
            mask = torch.cat([run.shard(m) for m in drawn.view(2, args.batch_size, -1)])  # this process's (2n, L)
            glob = torch.cat(views[:2])  # both global views (2n, 3, size, size)
            with run.autocast():
                tok = backbone.tokens(glob, mask=mask, mask_token=model.mask_token)  # student, masked (2n, 1 + L, D)
                s = head(tok)  # student logits of CLS and every patch, global views (2n, 1 + L, K)
                s_local = [head(backbone(torch.cat(views[2:])))] if views[2:] else []  # local CLS logits (Ln, K)
                tok_t = teacher[0].tokens(glob)  # the teacher's tokens, unmasked (2n, 1 + L, D); no gradient (frozen)
                t = teacher[1](tok_t)  # teacher logits of CLS and every patch (2n, 1 + L, K)
            s_cls = torch.cat([s[:, 0], *s_local]).view(len(views), n, -1)  # (V, n, K)
            t_cls, t_patch = t[:, 0].view(2, n, -1), t[:, 1:]  # (2, n, K), (2n, L, K)
            loss_cls = dino_loss(s_cls, t_cls, model.center, args.student_temp, teacher_temp)
            loss_patch = ibot_patch_loss(s[:, 1:], t_patch, mask, model.center_patch, args.student_temp, patch_temp)
            loss = loss_cls + loss_patch  # lambda1 = lambda2 = 1 (paper)
            optimizer.zero_grad(set_to_none=True)
            run.scaler.scale(loss).backward()  # fp16: times the loss scale (else 1)
            common.average_gradients(model)  # several processes: the global batch's gradient on every one
            run.scaler.unscale_(optimizer)  # fp16: clip the true gradient
            clip_gradients(model, args.clip_grad)  # each parameter's gradient norm <= 3 (after the average)
            if epoch < args.freeze_last_layer_epochs:
                head.last_layer.weight.grad = None  # cancelled: AdamW skips it (no step, no weight decay)
            run.scaler.step(optimizer)  # fp16: on the unscaled gradient, skipped if not finite
            run.scaler.update()
            update_center(model.center, common.gather(t_cls.transpose(0, 1)).transpose(0, 1), args.center_momentum)
            t_img = t_patch.mean(1).view(2, n, -1).transpose(0, 1)  # per-image patch means (n, 2, K), L each
            update_center(model.center_patch, common.gather(t_img).transpose(0, 1), args.center_momentum)
            with torch.no_grad():  # why after the step: the teacher follows the updated student (tau t + (1 - tau) s)
                torch._foreach_lerp_(list(teacher.parameters()), list(student.parameters()), 1 - tau)  # one call
            probe_loss, probe_acc = probe.update(tok_t[:n, 0], y)  # the teacher's R of global view 1 (evaluated)
            run.log({"losses/cls": loss_cls, "losses/patch": loss_patch, "losses/total": loss,
                     "losses/online_linear": probe_loss, "charts/online_linear_train_top1": probe_acc,
                     "charts/learning_rate": lr, "charts/momentum": tau, "charts/weight_decay": wd,
                     "charts/teacher_temp": teacher_temp, "charts/teacher_patch_temp": patch_temp})
    run.finish()


if __name__ == "__main__":
    common.cli(main, Args)

"""MAE: Masked Autoencoders Are Scalable Vision Learners.
He, Chen, Xie, Li, Dollar, Girshick, 2022 (CVPR), arXiv:2111.06377.

75 % of each image's patches are removed at random; a ViT encoder sees only the visible ones (no mask tokens), and a
light Transformer decoder, given the encoded visible tokens and a shared learned mask token at every removed position,
predicts the removed patches' pixels (each patch normalized by its own mean and variance). The loss is the mean squared
error on the removed patches only. Collapse cannot happen: the target is the image itself, not the network's output,
so a constant representation pays the full reconstruction error; the high mask ratio takes away the shortcut of
interpolating from neighbouring patches, so the encoder must model the content of the image.
MI reading (ours, not the paper's): reconstructing masked patches from visible ones maximizes a lower bound on
I(visible; masked) (a reconstruction / Barber-Agakov bound); no marginal term is needed: the target is not an output.

    python methods/mae.py --dataset cifar10
    python methods/mae.py --dataset synthetic --backbone vit_tiny --patch-size 8 --epochs 5 --decoder-dim 128 \
        --decoder-depth 2 --decoder-heads 4 --finetune-epochs 1                  # CPU, no files needed
    torchrun --nproc_per_node 4 methods/mae.py --dataset cifar10               # 4 GPUs, the same global batch

Implementation details (defaults = the paper and its official code, facebookresearch/mae, unless stated):
1. Backbone ViT-Small, patch 4 at 32 px (65 tokens), as solo-learn's CIFAR MAE (scripts/pretrain/cifar/mae.yaml); the
   paper pre-trains ViT-B/L/H with patch 16 at 224 px. ViTs have no BatchNorm: --sync-bn is off and has nothing to do.
2. Augmentation: random resized crop scale 0.2-1 and horizontal flip only (paper; solo-learn uses scale 0.08-1),
   bilinear (common's batched crop; paper bicubic); one view per image (the held-out MI pair is two draws of it).
3. Masking: per image a uniformly random subset of round(L (1 - r)) patches is kept (argsort of uniform noise; the paper
   keeps int(L (1 - r)), the same count for r = 0.75 and L = 64 or 196): --mask-ratio 0.75. The masks of the global
   batch are drawn with run.gen and each process takes its rows (run.shard), so several processes mask as one would.
4. Encoder: CLS + visible patches only (backbone.tokens(x, keep=...)). Fixed 2-D sin-cos position embeddings (CLS
   position 0), written into backbone.encoder.pos_embedding with requires_grad False, so backbone.pt stays a torchvision
   VisionTransformer state_dict. torchvision's initialization (the official code: xavier-uniform, CLS std 0.02).
5. Decoder: Linear(D, 512), encoded visible tokens scattered back to their positions in a sequence of mask tokens
   (std 0.02 init), CLS in front, fixed 2-D sin-cos position embeddings, 8 torchvision EncoderBlocks of 16 heads and
   MLP 4 x 512 (torchvision's Encoder, whose final LayerNorm is the decoder norm), Linear(512, 3 p^2). The paper's and
   solo-learn's CIFAR preset alike: --decoder-dim, --decoder-depth, --decoder-heads (smaller for CPU runs).
6. Target and loss: the augmented, dataset-normalized image cut into patches (p, p, 3 per patch); with --norm-pix-loss
   (on) each patch becomes (patch - mean) / sqrt(var + 1e-6) (unbiased var, as the official torch.var); the loss is the
   mean over the masked patches of the per-patch MSE; visible patches do not count.
7. AdamW betas (0.9, 0.95), lr 1.5e-4 x batch/256, wd 0.05 (biases and norms excluded; CLS and mask tokens decayed, as
   the official timm add_weight_decay), 40 warmup epochs then cosine, 800 epochs (paper, batch 4096; here batch 256;
   solo-learn CIFAR: lr 2e-4, 1000 epochs; a short CPU run learns little at that lr: docs/results.md uses 1.5e-3
   for 20 epochs). The warmup starts at 7.5e-5 x lr, not 0 (common.warmup_cosine). --precision
   auto: bf16 autocast on GPUs with native bf16, else fp16 with loss scaling (paper fp16 AMP). No gradient clipping
   (paper none either).
8. Several processes: the loss is per image with the same masked count in every image, so the mean of the processes'
   means is the global batch's mean: no gather; common.average_gradients makes it the one-process gradient.
9. Evaluation: R = encoder CLS on the full un-masked image (backbone(x)); Z = decoder.embed(R), the decoder's input
   embedding of that CLS token. The online probe trains on R of the full augmented image (a no-grad forward of all
   tokens; --probe-visible: the CLS of the visible-token pass instead, free but of another input than evaluation).
   MAE's features are weak under kNN / linear probes (docs/results.md), so end-to-end fine-tuning is on by default:
   --finetune-epochs 10 with common.finetune's short protocol (the paper: 100 epochs, layer decay 0.75, mixup, cutmix,
   RandAugment, drop path 0.1, none of which is done here).
10. Tensorboard images/reconstruction at every evaluation (--eval-every) and at the end: for a few test images, the
   image, the masked input (masked patches gray) and the reconstruction (visible patches from the image, masked ones
   predicted, un-normalized with the true patch's mean and variance), side by side; the same fixed masks each time.
11. Fine-tuning's head reads the mean of the patch tokens (--finetune-pool mean, as the official global_pool; on the
   CIFAR-10 copy it gained more over random init than the CLS token did: docs/searches.md), taken after
   the encoder's LayerNorm (official: the mean, then a fresh LayerNorm, fc_norm). Still differs from the official
   main_finetune.py, besides item 9's list: the head is a default-initialized Linear (official: trunc_normal std 2e-5);
   plain cross-entropy (official: label smoothing 0.1); the class token and position embedding are trained with
   weight decay (official: excluded). Kept as common.finetune's one protocol; their effect here is not measured.
"""
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402  (before torch: Ctrl-C while it loads exits quietly)
import torch
import torch.nn as nn
import torchvision
from torchvision.models.vision_transformer import Encoder


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
    backbone: common.BackboneName = "vit_small"
    """backbone (ResNets get the CIFAR stem for images <= 64 px); `tiny` is a narrow ResNet for CPU runs"""
    patch_size: int = 0
    """ViT patch size (0: 4 up to 32 px, 8 up to 64 px, 16 above)"""
    epochs: int = 800
    """training epochs"""
    batch_size: int = 256
    """images per optimizer step, all processes together"""
    optimizer: common.OptimizerName = "adamw"
    """optimizer of the SSL parameters"""
    lr: float = 1.5e-4
    """base learning rate at batch 256 (scaled by batch_size/256)"""
    weight_decay: float = 0.05
    """weight decay (not applied to biases and norm parameters)"""
    warmup_epochs: float = 40
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
    finetune_epochs: int = 10
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
    mask_ratio: float = 0.75
    """fraction of each image's patches removed (the encoder sees the others)"""
    decoder_dim: int = 512
    """decoder width (a multiple of 4 and of --decoder-heads)"""
    decoder_depth: int = 8
    """decoder Transformer blocks"""
    decoder_heads: int = 16
    """decoder attention heads"""
    norm_pix_loss: bool = True
    """targets: each patch normalized by its own mean and variance (off: the dataset-normalized pixels)"""
    probe_visible: bool = False
    """online probe on the CLS of the visible-token pass (free) instead of a no-grad forward of the full image"""
    num_show: int = 8
    """test images in images/reconstruction"""
    finetune_pool: Literal["cls", "mean"] = "mean"
    """--finetune-epochs: the head reads the mean patch token (official global_pool) or the CLS token"""


def sincos_pos_embed(dim: int, grid: int, cls: bool = True) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding (1, [1 +] grid^2, dim), patches in row-major order. The first dim/2 channels
    encode the column x, the last dim/2 the row y, each half [sin(pos w_k), cos(pos w_k)], w_k = 10000^(-k / (dim/4)),
    k < dim/4 (the official get_2d_sincos_pos_embed). The CLS position (cls=True) is zeros."""
    assert dim % 4 == 0, "the sin-cos embedding needs a width divisible by 4"
    omega = 10000.0 ** -(torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # (dim/4,)
    row, col = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                              indexing="ij")  # (grid, grid) each
    x_angle = col.reshape(-1, 1) * omega  # (grid^2, dim/4)
    y_angle = row.reshape(-1, 1) * omega
    emb = torch.cat([x_angle.sin(), x_angle.cos(), y_angle.sin(), y_angle.cos()], dim=1)  # (grid^2, dim)
    return torch.cat([torch.zeros(int(cls), dim, dtype=emb.dtype), emb])[None].float()


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, 3, H, W) -> (N, L, p*p*3): patches in row-major order (as conv_proj's tokens), each (p, p, 3) flattened."""
    n, c, h, w = images.shape
    x = images.reshape(n, c, h // patch, patch, w // patch, patch)  # (N, 3, gh, p, gw, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(n, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches: torch.Tensor, patch: int, size: int) -> torch.Tensor:
    """(N, L, p*p*3) -> (N, 3, size, size), the inverse of patchify."""
    n, g = len(patches), size // patch
    return patches.reshape(n, g, g, patch, patch, 3).permute(0, 5, 1, 3, 2, 4).reshape(n, 3, size, size)


def patch_targets(images: torch.Tensor, patch: int, norm_pix: bool) -> torch.Tensor:
    """Reconstruction targets (N, L, P): the pixels of each patch, with norm_pix (patch - mean) / sqrt(var + 1e-6)."""
    t = patchify(images.float(), patch)  # (N, L, P)
    if norm_pix:
        mean, var = t.mean(-1, keepdim=True), t.var(-1, keepdim=True)  # per patch; unbiased var as the official code
        t = (t - mean) / (var + 1e-6).sqrt()
    return t


def random_masking(n: int, num_patches: int, mask_ratio: float, generator: torch.Generator):
    """Per image, a uniformly random subset of round(L (1 - mask_ratio)) patches is kept. Returns kept indices
    (N, L_keep) long, ascending, and mask (N, L) float, 1 = masked (removed), 0 = kept."""
    n_keep = round(num_patches * (1 - mask_ratio))
    noise = torch.rand(n, num_patches, generator=generator, device=generator.device)  # (N, L)
    keep = noise.argsort(dim=1)[:, :n_keep].sort(dim=1).values  # (N, L_keep): the n_keep smallest noises
    mask = torch.ones(n, num_patches, device=noise.device).scatter_(1, keep, 0.0)  # (N, L)
    return keep, mask


def restore_order(visible: torch.Tensor, keep: torch.Tensor, mask_token: torch.Tensor, num_patches: int):
    """The full sequence (N, L, D): mask_token (1, 1, D) everywhere, the visible tokens (N, L_keep, D) at their
    patches' positions keep (N, L_keep)."""
    n, _, d = visible.shape
    full = mask_token.to(visible.dtype).expand(n, num_patches, d)  # (N, L, D)
    return full.scatter(1, keep[..., None].expand(-1, -1, d), visible)  # out of place: gradients reach both


def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the masked patches of the per-patch MSE; pred, target (N, L, P), mask (N, L), 1 = masked."""
    per_patch = (pred - target).pow(2).mean(dim=-1)  # (N, L)
    mask = mask.float()
    return (per_patch * mask).sum() / mask.sum()  # kept patches do not count


class MAEDecoder(nn.Module):
    """Encoder tokens -> decoder width, mask tokens at the removed positions, fixed sin-cos positions, Transformer
    blocks, final LayerNorm, a linear map to each patch's p*p*3 pixels."""

    def __init__(self, enc_dim: int, dim: int, depth: int, heads: int, num_patches: int, patch_dim: int):
        super().__init__()
        self.embed = nn.Linear(enc_dim, dim)  # also Z = embed(R): the decoder's input embedding of the CLS token
        self.mask_token = nn.Parameter(torch.empty(1, 1, dim).normal_(std=0.02))
        self.blocks = Encoder(1 + num_patches, depth, heads, dim, 4 * dim, 0.0, 0.0)  # adds blocks.pos_embedding
        self.blocks.pos_embedding.requires_grad_(False).copy_(sincos_pos_embed(dim, round(num_patches ** 0.5)))
        self.pred = nn.Linear(dim, patch_dim)
        for m in (self.embed, self.pred):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """tokens (N, 1 + L_keep, D_enc), CLS first; keep (N, L_keep) -> predicted patches (N, L, P)."""
        t = self.embed(tokens)  # (N, 1 + L_keep, dim)
        full = restore_order(t[:, 1:], keep, self.mask_token, self.blocks.pos_embedding.shape[1] - 1)  # (N, L, dim)
        return self.pred(self.blocks(torch.cat([t[:, :1], full], dim=1)))[:, 1:]  # CLS dropped


@torch.no_grad()
def reconstruction_grid(backbone, decoder, x: torch.Tensor, args: Args, mean, std) -> torch.Tensor:
    """Rows of (image | masked input | reconstruction) for normalized images x (n, 3, H, W), fixed masks."""
    p, (n, _, size, _) = backbone.patch_size, x.shape
    keep, mask = random_masking(n, (size // p) ** 2, args.mask_ratio, torch.Generator(x.device).manual_seed(0))
    pred = decoder(backbone.tokens(x, keep=keep), keep).float()  # (n, L, P), in target space
    patches = patchify(x.float(), p)  # (n, L, P), dataset-normalized
    if args.norm_pix_loss:  # back to pixels with the true patch's mean and variance
        pred = pred * (patches.var(-1, keepdim=True) + 1e-6).sqrt() + patches.mean(-1, keepdim=True)
    mean, std = (torch.tensor(s, device=x.device).repeat(p * p) for s in (mean, std))  # (P,): channel is fastest
    pix = patches * std + mean
    pred = pred * std + mean
    m = mask[..., None].bool()
    shown = [pix, pix.masked_fill(m, 0.5), torch.where(m, pred, pix)]
    grid = torch.stack([unpatchify(t, p, size) for t in shown], dim=1).flatten(0, 1)  # (3n, 3, H, W)
    return torchvision.utils.make_grid(grid.clamp(0, 1).cpu(), nrow=3)


def main(args: Args):
    if not args.backbone.startswith("vit"):
        raise common.UserError(f"MAE needs a ViT: --backbone vit_small, vit_tiny or vit_mini, not {args.backbone}.")
    if not 0 < args.mask_ratio < 1 or args.decoder_dim % 4 or args.decoder_dim % args.decoder_heads:
        raise common.UserError("--mask-ratio must be in (0, 1), --decoder-dim a multiple of 4 and of --decoder-heads.")
    run = common.Run(args, "mae")
    size = run.data.image_size
    view = common.ViewSpec(size, scale=(0.2, 1.0), jitter_p=0.0, gray_p=0.0)  # crop and flip only
    aug = run.augment([view])  # one view per image
    backbone, feat_dim = common.build_backbone(args.backbone, size, args.patch_size)
    p, grid = backbone.patch_size, size // backbone.patch_size
    backbone.encoder.pos_embedding.requires_grad_(False).copy_(sincos_pos_embed(feat_dim, grid))  # fixed, not learned
    decoder = MAEDecoder(feat_dim, args.decoder_dim, args.decoder_depth, args.decoder_heads, grid ** 2, 3 * p * p)
    model = run.prepare(nn.ModuleDict(dict(backbone=backbone, decoder=decoder)))
    optimizer = common.make_optimizer(args.optimizer, common.param_groups(model, args.weight_decay),
                                      args.lr * args.batch_size / 256, betas=(0.9, 0.95))
    probe = common.OnlineProbe(feat_dim, run.data.num_classes, run.device)
    run.track(model, optimizer, {"main": (backbone, decoder.embed)}, probe)
    run.restart_from_checkpoint()  # --resume: the tracked weights and states, step and RNG as saved
    show = run.normalize(next(run.data.eval_batches("test", args.num_show))[0])  # a few fixed test images

    for epoch in run.epochs():
        for x, y in run.batches(epoch):
            lr = run.update_lr()
            img = aug(x, run.gen)[0]  # (n, 3, H, W)
            keep, mask = (run.shard(t) for t in random_masking(args.batch_size, grid ** 2, args.mask_ratio, run.gen))
            target = patch_targets(img, p, args.norm_pix_loss)  # (n, L, 3 p^2)
            with run.autocast():
                tokens = backbone.tokens(img, keep=keep)  # (n, 1 + L_keep, D): the visible patches only
                pred = decoder(tokens, keep)  # (n, L, 3 p^2)
                with torch.no_grad():
                    r = tokens[:, 0] if args.probe_visible else backbone(img)  # R (n, D) for the online probe
            loss = mae_loss(pred.float(), target, mask)
            optimizer.zero_grad(set_to_none=True)
            run.scaler.scale(loss).backward()  # fp16: times the loss scale (else 1)
            common.average_gradients(model)  # several processes: the global batch's gradient on every one
            run.scaler.step(optimizer)  # fp16: on the unscaled gradient, skipped if not finite
            run.scaler.update()
            probe_loss, probe_acc = probe.update(r, y)
            run.log({"losses/reconstruction": loss, "losses/total": loss, "losses/online_linear": probe_loss,
                     "charts/online_linear_train_top1": probe_acc, "charts/learning_rate": lr})
        last = run.done or epoch == args.epochs - 1
        if run.rank0 and (last or args.eval_every and (epoch + 1) % args.eval_every == 0):  # with each evaluation
            pics = reconstruction_grid(backbone, decoder, show, args, run.data.mean, run.data.std)
            run.writer.add_image("images/reconstruction", pics, run.step_count)
    run.finish()


if __name__ == "__main__":
    common.cli(main, Args)

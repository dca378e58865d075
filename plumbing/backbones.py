"""The backbones (method files use them as common.build_backbone, common.mlp): ResNets
with the CIFAR stem, a narrow ResNet for CPU runs, and torchvision's VisionTransformer with a masked / subset forward
and interpolated position embeddings (the ViT family)."""
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from plumbing.errors import UserError

Tensor = torch.Tensor


class TinyResNet(nn.Module):
    """A narrow ResNet (widths 16-32-64-128, one BasicBlock per stage, CIFAR stem) for CPU runs and tests."""

    def __init__(self, widths=(16, 32, 64, 128)):
        super().__init__()
        from torchvision.models.resnet import BasicBlock
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            s = 1 if i == 0 else 2
            down = None if s == 1 and cin == w else nn.Sequential(nn.Conv2d(cin, w, 1, s, bias=False),
                                                                  nn.BatchNorm2d(w))
            layers.append(BasicBlock(cin, w, s, down))
            cin = w
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return torch.flatten(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1)


class ViT(torchvision.models.VisionTransformer):
    """torchvision's VisionTransformer with heads = Identity: forward(x) is its forward, the CLS token after the final
    LayerNorm (R). tokens() runs the same encoder (conv_proj, position embedding, encoder.layers, encoder.ln) with two
    additions: masked patches replaced by a mask token, or only some patches kept; and images of another size (the
    position embedding interpolated bicubically, as DINO does for local crops)."""

    def __init__(self, image_size: int, patch_size: int, dim: int, heads: int, mlp_dim: int, depth: int = 12):
        super().__init__(image_size, patch_size, depth, heads, dim, mlp_dim)
        self.heads = nn.Identity()

    def position_embedding(self, gh: int, gw: int) -> Tensor:
        """(1, 1 + gh * gw, D): the CLS position, then the patch grid's, interpolated from the trained grid."""
        pos, g = self.encoder.pos_embedding, self.image_size // self.patch_size
        if (gh, gw) == (g, g):
            return pos
        grid = F.interpolate(pos[:, 1:].reshape(1, g, g, -1).permute(0, 3, 1, 2), size=(gh, gw), mode="bicubic")
        return torch.cat([pos[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)

    def tokens(self, x: Tensor, mask: Tensor = None, mask_token: Tensor = None, keep: Tensor = None) -> Tensor:
        """All output tokens (N, 1 + L', D), CLS first. mask (N, L) bool: those patch embeddings are replaced by
        mask_token (1, D) (iBOT); keep (N, L') long: only those patches enter the encoder (MAE). It runs through the
        module's call, so that module.compile() (--compile) compiles this path too."""
        return self(x, mask, mask_token, keep, cls_only=False)

    def forward(self, x: Tensor, mask: Tensor = None, mask_token: Tensor = None, keep: Tensor = None,
                cls_only: bool = True) -> Tensor:
        p = self.conv_proj(x)  # (N, D, gh, gw)
        pos = self.position_embedding(*p.shape[-2:])
        p = p.flatten(2).transpose(1, 2)  # (N, L, D)
        if mask is not None:
            p = torch.where(mask[..., None], mask_token.to(p.dtype), p)
        p = p + pos[:, 1:]
        if keep is not None:
            p = p.gather(1, keep[..., None].expand(-1, -1, p.shape[-1]))
        z = torch.cat([(self.class_token + pos[:, :1]).expand(len(p), -1, -1), p], dim=1)
        z = self.encoder.ln(self.encoder.layers(self.encoder.dropout(z)))
        return z[:, 0] if cls_only else z


class MeanTokens(nn.Module):
    """A ViT's feature as the mean of its patch tokens (after the encoder's LayerNorm), not its CLS token: MAE's
    fine-tuning head (the official global_pool averages before a fresh LayerNorm, fc_norm, instead)."""

    def __init__(self, vit: ViT):
        super().__init__()
        self.vit = vit

    def forward(self, x: Tensor) -> Tensor:
        return self.vit.tokens(x)[:, 1:].mean(1)


# width, heads, MLP width, depth. vit_mini (not a model of the papers): for runs of a few CPU minutes (run_all --quick)
VIT_SIZES = {"vit_mini": (128, 2, 512, 4), "vit_tiny": (192, 3, 768, 12), "vit_small": (384, 6, 1536, 12)}


def default_patch(image_size: int) -> int:
    """ViT patch size when --patch-size is 0: 4 up to 32 px, 8 up to 64 px, 16 above."""
    return 4 if image_size <= 32 else 8 if image_size <= 64 else 16


def check_patch_size(backbone: str, image_size: int, patch_size: int, dataset: str):
    """A ViT's patches must tile the images: else UserError (before any weight is built)."""
    patch = patch_size or default_patch(image_size)
    if backbone in VIT_SIZES and image_size % patch:
        raise UserError(f"--patch-size {patch} does not divide the {image_size}-px images of {dataset}.")


def compile_networks(model: nn.Module):
    """--compile: torch.compile, in place, of every network a method calls: the model's parts, the members of a part
    that is a Sequential, and each backbone (ViT.tokens runs through its forward: compiled too)."""
    parts = [m for child in model.children() for m in [child, *(child if isinstance(child, nn.Sequential) else [])]]
    backbones = [m for m in model.modules() if isinstance(m, (torchvision.models.ResNet, TinyResNet, ViT))]
    for module in {*parts, *backbones}:
        module.compile()
    torch._dynamo.config.recompile_limit = 64  # (dynamo: seconds to import) one cache for all: 64 entries, not 8


def build_backbone(name: str, image_size: int, patch_size: int = 0):
    """Backbone without classifier and its feature dimension. ResNets: torchvision's with fc = Identity and, for images
    <= 64 px, the CIFAR stem (3x3 conv, stride 1, padding 1, no max-pool). ViT: patch 4 up to 32 px, 8 up to 64, 16
    above unless patch_size is given. The saved backbone.pt loads into what this returns with strict=True."""
    if name == "tiny":
        return TinyResNet(), 128
    if name in VIT_SIZES:
        p = patch_size or default_patch(image_size)
        if image_size % p:
            raise ValueError(f"patch size {p} does not divide the {image_size}-px images")  # common.Run says it first
        return ViT(image_size, p, *VIT_SIZES[name]), VIT_SIZES[name][0]
    net = getattr(torchvision.models, name)(weights=None)
    if image_size <= 64:
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


def mlp(in_dim: int, hidden: int, out: int, layers: int = 2, last_bn: bool = False, last_bn_affine: bool = True):
    """Linear-BN-ReLU blocks then a final Linear (optionally followed by BN), the usual SSL projector/predictor."""
    mods, d = [], in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(d, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        d = hidden
    mods.append(nn.Linear(d, out, bias=not last_bn))
    return nn.Sequential(*mods, *([nn.BatchNorm1d(out, affine=last_bn_affine)] if last_bn else []))

"""Backbones: strict reloads into torchvision's models, the ViT's masked and subset forwards."""
import contextlib
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision
from PIL import Image

from plumbing import backbones


@pytest.mark.parametrize("name,dim", [("tiny", 128), ("resnet18", 512)])
def test_backbones_and_strict_reload(name, dim):
    net, d = backbones.build_backbone(name, 32)
    assert d == dim and net(torch.randn(2, 3, 32, 32)).shape == (2, dim)
    again, _ = backbones.build_backbone(name, 32)
    again.load_state_dict(net.state_dict(), strict=True)
    if name == "resnet18":  # CIFAR stem for small images, torchvision's stem for large ones
        assert net.conv1.kernel_size == (3, 3) and isinstance(net.maxpool, nn.Identity)
        assert backbones.build_backbone(name, 224)[0].conv1.kernel_size == (7, 7)


def test_vit_mini_has_4_blocks_and_loads_into_torchvision():
    mini, dim = backbones.build_backbone("vit_mini", 32, 8)
    tiny, _ = backbones.build_backbone("vit_tiny", 32, 8)
    assert dim == 128 and len(mini.encoder.layers) == 4 and len(tiny.encoder.layers) == 12
    tv = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=4, num_heads=2, hidden_dim=128,
                                              mlp_dim=512)
    tv.heads = nn.Identity()
    tv.load_state_dict(mini.state_dict(), strict=True)  # the README's loading recipe
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(tv.eval()(x), mini.eval()(x), atol=1e-5)


def test_vit_masked_and_subset_forwards_equal_the_full_forward_when_nothing_is_removed():
    torch.manual_seed(0)
    vit, dim = backbones.build_backbone("vit_tiny", 32, 8)  # a 4 x 4 grid of patches
    x, token = torch.randn(3, 3, 32, 32), torch.randn(dim)
    full = vit.tokens(x)
    assert full.shape == (3, 17, dim)
    assert torch.allclose(full[:, 0], torchvision.models.VisionTransformer.forward(vit, x), atol=1e-5)
    nothing = torch.zeros(3, 16, dtype=torch.bool)
    assert torch.allclose(vit.tokens(x, mask=nothing, mask_token=token), full, atol=1e-5)
    assert torch.allclose(vit.tokens(x, keep=torch.arange(16).expand(3, -1)), full, atol=1e-5)
    perm = torch.stack([torch.randperm(16) for _ in range(3)])  # kept patches in another order: the same tokens
    got = vit.tokens(x, keep=perm)
    assert torch.allclose(got[:, 1:], full[:, 1:].gather(1, perm[..., None].expand(-1, -1, dim)), atol=1e-5)
    some = nothing.clone()
    some[:, :4] = True  # and masking something does change the output
    assert (vit.tokens(x, mask=some, mask_token=token) - full).abs().max() > 1e-2

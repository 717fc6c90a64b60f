"""What the probe trains on and with: patch-token feature maps of chosen blocks, and the heads on them.

``block_features`` asks the model's own ``forward_intermediates`` (timm's feature API, the same call a
feature backbone makes) for the chosen blocks as (B, C, h, w) maps; maps of different resolutions (Swin's
stages) are resized bilinearly to the first one's, and all are concatenated on channels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def block_features(model: nn.Module, images: torch.Tensor, blocks: tuple[int, ...], norm: bool) -> torch.Tensor:
    """(B, sum of C, h, w) patch-token features of ``blocks`` (negative: from the end)."""
    maps = model.forward_intermediates(images, indices=list(blocks), norm=norm, output_fmt="NCHW",
                                       intermediates_only=True)
    size = maps[0].shape[-2:]
    maps = [m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            for m in maps]
    return torch.cat(maps, dim=1)


def build_head(kind: str, channels: int, classes: int, width: int) -> nn.Module:
    """The head: "linear" (BatchNorm + 1x1 conv, DINOv2's linear probe) or "decoder" (two 3x3 conv-BN-ReLU
    layers of ``width`` channels, then a 1x1 conv: a small, documented step beyond linear)."""
    if kind == "linear":
        return nn.Sequential(nn.BatchNorm2d(channels), nn.Conv2d(channels, classes, 1))
    layers: list[nn.Module] = []
    for c_in in (channels, width):
        layers += [nn.Conv2d(c_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Conv2d(width, classes, 1))


def upsampled(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, classes, H, W): logits at the patch grid resized bilinearly to a mask's size."""
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

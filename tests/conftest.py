"""Shared fixtures: tiny models that build in milliseconds on CPU."""
from __future__ import annotations

import pytest
import torch

import vitreduce

# Tiny models gain nothing from threads, and pytest-xdist already runs one worker per core:
# more threads only oversubscribe the cores (a tiny forward took 0.27 s with 2 threads, 1 ms with 1).
torch.set_num_threads(1)

TINY = dict(img_size=16, patch_size=4, embed_dim=32, depth=4, num_heads=2, num_classes=5)


def tiny_model(reduction: str = "none", seed: int = 0, **overrides) -> torch.nn.Module:
    """A 4-block ViT on 16x16 images, deterministic for a seed."""
    torch.manual_seed(seed)
    return vitreduce.create_model("vit_tiny_patch16_224", reduction=reduction, **{**TINY, **overrides}).eval()


@pytest.fixture
def images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(123)
    return torch.randn(3, 3, 16, 16, generator=generator)  # (B, C, H, W)

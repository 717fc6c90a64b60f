"""Where a model's MLPs live: its transformer blocks, grouped by stage.

A stage is a ``blocks`` container (``nn.Sequential`` / ``nn.ModuleList`` named ``blocks``) whose
blocks each hold an ``.mlp``: a ViT, DeiT or EVA has one (``model.blocks``), a Swin one per
resolution (``layers.0.blocks`` ... ``layers.3.blocks``). Blocks of one stage share their width, so
sharing never crosses a stage boundary. ``blocks`` containers of other modules (e.g. the ResNet stages
inside a hybrid ViT's patch embedding) hold no ``.mlp`` and are not stages.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from vitreduce.errors import VitreduceError
from vitreduce.reduction.gated import mlp_kind

SUPPORTED = ("timm models whose transformer blocks sit in `blocks` containers and hold an .mlp of type "
             "Mlp, GluMlp/SwiGLUPacked or SwiGLU: vit_*, deit*, eva*, swin*")


@dataclass(frozen=True)
class BlockRef:
    """One transformer block: its module path, its stage, its position in the stage and overall."""

    name: str  # e.g. "blocks.3" or "layers.1.blocks.0"
    stage: int
    index: int  # within the stage
    position: int  # over all stages, in forward order
    block: nn.Module


def _is_stage(path: str, module: nn.Module) -> bool:
    if path.rsplit(".", 1)[-1] != "blocks" or not isinstance(module, nn.Sequential | nn.ModuleList):
        return False
    return len(module) > 0 and any(isinstance(getattr(b, "mlp", None), nn.Module) for b in module)


def block_stages(model: nn.Module) -> list[list[BlockRef]]:
    """The model's stages of blocks, each checked to hold a reducible MLP (``gated.mlp_kind``)."""
    stages: list[list[BlockRef]] = []
    position = 0
    for path, module in model.named_modules():
        if not _is_stage(path, module) or any(path.startswith(b[0].name.rsplit(".", 1)[0] + ".") for b in stages):
            continue
        stage = []
        for index, block in enumerate(module):
            name = f"{path}.{index}"
            if not isinstance(getattr(block, "mlp", None), nn.Module):
                raise VitreduceError(f"block {name} ({type(block).__name__}) has no .mlp; vitreduce reduces "
                                     f"{SUPPORTED}")
            mlp_kind(block.mlp, f"the MLP of block {name}")
            stage.append(BlockRef(name, len(stages), index, position, block))
            position += 1
        stages.append(stage)
    if not stages:
        raise VitreduceError(f"{type(model).__name__} has no ViT blocks (transformer blocks with an MLP); "
                             f"vitreduce reduces {SUPPORTED}")
    return stages


def all_blocks(model: nn.Module) -> list[BlockRef]:
    """Every block of every stage, in forward order."""
    return [ref for stage in block_stages(model) for ref in stage]

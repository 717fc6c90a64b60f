"""Exact accounting of a (reduced) model (ViT, DeiT, EVA, Swin): unique parameters, MLP parameters and widths, MACs.

MACs are counted per op category with forward hooks on one image, so the figures do not depend on
the device or on fused attention (fvcore/thop skip fused SDPA; thop and ptflops miscount shared
modules). Two conventions, both multiply-accumulates:
- ``macs_linear``: nn.Linear and nn.Conv2d only (the paper's "GFLOPs": 16.85 G for ViT-B/16);
- ``macs_total``: plus the two attention matmuls QK^T and AV (17.56 G for ViT-B/16).
A shared MLP used by two blocks runs twice and is counted twice; its parameters count once.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from vitreduce.reduction.gated import hidden_units, in_features
from vitreduce.reduction.params import count_unique
from vitreduce.reduction.spec import ReductionSpec
from vitreduce.reduction.surgery import REDUCTION_ATTR, unique_mlps

# What a run directory's run.json and `vitreduce inspect --json` record of a model (``expansion``
# follows from mlp_hidden / embed_dim).
RECORD_FIELDS = ("model", "reduction", "params", "mlp_params", "unique_mlps", "mlp_hidden", "embed_dim",
                 "macs_linear_g", "macs_total_g")


@dataclass(frozen=True)
class ModelDescription:
    """The paper's architecture table row for one model. Field names are the JSON keys."""

    model: str
    reduction: str
    params: int
    mlp_params: int
    unique_mlps: int
    mlp_hidden: int | list[int]
    embed_dim: int
    expansion: float
    macs_linear_g: float
    macs_total_g: float

    def as_dict(self) -> dict:
        return asdict(self)

    def record(self) -> dict:
        """The fields of RECORD_FIELDS, in that order."""
        return {key: getattr(self, key) for key in RECORD_FIELDS}


def model_name(model: nn.Module) -> str:
    """timm's architecture name recorded on the model, or its class name."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(model).__name__


def count_macs(model: nn.Module, img_size: tuple[int, int] | None = None) -> tuple[int, int]:
    """(linear+conv MACs, attention-matmul MACs) for one image through the model's forward."""
    counts = {"linear": 0, "attention": 0}

    def linear_hook(module: nn.Linear, inputs, _output):
        tokens = inputs[0].numel() // module.in_features
        counts["linear"] += tokens * module.in_features * module.out_features

    def conv_hook(module: nn.Conv2d, _inputs, output):
        per_output = (module.in_channels // module.groups) * math.prod(module.kernel_size)
        counts["linear"] += output.numel() * per_output

    def attention_hook(module: nn.Module, inputs, _output):
        batch, tokens = inputs[0].shape[:2]  # a window attention's batch is images x windows
        counts["attention"] += 2 * batch * tokens * tokens * _attention_width(module)  # QK^T and AV
        if _functional_qkv(module):  # EVA's qkv with separate q/v biases runs as F.linear: no Linear hook
            counts["linear"] += batch * tokens * module.qkv.in_features * module.qkv.out_features

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
        elif isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif hasattr(module, "num_heads") and _attention_width(module):
            handles.append(module.register_forward_hook(attention_hook))
    try:
        _forward_one_image(model, img_size)
    finally:
        for handle in handles:
            handle.remove()
    return counts["linear"], counts["attention"]


def _attention_width(module: nn.Module) -> int:
    """heads x head_dim of an attention module with a fused qkv or separate q/k/v projections (0: none)."""
    qkv, q_proj = getattr(module, "qkv", None), getattr(module, "q_proj", None)
    if isinstance(qkv, nn.Linear):
        return qkv.out_features // 3
    return q_proj.out_features if isinstance(q_proj, nn.Linear) else 0


def _functional_qkv(module: nn.Module) -> bool:
    return (isinstance(getattr(module, "qkv", None), nn.Linear) and getattr(module, "q_bias", None) is not None
            and not getattr(module, "qkv_bias_separate", False))


def _forward_one_image(model: nn.Module, img_size: tuple[int, int] | None) -> None:
    param = next(model.parameters())
    if img_size is None:
        img_size = tuple(model.patch_embed.img_size)
    in_chans = getattr(model.patch_embed.proj, "in_channels", 3)
    image = torch.zeros(1, in_chans, *img_size, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(image)
    finally:
        model.train(was_training)


def describe(model: nn.Module, img_size: int | tuple[int, int] | None = None) -> ModelDescription:
    """Accounting for a built model (meta device is fastest: no memory, no arithmetic).

    Args:
        model: a timm ViT, reduced or not.
        img_size: input size for the MAC count; default the model's own.
    """
    mlps = unique_mlps(model)
    hidden = sorted({hidden_units(mlp) for _, mlp in mlps})
    if isinstance(img_size, int):
        img_size = (img_size, img_size)
    linear, attention = count_macs(model, img_size)
    embed_dim = in_features(mlps[0][1])
    return ModelDescription(
        model=model_name(model),
        reduction=str(ReductionSpec.parse(getattr(model, REDUCTION_ATTR, None))),
        params=count_unique(model.parameters()),
        mlp_params=count_unique(p for _, mlp in mlps for p in mlp.parameters()),
        unique_mlps=len(mlps),
        mlp_hidden=hidden[0] if len(hidden) == 1 else hidden,
        embed_dim=embed_dim,
        expansion=round(max(hidden_units(mlp) / in_features(mlp) for _, mlp in mlps), 4),
        macs_linear_g=round(linear / 1e9, 4),
        macs_total_g=round((linear + attention) / 1e9, 4),
    )

"""Exact accounting of a (reduced) model (ViT, DeiT, EVA, Swin): unique parameters, MLP parameters and widths, MACs.

MACs are counted per op category with forward hooks on one image, so the figures do not depend on
the device or on fused attention (fvcore/thop skip fused SDPA; thop and ptflops miscount shared
modules). Two conventions, both multiply-accumulates:
- ``macs_linear``: nn.Linear and nn.Conv2d only (the paper's "GFLOPs": 16.85 G for ViT-B/16);
- ``macs_total``: plus the two attention matmuls QK^T and AV (17.56 G for ViT-B/16).
A shared MLP used by two blocks runs twice and is counted twice; its parameters count once. Relaxed
sharing's per-block deltas (``reduction.relax``) are parameters of each block's MLP and their two small
Linears run, and are counted, in every block (category ``mlp``).

The breakdown (``ModelDescription.macs_breakdown``, CATEGORIES) sums exactly to ``macs_total``; every
category but ``attention_matmul`` is part of ``macs_linear``. A Swin attention runs per window (its
batch is images x windows), and a shifted window costs what an unshifted one does: the shift is a
roll and a mask added to the logits. Not multiply-accumulates, so 0 in every category: relative
position bias (a table lookup added to the logits), rotary embeddings (elementwise products), norms,
softmax, activations, LayerScale. Swin V2's continuous position bias MLP is a real Linear
(``position_bias``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from vitreduce.reduction.gated import hidden_units, in_features
from vitreduce.reduction.params import count_unique
from vitreduce.reduction.spec import ReductionSpec
from vitreduce.reduction.surgery import REDUCTION_ATTR, unique_mlps, vit_blocks

# What a run directory's run.json and `vitreduce inspect --json` record of a model (``expansion``
# follows from mlp_hidden / embed_dim).
RECORD_FIELDS = ("model", "reduction", "params", "mlp_params", "unique_mlps", "mlp_hidden", "embed_dim",
                 "macs_linear", "macs_total")
# MAC categories, in forward order: patch (and hybrid backbone) embedding; qkv (or q, k, v) and output
# projections; QK^T and AV; other Linears inside an attention (Swin V2's position bias MLP); the MLPs;
# Swin's patch merging; the classifier (with pooling heads); anything else.
CATEGORIES = ("patch_embed", "attention_proj", "attention_matmul", "position_bias", "mlp", "patch_merging",
              "head", "other")
_HEAD = ("head", "head_dist", "attn_pool", "fc_norm")  # top-level modules that make the classifier
_PROJECTIONS = ("qkv", "q_proj", "k_proj", "v_proj", "q", "k", "v", "proj")


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
    macs_linear: int  # exact; rounded only where printed (numbers.macs_unit)
    macs_total: int
    macs_breakdown: dict[str, int] = field(default_factory=dict)  # exact MACs per category (CATEGORIES)

    @property
    def macs_linear_g(self) -> float:
        """GMACs, linear and conv only (unrounded)."""
        return self.macs_linear / 1e9

    @property
    def macs_total_g(self) -> float:
        """GMACs including the attention matmuls (unrounded)."""
        return self.macs_total / 1e9

    def as_dict(self) -> dict:
        return asdict(self)

    def record(self) -> dict:
        """The fields of RECORD_FIELDS, in that order."""
        return {key: getattr(self, key) for key in RECORD_FIELDS}


def upgrade_record(record: dict) -> dict:
    """A run.json record as written today: vitreduce 0.1.0 stored GMACs rounded to 4 decimals (``macs_*_g``);
    they are read as the MAC count they round to, the only figure such a file has."""
    for key in ("macs_linear", "macs_total"):
        if key not in record and isinstance(record.get(f"{key}_g"), int | float):
            record[key] = round(record.pop(f"{key}_g") * 1e9)
    return record


def model_name(model: nn.Module) -> str:
    """timm's architecture name recorded on the model, or its class name."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(model).__name__


def count_macs(model: nn.Module, img_size: tuple[int, int] | None = None) -> tuple[int, int]:
    """(linear+conv MACs, attention-matmul MACs) for one image through the model's forward."""
    return _totals(count_macs_by_category(model, img_size))


def _totals(breakdown: dict[str, int]) -> tuple[int, int]:
    """(linear+conv MACs, attention-matmul MACs) of a breakdown: every category but the matmuls is linear."""
    matmul = breakdown["attention_matmul"]
    return sum(breakdown.values()) - matmul, matmul


def count_macs_by_category(model: nn.Module, img_size: tuple[int, int] | None = None) -> dict[str, int]:
    """Exact MACs of one image through the model's forward, per category of CATEGORIES."""
    counts = dict.fromkeys(CATEGORIES, 0)
    categories = _module_categories(model)

    def linear_hook(module: nn.Linear, inputs, _output):
        tokens = inputs[0].numel() // module.in_features
        counts[categories.get(id(module), "other")] += tokens * module.in_features * module.out_features

    def conv_hook(module: nn.Conv2d, _inputs, output):
        per_output = (module.in_channels // module.groups) * math.prod(module.kernel_size)
        counts[categories.get(id(module), "other")] += output.numel() * per_output

    def attention_hook(module: nn.Module, inputs, _output):
        batch, tokens = inputs[0].shape[:2]  # a window attention's batch is images x windows
        counts["attention_matmul"] += 2 * batch * tokens * tokens * _attention_width(module)  # QK^T and AV
        if _functional_qkv(module):  # EVA's qkv with separate q/v biases runs as F.linear: no Linear hook
            counts["attention_proj"] += batch * tokens * module.qkv.in_features * module.qkv.out_features

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
        elif isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif _is_attention(module):
            handles.append(module.register_forward_hook(attention_hook))
    try:
        _forward_one_image(model, img_size)
    finally:
        for handle in handles:
            handle.remove()
    return counts


def _is_attention(module: nn.Module) -> bool:
    return hasattr(module, "num_heads") and bool(_attention_width(module))


def _module_categories(model: nn.Module) -> dict[int, str]:
    """{id(module): category} for every module under a category's owner (the first owner wins)."""
    owners: list[tuple[nn.Module, str]] = [(block.mlp, "mlp") for block in vit_blocks(model)]  # relaxed: one view each
    for name, module in model.named_modules():
        top = name.split(".", 1)[0]
        if _is_attention(module):
            owners += [(getattr(module, p), "attention_proj") for p in _PROJECTIONS
                       if isinstance(getattr(module, p, None), nn.Module)]
            owners.append((module, "position_bias"))  # its other Linears
        elif top == "patch_embed" or top in _HEAD and name == top:
            owners.append((module, "head" if top in _HEAD else "patch_embed"))
        elif name.rsplit(".", 1)[-1] == "downsample":
            owners.append((module, "patch_merging"))
    categories: dict[int, str] = {}
    for owner, category in owners:
        for module in owner.modules():
            categories.setdefault(id(module), category)
    return categories


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
    convs = [m for m in model.patch_embed.modules() if isinstance(m, nn.Conv2d)]  # a hybrid's backbone first
    in_chans = convs[0].in_channels if convs else 3
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
    breakdown = count_macs_by_category(model, img_size)
    linear, attention = _totals(breakdown)
    embed_dim = in_features(mlps[0][1])
    return ModelDescription(
        model=model_name(model),
        reduction=str(ReductionSpec.parse(getattr(model, REDUCTION_ATTR, None))),
        params=count_unique(model.parameters()),
        mlp_params=count_unique(p for block in vit_blocks(model) for p in block.mlp.parameters()),  # with deltas
        unique_mlps=len(mlps),
        mlp_hidden=hidden[0] if len(hidden) == 1 else hidden,
        embed_dim=embed_dim,
        expansion=round(max(hidden_units(mlp) / in_features(mlp) for _, mlp in mlps), 4),
        macs_linear=linear,
        macs_total=linear + attention,
        macs_breakdown=breakdown,
    )

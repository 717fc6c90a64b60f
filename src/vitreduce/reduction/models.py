"""Building reduced models: `create_model(base, reduction, **timm_kwargs)` and timm registrations.

The paper's three variants of ViT-Ti/S/B/L/16, Swin-T/S and EVA-02-S are registered with timm when
vitreduce is imported (``vit_{tiny,small,base,large}_patch16_224_{grouped,shallow,thin}_mlp``,
``swin_{tiny,small}_patch4_window7_224_*_mlp``, ``eva02_small_patch14_224_*_mlp``), so
``timm.create_model("vit_small_patch16_224_grouped_mlp", num_classes=...)`` works in any timm script, and
with ``features_only=True, out_indices=...`` gives timm's feature backbone of the reduced model (``features``).
Their pretrained_cfg names no weights source (no URL, no hub id): there are no weights to download.
"""
from __future__ import annotations

from typing import Any

import timm
from timm.models import get_pretrained_cfg, register_model
from torch import nn

from vitreduce.errors import VitreduceError
from vitreduce.reduction.architecture import check_architecture, check_kwargs, hub_offline, split_runtime
from vitreduce.reduction.features import check_request, feature_backbone, split_feature_kwargs
from vitreduce.reduction.gated import fc1_width, in_features
from vitreduce.reduction.spec import ReductionSpec
from vitreduce.reduction.surgery import BASE_HIDDEN_ATTR, BUILD_ATTR, reduce, vit_blocks


def create_model(base_name: str, reduction: str | ReductionSpec | None = None, **timm_kwargs: Any) -> nn.Module:
    """Build a timm model and apply a reduction to it.

    Args:
        base_name: a timm model name, e.g. ``vit_base_patch16_224``, ``swin_tiny_patch4_window7_224`` (never a hub id).
        reduction: spec string or ReductionSpec (``None``/``"none"``: unreduced).
        **timm_kwargs: architecture kwargs for ``timm.create_model`` (num_classes, img_size, drop_path_rate,
            weight_init, ... : ``architecture.ALLOWED``), plus ``device`` and ``dtype``. They are checked
            before anything is built (``architecture.check_architecture``: no pretrained weights, no paths,
            consistent shapes, at most VITREDUCE_MAX_PARAMS parameters) and recorded so a checkpoint can
            rebuild the model.
    """
    spec = ReductionSpec.parse(reduction)  # refuse a bad spec before building anything
    runtime, rest = split_runtime(timm_kwargs)
    kwargs = check_architecture(base_name, rest)
    with hub_offline():
        model = timm.create_model(base_name, pretrained=False, **kwargs, **runtime)
    setattr(model, BUILD_ATTR, {"base": base_name, "kwargs": kwargs})
    return reduce(model, spec)


def build_info(model: nn.Module) -> dict[str, Any]:
    """Base model name and kwargs that rebuild this model's architecture before reduction.

    Taken from ``create_model``'s record when there is one; otherwise read from the model itself
    (timm records only the architecture name), covering the structural ViT options.
    """
    recorded = getattr(model, BUILD_ATTR, None)
    if recorded:
        return {"base": recorded["base"], "kwargs": dict(recorded["kwargs"])}
    cfg = getattr(model, "pretrained_cfg", None) or {}
    base = cfg.get("architecture")
    if not base:
        raise VitreduceError(
            f"cannot tell which timm architecture this {type(model).__name__} is; build it with "
            "timm.create_model or vitreduce.create_model"
        )
    if type(model).__name__ != "VisionTransformer":  # only a ViT's options can be read back from the model
        raise VitreduceError(
            f"cannot read the architecture options of this {type(model).__name__} ({base}) from the model; build "
            f"it with vitreduce.create_model({base!r}, reduction=..., **kwargs) (or a registered variant) so they "
            "are recorded"
        )
    # Checked as a header will be on load, so a file that cannot be loaded back is never written.
    return {"base": base, "kwargs": check_kwargs(_introspect_vit_kwargs(model), f"the {base} model's architecture")}


def _introspect_vit_kwargs(model: nn.Module) -> dict[str, Any]:
    blocks = vit_blocks(model)
    first = blocks[0]
    embed_dim = in_features(first.mlp)
    base_hidden = getattr(model, BASE_HIDDEN_ATTR, fc1_width(first.mlp))
    kwargs = {
        "num_classes": model.num_classes,
        "img_size": list(model.patch_embed.img_size),
        "patch_size": list(model.patch_embed.patch_size),
        "in_chans": model.patch_embed.proj.in_channels,
        "embed_dim": embed_dim,
        "depth": len(blocks),
        "num_heads": first.attn.num_heads,
        "mlp_ratio": base_hidden / embed_dim,
        "qkv_bias": first.attn.qkv.bias is not None,
        "class_token": getattr(model, "cls_token", None) is not None,
        "reg_tokens": getattr(model, "num_reg_tokens", 0),
        "global_pool": model.global_pool,
        "no_embed_class": getattr(model, "no_embed_class", False),
        "init_values": _layer_scale_init(first),
        "weight_init": _weight_init_mode(model),
        "fix_init": bool(getattr(model, "fix_init", False)),
    }
    return kwargs


def _weight_init_mode(model: nn.Module) -> str:
    mode = getattr(model, "weight_init_mode", "") or ""
    return "" if mode == "reset" else mode  # timm stores 'skip' as 'reset'


def _layer_scale_init(block: nn.Module) -> float | None:
    # LayerScale's init value is not recoverable from trained weights and does not affect shapes;
    # only its presence matters for rebuilding, so any positive value rebuilds the same layout.
    gamma = getattr(getattr(block, "ls1", None), "gamma", None)
    return 1e-5 if gamma is not None else None


# The paper's variants of each ViT size: (short name, reduction, what it is).
VARIANTS = (
    ("grouped_mlp", "grouped", "each MLP shared by two adjacent blocks, scaled 1/sqrt(2) (the paper's GroupedMLP)"),
    ("shallow_mlp", "shallow:ratio=0.5", "keeping the first half of each MLP's hidden units (the paper's ShallowMLP)"),
    ("thin_mlp", "thin:ratio=0.5", "with freshly initialised half-width MLPs (the ablation control)"),
)
BASES = {"vit_tiny_patch16_224": "ViT-Ti/16", "vit_small_patch16_224": "ViT-S/16",
         "vit_base_patch16_224": "ViT-B/16", "vit_large_patch16_224": "ViT-L/16",
         "swin_tiny_patch4_window7_224": "Swin-T", "swin_small_patch4_window7_224": "Swin-S",
         "eva02_small_patch14_224": "EVA-02-S/14"}
# A pretrained_cfg's entries that name where weights come from: a variant has none, so timm never offers
# to download weights for it (timm.list_models(pretrained=True) leaves it out).
_SOURCE_KEYS = ("url", "hf_hub_id", "hf_hub_filename", "hf_hub_revision", "file", "state_dict", "source", "tag",
                "custom_load", "license", "description", "origin_url", "paper_ids", "paper_name", "notes")


def variant_cfg(base: str, name: str) -> dict[str, Any]:
    """The pretrained_cfg of a registered variant: the base's input and preprocessing settings, no weights source."""
    cfg = get_pretrained_cfg(base).to_dict()
    return {**{k: v for k, v in cfg.items() if k not in _SOURCE_KEYS}, "architecture": name}


def _register(base: str, suffix: str, reduction: str, what: str) -> None:
    name = f"{base.removesuffix('_224')}_224_{suffix}"
    cfg = variant_cfg(base, name)

    def build(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        if pretrained:
            raise VitreduceError(
                "vitreduce variants have no pretrained weights; reduce local full-width weights with "
                "`vitreduce reduce BASE --weights FILE --reduction SPEC --out FILE`"
            )
        features, kwargs = split_feature_kwargs(kwargs)  # timm's feature API: never part of the description
        request = check_request(features) if features is not None else None
        model = create_model(base, reduction=reduction, **kwargs)
        # On the model, the architecture stays the base's: describe() and the checkpoint header name the
        # model as "base + reduction", alike whether it was built here or by vitreduce.create_model.
        model.pretrained_cfg = model.default_cfg = {**cfg, "architecture": base}
        if request is not None:
            return feature_backbone(model, request["out_indices"], request["feature_cfg"], name=name)
        return model

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"{BASES[base]} {what}; no pretrained weights."
    build.__module__ = __name__
    globals()[name] = build
    default_cfgs[name] = cfg
    register_model(build)


default_cfgs: dict[str, dict[str, Any]] = {}  # timm's register_model reads each name's cfg from here
for _base in BASES:
    for _suffix, _reduction, _what in VARIANTS:
        _register(_base, _suffix, _reduction, _what)

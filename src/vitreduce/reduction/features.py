"""Reduced models as timm feature backbones: ``features_only=True`` for registered names, and the same
wrapper for a model built any other way.

Detection and segmentation frameworks (mmsegmentation/mmdetection through their timm wrappers,
detectron2, Hugging Face's TimmBackbone) build a backbone with
``timm.create_model(name, features_only=True, out_indices=...)``. A registered reduced name builds
the reduced model first and then hands it to timm's own builder, which wraps it exactly as it wraps
the base family: ViT, DeiT and EVA in timm's ``getter`` wrapper (``forward_intermediates`` of the
chosen blocks), Swin in a list of its stages. Sharing survives the wrap: the wrapper holds the same
modules. The wrapper records what it was asked for (``FEATURES_ATTR``), so a vitreduce checkpoint can be
loaded into it afterwards (``reduction.backbone.load_backbone_weights``).

``features_only``, ``out_indices`` and ``feature_cfg`` are timm's own feature-API kwargs: they are
accepted here, from a caller building a backbone, and never from a checkpoint header or a train
config (``architecture.check_kwargs`` still refuses them there).
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from timm.models import build_model_with_cfg
from torch import nn

from vitreduce.config_tree import explain_error
from vitreduce.errors import VitreduceError

FEATURES_ATTR = "vitreduce_features"  # {"name": registered name or base, "out_indices": ..., "feature_cfg": {...}}
FEATURE_KWARGS = ("features_only", "out_indices", "feature_cfg", "feature_cls")
_STAGED = ("SwinTransformer", "SwinTransformerV2")  # hierarchical: one feature map per stage


class FeatureOptions(BaseModel):
    """What ``feature_cfg`` may set: how timm's wrapper presents the features (nothing here loads anything)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    feature_cls: Literal["getter", "list", "dict", "hook"] | None = None
    # ViT/EVA: NCHW or NLC; Swin: NHWC from the stage list (timm's default for it), NCHW with feature_cls getter
    output_fmt: Literal["NCHW", "NHWC", "NLC"] | None = None
    norm: bool | None = None  # getter: apply the final norm to every output
    prune: bool | None = None  # getter: drop the blocks after the last one asked for
    flatten_sequential: bool | None = None


def split_feature_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(the feature request, the remaining architecture kwargs). The request is None unless
    ``features_only`` is true; ``out_indices`` or ``feature_cfg`` without it are refused, as a model
    that silently ignores them would be a surprise."""
    rest = {k: v for k, v in kwargs.items() if k not in FEATURE_KWARGS}
    asked = {k: kwargs[k] for k in FEATURE_KWARGS if kwargs.get(k) is not None}
    if not asked.pop("features_only", False):
        if asked:
            raise VitreduceError(f"{', '.join(sorted(asked))} only apply with features_only=True")
        return None, rest
    return asked, rest


def check_request(request: dict[str, Any]) -> dict[str, Any]:
    """The request with its feature_cfg validated (``FeatureOptions``) and out_indices an int or a list of ints."""
    cfg = dict(request.get("feature_cfg") or {})
    if not isinstance(request.get("feature_cfg") or {}, dict):
        raise VitreduceError("feature_cfg must be a mapping, e.g. {'output_fmt': 'NLC'}")
    if "feature_cls" in request:
        cfg["feature_cls"] = request["feature_cls"]
    try:
        FeatureOptions.model_validate(cfg)
    except ValidationError as err:
        problems = [explain_error(e, lambda _loc: list(FeatureOptions.model_fields), loc=[str(e["loc"][0])],
                                  unknown="unknown feature_cfg key") for e in err.errors()]
        raise VitreduceError("feature_cfg: " + "; ".join(dict.fromkeys(problems))) from None
    indices = request.get("out_indices")
    if indices is not None:
        indices = list(indices) if isinstance(indices, list | tuple) else indices
        values = indices if isinstance(indices, list) else [indices]
        if not values or not all(type(v) is int for v in values):
            raise VitreduceError(f"out_indices must be a whole number (the last n blocks) or a list of block "
                                 f"indices, got {indices!r}")
    return {"out_indices": indices, "feature_cfg": cfg}


def family_defaults(model: nn.Module) -> dict[str, Any]:
    """timm's own feature defaults for the model's family (what its ``_create_*`` passes to the builder)."""
    if type(model).__name__ in _STAGED:
        return {"flatten_sequential": True, "out_indices": tuple(range(len(model.layers)))}
    return {"out_indices": 3, "feature_cls": "getter"}


def feature_backbone(model: nn.Module, out_indices: int | list[int] | None = None,
                     feature_cfg: dict[str, Any] | None = None, name: str | None = None) -> nn.Module:
    """Wrap a built (reduced) model as ``timm.create_model(..., features_only=True)`` wraps its family.

    The wrapper takes the model over: as in timm, the getter wrapper prunes it in place (the head, the final
    norm unless ``norm``, and the blocks after the last one asked for) unless ``feature_cfg`` has
    ``prune: False``.

    Args:
        model: a model from ``vitreduce.create_model``, ``vitreduce.load`` or a registered name.
        out_indices: blocks (ViT/EVA) or stages (Swin) to return; an int n: the last n; None: timm's default.
        feature_cfg: ``FeatureOptions`` (e.g. ``{"output_fmt": "NLC"}``, ``{"norm": True}``).
        name: the registered name whose pretrained_cfg the wrapper carries; default: the model's architecture.
    """
    request = check_request({"out_indices": out_indices, "feature_cfg": feature_cfg or {}})
    cfg = {**family_defaults(model), **request["feature_cfg"]}
    if request["out_indices"] is not None:
        cfg["out_indices"] = request["out_indices"]
    if type(model).__name__ in _STAGED and cfg.get("feature_cls") != "getter" and cfg.get("output_fmt") not in (
            None, "NHWC"):  # timm's stage list would ignore it and return channels-last maps all the same
        raise VitreduceError(f"feature_cfg output_fmt={cfg['output_fmt']!r}: {type(model).__name__}'s stage-list "
                             "wrapper gives channels-last (NHWC) maps; for NCHW maps (what mmsegmentation's and "
                             "mmdetection's heads take) add feature_cls='getter' to feature_cfg")
    variant = name or (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    if not variant:
        raise VitreduceError("cannot tell which timm model this is; build it with vitreduce.create_model")
    pretrained_cfg = dict(model.pretrained_cfg)
    # timm's builder, handed the built model: the wrapper, its feature_info and defaults are timm's own.
    wrapped = build_model_with_cfg(lambda **_: model, variant, pretrained=False, pretrained_cfg=pretrained_cfg,
                                   feature_cfg=cfg, features_only=True)
    setattr(wrapped, FEATURES_ATTR, {"name": variant, **request})
    for attr in ("vitreduce_build", "vitreduce_reduction", "vitreduce_base_mlp_hidden"):
        if hasattr(model, attr):  # a list wrapper copies the modules, not the model: keep what describes it
            setattr(wrapped, attr, getattr(model, attr))
    return wrapped

"""Loading a vitreduce model file into a feature backbone that was built first (the order detection and
segmentation frameworks use: build ``timm.create_model(name, features_only=True, ...)``, load weights after).

The file is loaded as a whole model (``checkpoint.load``: architecture from its header, sharing re-tied),
wrapped exactly as the backbone was (``features.feature_backbone`` with the backbone's recorded request),
and copied in strictly: both must have the same tensors under the same names and the same sharing, so a
backbone of another variant or size is refused, never partly filled.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from vitreduce.errors import VitreduceError
from vitreduce.reduction.checkpoint import load
from vitreduce.reduction.features import FEATURES_ATTR, feature_backbone
from vitreduce.reduction.params import alias_groups


def load_backbone_weights(backbone: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Copy a vitreduce model file's weights into a feature backbone, in place; returns the backbone.

    Args:
        backbone: from ``timm.create_model(<registered reduced name>, features_only=True, ...)`` or
            ``vitreduce.feature_backbone(model, ...)``, or a framework's module that holds exactly one such
            backbone (mmsegmentation's ``TIMMBackbone``, Hugging Face's ``TimmBackbone``, a whole segmentor).
        path: a vitreduce model file (e.g. a run's ``model_ema.safetensors``).
    """
    target = _feature_model(backbone)
    request = getattr(target, FEATURES_ATTR)
    device = next(iter(target.parameters())).device
    source = feature_backbone(load(path, device=device), request["out_indices"], request["feature_cfg"],
                              name=request["name"])
    _check_same_layout(source, target, path)
    with torch.no_grad():
        target.load_state_dict(source.state_dict(), strict=True)
    return backbone


def _feature_model(module: nn.Module) -> nn.Module:
    """The vitreduce feature backbone the module is or holds (frameworks wrap timm's model in their own
    backbone class under their own attribute name), refusing none or several."""
    found = [m for m in module.modules() if getattr(m, FEATURES_ATTR, None) is not None]
    if len(found) > 1:
        raise VitreduceError(f"{type(module).__name__} holds {len(found)} vitreduce feature backbones; pass the one "
                             "to load (e.g. model.backbone)")
    if not found:
        raise VitreduceError(f"{type(module).__name__} is not and holds no vitreduce feature backbone; build it with "
                             "timm.create_model(<reduced name>, features_only=True) or vitreduce.feature_backbone")
    return found[0]


def _check_same_layout(source: nn.Module, backbone: nn.Module, path: str | os.PathLike) -> None:
    """Same tensor names, shapes and sharing, or one error that says what differs."""
    want = {k: tuple(v.shape) for k, v in source.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in backbone.state_dict().items()}
    if want != have:
        missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
        shapes = sorted(k for k in set(want) & set(have) if want[k] != have[k])
        raise VitreduceError(
            f"{str(path)!r} does not fit this backbone (missing {missing[:4]}, unexpected {extra[:4]}, other shapes "
            f"{shapes[:4]}); build the backbone from the same base, reduction and kwargs as the file "
            f"(`vitreduce inspect {os.fspath(path)}` shows them)")
    if alias_groups(source) != alias_groups(backbone):
        raise VitreduceError(f"{str(path)!r}: the backbone shares its MLPs differently from the file's model; "
                             "build it with the file's reduction")

"""The architecture a plain timm ViT state dict determines, so that importing one (``vitreduce reduce BASE
--weights FILE``) needs no retyped ``--model-arg``s: patch size, input channels, width, depth, MLP width,
classes, tokens, image size, qkv bias, LayerScale and the pooling norm are read off the tensors' names
and shapes. The head count is not in any shape (the fused qkv is ``3D x D`` for every split of ``D``),
so it comes from the command line or, when the width is the named model's own, from the named model.
"""
from __future__ import annotations

import math
import re
from typing import Any

import torch

from vitreduce.errors import VitreduceError
from vitreduce.reduction.architecture import base_shape

_BLOCK = re.compile(r"blocks\.(\d+)\.")
# A LayerScale's start value does not matter when the trained gammas are loaded over it; it must be > 0.
_ANY_LAYER_SCALE = 1e-5


def infer_vit_kwargs(state: dict[str, torch.Tensor]) -> dict[str, Any] | None:
    """The timm kwargs of a VisionTransformer the tensors determine (no ``num_heads``, unless q/k norms give
    the head width), or None when the state dict is not a plain ViT's (then nothing is inferred)."""
    proj, fc1 = state.get("patch_embed.proj.weight"), state.get("blocks.0.mlp.fc1.weight")
    blocks = {int(m.group(1)) for name in state if (m := _BLOCK.match(name))}
    if proj is None or proj.ndim != 4 or proj.shape[2] != proj.shape[3] or fc1 is None or not blocks:
        return None
    width, patch = int(proj.shape[0]), int(proj.shape[2])
    kwargs: dict[str, Any] = {"patch_size": patch, "in_chans": int(proj.shape[1]), "embed_dim": width,
                              "depth": max(blocks) + 1, "mlp_ratio": fc1.shape[0] / width,
                              "num_classes": int(state["head.weight"].shape[0]) if "head.weight" in state else 0,
                              "class_token": "cls_token" in state,
                              "reg_tokens": int(state["reg_token"].shape[1]) if "reg_token" in state else 0,
                              "qkv_bias": "blocks.0.attn.qkv.bias" in state}
    if "blocks.0.ls1.gamma" in state:
        kwargs["init_values"] = _ANY_LAYER_SCALE
    if "fc_norm.weight" in state:
        kwargs["global_pool"] = "avg"  # timm puts the final norm after average pooling then
    if "blocks.0.attn.q_norm.weight" in state:
        kwargs["qk_norm"] = True
        kwargs["num_heads"] = width // int(state["blocks.0.attn.q_norm.weight"].shape[0])
    kwargs.update(_image(state.get("pos_embed"), patch, kwargs["class_token"] + kwargs["reg_tokens"]))
    return kwargs


def _image(pos_embed: torch.Tensor | None, patch: int, prefix: int) -> dict[str, Any]:
    """img_size (and no_embed_class) from the position table's length: prefix tokens + a square grid."""
    if pos_embed is None or pos_embed.ndim != 3:
        return {}
    tokens = int(pos_embed.shape[1])
    for grid, no_embed_class in ((tokens - prefix, False), (tokens, True)):
        side = math.isqrt(max(grid, 0))
        if grid > 0 and side * side == grid:
            return {"img_size": side * patch, **({"no_embed_class": True} if no_embed_class and prefix else {})}
    return {}


def vit_kwargs_from_weights(base: str, state: dict[str, torch.Tensor], given: dict[str, Any],
                            source: str) -> tuple[dict[str, Any], str]:
    """The kwargs to build ``base`` that ``state`` fits: what the tensors determine, ``given`` (the command
    line's) for the rest; and a line saying what was read off the tensors. Refuses, in one message, a given
    value the tensors contradict and a head count neither the tensors, ``given`` nor ``base`` settles.

    Args:
        base: the timm model name.
        state: the weights' state dict.
        given: kwargs from the command line (``--model-arg``, ``--img-size``, ``--num-classes``).
        source: the weights file, named in messages.
    """
    defaults = base_shape(base)
    inferred = infer_vit_kwargs(state) if defaults["plain_vit"] else None
    if inferred is None:  # another family: only the classifier's size is read off the tensors
        head = state.get("head.weight")
        return ({"num_classes": int(head.shape[0])} if head is not None and head.ndim == 2 else {}) | given, ""
    clash = [f"{key}={given[key]!r} (the tensors hold {value!r})" for key, value in inferred.items()
             if key in given and given[key] != value]
    kwargs = {**inferred, **given}
    heads = ""
    if "num_heads" not in kwargs and defaults["embed_dim"] == kwargs["embed_dim"]:
        kwargs["num_heads"] = defaults["num_heads"]  # the named model's width: its head count
        heads = (f"; num_heads={kwargs['num_heads']} from {base} (the tensors do not determine it: add "
                 "--model-arg num_heads=H if these weights were trained with another head count)")
    missing = "num_heads" not in kwargs
    if clash or missing:
        width = kwargs["embed_dim"]
        ask = (f"the tensors do not determine the head count: add --model-arg num_heads=H (H divides {width}; "
               f"timm's ViTs use head width 64: H = {max(1, width // 64)})") if missing else ""
        wrong = f"drop or correct {', '.join(clash)}" if clash else ""
        raise VitreduceError(f"{source} holds a ViT with {_listed(inferred)}; " + "; ".join(filter(None, (wrong, ask))))
    return kwargs, f"architecture from the tensors of {source}: {_listed(inferred)}{heads}"


def _listed(kwargs: dict[str, Any]) -> str:
    shown = [f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
             for key, value in kwargs.items() if key != "init_values"]
    return ", ".join(shown + (["LayerScale"] if "init_values" in kwargs else []))

"""The MLP kinds vitreduce reduces, and how each is sliced to a subset of its hidden units.

Three of timm's MLPs, told apart by structure (so subclasses and partials such as SwiGLUPacked count):
- ``plain`` (``timm.layers.Mlp``): ``fc2(act(fc1(x)))``; hidden unit j is fc1 row j and fc2 column j.
- ``packed`` (``GluMlp``, ``SwiGLUPacked``): one ``fc1`` of 2h outputs, chunked in two halves in its
  forward (``x1, x2 = fc1(x).chunk(2)``; ``gate_last`` says which half gates). Unit j is fc1 rows j
  and h + j and fc2 column j, so a slice keeps the same units in both halves and the halves' order.
- ``split`` (``SwiGLU``): ``fc2(act(fc1_g(x)) * fc1_x(x))``; unit j is fc1_g row j, fc1_x row j and
  fc2 column j.
An MLP ``norm`` over the hidden units (timm's ``norm_layer``, e.g. EVA's ``scale_mlp``) is sliced at
the same units. Anything else (a conv MLP, gMLP's spatial gating, ...) is refused.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from vitreduce.errors import VitreduceError

KINDS = ("plain", "packed", "split")


def _linear(module: nn.Module, name: str) -> nn.Linear | None:
    layer = getattr(module, name, None)
    return layer if isinstance(layer, nn.Linear) else None


def mlp_kind(mlp: nn.Module, where: str = "MLP") -> str:
    """``plain``, ``packed`` or ``split``; anything else raises a VitreduceError naming ``where``."""
    fc1, fc2 = _linear(mlp, "fc1"), _linear(mlp, "fc2")
    gate, value = _linear(mlp, "fc1_g"), _linear(mlp, "fc1_x")
    spatial = not isinstance(getattr(mlp, "gate", nn.Identity()), nn.Identity)
    if fc2 is not None and gate is not None and value is not None and gate.out_features == value.out_features \
            == fc2.in_features:
        return "split"
    if fc1 is not None and fc2 is not None and not spatial:
        if fc1.out_features == fc2.in_features:
            return "plain"
        if fc1.out_features == 2 * fc2.in_features and hasattr(mlp, "gate_last"):
            return "packed"
    raise VitreduceError(
        f"{where} is a {type(mlp).__name__}, which vitreduce cannot reduce; supported: timm.layers.Mlp "
        "(fc1 -> act -> fc2 linear layers), GluMlp / SwiGLUPacked (packed gate and value) and SwiGLU"
    )


def hidden_units(mlp: nn.Module) -> int:
    """Number of hidden units (a gated MLP's unit is one gate and one value output)."""
    return mlp.fc2.in_features


def in_features(mlp: nn.Module) -> int:
    return (mlp.fc1_x if mlp_kind(mlp) == "split" else mlp.fc1).in_features


def fc1_width(mlp: nn.Module) -> int:
    """Outputs of the layer in fc1's place: what timm's ``hidden_features`` (mlp_ratio x dim) built."""
    return (mlp.fc1_x if mlp_kind(mlp) == "split" else mlp.fc1).out_features


def input_layers(mlp: nn.Module) -> list[nn.Linear]:
    """The layers in fc1's role (input projections: the gate and the value of a gated MLP)."""
    return [mlp.fc1_g, mlp.fc1_x] if mlp_kind(mlp) == "split" else [mlp.fc1]


def _rows(mlp: nn.Module, units: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows of each input layer that belong to ``units``."""
    kind = mlp_kind(mlp)
    if kind == "split":
        return {"fc1_g": units, "fc1_x": units}
    if kind == "packed":  # both halves, in the order the forward chunks them
        return {"fc1": torch.cat([units, units + hidden_units(mlp)])}
    return {"fc1": units}


def unit_scores(mlp: nn.Module) -> torch.Tensor:
    """Importance of each hidden unit: the product of the norms of all its weights (gate, value and
    output for a gated MLP; fc1 row and fc2 column for a plain one). Shape (hidden,)."""
    h = hidden_units(mlp)
    score = mlp.fc2.weight.norm(dim=0)  # (h,)
    for name in _rows(mlp, torch.arange(h, device=mlp.fc2.weight.device)):
        norms = getattr(mlp, name).weight.norm(dim=1)
        for part in norms.split(h):  # a packed fc1 contributes both halves
            score = score * part
    return score


def _new_linear(layer: nn.Linear, out_features: int, in_features: int) -> nn.Linear:
    return nn.Linear(in_features, out_features, bias=layer.bias is not None,
                     device=layer.weight.device, dtype=layer.weight.dtype)


def _sliced_norm(norm: nn.Module, units: torch.Tensor, full: int) -> nn.Module:
    """A copy of an MLP norm over the hidden units, keeping its per-unit tensors at ``units``."""
    fresh = copy.deepcopy(norm)
    for name, tensor in list(norm.named_parameters(recurse=False)) + list(norm.named_buffers(recurse=False)):
        if tensor.ndim != 1 or tensor.shape[0] != full:
            raise VitreduceError(f"cannot slice the MLP norm {type(norm).__name__}: its {name} has shape "
                                 f"{list(tensor.shape)}, not ({full},)")
        sliced = tensor.detach()[units].clone()
        if isinstance(tensor, nn.Parameter):
            setattr(fresh, name, nn.Parameter(sliced, requires_grad=tensor.requires_grad))
        else:
            setattr(fresh, name, sliced)
    if hasattr(fresh, "normalized_shape"):
        fresh.normalized_shape = (len(units),)
    return fresh


def slice_mlp(mlp: nn.Module, units: torch.Tensor) -> None:
    """Keep ``units`` (sorted indices) of the MLP's hidden units, in place, with their weights."""
    full = hidden_units(mlp)
    with torch.no_grad():
        for name, rows in _rows(mlp, units).items():
            old = getattr(mlp, name)
            new = _new_linear(old, len(rows), old.in_features)
            new.weight.copy_(old.weight[rows])  # (kept rows, in)
            if new.bias is not None:
                new.bias.copy_(old.bias[rows])
            setattr(mlp, name, new)
        fc2 = _new_linear(mlp.fc2, mlp.fc2.out_features, len(units))
        fc2.weight.copy_(mlp.fc2.weight[:, units])  # (out, kept)
        if fc2.bias is not None:
            fc2.bias.copy_(mlp.fc2.bias)
        mlp.fc2 = fc2
        if not isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity):
            mlp.norm = _sliced_norm(mlp.norm, units, full)


def resized_copy(mlp: nn.Module, width: int) -> nn.Module:
    """A copy of the MLP at ``width`` hidden units with new layers (PyTorch's default init; the caller
    applies the model's own). Keeps act, dropout and the norm's type; the norm is reset."""
    fresh = copy.deepcopy(mlp)
    for name, rows in _rows(mlp, torch.arange(width, device=mlp.fc2.weight.device)).items():
        setattr(fresh, name, _new_linear(getattr(mlp, name), len(rows), getattr(mlp, name).in_features))
    fresh.fc2 = _new_linear(mlp.fc2, mlp.fc2.out_features, width)
    if not isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity):
        fresh.norm = _sliced_norm(mlp.norm, torch.arange(width, device=mlp.fc2.weight.device), hidden_units(mlp))
        if hasattr(fresh.norm, "reset_parameters"):
            fresh.norm.reset_parameters()
    return fresh

"""Relaxed sharing: each block of a shared group computes with the shared MLP plus its own low-rank delta.

``grouped:relax=R`` (R > 0) gives every block of a group of two or more its own view of the shared MLP:
a module of the same class whose activation, dropout and norm are the shared ones and whose linear layers
(fc1, or a gated MLP's input projections, and fc2) are ``RelaxedLinear``: the shared weight and bias
(the very same tensors) plus, per block, ``delta_up @ delta_down`` of rank ``min(R, out, in)`` and a bias
offset. So a block computes ``W_shared x + B_i (A_i x) + b_shared + d_i``, the model's tensors are shared by
identity (each counted, stored, decayed and averaged once), and the deltas are ordinary parameters.

Initialisation (``relax_members``):
- fresh model: ``B_i = 0`` and ``A_i`` drawn as ``nn.Linear`` draws (so training moves the delta), ``d_i = 0``;
  the block computes exactly what plain sharing computes;
- trained weights: ``B_i A_i`` is the truncated SVD of the block's residual (its own trained weight minus
  the shared one), ``B_i = U S``, ``A_i = V^T`` (rows of unit norm, so a block whose residual is zero still
  trains its delta), and ``d_i`` the bias residual; at full rank the model computes what the trained one did.
The ``rank`` of a layer is capped at ``min(out, in)``, a full-rank delta.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from vitreduce.reduction.gated import input_layers


class RelaxedLinear(nn.Linear):
    """A shared linear layer plus this block's low-rank delta and bias offset.

    An ``nn.Linear`` (same ``weight``, ``bias``, ``in_features``, ``out_features``), so code that reads an
    MLP's layers, and the MAC hooks, see a linear layer; the delta runs as two more ``nn.Linear``s, so the
    MACs it costs are counted as it runs.
    """

    def __init__(self, shared: nn.Linear, rank: int):
        nn.Module.__init__(self)
        self.in_features, self.out_features = shared.in_features, shared.out_features
        self.weight = shared.weight
        self.register_parameter("bias", shared.bias)
        kw = {"device": shared.weight.device, "dtype": shared.weight.dtype}
        rank = min(rank, self.in_features, self.out_features)
        self.delta_down = nn.Linear(self.in_features, rank, bias=False, **kw)  # A: nn.Linear's own init
        self.delta_up = nn.Linear(rank, self.out_features, bias=False, **kw)  # B: zero below
        nn.init.zeros_(self.delta_up.weight)
        offset = None if shared.bias is None else nn.Parameter(torch.zeros(self.out_features, **kw))
        self.register_parameter("bias_delta", offset)

    @property
    def rank(self) -> int:
        return self.delta_down.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias if self.bias_delta is None else self.bias + self.bias_delta
        return F.linear(x, self.weight, bias) + self.delta_up(self.delta_down(x))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}"


def relaxed_layer_names(mlp: nn.Module) -> list[str]:
    """Attribute names of the MLP's layers that get a delta: the input projections and fc2."""
    names = [name for name, module in mlp.named_children() if any(module is layer for layer in input_layers(mlp))]
    return names + ["fc2"]


def trained_layers(members: list[nn.Module]) -> list[dict[str, tuple[torch.Tensor, torch.Tensor | None]]]:
    """Per block, {layer name: (weight, bias)} copies of its own MLP, taken before the group is shared."""
    copies = []
    for block in members:
        layers = {name: getattr(block.mlp, name) for name in relaxed_layer_names(block.mlp)}
        copies.append({name: (layer.weight.detach().clone(),
                              None if layer.bias is None else layer.bias.detach().clone())
                       for name, layer in layers.items()})
    return copies


def relax_members(members: list[nn.Module], rank: int, trained: list[dict] | None = None) -> None:
    """Give each block of a shared group (its ``mlp`` is already the shared module) its own relaxed view.

    Args:
        members: the group's blocks, in forward order; a group of one keeps its own MLP (nothing to relax).
        rank: the delta's rank (capped per layer at ``min(out, in)``).
        trained: ``trained_layers(members)`` for trained weights (SVD init); None: fresh (zero deltas).
    """
    if len(members) < 2:
        return
    shared = members[0].mlp
    for index, block in enumerate(members):
        view = _view(shared)
        for name in relaxed_layer_names(shared):
            layer = RelaxedLinear(getattr(shared, name), rank)
            if trained is not None:
                _fit_residual(layer, *trained[index][name])
            setattr(view, name, layer)
        block.mlp = view


def _view(module: nn.Module) -> nn.Module:
    """A shallow copy of ``module`` with its own registries (submodules, parameters, buffers, hooks): the
    same child modules and tensors, so replacing a child of the copy leaves the original as it was."""
    view = copy.copy(module)
    for key, value in vars(module).items():
        if isinstance(value, dict):
            setattr(view, key, type(value)(value))
    return view


@torch.no_grad()
def _fit_residual(layer: RelaxedLinear, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """The best rank-``layer.rank`` approximation of ``weight - shared`` (truncated SVD, in float64) as
    ``delta_up @ delta_down``, and the whole bias residual as the offset."""
    residual = weight.double() - layer.weight.double()
    u, s, vh = torch.linalg.svd(residual, full_matrices=False)
    rank = layer.rank
    layer.delta_up.weight.copy_(u[:, :rank] * s[:rank])
    layer.delta_down.weight.copy_(vh[:rank])
    if bias is not None and layer.bias_delta is not None:
        layer.bias_delta.copy_(bias.double() - layer.bias.double())


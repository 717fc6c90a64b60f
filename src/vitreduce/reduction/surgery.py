"""Model surgery: MLP sharing (grouped), width slicing (shallow) and fresh reduced width (thin).

Every function works in place on a built timm VisionTransformer-family model whose blocks have
``.mlp.fc1`` / ``.mlp.fc2`` linear layers, on any device including meta. Sharing is by module:
blocks in a group hold the very same ``Mlp`` object, so ``model.parameters()`` yields each shared
tensor once and autograd sums the gradients of its uses.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from timm.models import named_apply
from timm.models.vision_transformer import get_init_weights_vit
from torch import nn

from vitreduce.errors import VitreduceError
from vitreduce.reduction.spec import ReductionSpec, Step

# Recorded on the model so checkpoints can describe it (timm records neither).
REDUCTION_ATTR = "vitreduce_reduction"
BASE_HIDDEN_ATTR = "vitreduce_base_mlp_hidden"
BUILD_ATTR = "vitreduce_build"  # {"base": name, "kwargs": {...}}: set by models.create_model


def vit_blocks(model: nn.Module) -> Sequence[nn.Module]:
    """The model's transformer blocks, checked to have a plain fc1 -> act -> fc2 MLP."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential | nn.ModuleList) or len(blocks) == 0:
        raise VitreduceError(
            f"{type(model).__name__} has no ViT blocks (expected model.blocks with .mlp.fc1/.fc2, "
            "as in timm's vit_*, deit_*, deit3_* models)"
        )
    for index, block in enumerate(blocks):
        mlp = getattr(block, "mlp", None)
        fc1, fc2 = getattr(mlp, "fc1", None), getattr(mlp, "fc2", None)
        if not (isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear)):
            raise VitreduceError(
                f"block {index} has MLP type {type(mlp).__name__}, which has no fc1/fc2 linear layers "
                "(SwiGLU and other gated MLPs are not supported); supported: timm.layers.Mlp"
            )
        if fc1.out_features != fc2.in_features:
            raise VitreduceError(
                f"block {index} MLP {type(mlp).__name__} is gated (fc1 has {fc1.out_features} outputs, "
                f"fc2 {fc2.in_features} inputs); only plain timm.layers.Mlp is supported"
            )
    return blocks


def unique_mlps(model: nn.Module) -> list[tuple[list[int], nn.Module]]:
    """Each distinct MLP module with the indices of the blocks that use it, in block order."""
    users: dict[int, tuple[list[int], nn.Module]] = {}
    for index, block in enumerate(vit_blocks(model)):
        users.setdefault(id(block.mlp), ([], block.mlp))[0].append(index)
    return list(users.values())


def reduce(model: nn.Module, spec: str | ReductionSpec) -> nn.Module:
    """Apply a reduction spec to a built model, in place; returns the model.

    Args:
        model: a timm VisionTransformer-family model (any depth, width, device).
        spec: a ReductionSpec or its string form, e.g. ``"grouped"`` or ``"shallow:ratio=0.5"``.
    """
    spec = ReductionSpec.parse(spec)
    blocks = vit_blocks(model)
    previous = ReductionSpec.parse(getattr(model, REDUCTION_ATTR, None))
    if previous and spec:
        _check_composable(previous, spec)
    if not hasattr(model, BASE_HIDDEN_ATTR):
        setattr(model, BASE_HIDDEN_ATTR, blocks[0].mlp.fc1.out_features)
    for step in spec.steps:
        _validate_step(step, len(blocks))
    for step in spec.steps:
        _APPLY[step.strategy](model, step)
    setattr(model, REDUCTION_ATTR, str(ReductionSpec(previous.steps + spec.steps)))
    return model


def _check_composable(previous: ReductionSpec, spec: ReductionSpec) -> None:
    """Refuse a second reduction that repeats a strategy, or that would have to run before one the
    model already has (the spec's canonical order: thin before grouped, whatever order is written)."""
    clash = {s.strategy for s in previous.steps} & {s.strategy for s in spec.steps}
    if clash or ({"shallow", "thin"} <= {s.strategy for s in previous.steps + spec.steps}):
        raise VitreduceError(f"model already has reduction {previous}; applying {spec} would repeat a strategy")
    combined = ReductionSpec(previous.steps + spec.steps)
    if combined.steps != previous.steps + spec.steps:
        raise VitreduceError(
            f"model already has reduction {previous}; {spec} must be applied before it (thin re-initialises "
            f"the MLPs, which would undo grouped's scaling): reduce the unreduced model with '{combined}'"
        )


def _validate_step(step: Step, depth: int) -> None:
    if step.strategy == "grouped" and step.params["size"] > depth:
        raise VitreduceError(f"grouped size {step.params['size']} exceeds the model depth {depth}; use 1..{depth}")


def group_assignment(depth: int, size: int, pattern: str) -> list[int]:
    """Group index of each block: 'sequence' 0,0,1,1,.. (last group smaller if depth % size) or
    'cycle' 0,1,..,G-1,0,1,.. with G = ceil(depth / size) groups (Takase & Kiyono's cycle sharing)."""
    if pattern == "sequence":
        return [index // size for index in range(depth)]
    groups = math.ceil(depth / size)
    return [index % groups for index in range(depth)]


def _apply_grouped(model: nn.Module, step: Step) -> None:
    blocks = vit_blocks(model)
    assignment = group_assignment(len(blocks), step.params["size"], step.params["pattern"])
    for group in sorted(set(assignment)):
        members = [i for i, g in enumerate(assignment) if g == group]
        kept = blocks[members[0]].mlp
        sources = _distinct(blocks[i].mlp for i in members)
        with torch.no_grad():
            averaged = len(sources) if step.params["init"] == "mean" else 1
            if averaged > 1:
                _average_into(kept, sources)
            factor, bias_factor = group_scale(len(members), averaged, step.params["scale"])
            for tensor in (kept.fc1.weight, kept.fc1.bias, kept.fc2.weight):
                if tensor is not None and factor != 1.0:
                    tensor.mul_(factor)
            if kept.fc2.bias is not None and bias_factor != 1.0:
                kept.fc2.bias.mul_(bias_factor)
        for index in members:
            blocks[index].mlp = kept


def group_scale(shared_by: int, averaged: int, scale: float | str) -> tuple[float, float]:
    """Factors on (fc1.weight, fc1.bias, fc2.weight) and on fc2.bias of an MLP shared by ``shared_by``
    blocks and made as the mean of ``averaged`` MLPs (1 for init=first).

    A float scale is the first factor as given, fc2.bias unscaled. ``auto`` is the published rule,
    1/sqrt(n) on the first three tensors and fc2.bias left alone, stated for independently initialised
    MLPs and ``init=first``: each tensor of the shared MLP gets the std it has under init=first. The mean
    of ``averaged`` independent draws already has 1/sqrt(averaged) of their std, so for ``init=mean``
    auto first multiplies every averaged tensor by sqrt(averaged): first and mean then differ in which
    values the shared MLP starts from, not in their scale (for pairs: x 1 on the three tensors, x sqrt(2)
    on fc2.bias).
    """
    if scale != "auto":
        return float(scale), 1.0
    undo_mean = math.sqrt(averaged)  # 1.0 for init=first; x / x is exactly 1.0, so mean of n is x 1.0
    return undo_mean / math.sqrt(shared_by), undo_mean


def _distinct(modules) -> list[nn.Module]:
    seen: dict[int, nn.Module] = {}
    for module in modules:
        seen.setdefault(id(module), module)
    return list(seen.values())


def _average_into(target: nn.Module, sources: list[nn.Module]) -> None:
    for name, tensor in target.named_parameters():
        stacked = torch.stack([dict(src.named_parameters())[name] for src in sources])
        tensor.copy_(stacked.mean(dim=0))


def hidden_width(full: int, ratio: float) -> int:
    """Hidden units kept at a width ratio (at least one)."""
    return max(1, round(full * ratio))


def _check_plain_norm(mlp: nn.Module, strategy: str) -> None:
    if not isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity):
        raise VitreduceError(
            f"{strategy} cannot slice an MLP with a norm over its hidden units (scale_mlp_norm=True); "
            "build the base model with scale_mlp_norm=False"
        )


def _kept_units(mlp: nn.Module, width: int, keep: str, seed: int) -> torch.Tensor:
    full = mlp.fc1.out_features
    device = mlp.fc1.weight.device
    if keep == "first":
        return torch.arange(width, device=device)
    if keep == "magnitude":
        if device.type == "meta":
            raise VitreduceError("keep=magnitude needs real weights; build the model off the meta device")
        # Importance of hidden unit j: ||fc1 row j|| * ||fc2 column j||.
        score = mlp.fc1.weight.norm(dim=1) * mlp.fc2.weight.norm(dim=0)  # (full,)
        return torch.topk(score, width).indices.sort().values
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(full, generator=generator)[:width].sort().values.to(device)


def _resized_linear(layer: nn.Linear, out_features: int, in_features: int) -> nn.Linear:
    return nn.Linear(
        in_features, out_features, bias=layer.bias is not None,
        device=layer.weight.device, dtype=layer.weight.dtype,
    )


def _apply_shallow(model: nn.Module, step: Step) -> None:
    for _, mlp in unique_mlps(model):  # a shared MLP is sliced once
        _check_plain_norm(mlp, "shallow")
        width = hidden_width(mlp.fc1.out_features, step.params["ratio"])
        keep = _kept_units(mlp, width, step.params["keep"], step.params["seed"])
        fc1 = _resized_linear(mlp.fc1, width, mlp.fc1.in_features)
        fc2 = _resized_linear(mlp.fc2, mlp.fc2.out_features, width)
        with torch.no_grad():
            fc1.weight.copy_(mlp.fc1.weight[keep])  # (width, in)
            fc2.weight.copy_(mlp.fc2.weight[:, keep])  # (out, width)
            if fc1.bias is not None:
                fc1.bias.copy_(mlp.fc1.bias[keep])
            if fc2.bias is not None:
                fc2.bias.copy_(mlp.fc2.bias)
        mlp.fc1, mlp.fc2 = fc1, fc2


def _apply_thin(model: nn.Module, step: Step) -> None:
    """Fresh MLPs at the reduced width, initialised with the model's own scheme (timm's weight_init
    and fix_init), so they are the control for 'does inheriting the full-width init matter?'."""
    mode, fix_init = _init_scheme(model)
    num_classes = getattr(model, "num_classes", 0) or 1
    head_bias = -math.log(num_classes) if "nlhb" in mode else 0.0
    init_fn = get_init_weights_vit(mode, head_bias)  # 'reset': PyTorch's own nn.Linear init
    for users, mlp in unique_mlps(model):
        _check_plain_norm(mlp, "thin")
        width = hidden_width(mlp.fc1.out_features, step.params["ratio"])
        fresh = copy.deepcopy(mlp)  # keeps act/drop/norm; linear layers replaced below
        fresh.fc1 = _resized_linear(mlp.fc1, width, mlp.fc1.in_features)
        fresh.fc2 = _resized_linear(mlp.fc2, mlp.fc2.out_features, width)
        # Names matter to timm's jax init ('mlp' in the name -> tiny normal biases).
        named_apply(init_fn, fresh, name=f"blocks.{users[0]}.mlp")
        if fix_init:
            with torch.no_grad():
                fresh.fc2.weight.div_(math.sqrt(2.0 * (users[0] + 1)))
        for index in users:
            model.blocks[index].mlp = fresh


def _init_scheme(model: nn.Module) -> tuple[str, bool]:
    """timm's init mode of the model and whether its fix_init ran.

    timm records weight_init='skip' as mode 'reset' and then runs no init at all, so its linear layers
    keep PyTorch's default init and fix_init is not applied; 'reset' itself re-runs PyTorch's default
    init and then fix_init. Only create_model's record tells the two apart; a model built by
    timm.create_model with 'skip' and fix_init=True is taken as 'reset'.
    """
    mode = getattr(model, "weight_init_mode", "") or ""
    built = (getattr(model, BUILD_ATTR, None) or {}).get("kwargs", {})
    skipped = built.get("weight_init") == "skip"
    return mode, bool(getattr(model, "fix_init", False)) and not skipped


_APPLY = {"grouped": _apply_grouped, "shallow": _apply_shallow, "thin": _apply_thin}

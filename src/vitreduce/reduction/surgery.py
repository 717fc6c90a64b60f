"""Model surgery: MLP sharing (grouped), width slicing (shallow) and fresh reduced width (thin).

Every function works in place on a built timm model whose blocks hold an MLP vitreduce knows
(``blocks`` finds them by stage, ``gated`` slices each kind), on any device including meta. Sharing is by module:
blocks in a group hold the very same ``Mlp`` object, so ``model.parameters()`` yields each shared
tensor once and autograd sums the gradients of its uses.
"""
from __future__ import annotations

import math

import torch
from timm.models import named_apply
from timm.models.vision_transformer import get_init_weights_vit
from torch import nn

from vitreduce.errors import VitreduceError
from vitreduce.reduction.blocks import BlockRef, all_blocks, block_stages
from vitreduce.reduction.gated import fc1_width, hidden_units, input_layers, resized_copy, slice_mlp, unit_scores
from vitreduce.reduction.relax import relax_members, trained_layers
from vitreduce.reduction.spec import ReductionSpec, Step, check_relax_order

# Recorded on the model so checkpoints can describe it (timm records neither).
REDUCTION_ATTR = "vitreduce_reduction"
BASE_HIDDEN_ATTR = "vitreduce_base_mlp_hidden"
BUILD_ATTR = "vitreduce_build"  # {"base": name, "kwargs": {...}}: set by models.create_model
SCALING_ATTR = "vitreduce_scaling"  # what the last grouped step multiplied, for ``scaling_line``


def vit_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's transformer blocks over all stages, in forward order, each checked to hold an MLP
    vitreduce can reduce (``blocks.block_stages``)."""
    return [ref.block for ref in all_blocks(model)]


def unique_mlps(model: nn.Module) -> list[tuple[list[int], nn.Module]]:
    """Each distinct MLP module with the positions (over all stages) of the blocks that use it."""
    return [([ref.position for ref in refs], mlp) for refs, mlp in _unique_mlp_refs(model)]


def unique_named_mlps(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Each distinct MLP under the module name of its first user, e.g. ``blocks.0.mlp``, ``layers.1.blocks.2.mlp``."""
    return [(f"{refs[0].name}.mlp", mlp) for refs, mlp in _unique_mlp_refs(model)]


def unique_mlp_groups(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """Each distinct MLP under the name of its first user, with every module its users hold: the shared
    module once, or each block's view of a relaxed group (whose deltas belong to the group)."""
    return [(f"{refs[0].name}.mlp", _distinct(ref.block.mlp for ref in refs)) for refs, _ in _unique_mlp_refs(model)]


def _unique_mlp_refs(model: nn.Module) -> list[tuple[list[BlockRef], nn.Module]]:
    """Keyed by the fc2 weight tensor, not the module: the blocks of a relaxed group each hold their own view
    of one shared MLP (``relax``); the module given is the first user's."""
    users: dict[int, tuple[list[BlockRef], nn.Module]] = {}
    for ref in all_blocks(model):
        users.setdefault(id(ref.block.mlp.fc2.weight), ([], ref.block.mlp))[0].append(ref)
    return list(users.values())


def reduce(model: nn.Module, spec: str | ReductionSpec, trained: bool = False) -> nn.Module:
    """Apply a reduction spec to a built model, in place; returns the model.

    Args:
        model: a timm ViT, DeiT, EVA or Swin model (any depth, width, stages, device; see ``blocks``).
        spec: a ReductionSpec or its string form, e.g. ``"grouped"`` or ``"shallow:ratio=0.5"``.
        trained: the model holds trained weights: grouped's ``scale=auto`` then leaves the kept MLP as it is
            (``group_scale``; ``scaling_line`` says what was applied), and ``grouped:relax=R`` initialises each
            block's delta from the SVD of its residual (on a fresh model the deltas start at zero).
    """
    spec = ReductionSpec.parse(spec)
    stages = block_stages(model)
    previous = ReductionSpec.parse(getattr(model, REDUCTION_ATTR, None))
    if previous and spec:
        _check_composable(previous, spec)
    if not hasattr(model, BASE_HIDDEN_ATTR):
        setattr(model, BASE_HIDDEN_ATTR, fc1_width(stages[0][0].block.mlp))
    narrowest = min(hidden_units(stage[0].block.mlp) for stage in stages)
    for step in spec.steps:
        _validate_step(step, max(len(stage) for stage in stages), len(stages), narrowest)
    for step in spec.steps:
        if step.strategy == "grouped":
            _apply_grouped(model, step, trained)
        else:
            _APPLY[step.strategy](model, step)
    setattr(model, REDUCTION_ATTR, str(ReductionSpec(previous.steps + spec.steps)))
    return model


def _check_composable(previous: ReductionSpec, spec: ReductionSpec) -> None:
    """Refuse a second reduction that repeats a strategy, or that would have to run before one the
    model already has (the spec's canonical order: thin before grouped, whatever order is written)."""
    check_relax_order(previous.steps + spec.steps, f"{previous} then {spec}")
    clash = {s.strategy for s in previous.steps} & {s.strategy for s in spec.steps}
    if clash or ({"shallow", "thin"} <= {s.strategy for s in previous.steps + spec.steps}):
        raise VitreduceError(f"model already has reduction {previous}; applying {spec} would repeat a strategy")
    combined = ReductionSpec(previous.steps + spec.steps)
    if combined.steps != previous.steps + spec.steps:
        raise VitreduceError(
            f"model already has reduction {previous}; {spec} must be applied before it (thin re-initialises "
            f"the MLPs, which would undo grouped's scaling): reduce the unreduced model with '{combined}'"
        )


def _validate_step(step: Step, depth: int, stages: int, narrowest: int) -> None:
    """``depth``: blocks in the deepest stage (the whole depth of a one-stage model); ``narrowest``: the
    fewest hidden units of an MLP in any stage."""
    if step.strategy == "grouped" and step.params["size"] > depth:
        what = "the model depth" if stages == 1 else f"the depth of the model's deepest stage (of {stages})"
        raise VitreduceError(f"grouped size {step.params['size']} exceeds {what} {depth}; use 1..{depth}")
    ratio = step.params.get("ratio")
    if ratio is not None and round(narrowest * ratio) < 1:  # hidden_width would clamp it to 1 unit
        raise VitreduceError(
            f"{step} keeps round({narrowest} x {ratio:g}) = 0 of the {narrowest} hidden units of this model's MLPs; "
            f"an MLP keeps at least one, so the label would not describe the model: use ratio >= "
            f"{1 / narrowest:.3g} (one unit)")


def group_assignment(depth: int, size: int, pattern: str) -> list[int]:
    """Group index of each block: 'sequence' 0,0,1,1,.. (last group smaller if depth % size) or
    'cycle' 0,1,..,G-1,0,1,.. with G = ceil(depth / size) groups (Takase & Kiyono's cycle sharing)."""
    if pattern == "sequence":
        return [index // size for index in range(depth)]
    groups = math.ceil(depth / size)
    return [index % groups for index in range(depth)]


def _apply_grouped(model: nn.Module, step: Step, trained: bool = False) -> None:
    """Groups within each stage (never across a boundary: stages differ in width). A stage shorter
    than ``size`` is one group; a stage of one block keeps its own MLP (n = 1: no scaling)."""
    applied: dict[int, tuple[float, float, float]] = {}
    for stage in block_stages(model):
        assignment = group_assignment(len(stage), step.params["size"], step.params["pattern"])
        for group in sorted(set(assignment)):
            members = [ref.block for ref, g in zip(stage, assignment, strict=True) if g == group]
            applied[len(members)] = _share(members, step, trained)
    setattr(model, SCALING_ATTR, {"scale": step.params["scale"], "trained": trained, "factors": applied})


def scaling_line(model: nn.Module) -> str | None:
    """What the grouped step multiplied the shared MLPs by, for a person; None without a grouped step."""
    record = getattr(model, SCALING_ATTR, None)
    if record is None:
        return None
    parts = []
    for n, (fc1, fc2, bias) in sorted(record["factors"].items()):
        text = f"x{fc1:.4g} for {n} block(s)" if fc1 == fc2 else f"x{fc1:.4g} (fc2.weight x{fc2:.4g}) for {n} block(s)"
        parts.append(text + (f" (fc2.bias x{bias:.4g})" if bias != 1.0 else ""))
    if record["scale"] != "auto":
        why = f"scale={record['scale']!r} as given"
    elif record["trained"]:
        why = ("scale=auto on trained weights: the trained MLP is kept as it is; the published 1/sqrt(n) is a rule "
               "for fresh initialisation (write scale=0.7071 to apply it to pairs anyway)")
    else:
        why = "scale=auto on fresh weights: the published 1/sqrt(n)"
    return f"grouped: shared MLPs' fc1 and fc2.weight {', '.join(parts)} ({why})"


def _share(members: list[nn.Module], step: Step, trained: bool = False) -> tuple[float, float, float]:
    """One MLP for all ``members``: the first's (or the mean), scaled by the rule on the tensors in
    fc1's role (fc1; a gated MLP's gate and value) and fc2's; an MLP norm is shared as it is. With
    ``relax`` each block then gets its own low-rank delta on that MLP (``relax``). Returns the factors
    applied (``group_scale``)."""
    rank = step.params["relax"]
    originals = trained_layers(members) if rank and trained and len(members) > 1 else None
    kept = members[0].mlp
    sources = _distinct(block.mlp for block in members)
    with torch.no_grad():
        averaged = len(sources) if step.params["init"] == "mean" else 1
        if averaged > 1:
            _average_into(kept, sources)
        factor, out_factor, bias_factor = group_scale(len(members), averaged, step.params["scale"], trained)
        scaled = [(t, factor) for layer in input_layers(kept) for t in (layer.weight, layer.bias)]
        for tensor, f in [*scaled, (kept.fc2.weight, out_factor), (kept.fc2.bias, bias_factor)]:
            if tensor is not None and f != 1.0:
                tensor.mul_(f)
    for block in members:
        block.mlp = kept
    if rank:
        relax_members(members, rank, originals)
    return factor, out_factor, bias_factor


def group_scale(shared_by: int, averaged: int, scale: float | str,
                trained: bool = False) -> tuple[float, float, float]:
    """Factors on the tensors in fc1's role (fc1.weight and fc1.bias; a gated MLP's gate and value), on
    fc2.weight and on fc2.bias of an MLP shared by ``shared_by`` blocks and made as the mean of ``averaged``
    MLPs (1 for init=first).

    A float scale is the fc1 and fc2.weight factor as given, fc2.bias unscaled. ``auto`` is the published
    rule, 1/sqrt(n) on fc1 and fc2.weight and fc2.bias left alone, stated for independently initialised
    MLPs and ``init=first``: each tensor of the shared MLP gets the std it has under init=first. The mean
    of ``averaged`` independent draws already has 1/sqrt(averaged) of their std, so for ``init=mean``
    every rule first multiplies every averaged tensor by sqrt(averaged): first and mean then differ in
    which values the shared MLP starts from, not in their scale (for pairs under auto: x 1 on the three
    tensors, x sqrt(2) on fc2.bias). Under auto a plain MLP's output starts at about 1/n of the full
    model's, but a gated one's at about n^(-3/2) (gate, value and fc2 each scaled) and one with a norm over
    its hidden units at 1/sqrt(n) (the norm undoes fc1's factor). ``output`` scales fc2.weight alone by 1/n:
    the output is linear in fc2.weight, so every MLP kind starts at exactly 1/n of its full output.

    On ``trained`` weights ``auto`` multiplies nothing (x 1, the plain mean for init=mean): the rule is
    about the std of independently initialised MLPs, which trained ones are not, and scaling a trained MLP
    changes the function it computes (for a pair, roughly halving the MLP's output).
    """
    if trained and scale == "auto":
        return 1.0, 1.0, 1.0
    undo_mean = math.sqrt(averaged)  # 1.0 for init=first; x / x is exactly 1.0, so mean of n is x 1.0
    if scale == "auto":
        return undo_mean / math.sqrt(shared_by), undo_mean / math.sqrt(shared_by), undo_mean
    if scale == "output":
        return undo_mean, undo_mean / shared_by, undo_mean
    return float(scale), float(scale), 1.0


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


def _kept_units(mlp: nn.Module, width: int, keep: str, seed: int) -> torch.Tensor:
    full = hidden_units(mlp)
    device = mlp.fc2.weight.device
    if keep == "first":
        return torch.arange(width, device=device)
    if keep == "magnitude":
        if device.type == "meta":
            raise VitreduceError("keep=magnitude needs real weights; build the model off the meta device")
        return torch.topk(unit_scores(mlp), width).indices.sort().values
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(full, generator=generator)[:width].sort().values.to(device)


def _apply_shallow(model: nn.Module, step: Step) -> None:
    for _, mlp in unique_mlps(model):  # a shared MLP is sliced once
        width = hidden_width(hidden_units(mlp), step.params["ratio"])
        slice_mlp(mlp, _kept_units(mlp, width, step.params["keep"], step.params["seed"]))


def _apply_thin(model: nn.Module, step: Step) -> None:
    """Fresh MLPs at the reduced width, initialised with the model's own scheme (timm's weight_init
    and fix_init), so they are the control for 'does inheriting the full-width init matter?'."""
    init = _fresh_init(model)
    for users, mlp in _unique_mlp_refs(model):
        fresh = resized_copy(mlp, hidden_width(hidden_units(mlp), step.params["ratio"]))
        init(fresh, users[0])
        for ref in users:
            ref.block.mlp = fresh


def _fresh_init(model: nn.Module):
    """``init(mlp, ref)``: the model's own init on a new MLP of the block ``ref``.

    VisionTransformer and Swin: timm's ``get_init_weights_vit(weight_init)`` by module name (jax init
    looks for 'mlp' in it) and, with fix_init, fc2 / sqrt(2 (layer + 1)). Models with their own
    ``_init_weights`` (EVA, Swin V2): that function on each submodule, and EVA's and BEiT's
    ``fix_init_weight`` rescaling of fc2, which they always run.
    """
    if hasattr(model, "weight_init_mode"):
        mode, fix_init = _init_scheme(model)
        num_classes = getattr(model, "num_classes", 0) or 1
        init_fn = get_init_weights_vit(mode, -math.log(num_classes) if "nlhb" in mode else 0.0)

        def init(mlp: nn.Module, ref: BlockRef) -> None:
            named_apply(init_fn, mlp, name=f"{ref.name}.mlp", include_root=True)  # GluMlp's own init_weights
            if fix_init:
                with torch.no_grad():
                    mlp.fc2.weight.div_(math.sqrt(2.0 * (ref.position + 1)))
        return init
    own = getattr(model, "_init_weights", None)
    if own is None:
        raise VitreduceError(f"thin needs the model's own init; {type(model).__name__} has none vitreduce knows "
                             "(use shallow, or grouped)")
    fixed = hasattr(model, "fix_init_weight") and not hasattr(model, "fix_init")

    def init(mlp: nn.Module, ref: BlockRef) -> None:
        mlp.apply(own)
        if fixed:
            with torch.no_grad():
                mlp.fc2.weight.div_(math.sqrt(2.0 * (ref.position + 1)))
    return init


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

"""The training step: one small function, no orchestration (that is vitreduce.train.loop).

``train_step`` is one optimizer step over ``optimizer.accum_steps`` micro-batches: forward, loss,
backward, unscale, clip, a finiteness check, step, EMA. The gradient norm is taken over unique
parameters, so a shared tensor counts once. On the steps that are logged, a ``StepProbe`` also measures
the gradient norm of each unique MLP and the norm of the update; it only reads tensors, so a probed
step's arithmetic and RNG use are those of any other step.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from vitreduce.device import Precision, autocast
from vitreduce.errors import VitreduceError
from vitreduce.numbers import is_finite
from vitreduce.reduction.params import unique_parameters
from vitreduce.reduction.surgery import unique_mlp_groups
from vitreduce.train.distributed import all_mean
from vitreduce.train.ema import Ema
from vitreduce.train.preempt import signalled

if TYPE_CHECKING:
    from vitreduce.train.distill import Distiller


class NonFiniteError(VitreduceError):
    """A step's loss or gradient norm was NaN or infinite (the weights were not updated)."""


@dataclass
class StepContext:
    """What every training step uses; built once by the trainer.

    ``model`` is what runs the forward (possibly DDP- or compile-wrapped); ``params`` are the unique
    trainable parameters of the unwrapped model.
    """

    model: nn.Module
    params: list[nn.Parameter]
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: Ema | None
    precision: Precision
    device: torch.device
    clip_grad: float | None = None
    nonfinite: Literal["halt", "skip"] = "halt"  # the config's faults.nonfinite
    distill: Distiller | None = None  # a teacher's loss terms in place of the task loss alone (train.distill)

    @classmethod
    def build(cls, model: nn.Module, module: nn.Module, **kwargs) -> StepContext:
        """Context for ``model`` (the wrapper) training ``module`` (its unwrapped model)."""
        return cls(model=model, params=list(unique_parameters(module, trainable_only=True)), **kwargs)


@dataclass(frozen=True)
class StepResult:
    loss: float  # mean loss over the step's images (NaN/inf when skipped for that reason)
    grad_norm: float  # global norm over unique parameters, before clipping
    skipped: bool  # the optimizer did not step (non-finite loss/gradient, or fp16 overflow)
    stop: bool = False  # some rank had received a stop signal before this step's sync (train.preempt)
    distill: dict[str, float] = field(default_factory=dict)  # each distillation term's mean (train.distill)


@dataclass
class StepProbe:
    """What one logged step measures besides its loss and global gradient norm.

    ``mlp_grad_norms``: per unique MLP (named by the first block that uses it, ``blocks.<i>.mlp``), the
    norm of its unique parameters' gradients, unscaled and before clipping, as the global norm; under
    DDP the gradients are already all-reduced, so these are the global norms. ``update_norm``: the norm
    of the step's change of the unique trainable parameters (0 when the step was skipped). The
    parameters are copied only for a probed step, and freed at once.
    """

    params: list[nn.Parameter]  # unique trainable parameters, as StepContext.params
    mlps: dict[str, list[nn.Parameter]]  # unique MLP name -> its unique trainable parameters
    mlp_grad_norms: dict[str, float | None] = field(default_factory=dict)
    update_norm: float = 0.0
    _before: list[torch.Tensor] | None = None

    @classmethod
    def build(cls, module: nn.Module) -> StepProbe:
        """A probe for ``module`` (the unwrapped model)."""
        mlps = {name: list({id(p): p for mlp in modules for p in unique_parameters(mlp, trainable_only=True)}.values())
                for name, modules in unique_mlp_groups(module)}  # a relaxed group: shared tensors and every delta
        return cls(list(unique_parameters(module, trainable_only=True)), {k: v for k, v in mlps.items() if v})

    def gradients(self) -> None:
        """After unscaling, before clipping: each MLP's gradient norm."""
        norms = [torch.nn.utils.get_total_norm([p.grad for p in ps if p.grad is not None]) for ps in self.mlps.values()]
        values = torch.stack(norms).double().tolist() if norms else []  # one device sync for all of them
        self.mlp_grad_norms = {name: v if is_finite(v) else None for name, v in zip(self.mlps, values, strict=True)}

    def before_update(self) -> None:
        self._before = [p.detach().clone() for p in self.params]

    def after_update(self) -> None:
        """The update's norm: the copies become (before - after) in place, so one copy is all it takes."""
        for before, p in zip(self._before or [], self.params, strict=True):
            before.sub_(p.detach())
        self.update_norm = torch.nn.utils.get_total_norm(self._before).item() if self._before else 0.0
        self._before = None


def train_step(ctx: StepContext, micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
               probe: StepProbe | None = None) -> StepResult:
    """One optimizer step over micro-batches ``[(images (B,C,H,W), targets (B,) or (B,K)), ...]``; ``probe``
    (on logged steps) measures it."""
    result = _step(ctx, micro_batches, probe)
    return replace(result, distill=ctx.distill.take()) if ctx.distill is not None else result


def _loss(ctx: StepContext, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if ctx.distill is None:
        return ctx.loss_fn(ctx.model(images), targets)
    return ctx.distill.loss(ctx.model, images, targets, ctx.loss_fn)


def _step(ctx: StepContext, micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
          probe: StepProbe | None) -> StepResult:
    ctx.optimizer.zero_grad(set_to_none=True)
    total = sum(len(images) for images, _ in micro_batches)
    loss_sum = torch.zeros((), device=ctx.device, dtype=torch.float64)
    for i, (images, targets) in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        # DDP all-reduces gradients only on the last micro-batch's backward.
        sync = contextlib.nullcontext() if last or not hasattr(ctx.model, "no_sync") else ctx.model.no_sync()
        with sync:
            with autocast(ctx.precision, ctx.device):
                loss = _loss(ctx, images, targets)  # mean over this micro-batch
            ctx.scaler.scale(loss * (len(images) / total)).backward()
        loss_sum += loss.detach().double() * len(images)
    ctx.scaler.unscale_(ctx.optimizer)  # no-op when the scaler is disabled
    if probe is not None:
        probe.gradients()
    if ctx.clip_grad is not None:
        grad_norm = torch.nn.utils.clip_grad_norm_(ctx.params, ctx.clip_grad)
    else:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in ctx.params if p.grad is not None])
    # (loss, gradient norm, stop signal) averaged over ranks: one sync gives every rank the same verdict.
    check = all_mean(torch.stack([loss_sum / total, grad_norm.double(), torch.full_like(loss_sum, float(signalled()))]))
    loss_value, norm_value, stop = check.tolist()
    loss_finite, norm_finite = is_finite(loss_value), is_finite(norm_value)
    if ctx.scaler.is_enabled() and loss_finite and not norm_finite:
        # fp16 overflow: the scaler skips this step and lowers its scale (expected, counted).
        ctx.scaler.step(ctx.optimizer)
        ctx.scaler.update()
        return StepResult(loss_value, norm_value, skipped=True, stop=stop > 0)
    if not (loss_finite and norm_finite):
        what = "loss" if not loss_finite else "gradient norm"
        if ctx.nonfinite == "halt":
            raise NonFiniteError(f"non-finite {what} (loss {loss_value}, gradient norm {norm_value})")
        ctx.optimizer.zero_grad(set_to_none=True)
        if ctx.scaler.is_enabled():
            ctx.scaler.update()  # resets the scaler's per-step bookkeeping
        return StepResult(loss_value, norm_value, skipped=True, stop=stop > 0)
    if probe is not None:
        probe.before_update()
    ctx.scaler.step(ctx.optimizer)
    if probe is not None:
        probe.after_update()
    ctx.scaler.update()
    if ctx.ema is not None:
        ctx.ema.update()
    return StepResult(loss_value, norm_value, skipped=False, stop=stop > 0)

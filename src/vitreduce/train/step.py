"""The training step and evaluation: small functions, no orchestration (that is vitreduce.train.loop).

``train_step`` is one optimizer step over ``optimizer.accum_steps`` micro-batches: forward, loss,
backward, unscale, clip, a finiteness check, step, EMA. The gradient norm is taken over unique
parameters, so a shared tensor counts once.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vitreduce.errors import VitreduceError
from vitreduce.reduction.params import unique_parameters
from vitreduce.train.distributed import all_mean, all_sum
from vitreduce.train.ema import Ema

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteError(VitreduceError):
    """A step's loss or gradient norm was NaN or infinite (the weights were not updated)."""


def autocast(precision: str, device: torch.device):
    """The forward-pass context for a precision: autocast for bf16/fp16, nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_AUTOCAST_DTYPES[precision])


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
    precision: str
    device: torch.device
    clip_grad: float | None = None
    nonfinite: str = "halt"  # or "skip"

    @classmethod
    def build(cls, model: nn.Module, module: nn.Module, **kwargs) -> StepContext:
        """Context for ``model`` (the wrapper) training ``module`` (its unwrapped model)."""
        return cls(model=model, params=list(unique_parameters(module, trainable_only=True)), **kwargs)


@dataclass(frozen=True)
class StepResult:
    loss: float  # mean loss over the step's images (NaN/inf when skipped for that reason)
    grad_norm: float  # global norm over unique parameters, before clipping
    skipped: bool  # the optimizer did not step (non-finite loss/gradient, or fp16 overflow)


def train_step(ctx: StepContext, micro_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> StepResult:
    """One optimizer step over micro-batches ``[(images (B,C,H,W), targets (B,) or (B,K)), ...]``."""
    ctx.optimizer.zero_grad(set_to_none=True)
    total = sum(len(images) for images, _ in micro_batches)
    loss_sum = torch.zeros((), device=ctx.device, dtype=torch.float64)
    for i, (images, targets) in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        # DDP all-reduces gradients only on the last micro-batch's backward.
        sync = contextlib.nullcontext() if last or not hasattr(ctx.model, "no_sync") else ctx.model.no_sync()
        with sync:
            with autocast(ctx.precision, ctx.device):
                loss = ctx.loss_fn(ctx.model(images), targets)  # mean over this micro-batch
            ctx.scaler.scale(loss * (len(images) / total)).backward()
        loss_sum += loss.detach().double() * len(images)
    ctx.scaler.unscale_(ctx.optimizer)  # no-op when the scaler is disabled
    if ctx.clip_grad is not None:
        grad_norm = torch.nn.utils.clip_grad_norm_(ctx.params, ctx.clip_grad)
    else:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in ctx.params if p.grad is not None])
    # (loss, gradient norm) averaged over ranks: one sync gives every rank the same verdict.
    check = all_mean(torch.stack([loss_sum / total, grad_norm.double()]))
    loss_value, norm_value = check.tolist()
    loss_finite, norm_finite = _finite(loss_value), _finite(norm_value)
    if ctx.scaler.is_enabled() and loss_finite and not norm_finite:
        # fp16 overflow: the scaler skips this step and lowers its scale (expected, counted).
        ctx.scaler.step(ctx.optimizer)
        ctx.scaler.update()
        return StepResult(loss_value, norm_value, skipped=True)
    if not (loss_finite and norm_finite):
        what = "loss" if not loss_finite else "gradient norm"
        if ctx.nonfinite == "halt":
            raise NonFiniteError(f"non-finite {what} (loss {loss_value}, gradient norm {norm_value})")
        ctx.optimizer.zero_grad(set_to_none=True)
        if ctx.scaler.is_enabled():
            ctx.scaler.update()  # resets the scaler's per-step bookkeeping
        return StepResult(loss_value, norm_value, skipped=True)
    ctx.scaler.step(ctx.optimizer)
    ctx.scaler.update()
    if ctx.ema is not None:
        ctx.ema.update()
    return StepResult(loss_value, norm_value, skipped=False)


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


@dataclass
class EvalResult:
    top1: float  # percent
    top5: float  # percent (top-k with k = min(5, classes))
    loss: float  # mean cross-entropy
    count: int  # images evaluated (over all ranks)
    indices: torch.Tensor | None = None  # (N,) dataset positions of this rank's images
    labels: torch.Tensor | None = None  # (N,) their true classes
    predictions: torch.Tensor | None = None  # (N,) arg-max class of each

    def metrics(self) -> dict[str, float]:
        return {"top1": self.top1, "top5": self.top5, "loss": self.loss}


@torch.no_grad()
def evaluate(model: nn.Module, loader, precision: str, device: torch.device,
             keep_predictions: bool = False) -> EvalResult:
    """Top-1, top-5 and cross-entropy over an eval loader (timm's validate.py semantics), summed over ranks.

    Args:
        model: the model to evaluate (switched to eval mode, restored after).
        loader: yields ``(images (B,C,H,W), targets (B,), indices (B,))``, disjoint shards per rank.
        precision: 'fp32', 'bf16' or 'fp16' (autocast, as in training).
        device: where the model is.
        keep_predictions: also return this rank's per-image arg-max predictions.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top-1, top-k, count
    indices, labels, predictions = [], [], []
    try:
        for images, targets, positions in loader:
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            with autocast(precision, device):
                logits = model(images)  # (B, K)
            logits = logits.float()
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices  # (B, k)
            hits = top.eq(targets[:, None])
            sums += torch.stack([
                F.cross_entropy(logits, targets, reduction="sum").double(),
                hits[:, 0].sum().double(),
                hits.any(dim=1).sum().double(),
                torch.tensor(len(targets), dtype=torch.float64, device=device),
            ])
            if keep_predictions:
                indices.append(positions.cpu())
                labels.append(targets.cpu())
                predictions.append(top[:, 0].cpu())
    finally:
        model.train(was_training)
    loss, top1, topk, count = all_sum(sums).tolist()
    if count == 0:
        raise VitreduceError("the eval split gave no readable images")
    return EvalResult(
        top1=100.0 * top1 / count,
        top5=100.0 * topk / count,
        loss=loss / count,
        count=int(count),
        indices=torch.cat(indices) if keep_predictions and indices else None,
        labels=torch.cat(labels) if keep_predictions and labels else None,
        predictions=torch.cat(predictions) if keep_predictions and predictions else None,
    )

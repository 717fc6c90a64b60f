"""Sharpness of a model's training loss: top Hessian eigenvalues, Hessian trace, SAM and ASAM sharpness.

The paper's flat-minima hypothesis (reduced models generalise better because they sit in flatter minima)
is stated, never measured; this measures it. Every estimate uses the same fixed data:
``vitreduce.sharpness.batches.load_batches`` draws a seeded subset of an ImageFolder split once, with the
run's own eval preprocessing (no augmentation; ``data.transforms.eval_preprocessing_for``), and the
model runs in eval mode (no dropout, no drop-path), so a result is reproducible. The loss is the
cross-entropy averaged over those batches; derivatives are over the unique parameters (a shared MLP
is one set of variables). The numerics live in ``vitreduce.sharpness.hessian``; the options in
``vitreduce.sharpness.options``.

Which figure compares which models (docs/metrics.md, "Sharpness"): the top eigenvalue, the trace and
SAM sharpness depend on the parametrisation; the trace sums over the P unique parameters, and a
shared tensor's Hessian block is the sum of the blocks of its uses, so they compare checkpoints and
seeds of one architecture. Across architectures, ``trace_per_parameter`` (tr(H) / P) removes the
growth with P, and ASAM (adaptive: nearly unchanged by rescalings of weight tensors that keep the
function) is the published scale-invariant sharpness. None of them is a test of the flat-minima hypothesis.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vitreduce.errors import VitreduceError
from vitreduce.reduction.params import unique_named_parameters
from vitreduce.sharpness.batches import LossBatch
from vitreduce.sharpness.hessian import (
    EigenResult,
    LossFn,
    SamResult,
    TraceResult,
    hutchinson_trace,
    sam_sharpness,
    top_eigenvalues,
)
from vitreduce.sharpness.options import SharpnessOptions
from vitreduce.sharpness.progress import ProgressSink


def asam_scales(name: str) -> bool:
    """Whether ASAM scales the tensor of this parameter name by |w| + eta (else by 1).

    The reference's own rule (SamsungLabs/ASAM, asam.py: ``'weight' in n``): in a timm ViT the linear,
    patch-embedding, head and LayerNorm weights are scaled; biases, ``pos_embed``, ``cls_token`` (and
    register tokens, LayerScale gammas) are not. A shared tensor is named by its first use.
    """
    return "weight" in name


def per_parameter(trace: float | None, parameters: int | None) -> float | None:
    """tr(H) / P, the Hutchinson trace per unique parameter (None when either is missing).

    Args:
        trace: the Hessian trace of the mean loss over the unique parameters.
        parameters: P, the number of unique (trainable) parameters.
    """
    return trace / parameters if trace is not None and parameters else None


# Keywords analyze_sharpness also takes under the name vitreduce.sharpness.hessian gives them.
_KEYWORD_ALIASES = {"max_iters": "iters"}


@contextlib.contextmanager
def analysis_mode(model: nn.Module, *, unfused_attention: bool = True) -> Iterator[int]:
    """Eval mode (no dropout or drop-path) and, for double backward, the non-fused attention path.

    timm's fused attention (SDPA) has no double backward on CPU. Yields the number of modules switched
    off fused attention; restores the training flag and those switches afterwards.

    Args:
        model: the model.
        unfused_attention: switch every module with a ``fused_attn`` attribute to False.
    """
    was_training = model.training
    switched = [m for m in model.modules() if getattr(m, "fused_attn", False)] if unfused_attention else []
    model.eval()
    for module in switched:
        module.fused_attn = False
    try:
        yield len(switched)
    finally:
        for module in switched:
            module.fused_attn = True
        model.train(was_training)


def batch_losses(model: nn.Module, batches: Sequence[LossBatch]) -> list[LossFn]:
    """One closure per batch returning the mean cross-entropy of the model on it (in the model's dtype).

    Args:
        model: the model.
        batches: (images, targets) pairs.
    """
    dtype = next(model.parameters()).dtype

    def closure(images: torch.Tensor, targets: torch.Tensor) -> LossFn:
        return lambda: F.cross_entropy(model(images.to(dtype)), targets)

    return [closure(images, targets) for images, targets in batches]


@dataclass
class SharpnessResult:
    """What ``analyze_sharpness`` measured; ``to_dict`` is the CLI's JSON."""

    loss: float
    top_eigenvalues: list[float]
    eigen_converged: list[bool]
    iterations: list[int]
    trace: float | None
    trace_stderr: float | None
    trace_samples: int
    sam_sharpness: float
    asam_sharpness: float | None
    rho: float
    batches: int
    batch_size: int
    parameters: int
    seconds: float
    method: str = "power"
    tol: float = 1e-3
    eigen_shift: float | None = None
    fused_attention_disabled: int = 0
    trace_per_parameter: float | None = None  # tr(H) / parameters
    asam_rho: float | None = None  # ASAM's radius and eta (None: ASAM not measured)
    eta: float | None = None
    asam_scaled_parameters: int | None = None  # of `parameters`, those in tensors scaled by |w| + eta

    @property
    def converged(self) -> bool:
        """Every eigenvalue converged (relative residual at most tol)."""
        return all(self.eigen_converged)

    def to_dict(self) -> dict:
        """Every field plus ``converged``: the CLI's JSON object."""
        return {**asdict(self), "converged": self.converged}


def analyze_sharpness(model: nn.Module, batches: Sequence[LossBatch], options: SharpnessOptions | None = None, *,
                      progress: ProgressSink | None = None, **overrides: Any) -> SharpnessResult:
    """Top-k Hessian eigenvalues, Hutchinson trace and SAM (optionally ASAM) sharpness of the mean loss.

    SAM and ASAM are each one ascent step over the mean loss of all the batches (not m-sharpness):
    SAM of radius ``rho`` in the raw parameters, ASAM of radius ``asam_rho`` with T = |w| + ``eta`` on
    the tensors ``asam_scales`` names and T = 1 on the rest (``vitreduce.sharpness.hessian.sam_sharpness``).

    The model runs in eval mode with fused attention off (restored afterwards); the parameters are
    unchanged when it returns. Of the options, the data-subset ones (split, batches, batch_size) are
    the caller's business: the batches are already drawn.

    Args:
        model: a classifier (e.g. from ``vitreduce.load``).
        batches: the fixed (images, targets) batches, e.g. from ``load_batches``, all of one size.
        options: what to measure (default ``SharpnessOptions()``, the CLI's defaults).
        progress: told about every Hessian-vector product (default: silent).
        **overrides: fields of ``SharpnessOptions`` replacing those of ``options``, e.g. ``top_k=3``
            (``max_iters`` is accepted for ``iters``); a bad value raises VitreduceError naming its flag.
    """
    if not batches:
        raise VitreduceError("no batches to analyse")
    options = _with_overrides(SharpnessOptions() if options is None else options, overrides)
    named = unique_named_parameters(model, trainable_only=True)
    params = [p for _, p in named]
    scaled = [asam_scales(name) for name, _ in named]
    start = time.perf_counter()
    with analysis_mode(model) as switched:
        terms = batch_losses(model, batches)
        sam = sam_sharpness(terms, params, options.rho)
        asam = sam_sharpness(terms, params, options.asam_rho, adaptive=True, eta=options.eta,
                             scaled=scaled) if options.adaptive else None
        eigen = top_eigenvalues(terms, params, options.top_k, max_iters=options.iters, tol=options.tol,
                                seed=options.seed, method=options.method, progress=progress) if options.top_k else None
        trace = hutchinson_trace(terms, params, options.trace_samples, seed=options.seed + 1,
                                 progress=progress) if options.trace_samples else None
    result = _result(options, sam, asam, eigen, trace, batches=batches, params=params,
                     seconds=time.perf_counter() - start, switched=switched)
    if asam is not None:
        result.asam_scaled_parameters = sum(p.numel() for p, s in zip(params, scaled, strict=True) if s)
    return result


def _with_overrides(options: SharpnessOptions, overrides: dict[str, Any]) -> SharpnessOptions:
    """``options`` (as given when nothing overrides it), re-validated with the keyword overrides applied."""
    if not overrides:
        return options
    renamed = {_KEYWORD_ALIASES.get(name, name): value for name, value in overrides.items()}
    unknown = sorted(set(renamed) - set(SharpnessOptions.model_fields))
    if unknown:
        raise TypeError(f"analyze_sharpness() got unexpected keyword arguments {unknown}; "
                        f"options are {', '.join(SharpnessOptions.model_fields)}")
    current = {name: getattr(options, name) for name in SharpnessOptions.model_fields}
    return SharpnessOptions.checked(**{**current, **renamed})


def _result(options: SharpnessOptions, sam: SamResult, asam: SamResult | None, eigen: EigenResult | None,
            trace: TraceResult | None, *, batches: Sequence[LossBatch], params: list[torch.Tensor], seconds: float,
            switched: int) -> SharpnessResult:
    """The estimates and the options they were made with, as one SharpnessResult."""
    parameters = sum(p.numel() for p in params)
    return SharpnessResult(
        loss=sam.loss,
        top_eigenvalues=eigen.values if eigen else [],
        eigen_converged=eigen.converged if eigen else [],
        iterations=eigen.iterations if eigen else [],
        trace=trace.trace if trace else None,
        trace_stderr=trace.stderr if trace else None,
        trace_samples=options.trace_samples,
        sam_sharpness=sam.sharpness,
        asam_sharpness=asam.sharpness if asam else None,
        rho=options.rho,
        batches=len(batches),
        batch_size=len(batches[0][1]),
        parameters=parameters,
        seconds=seconds,
        method=options.method,
        tol=options.tol,
        eigen_shift=eigen.shift if eigen else None,
        fused_attention_disabled=switched,
        trace_per_parameter=per_parameter(trace.trace if trace else None, parameters),
        asam_rho=options.asam_rho if asam else None,
        eta=options.eta if asam else None,
    )

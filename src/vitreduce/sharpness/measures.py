"""Sharpness of a model's training loss: top Hessian eigenvalues, Hessian trace, SAM and ASAM sharpness.

The paper's flat-minima hypothesis (reduced models generalise better because they sit in flatter minima)
is stated, never measured; this measures it. Every estimate uses the same fixed data: ``load_batches``
draws a seeded subset of an ImageFolder split once, with the model's eval transform (no augmentation),
and the model runs in eval mode (no dropout, no drop-path), so a result is reproducible. The loss is
the cross-entropy averaged over those batches; derivatives are over the unique parameters (a shared
MLP is one set of variables). The numerics live in ``vitreduce.sharpness.hessian``.
"""
from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vitreduce.errors import VitreduceError
from vitreduce.reduction.params import unique_parameters
from vitreduce.sharpness.hessian import METHODS, LossFn, hutchinson_trace, sam_sharpness, top_eigenvalues

Batch = tuple[torch.Tensor, torch.Tensor]  # images (B, C, H, W), targets (B,)


def load_batches(model: nn.Module, data_dir: str | Path, *, split: str = "train", batches: int = 10,
                 batch_size: int = 64, seed: int = 0, device: str | torch.device = "cpu") -> list[Batch]:
    """A fixed, seeded subset of an ImageFolder split, with the model's eval transform, loaded once.

    The subset is the first ``batches * batch_size`` indices of a seeded ``torch.randperm``, so the
    same seed gives the same images in the same batches.

    Args:
        model: the model to analyse (its timm data config and input size give the transform; its
            ``num_classes`` must equal the number of class folders).
        data_dir: ImageFolder root: ``data_dir/<split>/<class>/<image>``.
        split: the split folder (default ``train``: sharpness is of the training loss).
        batches: number of batches.
        batch_size: images per batch.
        seed: seed of the subset.
        device: where the batches are kept.
    """
    import timm.data
    import torchvision

    if batches < 1 or batch_size < 1:
        raise VitreduceError(f"--batches and --batch-size must be >= 1 (got {batches}, {batch_size})")
    root = Path(data_dir)
    if not root.is_dir():
        raise VitreduceError(f"data directory {str(root)!r} does not exist")
    if not (root / split).is_dir():
        raise VitreduceError(f"{str(root)!r} has no {split!r} folder; expected the ImageFolder layout "
                             f"DIR/{split}/<class>/<image> (choose the split with --split)")
    config = timm.data.resolve_data_config(_input_size(model), model=model)
    transform = timm.data.create_transform(**config, is_training=False)
    # torchvision's ImageFolder, not timm's reader: timm sorts class folders "naturally" (class10 after
    # class2), training (vitreduce.data) sorts them as strings, and the labels must mean the same here.
    try:
        dataset = torchvision.datasets.ImageFolder(str(root / split), transform=transform)
    except (FileNotFoundError, RuntimeError) as err:  # no class folders, or no images in them
        raise VitreduceError(f"cannot read an image dataset from {str(root / split)!r}: {err}") from None
    classes = len(dataset.class_to_idx)
    if classes != getattr(model, "num_classes", None):
        raise VitreduceError(f"the model has {getattr(model, 'num_classes', None)} classes but "
                             f"{str(root / split)!r} has {classes} class folders; use data of the model's task")
    needed = batches * batch_size
    if needed > len(dataset):
        raise VitreduceError(f"{batches} batches x {batch_size} = {needed} images, but {str(root / split)!r} has "
                             f"only {len(dataset)}; lower --batches or --batch-size")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:needed]
    result = []
    for chunk in order.split(batch_size):
        samples = [dataset[int(index)] for index in chunk]
        images = torch.stack([image for image, _ in samples]).to(device)  # (B, C, H, W)
        targets = torch.tensor([target for _, target in samples], dtype=torch.long, device=device)
        result.append((images, targets))
    return result


def _input_size(model: nn.Module) -> dict:
    """The model's own input size (timm's pretrained_cfg keeps the default one when img_size is overridden)."""
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is None or getattr(patch_embed, "img_size", None) is None:
        return {}
    height, width = patch_embed.img_size
    return {"input_size": (patch_embed.proj.in_channels, height, width)}


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


def batch_losses(model: nn.Module, batches: Sequence[Batch]) -> list[LossFn]:
    """One closure per batch returning the mean cross-entropy of the model on it (in the model's dtype).

    Args:
        model: the model.
        batches: (images, targets) pairs.
    """
    dtype = next(model.parameters()).dtype

    def closure(images: torch.Tensor, targets: torch.Tensor) -> LossFn:
        return lambda: F.cross_entropy(model(images.to(dtype)), targets)

    return [closure(images, targets) for images, targets in batches]


def check_options(*, top_k: int, max_iters: int, tol: float, trace_samples: int, rho: float,
                  method: str = "power") -> None:
    """Refuse impossible analysis options before any work, naming the CLI flag to change.

    Args:
        top_k: eigenvalues to find (>= 0).
        max_iters: power iterations per eigenvalue (>= 1).
        tol: convergence tolerance (> 0).
        trace_samples: Hutchinson samples (0, or >= 2 for a standard error).
        rho: SAM radius (> 0).
        method: ``power`` or ``lanczos``.
    """
    problems = []
    if top_k < 0:
        problems.append(f"--top-k must be >= 0 (got {top_k})")
    if max_iters < 1:
        problems.append(f"--iters must be >= 1 (got {max_iters})")
    if not tol > 0:
        problems.append(f"--tol must be > 0 (got {tol})")
    if trace_samples < 0 or trace_samples == 1:
        problems.append(f"--trace-samples must be 0 (no trace) or >= 2 for a standard error (got {trace_samples})")
    if not rho > 0:
        problems.append(f"--rho must be > 0 (got {rho})")
    if method not in METHODS:
        problems.append(f"--method must be one of {', '.join(METHODS)} (got {method!r})")
    if problems:
        raise VitreduceError("; ".join(problems))


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

    @property
    def converged(self) -> bool:
        """Every eigenvalue converged (relative residual at most tol)."""
        return all(self.eigen_converged)

    def to_dict(self) -> dict:
        """Every field plus ``converged``: the CLI's JSON object."""
        return {**asdict(self), "converged": self.converged}


def analyze_sharpness(model: nn.Module, batches: Sequence[Batch], *, top_k: int = 1, max_iters: int = 100,
                      tol: float = 1e-3, trace_samples: int = 100, rho: float = 0.05, adaptive: bool = False,
                      seed: int = 0, method: str = "power", progress=None) -> SharpnessResult:
    """Top-k Hessian eigenvalues, Hutchinson trace and SAM (optionally ASAM) sharpness of the mean loss.

    The model runs in eval mode with fused attention off (restored afterwards); the parameters are
    unchanged when it returns.

    Args:
        model: a classifier (e.g. from ``vitreduce.load``).
        batches: the fixed (images, targets) batches, e.g. from ``load_batches``, all of one size.
        top_k: eigenvalues to find (0: none).
        max_iters: power iterations per eigenvalue (Lanczos iterations) at most.
        tol: relative residual that counts as converged (``vitreduce.sharpness.hessian.top_eigenvalues``).
        trace_samples: Rademacher vectors for the trace (0: no trace; else at least 2).
        rho: SAM radius.
        adaptive: also report ASAM sharpness (same rho, in ASAM's scaled coordinates).
        seed: seed of the random vectors.
        method: ``power`` (power iteration with deflation, k + 2 vectors of memory) or ``lanczos``
            (one vector per iteration, fewer products when eigenvalues are close).
        progress: a ``vitreduce.sharpness.hessian.Progress`` (default: silent).
    """
    if not batches:
        raise VitreduceError("no batches to analyse")
    check_options(top_k=top_k, max_iters=max_iters, tol=tol, trace_samples=trace_samples, rho=rho, method=method)
    params = list(unique_parameters(model, trainable_only=True))
    start = time.perf_counter()
    with analysis_mode(model) as switched:
        terms = batch_losses(model, batches)
        sam = sam_sharpness(terms, params, rho)
        asam = sam_sharpness(terms, params, rho, adaptive=True) if adaptive else None
        eigen = top_eigenvalues(terms, params, top_k, max_iters=max_iters, tol=tol, seed=seed, method=method,
                                progress=progress) if top_k else None
        trace = hutchinson_trace(terms, params, trace_samples, seed=seed + 1,
                                 progress=progress) if trace_samples else None
    return SharpnessResult(
        loss=sam.loss,
        top_eigenvalues=eigen.values if eigen else [],
        eigen_converged=eigen.converged if eigen else [],
        iterations=eigen.iterations if eigen else [],
        trace=trace.trace if trace else None,
        trace_stderr=trace.stderr if trace else None,
        trace_samples=trace_samples,
        sam_sharpness=sam.sharpness,
        asam_sharpness=asam.sharpness if asam else None,
        rho=rho,
        batches=len(batches),
        batch_size=len(batches[0][1]),
        parameters=sum(p.numel() for p in params),
        seconds=time.perf_counter() - start,
        method=method,
        tol=tol,
        eigen_shift=eigen.shift if eigen else None,
        fused_attention_disabled=switched,
    )


class ConsoleProgress:
    """Steps with elapsed time and ETA: a tqdm bar when stderr is a terminal, plain lines otherwise.

    Args:
        total: planned steps (``resize`` adjusts it when an estimate converges early).
        unit: what a step is, e.g. ``HVP``.
        quiet: print nothing.
        every: seconds between plain lines at most.
    """

    def __init__(self, total: int, unit: str = "step", *, quiet: bool = False, every: float = 10.0):
        self.total, self.unit, self.quiet, self.every = total, unit, quiet, every
        self.done = 0
        self.start = self.last = time.perf_counter()
        self.bar = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def step(self, note: str = "") -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(note, refresh=False)
            self.bar.update(1)
            return
        now = time.perf_counter()
        if self.quiet or (now - self.last < self.every and 1 < self.done < self.total):
            return
        self.last = now
        elapsed = now - self.start
        eta = elapsed / self.done * max(self.total - self.done, 0)
        print(f"  {self.done}/{self.total} {self.unit}s, {_clock(elapsed)} elapsed, ETA {_clock(eta)}  {note}",
              file=sys.stderr, flush=True)

    def resize(self, delta: int) -> None:
        self.total += delta
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"

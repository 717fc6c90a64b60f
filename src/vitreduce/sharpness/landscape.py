"""Loss landscapes: 1D and 2D surfaces along filter-normalised random directions, and checkpoint interpolation.

Directions follow Li et al. 2018 ("Visualizing the Loss Landscape of Neural Nets"): a Gaussian
direction whose every filter (a slice along dim 0: an output unit of a weight matrix, an output
channel of a conv) is scaled to the norm of the same filter of the weight, so plots of models with
different weight scales are comparable. 1-D tensors (biases, norm parameters) get zero by default;
included, they follow the same rule with one-element filters (each entry +-|w_i|), where Li et al.'s
code copies w. A shared tensor is one variable with one direction (``params.unique_named_parameters``).

Every evaluation sets the weights, runs the fixed batches in eval mode without gradients, and the
weights are restored bitwise afterwards.
"""
from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vitreduce.errors import VitreduceError
from vitreduce.files import atomic_write
from vitreduce.reduction.params import alias_groups, unique_named_parameters
from vitreduce.sharpness.batches import LossBatch
from vitreduce.sharpness.landscape_plots import plot_contour, plot_directions, plot_interpolation
from vitreduce.sharpness.progress import ProgressSink

Direction = dict[str, torch.Tensor]  # first parameter name -> tensor shaped like it


@dataclass(frozen=True)
class Curve:
    """Loss and top-1 accuracy (%) at each alpha: a 1D surface or an interpolation."""

    alphas: list[float]
    losses: list[float]
    accuracies: list[float]


@dataclass(frozen=True)
class Surface:
    """Loss and accuracy on the grid w + alpha d1 + beta d2; ``losses[i][j]`` is at (alphas[i], betas[j])."""

    alphas: list[float]
    betas: list[float]
    losses: list[list[float]]
    accuracies: list[list[float]]


def random_direction(model: nn.Module, seed: int, include_bias_norm: bool = False) -> Direction:
    """A filter-normalised Gaussian direction over the model's unique parameters.

    Args:
        model: the model.
        seed: seed of the direction (drawn on the CPU: the same on every device).
        include_bias_norm: give 1-D tensors (biases, norm weights) a direction too; default zero.
    """
    generator = torch.Generator().manual_seed(seed)
    direction = {}
    for name, weight in unique_named_parameters(model):
        d = torch.randn(weight.shape, generator=generator, dtype=torch.float64)
        w = weight.detach().to(torch.float64)
        if weight.dim() <= 1 and not include_bias_norm:
            d.zero_()
        else:
            rows_w = w.reshape(w.shape[0], -1) if w.dim() else w.reshape(1, 1)  # (filters, fan-in)
            rows_d = d.reshape(rows_w.shape)
            rows_d.mul_(rows_w.norm(dim=1, keepdim=True) / (rows_d.norm(dim=1, keepdim=True) + 1e-10))
        direction[name] = d.to(device=weight.device, dtype=weight.dtype)
    return direction


def loss_and_accuracy(model: nn.Module, batches: Sequence[LossBatch]) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy (%) over the batches, in eval mode, without gradients.

    Args:
        model: the model (its training flag is restored).
        batches: (images, targets) pairs.
    """
    was_training = model.training
    model.eval()
    dtype = next(model.parameters()).dtype
    loss_sum, correct, count = 0.0, 0, 0
    try:
        with torch.no_grad():
            for images, targets in batches:
                logits = model(images.to(dtype))  # (B, classes)
                loss_sum += float(F.cross_entropy(logits, targets, reduction="sum"))
                correct += int((logits.argmax(dim=1) == targets).sum())
                count += len(targets)
    finally:
        model.train(was_training)
    return loss_sum / count, 100.0 * correct / count


class _Weights:
    """Set the unique parameters to computed values and put the originals back bitwise."""

    def __init__(self, model: nn.Module):
        self.named = unique_named_parameters(model)
        self.saved = {name: p.detach().clone() for name, p in self.named}

    def set(self, combine) -> None:
        """Each parameter := combine(name, original)."""
        with torch.no_grad():
            for name, p in self.named:
                p.copy_(combine(name, self.saved[name]))

    def restore(self) -> None:
        with torch.no_grad():
            for name, p in self.named:
                p.copy_(self.saved[name])


def _check_direction(model: nn.Module, direction: Direction) -> None:
    expected = {name: tuple(p.shape) for name, p in unique_named_parameters(model)}
    given = {name: tuple(d.shape) for name, d in direction.items()}
    if expected != given:
        raise VitreduceError("the direction does not match the model's unique parameters; "
                             "make it with random_direction(model, seed)")


def grid(steps: int, span: float) -> list[float]:
    """``steps`` evenly spaced values in [-span, span]; odd ``steps`` so 0 (the checkpoint) is one of them.

    Args:
        steps: number of values (odd, >= 3).
        span: half-width of the range.
    """
    if steps < 3 or steps % 2 == 0 or not span > 0:
        raise VitreduceError(f"--steps must be odd and >= 3 (so the grid contains the checkpoint) and --span > 0 "
                             f"(got {steps}, {span})")
    return [span * (2 * i / (steps - 1) - 1) for i in range(steps)]


def surface_1d(model: nn.Module, batches: Sequence[LossBatch], direction: Direction, *, steps: int = 21,
               span: float = 1.0, progress: ProgressSink | None = None) -> Curve:
    """Loss of w + alpha d for alpha on an even grid in [-span, span].

    Args:
        model: the model (weights restored bitwise afterwards).
        batches: the fixed (images, targets) batches.
        direction: from ``random_direction``.
        steps: grid points (odd).
        span: alpha range half-width (1 = one weight norm per filter).
        progress: a ``vitreduce.sharpness.progress.ProgressSink``, told about every evaluation.
    """
    _check_direction(model, direction)
    return _curve(model, batches, grid(steps, span), lambda alpha, name, w: w + alpha * direction[name], progress)


def surfaces_1d(model: nn.Module, batches: Sequence[LossBatch], *, seed: int, directions: int = 1, steps: int = 21,
                span: float = 1.0, include_bias_norm: bool = False,
                progress: ProgressSink | None = None) -> list[Curve]:
    """``surface_1d`` along ``directions`` random directions, seeded ``seed``, ``seed + 1``, ...: one direction
    is one draw, and the spread over several says how much of a curve's shape is that draw's.

    Args:
        model: the model (weights restored bitwise afterwards).
        batches: the fixed (images, targets) batches.
        seed: seed of the first direction.
        directions: how many directions (>= 1).
        steps: grid points (odd).
        span: alpha range half-width.
        include_bias_norm: give 1-D tensors a direction too (see ``random_direction``).
        progress: a ``vitreduce.sharpness.progress.ProgressSink``, told about every evaluation.
    """
    if directions < 1:
        raise VitreduceError(f"the number of random directions must be >= 1, got {directions}")
    return [surface_1d(model, batches, random_direction(model, seed + i, include_bias_norm), steps=steps, span=span,
                       progress=progress) for i in range(directions)]


def surface_2d(model: nn.Module, batches: Sequence[LossBatch], direction1: Direction, direction2: Direction, *,
               steps: int = 21, span: float = 1.0, progress: ProgressSink | None = None) -> Surface:
    """Loss of w + alpha d1 + beta d2 on a steps x steps grid over [-span, span]^2.

    Args:
        model: the model (weights restored bitwise afterwards).
        batches: the fixed (images, targets) batches.
        direction1: first direction (alpha).
        direction2: second direction (beta), e.g. ``random_direction(model, seed + 1)``.
        steps: grid points per axis (odd).
        span: half-width of both ranges.
        progress: a ``vitreduce.sharpness.progress.ProgressSink``, told about every evaluation.
    """
    _check_direction(model, direction1)
    _check_direction(model, direction2)
    alphas = betas = grid(steps, span)
    weights = _Weights(model)
    losses, accuracies = [], []
    try:
        for alpha in alphas:
            loss_row, acc_row = [], []
            for beta in betas:
                weights.set(lambda name, w, a=alpha, b=beta: w + a * direction1[name] + b * direction2[name])
                loss, acc = loss_and_accuracy(model, batches)
                loss_row.append(loss)
                acc_row.append(acc)
                _step(progress, f"({alpha:+.3f}, {beta:+.3f}): loss {loss:.4f}")
            losses.append(loss_row)
            accuracies.append(acc_row)
    finally:
        weights.restore()
    return Surface(alphas, betas, losses, accuracies)


def interpolation_alphas(steps: int = 21, low: float = -0.25, high: float = 1.25) -> list[float]:
    """``steps`` evenly spaced values in [low, high], plus exactly 0 and 1 (the two checkpoints).

    Args:
        steps: number of evenly spaced values (>= 2).
        low: first value.
        high: last value.
    """
    if steps < 2 or not high > low:
        raise VitreduceError(f"interpolation needs steps >= 2 and high > low (got {steps}, {low}, {high})")
    even = [low + (high - low) * i / (steps - 1) for i in range(steps)]
    return sorted(set(even) | {0.0, 1.0})


def interpolate(model: nn.Module, other: nn.Module, batches: Sequence[LossBatch], *,
                alphas: Sequence[float] | None = None, progress: ProgressSink | None = None) -> Curve:
    """Loss of (1 - alpha) w1 + alpha w2 between two checkpoints of one architecture.

    alpha 0 is ``model`` and alpha 1 is ``other`` exactly; the combination runs in ``model``, whose
    weights are restored bitwise afterwards (``other`` is not changed).

    Args:
        model: first model (w1), e.g. the peak epoch's checkpoint.
        other: second model (w2), e.g. the final checkpoint; same architecture and sharing.
        batches: the fixed (images, targets) batches.
        alphas: where to evaluate (default ``interpolation_alphas()``: -0.25..1.25 with 0 and 1).
        progress: a ``vitreduce.sharpness.progress.ProgressSink``, told about every evaluation.
    """
    check_same_architecture(model, other)
    targets = {name: p.detach() for name, p in unique_named_parameters(other)}
    alphas = list(interpolation_alphas() if alphas is None else alphas)
    return _curve(model, batches, alphas, lambda alpha, name, w: (1 - alpha) * w + alpha * targets[name].to(w),
                  progress)


def _curve(model: nn.Module, batches: Sequence[LossBatch], alphas: list[float],
           combine: Callable[[float, str, torch.Tensor], torch.Tensor], progress: ProgressSink | None) -> Curve:
    """Loss and accuracy with each parameter set to combine(alpha, name, original), for each alpha.

    The weights are restored bitwise afterwards, even when an evaluation raises.
    """
    weights = _Weights(model)
    losses, accuracies = [], []
    try:
        for alpha in alphas:
            weights.set(lambda name, w, a=alpha: combine(a, name, w))
            loss, acc = loss_and_accuracy(model, batches)
            losses.append(loss)
            accuracies.append(acc)
            _step(progress, f"alpha {alpha:+.3f}: loss {loss:.4f}")
    finally:
        weights.restore()
    return Curve(alphas, losses, accuracies)


def check_same_architecture(model: nn.Module, other: nn.Module) -> None:
    """Refuse two models whose unique parameters (names, shapes, sharing) differ.

    Args:
        model: first model.
        other: second model.
    """
    ours = [(name, tuple(p.shape)) for name, p in unique_named_parameters(model)]
    theirs = [(name, tuple(p.shape)) for name, p in unique_named_parameters(other)]
    if ours == theirs and alias_groups(model) == alias_groups(other):
        return
    if len(ours) != len(theirs):
        detail = f"{len(ours)} vs {len(theirs)} unique parameter tensors"
    else:
        first = next(((a, b) for a, b in zip(ours, theirs, strict=True) if a != b), None)
        detail = (f"{first[0][0]} {first[0][1]} vs {first[1][0]} {first[1][1]}" if first
                  else "the same tensors shared differently")
    raise VitreduceError(f"interpolation needs two checkpoints of the same architecture and reduction; they differ: "
                         f"{detail}")


def _step(progress: ProgressSink | None, note: str) -> None:
    if progress is not None:
        progress.step(note)


def write_landscape(out_dir: str | Path, *, line: Curve | Sequence[Curve] | None = None, surface: Surface | None = None,
                    interpolation: Curve | None = None, title: str = "", other_title: str = "",
                    start_title: str = "") -> list[Path]:
    """Write the raw grids as CSV and their plots as PNG; returns the paths written.

    Files: ``surface_1d.csv`` (alpha,loss,acc,direction: one row per grid point of each direction, numbered
    from 0) + ``surface_1d.png`` (L(alpha) - L(0) per direction); ``surface_2d.csv`` (alpha,beta,loss,acc) +
    ``surface_2d.png`` (contours); ``interpolation.csv`` (alpha,loss,acc) + ``interpolation.png``. Each is
    written atomically.

    Args:
        out_dir: directory (created).
        line: from ``surface_1d``, or one such curve per random direction.
        surface: from ``surface_2d``.
        interpolation: from ``interpolate``.
        title: what the checkpoint is (e.g. "grouped/seed0 final, EMA"), shown above each plot.
        other_title: what the second checkpoint (alpha 1 of the interpolation) is.
        start_title: what alpha 0 of the interpolation is, where that is not ``title``'s checkpoint.
    """
    out_dir = Path(out_dir)
    written = []
    if line is not None:
        lines = [line] if isinstance(line, Curve) else list(line)
        rows = [(a, loss, acc, d) for d, curve in enumerate(lines)
                for a, loss, acc in zip(curve.alphas, curve.losses, curve.accuracies, strict=True)]
        written.append(_write_csv(out_dir / "surface_1d.csv", ["alpha", "loss", "acc", "direction"], rows))
        written.append(plot_directions(out_dir / "surface_1d.png", lines, title))
    if surface is not None:
        rows = [(a, b, surface.losses[i][j], surface.accuracies[i][j])
                for i, a in enumerate(surface.alphas) for j, b in enumerate(surface.betas)]
        written.append(_write_csv(out_dir / "surface_2d.csv", ["alpha", "beta", "loss", "acc"], rows))
        written.append(plot_contour(out_dir / "surface_2d.png", surface, title))
    if interpolation is not None:
        rows = zip(interpolation.alphas, interpolation.losses, interpolation.accuracies, strict=True)
        written.append(_write_csv(out_dir / "interpolation.csv", ["alpha", "loss", "acc"], rows))
        pair = f"interpolation: alpha 0 = {start_title or title}\nalpha 1 = {other_title}" if other_title else title
        written.append(plot_interpolation(out_dir / "interpolation.png", interpolation, pair))
    return written


def _write_csv(path: Path, header: list[str], rows) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows([str(value) if isinstance(value, int) else repr(float(value)) for value in row]
                             for row in rows)

    atomic_write(path, write)
    return path

"""The PNG plots of ``vitreduce.sharpness.landscape.write_landscape``: the 1D surface as the loss change
L(alpha) - L(0) along each random direction, the interpolation between two checkpoints, the 2D contours.

Drawn on matplotlib Figures (no pyplot state); few tick labels so they never overlap; units on each axis.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vitreduce.files import atomic_write

_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _ticks(axis) -> None:
    """At most 5 labelled ticks per axis (signed alphas such as -0.75 would collide at the default density)."""
    from matplotlib.ticker import MaxNLocator

    axis.xaxis.set_major_locator(MaxNLocator(nbins=5))
    axis.yaxis.set_major_locator(MaxNLocator(nbins=6))
    axis.grid(alpha=0.3)


def _save(figure, path: Path) -> Path:
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))
    return path


def loss_change(alphas: Sequence[float], losses: Sequence[float]) -> np.ndarray:
    """L(alpha) - L(0) of one 1D curve (its grid contains 0: the checkpoint itself)."""
    alphas, losses = np.asarray(alphas, dtype=float), np.asarray(losses, dtype=float)
    return losses - losses[int(np.argmin(np.abs(alphas)))]


def plot_directions(path: Path, lines: Sequence, title: str) -> Path:
    """One line of L(alpha) - L(0) per direction (``Curve`` objects), their mean in black where there are two
    or more."""
    figure = _figure(6, 4)
    axis = figure.subplots()
    changes = [loss_change(line.alphas, line.losses) for line in lines]
    for i, (line, change) in enumerate(zip(lines, changes, strict=True)):
        axis.plot(line.alphas, change, color=_COLORS[i % len(_COLORS)], linewidth=1, marker="o", markersize=2.5,
                  label=f"direction {i + 1}")
    if len(lines) > 1:
        axis.plot(lines[0].alphas, np.mean(changes, axis=0), color="k", linewidth=2, label="mean")
    axis.axhline(0.0, color="grey", linewidth=0.8)
    axis.set(xlabel="alpha (filter-normalised direction, units of the weight norm)",
             ylabel="L(alpha) - L(0) (cross-entropy)")
    axis.set_title(f"{title}\n1D loss surface, {len(lines)} random direction(s)", fontsize=10)
    _ticks(axis)
    axis.legend(fontsize=7, loc="upper center")
    return _save(figure, path)


def plot_interpolation(path: Path, curve, title: str) -> Path:
    figure = _figure(6, 4)
    axis = figure.subplots()
    axis.plot(curve.alphas, curve.losses, marker="o", markersize=2.5)
    for mark in (0.0, 1.0):
        axis.axvline(mark, color="grey", linewidth=0.8, linestyle=":")
    axis.set(xlabel="alpha: (1 - alpha) w(alpha 0) + alpha w(alpha 1)", ylabel="training loss (cross-entropy)")
    axis.set_title(title, fontsize=10)
    _ticks(axis)
    return _save(figure, path)


def plot_contour(path: Path, surface, title: str) -> Path:
    losses = np.asarray(surface.losses, dtype=float)  # (alphas, betas)
    finite = losses[np.isfinite(losses)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    levels = sorted({low + (high - low) * i / 20 for i in range(21)}) if high > low else 10
    figure = _figure(5.5, 5)
    axis = figure.subplots()
    # contour takes Z indexed [y, x]: beta on the y axis, alpha on the x axis.
    contours = axis.contour(surface.alphas, surface.betas, losses.T, levels=levels, cmap="viridis")
    axis.clabel(contours, inline=True, fontsize=6, fmt="%.3g")
    axis.plot([0], [0], marker="*", color="red", markersize=8)
    axis.set(xlabel="alpha (direction 1)", ylabel="beta (direction 2)")
    axis.set_title(f"{title}\ntraining loss (cross-entropy)", fontsize=10)
    axis.set_aspect("equal" if math.isclose(surface.alphas[-1], surface.betas[-1]) else "auto")
    _ticks(axis)
    return _save(figure, path)

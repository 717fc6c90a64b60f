"""What became of a run: finished, diverged, unfinished or unreadable (docs/metrics.md, "Every run counted").

A study of training stability cannot drop a run quietly: each run directory of a study gets exactly one
outcome, and the report and summary.json say which, with the epoch and metric where a run diverged and the
file and reason where it could not be read. Pure functions of a run's metrics.jsonl records.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from vitreduce.errors import VitreduceError

Status = Literal["finished", "diverged", "unfinished", "unreadable"]
STATUSES: tuple[Status, ...] = ("finished", "diverged", "unfinished", "unreadable")
# Top-1 and top-5 are percentages; a value outside [0, 100] (or an infinite one) was not written by the engine.
PERCENT_RANGE = (0.0, 100.0)
_PERCENT_KEYS = ("top1", "top5")


@dataclass(frozen=True)
class Divergence:
    """Where a run's numbers stopped being finite: the first epoch, and the metric that did it first."""

    epoch: int
    metric: str  # e.g. "train_loss", "raw top1", "ema loss"
    step: int | None = None  # the first logged optimizer step whose loss is not finite, if steps.jsonl has one

    def describe(self) -> str:
        step = f" (first non-finite logged step {self.step})" if self.step is not None else ""
        return f"diverged at epoch {self.epoch}: {self.metric} not finite{step}"


@dataclass(frozen=True)
class Outcome:
    """One run's outcome; `detail` says why for every status but finished."""

    status: Status
    detail: str | None = None
    file: str | None = None  # the unreadable file, relative to the run directory
    divergence: Divergence | None = None


class Unreadable(VitreduceError):
    """A run file that cannot be read as the engine writes it; the run is reported, not counted."""

    def __init__(self, file: str, why: str):
        super().__init__(f"{file}: {why}")
        self.file, self.why = file, why


def _number(value) -> float | None:
    """The value as a float when it is a JSON number (NaN and infinities included), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def check_ranges(records: Sequence[dict], file: str = "metrics.jsonl") -> None:
    """Raise Unreadable where a percentage is outside [0, 100] or infinite, or a loss is negative."""
    low, high = PERCENT_RANGE
    for r in records:
        for kind in ("raw", "ema"):
            model = r.get(kind)
            if not isinstance(model, dict):
                continue
            for key in _PERCENT_KEYS:
                x = _number(model.get(key))
                if x is not None and not math.isnan(x) and not low <= x <= high:
                    raise Unreadable(file, f"epoch {r['epoch']}: {kind} {key} = {x:g} is outside "
                                           f"[{low:g}, {high:g}] (a percentage)")
        loss = _number(r.get("train_loss"))
        if loss is not None and loss < 0:
            raise Unreadable(file, f"epoch {r['epoch']}: train_loss = {loss:g} is negative (a cross-entropy)")


def first_divergence(records: Sequence[dict]) -> tuple[int, str] | None:
    """(epoch, metric) of the first logged number that is not finite: train loss, then raw, then EMA."""
    for r in records:
        values = [("train_loss", r.get("train_loss"))]
        for kind in ("raw", "ema"):
            model = r.get(kind)
            if isinstance(model, dict):
                values += [(f"{kind} {key}", model.get(key)) for key in ("top1", "top5", "loss")]
        for metric, value in values:
            x = _number(value)
            if x is not None and not math.isfinite(x):
                return r["epoch"], metric
    return None


def first_bad_step(steps: Sequence[int], losses: Sequence[float | None]) -> int | None:
    """The first logged step whose loss is not finite (None in the step series)."""
    return next((s for s, x in zip(steps, losses, strict=True) if x is None), None)


def classify(records: Sequence[dict], done: bool, bad_step: int | None = None) -> Outcome:
    """The outcome of a run whose files were read: divergence first (a finished run may have diverged)."""
    found = first_divergence(records)
    if found is not None:
        epoch, metric = found
        divergence = Divergence(epoch, metric, bad_step)
        return Outcome("diverged", divergence.describe(), divergence=divergence)
    if not done:
        return Outcome("unfinished", "no done.json")
    if not any(isinstance(r.get(k), dict) for r in records for k in ("raw", "ema")):
        return Outcome("unreadable", "metrics.jsonl has no evaluated epoch", file="metrics.jsonl")
    return Outcome("finished")

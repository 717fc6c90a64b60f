"""Summaries of a sample of per-seed values: the one place the mean, the sample sd (ddof=1), the check
that the values are all alike, and the t-based interval of the mean are computed."""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

# Values whose sd is below this fraction of max(1, |mean|) are identical up to float rounding.
DEGENERATE_RELATIVE_SD = 1e-9


@dataclass(frozen=True)
class Sample:
    """The finite values of a sample and their summaries; None where undefined (no value, or one)."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.values)) if self.values else None

    @property
    def sd(self) -> float | None:
        """The sample standard deviation (ddof=1); None for fewer than two values."""
        return float(np.std(self.values, ddof=1)) if self.n >= 2 else None

    @property
    def degenerate(self) -> bool:
        """Two or more values that are all alike: a t statistic or a power figure is undefined."""
        sd = self.sd
        return sd is not None and sd <= DEGENERATE_RELATIVE_SD * max(1.0, abs(self.mean or 0.0))

    def t_interval(self, confidence: float) -> tuple[float, float] | None:
        """The t-based interval of the mean at `confidence`; None below two values or when degenerate."""
        if self.n < 2 or self.degenerate:
            return None
        half = float(sps.t.ppf(1 - (1 - confidence) / 2, self.n - 1)) * self.sd / math.sqrt(self.n)
        return self.mean - half, self.mean + half


def describe_sample(values: Iterable[float | None]) -> Sample:
    """The Sample of the finite values among `values` (None, NaN and infinities left out)."""
    return Sample(tuple(float(v) for v in values if v is not None and math.isfinite(v)))


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample std with ddof=1, n) over the finite values; std is None when n < 2, both when n = 0."""
    s = describe_sample(values)
    return s.mean, s.sd, s.n

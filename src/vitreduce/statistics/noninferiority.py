"""Non-inferiority of reduced models, tested in a fixed sequence from the least to the most reduced degree.

At each degree the paired differences (variant minus baseline, one per seed both have) are tested one-sided:
H0: mean difference <= -margin against H1: mean difference > -margin, with a paired t-test at level alpha.
The sequence stops at the first degree not shown non-inferior; every degree before it is. Testing in a
fixed order decided before the data, each at the full alpha, keeps the family-wise error rate at alpha
(Maurer et al. 1995; Wiens 2003), so the most reduced degree shown non-inferior is a claim with a known
error rate. A degree whose test is undefined (fewer than two paired seeds, or identical differences) stops
the sequence: it is not shown.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as sps

from vitreduce.statistics.sample import Sample


@dataclass(frozen=True)
class Step:
    """One degree of the sequence: its one-sided test, or why it was not tested."""

    name: str
    kept: float  # fraction of MLP parameters kept
    n: int  # paired seeds
    mean_diff: float | None
    lower: float | None  # one-sided (1 - alpha) lower confidence bound of the mean difference
    p: float | None  # one-sided p of H0: mean difference <= -margin
    shown: bool  # non-inferior at this step
    note: str  # "non-inferior", or why not / why not tested


@dataclass(frozen=True)
class FixedSequence:
    margin: float  # pp
    alpha: float
    steps: tuple[Step, ...]

    @property
    def most_reduced(self) -> Step | None:
        """The last degree shown non-inferior (the sequence is ordered least to most reduced)."""
        shown = [s for s in self.steps if s.shown]
        return shown[-1] if shown else None


def noninferiority_test(differences: Sequence[float], margin: float, alpha: float) -> tuple[float, float] | None:
    """(one-sided p, one-sided lower bound) of H0: mean <= -margin; None where the t-test is undefined."""
    s = Sample(tuple(float(d) for d in differences))
    if s.n < 2 or s.degenerate:
        return None
    se = s.sd / math.sqrt(s.n)
    p = float(sps.t.sf((s.mean + margin) / se, s.n - 1))
    return p, s.mean - float(sps.t.ppf(1 - alpha, s.n - 1)) * se


def fixed_sequence(degrees: Sequence[tuple[str, float, Sequence[float]]], margin: float,
                   alpha: float) -> FixedSequence:
    """Test (name, kept, paired differences) from the most to the least kept; stop at the first not shown."""
    steps: list[Step] = []
    stopped: str | None = None
    for name, kept, diffs in sorted(degrees, key=lambda d: -d[1]):
        s = Sample(tuple(float(d) for d in diffs))
        if stopped is not None:
            steps.append(Step(name, kept, s.n, s.mean, None, None, False, f"not tested: the sequence stopped at "
                                                                          f"{stopped}"))
            continue
        result = noninferiority_test(diffs, margin, alpha)
        if result is None:
            why = f"{s.n} paired seed(s)" if s.n < 2 else "identical differences across seeds"
            steps.append(Step(name, kept, s.n, s.mean, None, None, False, f"not testable ({why})"))
        else:
            p, lower = result
            shown = p < alpha
            steps.append(Step(name, kept, s.n, s.mean, lower, p, shown,
                              "non-inferior" if shown else "not shown non-inferior"))
        if not steps[-1].shown:
            stopped = name
    return FixedSequence(margin, alpha, tuple(steps))


@dataclass(frozen=True)
class LackOfFit:
    """The F-test of a curve fitted through group means against the groups' pure (seed-to-seed) error."""

    f: float | None
    df_lack: int
    df_pure: int
    p: float | None  # None where the check is impossible (as many parameters as degrees, or no seed spread)
    note: str


def lack_of_fit(groups: Sequence[Sequence[float]], fitted: Sequence[float], n_params: int) -> LackOfFit:
    """F = (sum_i n_i (mean_i - fit_i)^2 / (k - p)) / (sum_ij (y_ij - mean_i)^2 / (N - k)), k groups, N values."""
    k, total = len(groups), sum(len(g) for g in groups)
    df_lack, df_pure = k - n_params, total - k
    if df_lack < 1:
        return LackOfFit(None, df_lack, df_pure, None, f"not checkable: {k} degrees for {n_params} coefficients")
    pure = sum(sum((y - sum(g) / len(g)) ** 2 for y in g) for g in groups)
    if df_pure < 1 or pure <= 0:
        return LackOfFit(None, df_lack, df_pure, None, "not checkable: no seed-to-seed spread to compare with")
    lack = sum(len(g) * (sum(g) / len(g) - f) ** 2 for g, f in zip(groups, fitted, strict=True))
    f = (lack / df_lack) / (pure / df_pure)
    p = float(sps.f.sf(f, df_lack, df_pure))
    return LackOfFit(f, df_lack, df_pure, p, f"F({df_lack}, {df_pure}) = {f:.3g}")

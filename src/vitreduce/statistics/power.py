"""What the seeds could detect: power of the two-sided paired t-test over seeds.

From the observed seed-to-seed spread of the paired differences (their sample sd), the number of
paired seeds n and a significance level, `detectable` gives the smallest true mean difference the test
would find with 80% power, and the number of seeds needed to find a stated effect with that power.
Both treat the observed sd as the true one (with few seeds it is itself a rough estimate), and both
say why when they cannot be computed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import integrate, optimize
from scipy import stats as sps

from vitreduce.statistics.sample import Sample

DEFAULT_POWER = 0.80
MAX_SEEDS = 100_000  # seeds_needed searches up to here and says "more than" beyond it


def _tail_mass(nc: float, df: int, t_crit: float) -> float:
    """P(|T| > t_crit) for T ~ noncentral t(df, nc), by integrating over the chi-square of the denominator.

    T = (Z + nc) / sqrt(V / df), so P(T > c) = E_V[Phi(nc - c sqrt(V/df))]; used where scipy's nct
    returns nan (df = 1 with large noncentrality and critical value).
    """
    def integrand(u: float) -> float:
        scale = t_crit * math.sqrt(sps.chi2.ppf(u, df) / df)
        return sps.norm.cdf(nc - scale) + sps.norm.cdf(-nc - scale)

    return float(integrate.quad(integrand, 0.0, 1.0, limit=200)[0])


def power_paired(effect: float, sd: float, n: int, alpha: float) -> float:
    """Power of the two-sided paired t-test at level alpha: n pairs, true mean difference `effect`, sd `sd`."""
    df = n - 1
    t_crit = float(sps.t.ppf(1 - alpha / 2, df))
    nc = abs(effect) * math.sqrt(n) / sd
    power = float(sps.nct.sf(t_crit, df, nc) + sps.nct.cdf(-t_crit, df, nc))
    return power if math.isfinite(power) else _tail_mass(nc, df, t_crit)


@dataclass(frozen=True)
class Detectable:
    """What a paired t-test over these seeds could detect (pp, the metric's unit); None where not computable."""

    power: float
    alpha: float  # the level used: the family-adjusted level of the first rank
    n: int  # paired seeds
    sd: float | None  # sample sd (ddof=1) of the paired differences
    min_effect: float | None  # smallest true |mean difference| detected with `power`
    effect: float  # the stated effect (e.g. the paper's +0.42 pp)
    seeds_needed: int | None  # paired seeds to detect `effect` with `power`, at this sd and alpha
    more_than_max: bool  # seeds_needed would exceed MAX_SEEDS
    reason: str | None  # why min_effect / seeds_needed are None


def minimum_detectable(sd: float, n: int, alpha: float, power: float = DEFAULT_POWER) -> float:
    """The true mean difference the paired t-test detects with probability `power` (n >= 2, sd > 0)."""
    def gap(x: float) -> float:
        return power_paired(x, 1.0, n, alpha) - power  # x: the effect in units of sd

    high = 4.0
    while gap(high) < 0:
        high *= 2
    return optimize.brentq(gap, 0.0, high, xtol=1e-12) * sd


def seeds_needed(effect: float, sd: float, alpha: float, power: float = DEFAULT_POWER) -> int | None:
    """The fewest paired seeds (>= 2) whose t-test detects `effect` with `power`; None beyond MAX_SEEDS."""
    def enough(n: int) -> bool:
        return power_paired(effect, sd, n, alpha) >= power

    if enough(2):
        return 2
    low, high = 2, 4
    while not enough(high):  # power grows with n: double, then bisect
        if high >= MAX_SEEDS:
            return None
        low, high = high, min(2 * high, MAX_SEEDS)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return high


def detectable(differences: list[float], alpha: float, effect: float, power: float = DEFAULT_POWER) -> Detectable:
    """Minimum detectable difference and seeds needed from the per-seed paired differences."""
    n = len(differences)
    if n < 2:
        return Detectable(power, alpha, n, None, None, effect, None, False,
                          f"n={n} paired seed(s): the seed-to-seed spread needs at least 2")
    sample = Sample(tuple(float(x) for x in differences))
    sd = sample.sd
    if sample.degenerate:
        return Detectable(power, alpha, n, 0.0, None, effect, None, False,
                          "the paired differences are identical across seeds (sd 0): the spread cannot be estimated")
    needed = seeds_needed(effect, sd, alpha, power)
    return Detectable(power, alpha, n, sd, minimum_detectable(sd, n, alpha, power), effect, needed,
                      needed is None, None)


def describe_detectable(d: Detectable) -> str:
    """One line for the report: the minimum detectable difference and the seeds needed, or why not."""
    if d.reason is not None:
        return f"not computable: {d.reason}"
    needed = f"more than {MAX_SEEDS:,}" if d.more_than_max else f"{d.seeds_needed}"
    return (f"{d.min_effect:.2f} pp at {d.power:.0%} power (alpha={d.alpha:.3g}, sd={d.sd:.2f} pp, n={d.n}); "
            f"{needed} seeds for {d.effect:+.2f} pp")

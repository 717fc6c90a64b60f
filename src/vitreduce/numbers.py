"""Small numeric predicates shared by training, metrics and reports."""
from __future__ import annotations

import math


def is_finite(value) -> bool:
    """True for a real number that is neither NaN nor infinite; False for None and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value)


# Units for multiply-accumulate counts, largest first.
_MAC_UNITS = ((1e12, "TMACs"), (1e9, "GMACs"), (1e6, "MMACs"), (1e3, "KMACs"))


def macs_unit(values) -> tuple[float, str]:
    """(divisor, unit) in which the largest of ``values`` (exact MAC counts) prints between 1 and 1000:
    GMACs for ViT-B/16 (16.85), MMACs or KMACs for the tiny models of tests and demos, never 0.00."""
    top = max((v for v in values if v is not None), default=0)
    return next(((div, unit) for div, unit in _MAC_UNITS if top >= div), (1.0, "MACs"))


def format_macs(value, divisor: float, digits: int = 2) -> str:
    """An exact MAC count in the unit of ``macs_unit``; "n/a" for None."""
    return "n/a" if value is None else f"{value / divisor:,.{digits}f}"


def ranges_overlap(low_a: float, high_a: float, low_b: float, high_b: float) -> bool:
    """Whether the closed ranges [low_a, high_a] and [low_b, high_b] share a point: two timings whose
    [min, max] over repeats overlap cannot be told apart, so no ratio of them is worth printing."""
    return low_a <= high_b and low_b <= high_a

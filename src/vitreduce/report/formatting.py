"""Numbers in the report's tables: mean ± sample std to the precision the spread supports, one format per
column. Every table of the report (results, sharpness, the headline's) formats through these functions.
"""
from __future__ import annotations

import math

from vitreduce.report.records import VariantEntry

NA = "n/a"


def places(of: float, sig: int) -> int:
    """Decimal places that show `of` to `sig` significant digits (negative: tens, hundreds...)."""
    return sig - 1 - math.floor(math.log10(abs(of))) if of else 0


def fixed(x: float, decimals: int) -> str:
    return f"{round(x, decimals):.0f}" if decimals <= 0 else f"{x:.{decimals}f}"


def pm(mean, std, digits: int = 2, decimals: int | None = None) -> str:
    """mean ± sample std, both to `decimals` places (default: the std to 2 significant digits, 4.33 ± 0.58);
    `digits` decimals where the std is 0; the std left out where undefined (n = 1)."""
    if mean is None:
        return NA
    if decimals is None:
        decimals = places(std, 2) if std else digits
    return fixed(mean, decimals) if std is None else f"{fixed(mean, decimals)} ± {fixed(std, decimals)}"


def pm_column(pairs: list[tuple], digits: int = 2) -> list[str]:
    """One column of mean ± std, one format: the decimal place of its most precise nonzero std."""
    stds = [s for m, s in pairs if m is not None and s]
    column = max((places(s, 2) for s in stds), default=digits)
    return [pm(m, s, digits, column) for m, s in pairs]


def variant_label(name: str, entry: VariantEntry) -> str:
    """A variant's name in a table, the baseline marked."""
    return f"{name} (baseline)" if entry.baseline else name

"""Small numeric predicates shared by training, metrics and reports."""
from __future__ import annotations

import math


def is_finite(value) -> bool:
    """True for a real number that is neither NaN nor infinite; False for None and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value)

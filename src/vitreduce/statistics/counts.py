"""Tests on counts: how often an event (a run diverging) happened in two groups of runs."""
from __future__ import annotations

from scipy import stats as sps


def fisher_exact(events_a: int, n_a: int, events_b: int, n_b: int) -> float:
    """Two-sided p-value of Fisher's exact test that two groups share one event rate (1.0 when n is 0)."""
    if not (0 <= events_a <= n_a and 0 <= events_b <= n_b):
        raise ValueError(f"need 0 <= events <= n, got {events_a}/{n_a} and {events_b}/{n_b}")
    if n_a == 0 or n_b == 0:
        return 1.0
    table = [[events_a, n_a - events_a], [events_b, n_b - events_b]]
    return float(min(1.0, sps.fisher_exact(table, alternative="two-sided").pvalue))

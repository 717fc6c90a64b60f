"""How a p-value is printed, everywhere one is shown (report.md and report.html, tables, the terminal)."""
from __future__ import annotations

MAX_DIGITS = 17  # a double's significant digits: with these the text is the value itself


def _side(x: float, alpha: float) -> int:
    return (x > alpha) - (x < alpha)


def fmt_p(p: float, alpha: float) -> str:
    """p with 3 significant digits (2 below 0.001, in e-notation), and more where fewer would put the printed
    number on the other side of alpha or on alpha itself: 0.0499849 prints as 0.04998, 0.0500001 as
    0.0500001, and only p = alpha prints as alpha. The verdict beside it compares p itself with alpha."""
    for digits in range(3, MAX_DIGITS + 1):
        text = f"{p:.{digits}g}" if p >= 1e-3 else f"{p:.{digits - 2}e}"
        if _side(float(text), alpha) == _side(p, alpha):
            return text
    return repr(p)

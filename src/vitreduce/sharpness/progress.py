"""Where the long sharpness and landscape loops report their steps: a protocol, a silent sink and a console one.

A Hessian-vector product or a loss evaluation can take seconds on a real model, so the estimates
report every one of them. ``vitreduce.console.Progress`` is the training loop's epoch bar; this is
the step counter of an analysis.
"""
from __future__ import annotations

import sys
import time
from typing import Protocol

from vitreduce.console import clock


class ProgressSink(Protocol):
    """Receives one ``step`` per Hessian-vector product (or loss evaluation); ``resize`` changes the planned total."""

    def step(self, note: str = "") -> None: ...

    def resize(self, delta: int) -> None: ...


class Silent:
    """A ``ProgressSink`` that reports nothing (the default of every estimate)."""

    def step(self, note: str = "") -> None:
        pass

    def resize(self, delta: int) -> None:
        pass


class ConsoleProgress:
    """Steps with elapsed time and ETA: a tqdm bar when stderr is a terminal, plain lines otherwise.

    Args:
        total: planned steps (``resize`` adjusts it when an estimate converges early).
        unit: what a step is, e.g. ``HVP``.
        quiet: print nothing.
        every: seconds between plain lines at most.
    """

    def __init__(self, total: int, unit: str = "step", *, quiet: bool = False, every: float = 10.0):
        self.total, self.unit, self.quiet, self.every = total, unit, quiet, every
        self.done = 0
        self.start = self.last = time.perf_counter()
        self.bar = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def step(self, note: str = "") -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(note, refresh=False)
            self.bar.update(1)
            return
        now = time.perf_counter()
        if self.quiet or (now - self.last < self.every and 1 < self.done < self.total):
            return
        self.last = now
        elapsed = now - self.start
        eta = elapsed / self.done * max(self.total - self.done, 0)
        print(f"  {self.done}/{self.total} {self.unit}s, {clock(elapsed)} elapsed, ETA {clock(eta)}  {note}",
              file=sys.stderr, flush=True)

    def resize(self, delta: int) -> None:
        self.total += delta
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

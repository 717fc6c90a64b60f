"""Train a run directory and SIGKILL this process at the n-th training event: a crash at a chosen moment.

    python tests/killer.py EVENT:N CONFIG OUT

EVENT is "step" (after an optimizer step) or "save" (a checkpoint's files written, not yet visible);
see vitreduce.train.loop.EventHook. The tests that check exact resume start this as a subprocess
(conftest's ``killer`` fixture gives its path).
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from vitreduce.train.config import load_config
from vitreduce.train.loop import train

KILLER = Path(__file__).resolve()  # what the tests run: [sys.executable, KILLER, "step:7", config, out]


def kill_at(spec: str):
    """An ``on_event`` hook that SIGKILLs this process at the n-th event named in ``spec`` ("step:7")."""
    target, _, count = spec.partition(":")
    seen = 0

    def on_event(event: str) -> None:
        nonlocal seen
        if event == target:
            seen += 1
            if seen == int(count):
                os.kill(os.getpid(), signal.SIGKILL)

    return on_event


def main(argv: list[str]) -> int:
    spec, config, out = argv
    train(load_config(config), out, on_event=kill_at(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

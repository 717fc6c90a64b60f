"""Train a run directory and SIGKILL this process at the n-th training event: a crash at a chosen moment.

    python tests/killer.py EVENT:N CONFIG OUT
    python tests/killer.py readonly@EVENT:N CONFIG OUT

EVENT is "step" (after an optimizer step), "save" (a checkpoint's files written, not yet visible) or
another step of a save ("save:renamed", "save:link:best", "save:link:last", "save:pruned"); see
vitreduce.train.loop.EventHook. With ``readonly@`` the run is not killed: at that event the run
directory is made read-only (a read-only bind mount when running as root, which chmod cannot stop: run
it under ``unshare --user --map-root-user --mount``), and training goes on to meet it. A VitreduceError
ends the script as the CLI ends: its message on stderr, exit code 2. The tests that check exact resume
start this as a subprocess (conftest's ``killer`` fixture gives its path).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from vitreduce.errors import VitreduceError
from vitreduce.train.config import load_config
from vitreduce.train.loop import train

KILLER = Path(__file__).resolve()  # what the tests run: [sys.executable, KILLER, "step:7", config, out]


def kill_at(spec: str, action=None):
    """An ``on_event`` hook that calls ``action`` (default: SIGKILL this process) at the n-th event named in
    ``spec`` ("step:7", "save:link:last:2")."""
    target, _, count = spec.rpartition(":")
    seen = 0

    def on_event(event: str) -> None:
        nonlocal seen
        if event == target:
            seen += 1
            if seen == int(count):
                (action or (lambda: os.kill(os.getpid(), signal.SIGKILL)))()

    return on_event


def make_read_only(folder: Path) -> None:
    """No more writes under ``folder``, whoever we are."""
    if os.geteuid() == 0:
        subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
        return
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode & ~0o222)


def main(argv: list[str]) -> int:
    spec, config, out = argv
    action = None
    if spec.startswith("readonly@"):
        spec = spec.removeprefix("readonly@")
        action = lambda: make_read_only(Path(out))  # noqa: E731
    try:
        train(load_config(config), out, on_event=kill_at(spec, action))
    except VitreduceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

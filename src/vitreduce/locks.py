"""Run locks: one process trains a run directory at a time (an exclusive flock on RUN_DIR/.lock).

``vitreduce train --out DIR`` and a study's runner take the same lock on the same file, so a direct
train and a study run of one directory exclude each other. The lock file names its holder (pid, host,
since when) for the message the next process prints. The kernel releases the lock when the last
descriptor of the holding open file closes, so a killed holder never leaves a stale lock.

Nesting: a process that already holds the lock on a directory (a study's worker, which then calls
``train`` in-process) takes it again at no cost; a child it starts (torchrun) is handed the lock's token
in the environment (``RunLock.child_env``) and counts as holding it.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import socket
import time
from pathlib import Path

LOCK_FILE = ".lock"
TOKEN_ENV = "VITREDUCE_RUN_LOCK_TOKEN"  # set by a lock holder for the child process it trains in

_held: dict[str, RunLock] = {}  # locks this process holds, by resolved lock-file path


class RunLock:
    """An exclusive, non-blocking flock on RUN_DIR/.lock, held while the run trains.

    Args:
        run_dir: the run directory (it must exist).
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_FILE
        self.handle = None
        self.token = ""
        self.nested = False  # held through an outer holder (this process's, or the parent's that started us)

    @property
    def held(self) -> bool:
        return self.handle is not None or self.nested

    def acquire(self) -> bool:
        """Take the lock; False when another process holds it."""
        key = str(self.path.resolve())
        if key in _held:
            self.nested, self.token = True, _held[key].token
            return True
        handle = open(self.path, "a+")  # noqa: SIM115 (held open for the run's lifetime)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            token = os.environ.get(TOKEN_ENV, "")
            self.nested = bool(token) and self._record().get("token") == token
            self.token = token if self.nested else ""
            return self.nested
        self.token = secrets.token_hex(8)
        since = time.strftime("%Y-%m-%d %H:%M:%S %z")
        handle.seek(0)
        handle.truncate(0)
        handle.write(f"pid {os.getpid()}\nhost {socket.gethostname()}\nsince {since}\ntoken {self.token}\n")
        handle.flush()
        self.handle = handle
        _held[key] = self
        return True

    def _record(self) -> dict[str, str]:
        """The holder's lines of the lock file ({'pid': ..., 'host': ..., 'since': ..., 'token': ...})."""
        with contextlib.suppress(OSError, UnicodeDecodeError):
            lines = self.path.read_text().splitlines()
            if len(lines) == 1 and lines[0].strip().isdigit():  # an older vitreduce wrote the pid alone
                return {"pid": lines[0].strip()}
            return dict(line.split(" ", 1) for line in lines if " " in line)
        return {}

    def holder(self) -> str:
        """Who holds the lock, for messages: 'pid 123 on host gpu1 since 2025-01-02 10:00:00 +0000'."""
        record = self._record()
        text = f"pid {record.get('pid', '?')}"
        if "host" in record:
            text += f" on host {record['host']}"
        if "since" in record:
            text += f" since {record['since']}"
        return text

    def child_env(self) -> dict[str, str]:
        """Environment entries that let a child process train under this lock."""
        return {TOKEN_ENV: self.token} if self.token else {}

    def release(self) -> None:
        if self.handle is not None:
            _held.pop(str(self.path.resolve()), None)
            self.handle.close()  # closing the last descriptor releases the flock
            self.handle = None
        self.nested = False

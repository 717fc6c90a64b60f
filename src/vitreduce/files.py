"""Crash-safe file writing: a reader sees the old file or the new one, never half of one."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from vitreduce.errors import VitreduceError


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)`` then fsync and rename onto ``path``: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a directory's entries (a rename, a new file) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomic binary write; an unwritable place is a VitreduceError naming the file."""
    _guarded(path, lambda tmp: Path(tmp).write_bytes(data))


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomic text write; an unwritable place is a VitreduceError naming the file."""
    _guarded(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: str | os.PathLike, data: Any, default=None) -> None:
    """Atomic JSON write, indented, ending in a newline (``default`` as for ``json.dumps``)."""
    write_text(path, json.dumps(data, indent=2, default=default) + "\n")


def _guarded(path: str | os.PathLike, write) -> None:
    try:
        atomic_write(path, write)
    except OSError as err:
        raise VitreduceError(f"cannot write {path}: {err.strerror or err}; choose a writable place") from None

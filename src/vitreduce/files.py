"""Crash-safe file writing: a reader sees the old file or the new one, never half of one; every file and
folder made through a temporary name gets the mode the umask gives a plainly created one (``tempfile``
makes them owner-only, which would hide a run from the colleagues a umask of 022 lets read it)."""
from __future__ import annotations

import json
import os
import re
import tempfile
import threading
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
        os.chmod(tmp, 0o666 & ~umask())  # after write: a writer may have replaced the file
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_UMASK_LOCK = threading.Lock()


def umask() -> int:
    """The process's umask, read without changing it where Linux shows it (/proc/self/status), else by
    setting and restoring it under a lock."""
    try:
        with open("/proc/self/status") as status:
            found = re.search(r"^Umask:\s*([0-7]+)", status.read(), re.MULTILINE)
        if found:
            return int(found.group(1), 8)
    except OSError:
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)  # a file made meanwhile by another thread gets owner-only, never wider
        os.umask(mask)
    return mask


def make_temp_dir(parent: str | os.PathLike, name: str, suffix: str = ".tmp") -> Path:
    """A new uniquely named folder ``.NAME.*SUFFIX`` in ``parent``, with the mode the umask gives a folder
    (``tempfile.mkdtemp`` makes it 0700), to be renamed into place once complete."""
    folder = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=suffix, dir=parent))
    os.chmod(folder, 0o777 & ~umask())
    return folder


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

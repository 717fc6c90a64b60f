"""The kept checkpoint history: the model files of every K-th epoch (``checkpoint.keep_every_epochs``).

``checkpoints/epoch-<E>/`` holds ``model.safetensors`` and, with an EMA, ``model_ema.safetensors`` of the
checkpoint saved at the end of epoch E (E counted from 1, as in metrics.jsonl): what an analysis over
training (sharpness at each epoch) loads with ``vitreduce.load``. The optimizer state is not kept: these
folders are for analysis, not for resuming. The files are hard links to the epoch's checkpoint files
(no extra space while that checkpoint exists; checkpoint files are never rewritten in place), or copies
where the filesystem has no hard links. Pruning never removes an ``epoch-<E>`` folder.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from vitreduce.files import fsync_dir


def due(epochs_done: int, batch: int, every: int) -> str | None:
    """The history folder's name when a checkpoint at this position is to be kept, else None: at an
    epoch's end (``batch`` 0) of an epoch that is a multiple of ``every`` (0: never)."""
    if every and batch == 0 and epochs_done and epochs_done % every == 0:
        return f"epoch-{epochs_done}"
    return None


def keep(ckpt_dir: Path, source: Path, name: str, files: Iterable[str]) -> Path:
    """Link (or copy) ``files`` of the checkpoint directory ``source`` into ``ckpt_dir/name``.

    Written as ``.<name>.tmp`` and renamed, so ``name`` is complete whenever it exists; an existing
    ``name`` (the same epoch saved again after an interrupted run) is replaced.
    """
    final, tmp = ckpt_dir / name, ckpt_dir / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for file in files:
        if (source / file).is_file():
            try:
                os.link(source / file, tmp / file)
            except OSError:
                shutil.copy2(source / file, tmp / file)
                with open(tmp / file, "rb+") as handle:
                    os.fsync(handle.fileno())
    fsync_dir(tmp)
    if final.is_dir() and not final.is_symlink():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(ckpt_dir)
    return final

"""What a run records besides checkpoints: metrics.jsonl and TensorBoard event files.

All of it is rank 0's job; the trainer builds these objects through ``DistInfo.on_main``.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from vitreduce.files import atomic_write


class MetricsFile:
    """metrics.jsonl: append-only, one complete JSON line per epoch (docs/run-directory.md)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def truncate(self, epochs_done: int) -> None:
        """Keep only the records of epochs 1..epochs_done (a resumed run rewrites the later ones)."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().split("\n"):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # blank, or the partial last line of a killed write
            if record.get("epoch", math.inf) <= epochs_done:
                kept.append(line + "\n")
        text = "".join(kept)
        if text != self.path.read_text():
            atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))

    def append(self, record: dict[str, Any]) -> None:
        """Write one epoch's record as one line, flushed and synced."""
        line = json.dumps(record, allow_nan=True) + "\n"
        with open(self.path, "a") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())


class TensorBoard:
    """Scalars to RUN_DIR/tensorboard, one point per epoch, x-axis = optimizer step.

    Args:
        log_dir: where the event files go.
        purge_step: on resume, the step of the checkpoint: points logged after it are dropped.
    """

    def __init__(self, log_dir: str | os.PathLike, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def epoch(self, record: dict[str, Any]) -> None:
        step = record["step"]
        for key in ("lr", "train_loss", "img_s", "skipped_steps", "bad_images"):
            self.writer.add_scalar(f"train/{key}", record[key], step)
        for kind in ("raw", "ema"):
            for key, value in (record.get(kind) or {}).items():
                self.writer.add_scalar(f"eval_{kind}/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

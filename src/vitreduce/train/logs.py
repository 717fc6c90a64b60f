"""What a run reports: metrics.jsonl, a progress bar or plain lines, TensorBoard event files.

All of it is rank 0's job; the trainer builds these objects through ``DistInfo.on_main``.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
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


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """A tqdm bar with images/s and ETA on a terminal; plain periodic lines otherwise (CI, log files).

    Args:
        mode: 'auto' (bar when stderr is a terminal), 'bar', 'lines' or 'none'.
        epochs: total epochs, for the "epoch e/E" prefix.
        every_steps: optimizer steps between plain lines.
    """

    def __init__(self, mode: str, epochs: int, every_steps: int):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode, self.epochs, self.every_steps = mode, epochs, every_steps
        self._bar = None

    def start_epoch(self, epoch: int, batches: int, start_batch: int) -> None:
        """Begin epoch ``epoch`` (from 1) of ``batches`` batches, ``start_batch`` of them already done."""
        self.epoch, self.batches, self.done = epoch, batches, start_batch
        self.images, self.steps, self.start = 0, 0, time.perf_counter()
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=batches, initial=start_batch, desc=f"epoch {epoch}/{self.epochs}",
                             unit="batch", dynamic_ncols=True, leave=False)

    def update(self, batches: int, images: int, loss: float, lr: float) -> None:
        """After one optimizer step over ``batches`` micro-batches of ``images`` images in total."""
        self.done += batches
        self.images += images
        self.steps += 1
        elapsed = time.perf_counter() - self.start
        rate = self.images / elapsed if elapsed > 0 else 0.0
        if self._bar is not None:
            self._bar.set_postfix_str(f"loss {loss:.4f} lr {lr:.2e} {rate:.0f} img/s", refresh=False)
            self._bar.update(batches)
        elif self.mode == "lines" and (self.steps % self.every_steps == 0 or self.done == self.batches):
            eta = elapsed / self.steps * (self.batches - self.done) / batches if self.steps else 0.0
            self.write(f"epoch {self.epoch}/{self.epochs} batch {self.done}/{self.batches} loss {loss:.4f} "
                       f"lr {lr:.3e} {rate:.1f} img/s eta {_clock(eta)}")

    def end_epoch(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def write(self, message: str) -> None:
        """Print a line without breaking the bar."""
        if self.mode == "none":
            return
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)


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

"""What a run records besides checkpoints: metrics.jsonl and steps.jsonl (written and read here) and
TensorBoard event files.

All of it is rank 0's job; the trainer builds these objects through ``DistInfo.on_main``.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from vitreduce.errors import VitreduceError
from vitreduce.files import write_text
from vitreduce.train.summary import SUMMARY, write_summary


class JsonLines:
    """An append-only JSON-lines file, one complete line per record, each record numbered by ``key``
    (docs/run-directory.md): metrics.jsonl (``"epoch"``) and steps.jsonl (``"step"``)."""

    key = "epoch"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def truncate(self, done: int) -> None:
        """Keep only the records numbered 1..done (a resumed run rewrites the later ones)."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().split("\n"):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # blank, or the partial last line of a killed write
            if isinstance(record, dict) and record.get(self.key, math.inf) <= done:
                kept.append(line + "\n")
        text = "".join(kept)
        if text != self.path.read_text():
            write_text(self.path, text)

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as one line, flushed and synced."""
        line = json.dumps(record, allow_nan=True) + "\n"
        try:
            with open(self.path, "a") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as err:
            raise VitreduceError(f"cannot append to {self.path}: {err.strerror or err}; the checkpoints are intact: "
                                 "make the run directory writable (or free space) and rerun to resume") from None


class MetricsFile(JsonLines):
    """metrics.jsonl: one line per epoch; summary.csv beside it (vitreduce.train.summary) follows each change."""

    key = "epoch"

    def truncate(self, done: int) -> None:
        super().truncate(done)
        self.summarize()

    def append(self, record: dict[str, Any]) -> None:
        super().append(record)
        self.summarize()

    def summarize(self) -> None:
        """Rewrite summary.csv, timm's layout of these records, from the file as it now is."""
        if self.path.exists():
            write_summary(self.path.with_name(SUMMARY), read_metrics(self.path))


class StepsFile(JsonLines):
    """steps.jsonl: one line per logged optimizer step (``logging.step_every``)."""

    key = "step"


def read_metrics(path: Path | str) -> list[dict]:
    """The epoch records of a metrics.jsonl, sorted by epoch (see ``read_records``)."""
    return read_records(path, "epoch")


def read_steps(path: Path | str) -> list[dict]:
    """The step records of a steps.jsonl, sorted by step (see ``read_records``)."""
    return read_records(path, "step")


def read_records(path: Path | str, key: str) -> list[dict]:
    """The records of a JSON-lines file, sorted by their integer ``key``.

    A last line without a newline that does not parse is a write in progress and is ignored. A bad line
    anywhere else is corruption and raises. When a number is logged twice (a run resumed from an earlier
    checkpoint logs the records after it again), the later record wins.
    """
    path = Path(path)
    lines = path.read_text().split("\n")  # a complete file ends with "\n", so the last item is ""
    by_key: dict[int, dict] = {}
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        partial = i == len(lines) - 1
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if partial:
                break
            raise VitreduceError(f"{path}:{i + 1} is not a JSON line ({err.msg}); fix or delete that line") from err
        number = record.get(key) if isinstance(record, dict) else None
        if not isinstance(number, int) or isinstance(number, bool):
            raise VitreduceError(f"{path}:{i + 1} has no integer {key!r}; every line must be one {key}'s record")
        by_key[number] = record
    return [by_key[n] for n in sorted(by_key)]


def step_scalars(record: dict[str, Any]) -> dict[str, float]:
    """A steps.jsonl record's scalars by tag: ``step/...`` and the per-MLP gradient norms ``grad_norm_mlp/...``
    (every tracker logs these, at x = the record's optimizer step)."""
    scalars = {f"step/{key}": record[key] for key in ("loss", "lr", "grad_norm", "update_norm")}
    scalars.update({f"grad_norm_mlp/{name}": value for name, value in record["mlp_grad_norm"].items()})
    return {tag: value for tag, value in scalars.items() if value is not None}


def epoch_scalars(record: dict[str, Any]) -> dict[str, float]:
    """A metrics.jsonl record's scalars by tag: ``train/...``, ``eval_raw/...``, ``eval_ema/...``."""
    scalars = {f"train/{key}": record[key] for key in ("lr", "train_loss", "img_s", "skipped_steps", "bad_images")}
    for kind in ("raw", "ema"):
        scalars.update({f"eval_{kind}/{key}": value for key, value in (record.get(kind) or {}).items()})
    return {tag: value for tag, value in scalars.items() if value is not None}


class TensorBoard:
    """Scalars to RUN_DIR/tensorboard, x-axis = optimizer step: one point per epoch (``epoch``), and per
    logged step (``step``; flushed with the next epoch's points or at close); the run's config as hparams.

    Args:
        log_dir: where the event files go.
        purge_step: on resume, the step of the checkpoint: points logged after it are dropped.
    """

    def __init__(self, log_dir: str | os.PathLike, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def params(self, params: dict[str, Any]) -> None:
        """The config, flattened (``tracking.flat_params``), as hparams beside the scalars (not in a run folder
        of their own, as ``add_hparams`` would put them): the HParams tab then filters and compares runs."""
        from torch.utils.tensorboard.summary import hparams

        metrics = {f"eval_{kind}/{key}": None for kind in ("ema", "raw") for key in ("top1", "loss")}
        for summary in hparams(params, metrics):
            self.writer.file_writer.add_summary(summary)

    def step(self, record: dict[str, Any]) -> None:
        for tag, value in step_scalars(record).items():
            self.writer.add_scalar(tag, value, record["step"])

    def epoch(self, record: dict[str, Any]) -> None:
        for tag, value in epoch_scalars(record).items():
            self.writer.add_scalar(tag, value, record["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """The progress line of an epoch's record (or of the final metrics: no train_loss)."""
    text = f"epoch {record['epoch']}/{epochs}"
    if "train_loss" in record:
        loss = float("nan") if record["train_loss"] is None else record["train_loss"]
        text += f" train_loss {loss:.4f} lr {record['lr']:.3e} {record['img_s']:.1f} img/s"
    for kind in ("raw", "ema"):
        if record.get(kind):
            m = record[kind]
            text += f" | {kind} top1 {m['top1']:.2f} top5 {m['top5']:.2f} loss {m['loss']:.4f}"
    return text

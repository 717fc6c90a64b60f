"""The run directory (docs/run-directory.md): deciding new / resume / finished, and the files written once
(config.yaml, run.json, predictions.csv, the final model files, done.json; metrics.jsonl is vitreduce.train.logs').

Rerunning the same command on a run directory resumes it; a directory made with a different config
is refused with the keys that differ; a finished one (done.json) is left alone.
"""
from __future__ import annotations

import csv
import io
import json
import os
import sys
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitreduce.config_tree import read_yaml
from vitreduce.errors import VitreduceError
from vitreduce.files import write_json, write_text
from vitreduce.locks import LOCK_FILE
from vitreduce.reduction.accounting import describe
from vitreduce.train import resume
from vitreduce.train.config import TrainConfig, changed_keys, dump
from vitreduce.train.ema import Ema
from vitreduce.train.state import Position, write_model_files
from vitreduce.version import __version__

CONFIG, RUN, METRICS, PREDICTIONS, DONE = "config.yaml", "run.json", "metrics.jsonl", "predictions.csv", "done.json"
CHECKPOINTS = "checkpoints"


class RunStatus(StrEnum):
    """What a run directory holds: nothing yet, an unfinished run, or a finished one (done.json)."""

    NEW = "new"
    RESUME = "resume"
    DONE = "done"


@dataclass(frozen=True)
class RunStart:
    """What to do with a run directory."""

    status: RunStatus
    checkpoint: str | None = None  # the newest checkpoint ("resume" only; resume.choose checks it before use)
    done: dict[str, Any] | None = None  # done.json ("done" only)
    replaces: tuple[str, ...] = ()  # "new" over a config.yaml of another config that never saved anything


def inspect(out: Path, config: TrainConfig, must_exist: bool = False) -> RunStart:
    """Decide what to do with the run directory (reads only; ``begin`` writes config.yaml).

    Args:
        out: the run directory.
        config: the resolved config.
        must_exist: ``--resume``: refuse when there is no run to resume.
    """
    if out.exists() and not out.is_dir():
        raise VitreduceError(f"run directory {out} exists and is not a folder; choose another --out")
    saved = out / CONFIG
    if saved.is_file():
        changed = changed_keys(read_yaml(saved), config.to_dict())
        if changed and not holds_nothing(out):
            raise VitreduceError(
                f"{out} holds a run made with a different config; use another --out, or the same config.\n  "
                + "\n  ".join(changed)
            )
        if (out / DONE).is_file():
            return RunStart(RunStatus.DONE, done=json.loads((out / DONE).read_text()))
        if resume.candidates(out / CHECKPOINTS):
            found = resume.latest(out / CHECKPOINTS)
            return RunStart(RunStatus.RESUME, checkpoint=str(found) if found else None)
        if must_exist:
            raise VitreduceError(f"--resume: {out} holds no checkpoint yet; nothing to resume")
        return RunStart(RunStatus.NEW, replaces=tuple(changed))
    if must_exist:
        raise VitreduceError(f"--resume: {out} holds no run ({CONFIG} missing); nothing to resume")
    if out.exists() and any(p.name != LOCK_FILE for p in out.iterdir()):
        raise VitreduceError(f"{out} is not empty and holds no vitreduce run ({CONFIG} missing); choose another --out")
    return RunStart(RunStatus.NEW)


def holds_nothing(out: Path) -> bool:
    """Whether a run directory with a config.yaml holds nothing a run made: no checkpoint (not even a
    damaged one), no metrics, no done.json. A rerun with another config may then start it afresh (a run
    refused or stopped before its first checkpoint must not block the corrected command)."""
    ckpt = out / CHECKPOINTS
    saved = ckpt.is_dir() and any(not p.name.startswith(".") for p in ckpt.iterdir())
    metrics = out / METRICS
    return not saved and not (metrics.is_file() and metrics.stat().st_size) and not (out / DONE).exists()


def create(out: Path) -> None:
    """Create the run directory, refusing an unwritable one."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        reason = err.strerror or err
        raise VitreduceError(f"cannot create run directory {out}: {reason}; choose another --out") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise VitreduceError(f"run directory {out} is not writable; choose another --out or fix its permissions")


def begin(out: Path, config: TrainConfig, start: RunStart | None = None) -> None:
    """Create the run directory and write the resolved config.yaml (replacing the one ``start.replaces`` names)."""
    create(out)
    if start is not None and start.replaces:
        print(f"{out}: its config.yaml is of a run that stopped before saving anything; starting afresh with this "
              f"config ({len(start.replaces)} key(s) differ: {'; '.join(start.replaces)})", file=sys.stderr, flush=True)
        write_text(out / CONFIG, dump(config))
    elif not (out / CONFIG).is_file():
        write_text(out / CONFIG, dump(config))


def write_run_record(out: Path, model: nn.Module, config: TrainConfig, world_size: int) -> None:
    """run.json: what the model is (``ModelDescription.record``) and how it is trained, written at the start."""
    record = {**describe(model).record(), "seed": config.seed, "num_classes": config.model.num_classes,
              "epochs": config.epochs, "vitreduce_version": __version__, "world_size": world_size}
    write_json(out / RUN, record)


def write_predictions(out: Path, indices: torch.Tensor, labels: torch.Tensor, raw: torch.Tensor,
                      ema: torch.Tensor | None = None) -> None:
    """predictions.csv: ``index,label,raw,ema`` sorted by index (``ema`` empty without an EMA).

    Args:
        out: the run directory.
        indices: (N,) dataset positions of the eval images.
        labels: (N,) their true classes.
        raw: (N,) the raw model's arg-max class of each.
        ema: (N,) the EMA model's, or None.
    """
    order = indices.argsort()
    rows = zip(indices[order].tolist(), labels[order].tolist(), raw[order].tolist(),
               ema[order].tolist() if ema is not None else [""] * len(order), strict=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["index", "label", "raw", "ema"])
    writer.writerows(rows)
    write_text(out / PREDICTIONS, buffer.getvalue())


def write_final_models(out: Path, module: nn.Module, ema: Ema | None, position: Position) -> None:
    """model.safetensors and model_ema.safetensors of the finished run (as in its last checkpoint)."""
    try:
        write_model_files(out, module, ema, position)
    except OSError as err:
        raise VitreduceError(f"cannot write the final model files in {out} ({err.filename}: {err.strerror or err}); "
                             "its checkpoints are intact: make it writable and rerun the same command") from None


def write_done(out: Path, epochs: int, wall_s: float, final: dict[str, Any]) -> None:
    """done.json, written last: its presence marks the run finished (a rerun then does nothing)."""
    write_json(out / DONE, {"epochs": epochs, "wall_s": wall_s, "final": final})

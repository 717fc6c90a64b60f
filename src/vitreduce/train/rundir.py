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
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from vitreduce.errors import VitreduceError
from vitreduce.files import write_json, write_text
from vitreduce.reduction.accounting import describe
from vitreduce.train.config import TrainConfig, changed_keys, dump
from vitreduce.train.ema import Ema
from vitreduce.train.state import Position, latest, write_model_files
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
    checkpoint: str | None = None  # the checkpoint directory to resume from ("resume" only)
    done: dict[str, Any] | None = None  # done.json ("done" only)


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
        try:
            old = yaml.safe_load(saved.read_text())
        except yaml.YAMLError as err:
            raise VitreduceError(f"{saved} is not valid YAML ({err}); it was not written by vitreduce") from None
        changed = changed_keys(old or {}, config.to_dict())
        if changed:
            raise VitreduceError(
                f"{out} holds a run made with a different config; use another --out, or the same config.\n  "
                + "\n  ".join(changed)
            )
        if (out / DONE).is_file():
            return RunStart(RunStatus.DONE, done=json.loads((out / DONE).read_text()))
        found = latest(out / CHECKPOINTS)
        if found is None:
            return RunStart(RunStatus.NEW)
        return RunStart(RunStatus.RESUME, checkpoint=str(found))
    if must_exist:
        raise VitreduceError(f"--resume: {out} holds no run ({CONFIG} missing); nothing to resume")
    if out.exists() and any(out.iterdir()):
        raise VitreduceError(f"{out} is not empty and holds no vitreduce run ({CONFIG} missing); choose another --out")
    return RunStart(RunStatus.NEW)


def begin(out: Path, config: TrainConfig) -> None:
    """Create the run directory (refusing an unwritable one) and write the resolved config.yaml."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        reason = err.strerror or err
        raise VitreduceError(f"cannot create run directory {out}: {reason}; choose another --out") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise VitreduceError(f"run directory {out} is not writable; choose another --out or fix its permissions")
    if not (out / CONFIG).is_file():
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
    write_model_files(out, module, ema, position)


def write_done(out: Path, epochs: int, wall_s: float, final: dict[str, Any]) -> None:
    """done.json, written last: its presence marks the run finished (a rerun then does nothing)."""
    write_json(out / DONE, {"epochs": epochs, "wall_s": wall_s, "final": final})

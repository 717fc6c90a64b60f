"""The run directory (docs/run-directory.md): deciding new / resume / finished, and the files written once.

Rerunning the same command on a run directory resumes it; a directory made with a different config
is refused with the keys that differ; a finished one (done.json) is left alone.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vitreduce.errors import VitreduceError
from vitreduce.files import write_text
from vitreduce.train.config import TrainConfig, changed_keys, dump
from vitreduce.train.state import latest

CONFIG, RUN, METRICS, PREDICTIONS, DONE = "config.yaml", "run.json", "metrics.jsonl", "predictions.csv", "done.json"
CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class RunStart:
    """What to do with a run directory."""

    status: str  # "new", "resume" or "done"
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
            return RunStart("done", done=json.loads((out / DONE).read_text()))
        found = latest(out / CHECKPOINTS)
        return RunStart("resume" if found else "new", checkpoint=str(found) if found else None)
    if must_exist:
        raise VitreduceError(f"--resume: {out} holds no run ({CONFIG} missing); nothing to resume")
    if out.exists() and any(out.iterdir()):
        raise VitreduceError(f"{out} is not empty and holds no vitreduce run ({CONFIG} missing); choose another --out")
    return RunStart("new")


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


def write_predictions(path: Path, indices, labels, raw, ema=None) -> None:
    """predictions.csv: ``index,label,raw,ema`` sorted by index (``ema`` empty without an EMA)."""
    order = indices.argsort()
    rows = zip(indices[order].tolist(), labels[order].tolist(), raw[order].tolist(),
               ema[order].tolist() if ema is not None else [""] * len(order), strict=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["index", "label", "raw", "ema"])
    writer.writerows(rows)
    write_text(path, buffer.getvalue())

"""The run directory (docs/run-directory.md): deciding new / resume / finished, and the files written once
(config.yaml, run.json, predictions.csv, the final model files, done.json; metrics.jsonl is vitreduce.train.logs').

Rerunning the same command on a run directory resumes it; a directory made with a different config
is refused with the keys that differ; a finished one (done.json) is left alone. With ``--extend`` only a
larger ``epochs`` may differ: the run continues, its old end's files set aside in ``end-epoch-<old>/``.

Deciding and config.yaml need no torch (a study's dry run and status use them); the functions that read
checkpoints or write model files import what they need.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shlex
import sys
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitreduce.config_tree import read_yaml
from vitreduce.errors import VitreduceError
from vitreduce.files import fsync_dir, write_json, write_text
from vitreduce.locks import LOCK_FILE
from vitreduce.train.config import TrainConfig, changed_keys, dump
from vitreduce.version import __version__

if TYPE_CHECKING:
    import torch
    from torch import nn

    from vitreduce.train.ema import Ema
    from vitreduce.train.model import InitReport
    from vitreduce.train.state import Position

CONFIG, RUN, METRICS, PREDICTIONS, DONE = "config.yaml", "run.json", "metrics.jsonl", "predictions.csv", "done.json"
CHECKPOINTS = "checkpoints"
END_ASIDE = "end-epoch-{}"  # an extended run's earlier end: its done.json, final model files, predictions
LOG = "train.log"  # what `vitreduce train` (or the study running it) printed, appended; may precede config.yaml


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
    extends: int | None = None  # "resume" with --extend to more epochs: the run's epochs count until now


def inspect(out: Path, config: TrainConfig, must_exist: bool = False, extend: bool = False) -> RunStart:
    """Decide what to do with the run directory (reads only; ``begin`` writes config.yaml).

    Args:
        out: the run directory.
        config: the resolved config.
        must_exist: ``--resume``: refuse when there is no run to resume.
        extend: ``--extend``: the config's ``epochs`` may be larger than the run's (docs/training.md).
    """
    if out.exists() and not out.is_dir():
        raise VitreduceError(f"run directory {out} exists and is not a folder; choose another --out")
    saved = out / CONFIG
    if extend and not saved.is_file():
        raise VitreduceError(f"--extend: {out} holds no run ({CONFIG} missing); nothing to extend")
    if saved.is_file():
        old = read_yaml(saved)
        changed = changed_keys(old, config.to_dict())
        extends = None if holds_nothing(out) else _extension(out, old, config, extend)
        if changed and not extends and not holds_nothing(out):
            raise VitreduceError(
                f"{out} holds a run made with a different config; use another --out, or the same config"
                + (" (--extend lets only epochs differ)" if extend else "") + ".\n  " + "\n  ".join(changed)
            )
        if extends:
            from vitreduce.train import resume

            if not resume.candidates(out / CHECKPOINTS):
                raise VitreduceError(f"--extend: {out} holds no checkpoint to continue from")
            return RunStart(RunStatus.RESUME, checkpoint=str(resume.latest(out / CHECKPOINTS)), extends=extends)
        if (done := read_done(out)) is not None:
            return RunStart(RunStatus.DONE, done=done)
        if not holds_nothing(out):  # only then can it have a checkpoint, whose header is read with torch
            from vitreduce.train import resume

            if resume.candidates(out / CHECKPOINTS):
                found = resume.latest(out / CHECKPOINTS)
                return RunStart(RunStatus.RESUME, checkpoint=str(found) if found else None)
        if must_exist:
            raise VitreduceError(f"--resume: {out} holds no checkpoint yet; nothing to resume")
        return RunStart(RunStatus.NEW, replaces=tuple(changed))
    if must_exist:
        raise VitreduceError(f"--resume: {out} holds no run ({CONFIG} missing); nothing to resume")
    if out.exists() and any(p.name not in (LOCK_FILE, LOG) for p in out.iterdir()):
        raise VitreduceError(f"{out} is not empty and holds no vitreduce run ({CONFIG} missing); choose another --out")
    return RunStart(RunStatus.NEW)


def _extension(out: Path, old: dict[str, Any], config: TrainConfig, extend: bool) -> int | None:
    """The run's epochs count when this start extends it to more (``--extend``), else None; refuses a larger
    ``epochs`` without --extend (naming the command that extends) and a smaller one with it."""
    before, after = old.get("epochs"), config.epochs
    if not isinstance(before, int) or before == after or changed_keys(old, config.to_dict(), also=("epochs",)):
        return None  # nothing to extend, or other keys differ too (refused with the list of them)
    if after < before:
        if not extend:
            return None
        raise VitreduceError(f"--extend: {out} holds a run of {before} epochs; it cannot be shortened to {after} "
                             f"(evaluate an epoch's checkpoint instead, or train {after} epochs with another --out)")
    if not extend:
        command = f"vitreduce train --resume --out {shlex.quote(str(out))} --set epochs={after} --extend"
        raise VitreduceError(
            f"{out} holds a run of {before} epochs and this config asks for {after}. To continue that run to {after} "
            f"epochs, add --extend:\n  {command}\nIts learning-rate schedule then becomes timm's schedule for {after} "
            f"epochs from epoch {before + 1} on, so the result differs from a run trained for {after} epochs from "
            "the start (docs/training.md); for that one, use another --out."
        )
    return before


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
    if start is not None and start.extends:
        _set_end_aside(out, start.extends)
        _record_extension(out, config.epochs, start.extends)
        from vitreduce.train.extend import note as extend_note

        print(f"{out}: {extend_note(config, start.extends)}", file=sys.stderr, flush=True)
        write_text(out / CONFIG, dump(config))  # last: until then a rerun of either command finds the old run
    elif start is not None and start.replaces:
        print(f"{out}: its config.yaml is of a run that stopped before saving anything; starting afresh with this "
              f"config ({len(start.replaces)} key(s) differ: {'; '.join(start.replaces)})", file=sys.stderr, flush=True)
        write_text(out / CONFIG, dump(config))
    elif not (out / CONFIG).is_file():
        write_text(out / CONFIG, dump(config))


def _set_end_aside(out: Path, before: int) -> None:
    """Move the end files of the run's first ``before`` epochs into ``end-epoch-<before>/`` beside a copy of
    its config.yaml; done.json first (once it is gone a rerun resumes), each move skipped when done already."""
    from vitreduce.train.state import EMA_MODEL, MODEL

    folder = out / END_ASIDE.format(before)
    moving = [name for name in (DONE, MODEL, EMA_MODEL, PREDICTIONS) if (out / name).is_file()]
    try:
        if moving and not (folder / CONFIG).is_file():
            write_text(folder / CONFIG, (out / CONFIG).read_text())
        for name in moving:
            if not (folder / name).exists():
                os.replace(out / name, folder / name)
        if moving:
            fsync_dir(folder)
            fsync_dir(out)
    except OSError as err:
        raise VitreduceError(f"--extend: cannot move {err.filename} into {folder} ({err.strerror or err}); "
                             f"make {out} writable and rerun the same command") from None


def _record_extension(out: Path, after: int, before: int) -> None:
    """run.json's ``epochs`` becomes the new count; ``extended_from`` lists the counts it was extended from."""
    if (out / RUN).is_file():
        record = json.loads((out / RUN).read_text())
        record["extended_from"] = [*record.get("extended_from", []), before]
        write_json(out / RUN, {**record, "epochs": after})


def write_run_record(out: Path, model: nn.Module, config: TrainConfig, world_size: int,
                     init: InitReport | None = None, teacher: dict | None = None) -> None:
    """run.json: what the model is (``ModelDescription.record``) and how it is trained, written at the start;
    with ``init`` (what ``model.init_checkpoint`` loaded) its "init" record, and its line printed; with
    ``teacher`` (``train.distill.teacher_record``) its "teacher" record."""
    import torch

    from vitreduce.reduction.accounting import describe

    record = {**describe(model).record(), "seed": config.seed, "num_classes": config.model.num_classes,
              "epochs": config.epochs, "vitreduce_version": __version__, "world_size": world_size,
              "threads": torch.get_num_threads()}  # per process: --threads, or a SLURM job's cpus_per_task
    if init is not None:
        record["init"] = init.record()
        print(init.line(), flush=True)
    if teacher:
        record["teacher"] = teacher
        print(f"distill.teacher: {teacher['file']} ({teacher['params']:,} params), val top-1 "
              f"{teacher['val']['top1']:.2f}", flush=True)
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


def write_final_models(out: Path, module: nn.Module, ema: Ema | None, position: Position,
                       header: dict[str, str] | None = None) -> None:
    """model.safetensors and model_ema.safetensors of the finished run (as in its last checkpoint)."""
    from vitreduce.train.state import write_model_files

    try:
        write_model_files(out, module, ema, position, header)
    except OSError as err:
        raise VitreduceError(f"cannot write the final model files in {out} ({err.filename}: {err.strerror or err}); "
                             "its checkpoints are intact: make it writable and rerun the same command") from None


def read_done(out: Path) -> dict[str, Any] | None:
    """done.json's record (``write_done``), None when the run has none; a damaged one (truncated by a full disk
    or a copy cut short) is refused rather than taken for a finished run."""
    path = out / DONE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_bytes())
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        record = err
    if not isinstance(record, dict) or not {"epochs", "wall_s", "final"} <= set(record):
        raise VitreduceError(f"{path} is damaged (not the complete record a finished run writes): remove it and rerun "
                             "the same command, which resumes from the newest checkpoint and writes it again")
    return record


def write_done(out: Path, epochs: int, wall_s: float, final: dict[str, Any]) -> None:
    """done.json, written last: its presence marks the run finished (a rerun then does nothing)."""
    write_json(out / DONE, {"epochs": epochs, "wall_s": wall_s, "final": final})

"""Training-state checkpoints for exact resume, with no pickled objects.

Layout (docs/training.md)::

    RUN_DIR/checkpoints/
      last -> last-00000120/          symlinks, each swapped atomically
      best -> last-00000080/          the peak epoch's state (by checkpoint.best_metric)
      recovery -> recovery-00000100/  mid-epoch state, every checkpoint.recovery_every_steps steps
      last-00000120/
        model.safetensors             raw weights, a vitreduce model checkpoint (vitreduce.load)
        model_ema.safetensors         EMA weights (when the run has an EMA)
        state.safetensors             optimizer state keyed by parameter name, every rank's RNG
                                      states; its header holds the rest as JSON

A checkpoint directory is written under a temporary name, synced and renamed, and only then do the
symlinks point at it (``best`` before ``last``), and superseded directories are pruned last, so a run
killed at any moment leaves a resumable ``last`` and keeps ``best`` (``save`` says why). A save that
would reuse the name of a directory a symlink still points at takes the name ``<name>-2``. Damaged
checkpoints set aside on resume (``damaged-*``, vitreduce.train.resume) and the kept history
(``epoch-<E>``, vitreduce.train.history) are never pruned. Shared
tensors are stored once (by their first name), in the model files and in the optimizer state.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from vitreduce.errors import VitreduceError
from vitreduce.files import fsync_dir
from vitreduce.numbers import is_finite
from vitreduce.reduction import checkpoint
from vitreduce.train import history
from vitreduce.train.ema import Ema

FORMAT = "vitreduce.trainstate.v1"
KINDS = ("last", "best", "recovery")
MODEL, EMA_MODEL = "model.safetensors", "model_ema.safetensors"  # also a finished run directory's model files
STATE = "state.safetensors"


@dataclass
class EpochTotals:
    """Running totals of the epoch in progress, saved with the position so that a resumed epoch's
    train_loss and img/s come out as if it had not stopped. Saved as the position's ``sums`` (JSON)."""

    loss: float = 0.0  # sum of the finite step losses
    steps: int = 0  # steps whose loss was finite (the divisor of train_loss)
    images: int = 0  # images trained, over all ranks
    skipped: int = 0  # steps the optimizer did not take
    bad_images: int = 0  # unreadable images met, over all ranks
    elapsed_s: float = 0.0  # training time of the epoch so far

    def add_step(self, loss: float, skipped: bool, images: int) -> None:
        """Count one optimizer step; a non-finite loss (a skipped step) stays out of the mean."""
        if is_finite(loss):
            self.loss += loss
            self.steps += 1
        self.skipped += int(skipped)
        self.images += images

    @property
    def train_loss(self) -> float | None:
        """The epoch's mean step loss; None when no step had a finite loss."""
        return self.loss / self.steps if self.steps else None


@dataclass
class Position:
    """Where training stands: what a resumed run continues from."""

    epochs_done: int = 0  # completed epochs (trained, evaluated, logged)
    batch: int = 0  # batches of epoch epochs_done + 1 already trained (per rank)
    step: int = 0  # optimizer steps taken in total (skipped ones included)
    world_size: int = 1
    wall_s: float = 0.0  # training wall time so far, over every session of the run
    sums: EpochTotals = field(default_factory=EpochTotals)  # of the epoch in progress
    best: dict[str, Any] | None = None  # {"metric": "ema_top1", "value": 81.2, "epoch": 219}

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> Position:
        """The position a checkpoint header holds (``asdict`` of one)."""
        return cls(**{**saved, "sums": EpochTotals(**saved["sums"])})


@dataclass
class Trainables:
    """The objects a checkpoint saves and restores."""

    module: nn.Module  # the unwrapped model
    optimizer: torch.optim.Optimizer
    scheduler: Any  # a timm scheduler
    scaler: torch.amp.GradScaler
    ema: Ema | None = None
    names: dict[int, str] = field(default_factory=dict)  # id(param) -> name (optim.param_names)
    header: dict[str, str] = field(default_factory=dict)  # what every model file records (data.recorded)


# ---------------------------------------------------------------------------------------------
# Saving


def save(ckpt_dir: str | os.PathLike, kinds: list[str], trainables: Trainables, position: Position,
         rng_states: list[dict[str, Any]], on_event: Callable[[str], None] | None = None, keep_every: int = 0) -> Path:
    """Write one checkpoint and point each of ``kinds`` ('last', 'best', 'recovery') at it.

    The order makes a kill at any moment harmless: the files are written under a temporary name and
    renamed (until then no symlink knows them); ``best`` is pointed before ``last`` (a kill between the
    two leaves ``last`` at the previous epoch, which a rerun trains again and saves as ``best`` anew, so
    the peak is never lost); superseded directories are pruned only once every symlink is in place.

    Args:
        ckpt_dir: RUN_DIR/checkpoints.
        kinds: the symlinks to point at the new checkpoint (its directory is named after the first).
        trainables: model, optimizer, scheduler, scaler, EMA.
        position: where training stands.
        rng_states: every rank's ``capture_rng()``, in rank order.
        on_event: called after each step of the save (a test hook): "written" (files complete, not yet
            visible), "renamed", "link:<kind>" for each symlink, "pruned".
        keep_every: ``checkpoint.keep_every_epochs``: an epoch-end save of every K-th epoch also keeps its
            model files as ``epoch-<E>`` (before the symlinks move: a rerun that trains the epoch again redoes it).
    """
    ckpt_dir = Path(ckpt_dir)
    event = on_event or (lambda step: None)
    final = tmp = ckpt_dir / f"{kinds[0]}-{position.step:08d}"
    try:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        name = _free_name(ckpt_dir, f"{kinds[0]}-{position.step:08d}")
        final, tmp = ckpt_dir / name, ckpt_dir / f".{name}.tmp"
        for stale in (final, tmp):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
        _write_files(tmp, trainables, position, rng_states)
        event("written")
        fsync_dir(tmp)
        os.replace(tmp, final)
        fsync_dir(ckpt_dir)
        event("renamed")
        if kept := history.due(position.epochs_done, position.batch, keep_every):
            history.keep(ckpt_dir, final, kept, (MODEL, EMA_MODEL))
        for kind in sorted(kinds, key=_LINK_ORDER.index):
            point(ckpt_dir / kind, name)
            event(f"link:{kind}")
        prune(ckpt_dir)
        event("pruned")
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)  # a half-written temporary directory; the next save removes it too
        where = err.filename or ckpt_dir
        links = ", ".join(f"{k} -> {os.readlink(ckpt_dir / k)}" for k in KINDS if (ckpt_dir / k).is_symlink())
        intact = f"the complete checkpoints are intact ({links})" if links else "no checkpoint was complete yet"
        raise VitreduceError(
            f"cannot write checkpoint {final} ({where}: {err.strerror or err}); {intact}. "
            f"Make {ckpt_dir} writable (or free space) and rerun the same command to resume"
        ) from None
    return final


# The order symlinks are swapped in: best before last (see ``save``), recovery on its own.
_LINK_ORDER = ("best", "recovery", "last")


def _write_files(folder: Path, trainables: Trainables, position: Position, rng_states: list[dict[str, Any]]) -> None:
    """The checkpoint's three files in ``folder``: model, EMA model, state (optimizer, RNGs, position)."""
    write_model_files(folder, trainables.module, trainables.ema, position, trainables.header)
    tensors, header = _optimizer_tensors(trainables)
    rng_tensors, rng_header = _rng_tensors(rng_states)
    header.update(rng_header)
    header.update({
        "position": asdict(position),
        "scheduler": trainables.scheduler.state_dict(),
        "scaler": trainables.scaler.state_dict(),
    })
    meta = {"format": FORMAT, "state": json.dumps(header)}
    checkpoint.write_safetensors(folder / STATE, {**tensors, **rng_tensors}, meta)


def write_model_files(folder: Path, module: nn.Module, ema: Ema | None, position: Position,
                      header: dict[str, str] | None = None) -> None:
    """model.safetensors and, with an EMA, model_ema.safetensors: vitreduce model checkpoints
    (``vitreduce.load``) whose metadata names the epoch and step they hold, with ``header`` (the class
    names and eval preprocessing: ``data.recorded``)."""
    metadata = {**(header or {}), "epoch": str(position.epochs_done), "step": str(position.step)}
    checkpoint.save(module, folder / MODEL, metadata={**metadata, "weights": "raw"})
    if ema is not None:
        checkpoint.save(ema.module, folder / EMA_MODEL, metadata={**metadata, "weights": "ema"})


def _optimizer_tensors(t: Trainables) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state keyed ``optim/<param name>/<key>``; hyperparameters and scalars as JSON."""
    tensors, scalars, groups = {}, {}, []
    for group in t.optimizer.param_groups:
        names = [t.names[id(p)] for p in group["params"]]
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": names})
        for param, name in zip(group["params"], names, strict=True):
            for key, value in t.optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim/{name}/{key}"] = value.detach().cpu().contiguous()
                else:
                    scalars.setdefault(name, {})[key] = value
    return tensors, {"param_groups": groups, "optim_scalars": scalars}


def point(link: Path, target: str) -> None:
    tmp = link.with_name(f".{link.name}.link")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    fsync_dir(link.parent)


def _referenced(ckpt_dir: Path) -> set[str]:
    return {os.readlink(ckpt_dir / kind) for kind in KINDS if (ckpt_dir / kind).is_symlink()}


def _free_name(ckpt_dir: Path, name: str) -> str:
    """``name``, or ``name-2``, ``name-3``... when a symlink already points at ``name``: a rerun that saves
    the same step again (after a kill between two symlink swaps) never rewrites a directory in use."""
    used, n, free = _referenced(ckpt_dir), 1, name
    while free in used:
        n += 1
        free = f"{name}-{n}"
    return free


_PRUNABLE = re.compile(r"(last|best|recovery)-\d+(-\d+)?|\.(last|best|recovery)-\d+(-\d+)?\.tmp|\.epoch-\d+\.tmp")


def prune(ckpt_dir: str | os.PathLike) -> None:
    """Remove checkpoint directories no symlink points at (superseded, or left by a killed save).

    Only directories named as ``save`` names them are removed: a ``damaged-*`` directory set aside on
    resume, or anything a user put there, stays.
    """
    ckpt_dir = Path(ckpt_dir)
    keep = _referenced(ckpt_dir)
    for entry in ckpt_dir.iterdir():
        if entry.name not in keep and _PRUNABLE.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)


# ---------------------------------------------------------------------------------------------
# RNG states (every rank's: each rank draws its own drop-path masks)


def capture_rng() -> dict[str, Any]:
    """This process's python, numpy, torch CPU and CUDA RNG states (plain values and tensors)."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": torch.tensor(words, dtype=torch.int64),
        "python_meta": [version, gauss],
        "numpy": torch.from_numpy(keys.astype(np.int64)),
        "numpy_meta": [kind, int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Set this process's RNGs to a ``capture_rng()`` result."""
    version, gauss = state["python_meta"]
    random.setstate((version, tuple(state["python"].tolist()), gauss))
    kind, pos, has_gauss, cached = state["numpy_meta"]
    np.random.set_state((kind, state["numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rng_tensors(states: list[dict[str, Any]]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, meta = {}, []
    for rank, state in enumerate(states):
        tensors[f"rng/{rank}/python"] = state["python"]
        tensors[f"rng/{rank}/numpy"] = state["numpy"]
        tensors[f"rng/{rank}/torch"] = state["torch"]
        for device, cuda_state in enumerate(state["cuda"]):
            tensors[f"rng/{rank}/cuda/{device}"] = cuda_state
        meta.append({"python": state["python_meta"], "numpy": state["numpy_meta"], "cuda": len(state["cuda"])})
    return tensors, {"rng": meta}


# ---------------------------------------------------------------------------------------------
# Finding and loading


class DamagedCheckpoint(VitreduceError):
    """A checkpoint directory that cannot be resumed from: a file missing, unreadable or not matching."""


def unreadable(file: Path, err: Exception) -> DamagedCheckpoint:
    return DamagedCheckpoint(f"{file} could not be read ({err}); it may be missing, truncated or corrupted")


def read_header(path: Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """The state file's JSON header and {tensor name: shape}; DamagedCheckpoint when it cannot be read."""
    file = path / STATE
    try:
        with safe_open(str(file), framework="pt") as handle:
            meta = handle.metadata() or {}
            shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}  # noqa: SIM118
        if meta.get("format") != FORMAT:
            raise DamagedCheckpoint(f"{file} is not a vitreduce training state (no '{FORMAT}' header)")
        header = json.loads(meta["state"])
    except (SafetensorError, OSError) as err:
        raise unreadable(file, err) from None
    except (KeyError, ValueError) as err:
        raise DamagedCheckpoint(f"{file}: its header is not valid JSON ({err})") from None
    missing = {"position", "scheduler", "scaler", "param_groups", "optim_scalars", "rng"} - set(header)
    if not isinstance(header, dict) or missing:
        raise DamagedCheckpoint(f"{file}: its header lacks {sorted(missing) if missing else 'a JSON object'}")
    return header, shapes


def read_position(path: str | os.PathLike) -> Position:
    """The position stored in a checkpoint directory; DamagedCheckpoint when it cannot be read."""
    path = Path(path)
    saved = read_header(path)[0]["position"]
    try:
        position = Position.from_dict(saved)
    except (KeyError, TypeError) as err:
        raise DamagedCheckpoint(f"{path / STATE}: its position is not one vitreduce wrote ({err})") from None
    numbers = [position.epochs_done, position.batch, position.step, position.world_size]
    if not all(type(n) is int and n >= 0 for n in numbers) or position.world_size < 1:
        raise DamagedCheckpoint(f"{path / STATE}: its position holds impossible values ({saved})")
    return position


def load(path: str | os.PathLike, trainables: Trainables, rank: int) -> tuple[Position, dict[str, Any]]:
    """Restore model, EMA, optimizer, scheduler and scaler from a checkpoint directory.

    Returns the position and this rank's RNG state (restore it with ``restore_rng`` at the moment
    the saving run captured it).
    """
    path = Path(path)
    header, _ = read_header(path)
    try:
        return _load(path, header, trainables, rank)
    except DamagedCheckpoint:
        raise
    except (SafetensorError, OSError, KeyError, IndexError, TypeError, ValueError, RuntimeError) as err:
        raise DamagedCheckpoint(f"{path} could not be loaded ({type(err).__name__}: {err})") from None


def _load(path: Path, header: dict[str, Any], trainables: Trainables, rank: int) -> tuple[Position, dict[str, Any]]:
    checkpoint.read_weights_into(trainables.module, path / MODEL)
    if trainables.ema is not None:
        if not (path / EMA_MODEL).is_file():
            raise VitreduceError(f"{path} has no EMA weights, but the config enables the EMA")
        checkpoint.read_weights_into(trainables.ema.module, path / EMA_MODEL)
    tensors = load_file(str(path / STATE))
    _load_optimizer(trainables, header, tensors, source=path)
    trainables.scheduler.load_state_dict(header["scheduler"])
    if header["scaler"]:
        trainables.scaler.load_state_dict(header["scaler"])
    position = Position.from_dict(header["position"])
    meta = header["rng"][rank]
    rng = {
        "python": tensors[f"rng/{rank}/python"], "python_meta": meta["python"],
        "numpy": tensors[f"rng/{rank}/numpy"], "numpy_meta": meta["numpy"],
        "torch": tensors[f"rng/{rank}/torch"],
        "cuda": [tensors[f"rng/{rank}/cuda/{d}"] for d in range(meta["cuda"])],
    }
    return position, rng


def _load_optimizer(t: Trainables, header: dict[str, Any], tensors: dict[str, torch.Tensor], source: Path) -> None:
    index, groups = {}, []
    for group, saved in zip(t.optimizer.param_groups, header["param_groups"], strict=False):
        names = [t.names[id(p)] for p in group["params"]]
        if names != saved["params"]:
            raise VitreduceError(f"{source}: the optimizer's parameter groups differ from this model's")
        for name in names:
            index[name] = len(index)
        groups.append({**{k: _tuple_if_list(v) for k, v in saved.items()}, "params": [index[n] for n in names]})
    if len(groups) != len(header["param_groups"]) or len(groups) != len(t.optimizer.param_groups):
        raise VitreduceError(f"{source}: the optimizer has a different number of parameter groups")
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        if key.startswith("optim/"):
            name, _, item = key[len("optim/"):].rpartition("/")
            state.setdefault(index[name], {})[item] = tensor
    for name, values in header["optim_scalars"].items():
        state.setdefault(index[name], {}).update(values)
    t.optimizer.load_state_dict({"state": state, "param_groups": groups})


def _tuple_if_list(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value

"""Which checkpoint a run resumes from: the newest whole one, checked before use.

On resume the checkpoints ``last`` and ``recovery`` point at are tried newest first (by step). Each is
checked before any of it is used: its files present, their safetensors headers readable, the state
header's format and position, every stored tensor's name and shape against this run's model, EMA and
optimizer, the RNG states of every rank, and the world size against this run's (a different one is the
user's choice, not damage: a clear error). Then it is loaded. A checkpoint that fails is renamed
``checkpoints/damaged-<name>-<n>`` (never deleted) with a warning, and the next newest is tried. When
none is whole the run stops with the reasons and nothing is moved: every symlinked checkpoint was
complete once, so starting afresh is the user's decision, not vitreduce's.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from safetensors import SafetensorError, safe_open
from torch import nn

from vitreduce.errors import VitreduceError
from vitreduce.files import fsync_dir
from vitreduce.reduction import checkpoint
from vitreduce.reduction.params import alias_groups
from vitreduce.reduction.weights import check_names_and_shapes
from vitreduce.train import state
from vitreduce.train.state import EMA_MODEL, KINDS, MODEL, DamagedCheckpoint, Position, Trainables


def candidates(ckpt_dir: str | os.PathLike) -> list[tuple[str, Path]]:
    """The checkpoints a run could resume from: (kind, directory) of ``last`` and ``recovery``, newest first
    by step, ``last`` first on a tie; one whose position cannot be read comes first (it is checked first)."""
    ckpt_dir, found = Path(ckpt_dir), {}
    for kind in ("last", "recovery"):
        link = ckpt_dir / kind
        if link.is_symlink():
            found.setdefault(ckpt_dir / os.readlink(link), kind)

    def newest_first(item: tuple[Path, str]) -> tuple[int, int, bool]:
        try:
            return 1, -state.read_position(item[0]).step, item[1] != "last"
        except VitreduceError:
            return 0, 0, False

    return [(kind, path) for path, kind in sorted(found.items(), key=newest_first)]


def latest(ckpt_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint among ``last`` and ``recovery`` whose header reads (what a rerun tries first), or None."""
    for _, path in candidates(ckpt_dir):
        try:
            state.read_position(path)
        except VitreduceError:
            continue
        return path
    return None


def verify(path: Path, trainables: Trainables, world_size: int) -> Position:
    """Check a checkpoint directory against this run without loading its tensors; its position.

    Raises DamagedCheckpoint for anything missing, unreadable or not matching; VitreduceError when it
    was saved by another number of processes.
    """
    if not path.is_dir():
        raise DamagedCheckpoint(f"{path} does not exist")
    header, shapes = state.read_header(path)
    position = state.read_position(path)
    if position.world_size != world_size:
        raise VitreduceError(
            f"{path} was saved by {position.world_size} process(es), this run has {world_size}: "
            "exact resume needs the same number (the data order and RNG streams are per rank)"
        )
    _check_model_file(path / MODEL, trainables.module, position)
    if trainables.ema is not None:
        _check_model_file(path / EMA_MODEL, trainables.ema.module, position)
    _check_optimizer(path, header, shapes, trainables)
    _check_rng(path, header, shapes, world_size)
    return position


def _check_model_file(file: Path, module: nn.Module, position: Position) -> None:
    try:
        with safe_open(str(file), framework="pt") as handle:
            meta = handle.metadata() or {}
            stored = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as err:
        raise state.unreadable(file, err) from None
    if meta.get("format") != checkpoint.FORMAT:
        raise DamagedCheckpoint(f"{file} is not a vitreduce model file (no '{checkpoint.FORMAT}' header)")
    if "step" in meta and meta["step"] != str(position.step):
        raise DamagedCheckpoint(f"{file} holds step {meta['step']}, its state file step {position.step}")
    aliases = alias_groups(module)
    expected = {n: tuple(t.shape) for n, t in module.state_dict().items() if aliases.get(n, n) == n}
    try:
        check_names_and_shapes(file, stored, expected)
    except VitreduceError as err:
        raise DamagedCheckpoint(str(err)) from None


def _check_optimizer(path: Path, header: dict, shapes: dict[str, tuple[int, ...]], t: Trainables) -> None:
    """Parameter groups by name; each ``optim/<name>/<key>`` tensor of a known parameter, and of its shape
    whenever it has as many dimensions (factored states, e.g. Adafactor's, have fewer)."""
    source = path / state.STATE
    params = {t.names[id(p)]: p for group in t.optimizer.param_groups for p in group["params"]}
    expected = [[t.names[id(p)] for p in group["params"]] for group in t.optimizer.param_groups]
    groups = header["param_groups"]
    if not isinstance(groups, list) or [g.get("params") if isinstance(g, dict) else None for g in groups] != expected:
        raise DamagedCheckpoint(f"{source}: its optimizer parameter groups differ from this model's")
    if not isinstance(header["optim_scalars"], dict) or not set(header["optim_scalars"]) <= set(params):
        raise DamagedCheckpoint(f"{source}: its optimizer scalars name parameters this model does not have")
    for key, shape in shapes.items():
        if key.startswith("rng/"):
            continue
        name, _, _ = key.removeprefix("optim/").rpartition("/")
        param = params.get(name) if key.startswith("optim/") else None
        if param is None:
            raise DamagedCheckpoint(f"{source}: unexpected tensor {key!r}")
        if len(shape) == param.ndim and shape != tuple(param.shape):
            raise DamagedCheckpoint(f"{source}: {key} has shape {shape}, the parameter {tuple(param.shape)}")


def _check_rng(path: Path, header: dict, shapes: dict[str, tuple[int, ...]], world_size: int) -> None:
    source, rng = path / state.STATE, header["rng"]
    if not isinstance(rng, list) or len(rng) != world_size:
        raise DamagedCheckpoint(f"{source}: it holds no RNG state for each of the {world_size} process(es)")
    for rank, meta in enumerate(rng):
        cuda = meta.get("cuda") if isinstance(meta, dict) else None
        if type(cuda) is not int or cuda < 0 or not {"python", "numpy"} <= set(meta):
            raise DamagedCheckpoint(f"{source}: the RNG record of rank {rank} is not one vitreduce wrote")
        names = [f"rng/{rank}/{part}" for part in ("python", "numpy", "torch")]
        missing = [n for n in names + [f"rng/{rank}/cuda/{d}" for d in range(cuda)] if n not in shapes]
        if missing:
            raise DamagedCheckpoint(f"{source}: RNG tensors missing: {', '.join(missing)}")


def choose(ckpt_dir: Path, use: Callable[[Path], None], warn: Callable[[str], None] | None = None) -> Path:
    """Try the candidates newest first with ``use`` (verify and load); set the damaged ones aside.

    Args:
        ckpt_dir: RUN_DIR/checkpoints.
        use: checks and loads one checkpoint directory; raises DamagedCheckpoint when it cannot.
        warn: where the warning lines go (stderr).
    Returns:
        the directory now in use. With none whole, VitreduceError naming each problem; nothing moved.
    """
    warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
    damaged: list[tuple[str, Path, DamagedCheckpoint]] = []
    for kind, path in candidates(ckpt_dir):
        try:
            use(path)
        except DamagedCheckpoint as err:
            damaged.append((kind, path, err))
            continue
        for bad_kind, bad, err in damaged:
            aside = set_aside(ckpt_dir, bad)
            warn(f"warning: checkpoint {ckpt_dir / bad_kind} -> {bad.name} is damaged ({err}); "
                 f"set aside as {aside.name}; resuming from the next newest, {path.name}")
        state.prune(ckpt_dir)
        return path
    reasons = "\n  ".join(f"{kind} -> {path.name}: {err}" for kind, path, err in damaged)
    raise VitreduceError(
        f"{ckpt_dir} holds no whole checkpoint to resume from (nothing was changed):\n  {reasons}\n"
        f"Restore those files, or move {ckpt_dir.parent} aside (or use another --out) to train the run from the start"
    )


def set_aside(ckpt_dir: Path, path: Path) -> Path:
    """Rename a damaged checkpoint directory to ``damaged-<name>-<n>``; the ``last``/``recovery`` symlinks that
    pointed at it are removed, ``best`` follows it (its model files may be all that is left of the peak)."""
    n = 1
    while (ckpt_dir / f"damaged-{path.name}-{n}").exists():
        n += 1
    aside = ckpt_dir / f"damaged-{path.name}-{n}"
    if path.is_dir():
        os.replace(path, aside)
    for kind in KINDS:
        link = ckpt_dir / kind
        if link.is_symlink() and os.readlink(link) == path.name:
            if kind == "best" and aside.is_dir():
                state.point(link, aside.name)
            else:
                link.unlink()
    fsync_dir(ckpt_dir)
    return aside

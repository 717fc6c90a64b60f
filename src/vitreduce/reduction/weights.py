"""Reading plain (timm) weight files safely and loading them strictly.

Pickle-based files (.pth/.pt/.bin, and timm train.py's .pth.tar) are read only with
``torch.load(weights_only=True)``: a file whose pickle would construct arbitrary objects (and so could
run code) is refused, never unpickled; a truncated or corrupted one is reported as such. The one
exception is timm's training checkpoint: its 'args' entry is an ``argparse.Namespace``, which is read
as an inert placeholder (nothing of argparse is imported or called) and then dropped.
"""
from __future__ import annotations

import io
import os
import pickletools
import re
import warnings
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from vitreduce.errors import VitreduceError
from vitreduce.reduction.params import alias_groups

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".pth.tar")  # .pth.tar: timm train.py's CheckpointSaver
_WRAPPER_KEYS = ("state_dict", "model", "module")  # timm train.py / DeiT / generic checkpoints
EMA_KEYS = ("state_dict_ema", "model_ema")  # timm train.py / DeiT: the EMA weights beside the raw ones
SELECTABLE = _WRAPPER_KEYS + EMA_KEYS  # what a '#KEY' after a file name may pick
# Globals a timm training checkpoint pickles outside the weights, read as _Inert, allowed at these top-level keys.
_INERT_GLOBALS = {"argparse.Namespace": ("args",)}
_LISTED = 8  # names shown in an error before "and N more"
_SCANNED_BYTES = 1 << 20  # of a plain pickle, to find what it imports


def split_selector(text: str | os.PathLike) -> tuple[Path, str | None]:
    """(file, key) of ``FILE#KEY``, where KEY is one of ``SELECTABLE`` (e.g. ``model_best.pth.tar#state_dict_ema``);
    (file, None) for a plain path (a '#' followed by anything else is part of the file name)."""
    text = os.fspath(text)
    head, sep, key = text.rpartition("#")
    return (Path(head), key) if sep and key in SELECTABLE else (Path(text), None)


def read_state_dict(path: str | os.PathLike, key: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a local weights file (.safetensors, or .pth/.pt/.bin/.pth.tar via weights_only).

    Args:
        path: the file; ``FILE#KEY`` selects like ``key``.
        key: which state dict of a checkpoint dict to take (one of ``SELECTABLE``; ``state_dict_ema``
            for timm's EMA weights); None: the raw weights ('state_dict', 'model' or 'module').
    """
    path, key = split_selector(path) if key is None else (Path(path), key)
    if key is not None and key not in SELECTABLE:
        raise VitreduceError(f"{str(path)!r}: cannot select {key!r}; choose one of {', '.join(SELECTABLE)}")
    if not path.is_file():
        raise VitreduceError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        if key is not None:
            raise VitreduceError(f"{str(path)!r} holds one set of weights, so {key!r} cannot be selected in it; "
                                 "name the file that holds those weights (e.g. model_ema.safetensors)")
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise VitreduceError(
                f"{str(path)!r} is not a readable safetensors file ({err}); it may be truncated or corrupted"
            ) from None
    if not path.name.endswith(PICKLE_SUFFIXES):
        raise VitreduceError(
            f"{str(path)!r}: unsupported weights format; use .safetensors, .pth, .pth.tar, .pt or .bin")
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(_PLACEHOLDERS):
            warnings.simplefilter("ignore", UserWarning)  # torch warns about the pickle protocol of files it refuses
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (a damaged file raises any type; _load_error tells the cases apart)
        raise _load_error(path, err) from None
    return _unwrap(_drop_inert(obj, path), path, key)


class _Inert:
    """What an allowed non-tensor global of a timm checkpoint (``_INERT_GLOBALS``) unpickles to: it takes
    whatever the pickle gives it and keeps nothing, so no code of the named class is imported or run."""

    global_name = ""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        pass


# (placeholder class, the global it stands for): torch's weights_only loader builds the placeholder instead.
_PLACEHOLDERS = [(type("_InertGlobal", (_Inert,), {"global_name": name}), name) for name in _INERT_GLOBALS]


def _drop_inert(obj, path: Path):
    """The checkpoint without its inert placeholders; refused where one sits anywhere but a top-level
    entry its global is allowed at (timm's 'args')."""
    if not isinstance(obj, dict):
        stray = _first_inert(obj)
    else:
        obj = {k: v for k, v in obj.items() if not (isinstance(v, _Inert) and k in _INERT_GLOBALS[v.global_name])}
        stray = _first_inert(obj)
    if stray:
        raise VitreduceError(
            f"refused to load {str(path)!r}: it holds pickled objects other than tensors (it imports {stray}) "
            f"outside the entries where a timm checkpoint keeps them; {_EXTRACT}".replace("FILE", str(path)))
    return obj


def _first_inert(value, depth: int = 0) -> str | None:
    """The global name of the first placeholder inside ``value`` (None when there is none)."""
    if isinstance(value, _Inert):
        return value.global_name
    if depth > 16 or not isinstance(value, dict | list | tuple):
        return None
    items = value.values() if isinstance(value, dict) else value
    return next((name for v in items if (name := _first_inert(v, depth + 1))), None)


_EXTRACT = ("extract the weights in a trusted environment, e.g. python -c \"import torch, safetensors.torch as st; "
            "st.save_file(torch.load('FILE', weights_only=False)['state_dict'], 'weights.safetensors')\"")


def _load_error(path: Path, err: Exception) -> VitreduceError:
    """Why torch's weights_only loader refused a file: it needs objects other than tensors (refused:
    unpickling them could run code), or it is damaged."""
    imported = _refused_global(path, err)
    if imported:
        return VitreduceError(
            f"refused to load {str(path)!r}: it holds pickled objects other than tensors (it imports {imported}), "
            f"and unpickling them could run code; {_EXTRACT}".replace("FILE", str(path))
        )
    # torch wraps the unpickler's own complaint ("Unsupported operand 163") in a long generic message.
    inner = err.__context__ if str(err).startswith("Weights only load failed") and err.__context__ else err
    text = str(inner).strip()
    detail = f"{type(inner).__name__}: {text.splitlines()[0][:200]}" if text else type(inner).__name__
    return VitreduceError(f"{str(path)!r} could not be read ({detail}); it may be truncated or corrupted")


def _refused_global(path: Path, err: Exception) -> str | None:
    """The module.name whose import torch refused (None: the file is damaged, not unsafe)."""
    for message in (str(err), str(err.__context__ or "")):
        # "Unsupported global: GLOBAL m.f", or "unsupported GLOBAL m.f whose module m is blocked"
        match = re.search(r"[Uu]nsupported (?:global: )?GLOBAL (\S+)", message)
        if match:
            return match.group(1)
    if zipfile.is_zipfile(path):  # torch's own format names a refused global in its message (above)
        return None
    return _first_global(path)


def _first_global(path: Path) -> str | None:
    """The first module.name a plain pickle at the start of the file imports, read without running
    anything (None when there is none, or the pickle is cut short or not a pickle at all)."""
    with path.open("rb") as handle:
        head = io.BytesIO(handle.read(_SCANNED_BYTES))  # BytesIO: a huge declared length cannot allocate
    strings: list[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(head):
            if opcode.name in ("GLOBAL", "INST"):
                return str(arg).replace(" ", ".")
            if opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                return ".".join(strings[-2:])
            if isinstance(arg, str):
                strings.append(arg)
    except (ValueError, EOFError):
        return None
    return None


def _unwrap(obj, path: Path, key: str | None = None) -> dict[str, torch.Tensor]:
    if key is not None:
        if not (isinstance(obj, dict) and isinstance(obj.get(key), dict)):
            present = sorted(k for k in obj if isinstance(obj.get(k), dict)) if isinstance(obj, dict) else []
            raise VitreduceError(f"{str(path)!r} has no {key!r} entry (its state dicts: {present or 'none'}); "
                                 + ("drop the EMA choice to read the raw weights" if key in EMA_KEYS else
                                    f"choose one of {', '.join(present)}" if present else "name another file"))
        obj = obj[key]
    seen: set[int] = set()  # a pickle can nest a dict in itself
    while isinstance(obj, dict) and not _is_state_dict(obj):
        seen.add(id(obj))
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None or id(inner) in seen:
            raise VitreduceError(
                f"{str(path)!r} is not a state dict (top-level keys: {sorted(map(str, obj))[:_LISTED]}); "
                f"expected tensors, or a dict holding them under one of {list(_WRAPPER_KEYS)}"
            )
        obj = inner
    if not isinstance(obj, dict):
        raise VitreduceError(f"{str(path)!r} holds a {type(obj).__name__}, not a state dict")
    # DistributedDataParallel checkpoints prefix every name with 'module.'.
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _is_state_dict(obj: dict) -> bool:
    return bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def listing(names: Iterable[str]) -> str:
    """A short comma-separated list for error messages."""
    names = list(names)
    shown = ", ".join(names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def check_names_and_shapes(source, stored: dict[str, tuple], expected: dict[str, tuple]) -> None:
    """Strict match of {name: shape}; raises one VitreduceError naming what is missing/extra/mis-shaped."""
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    mis_shaped = sorted(n for n in set(stored) & set(expected) if tuple(stored[n]) != tuple(expected[n]))
    problems = []
    if missing:
        problems.append(f"missing {listing(missing)}")
    if unexpected:
        problems.append(f"unexpected {listing(unexpected)}")
    if mis_shaped:
        problems.append("mis-shaped " + listing(
            f"{n} (file {tuple(stored[n])}, model {tuple(expected[n])})" for n in mis_shaped))
    if problems:
        raise VitreduceError(f"{str(source)!r} does not match the model: " + "; ".join(problems))


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str | os.PathLike = "weights") -> None:
    """Copy a full state dict into the model strictly (every tensor present, nothing extra, same shapes,
    every value finite)."""
    expected = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    check_names_and_shapes(source, {n: tuple(t.shape) for n, t in state.items()}, expected)
    model.load_state_dict(state, strict=True)
    check_finite(model, source)


def check_finite(model: nn.Module, source: str | os.PathLike) -> None:
    """Refuse weights holding NaN or infinity: every score or reduction made of them is meaningless
    (an evaluation would report a NaN loss beside a chance-level top-1 and exit as if all were well)."""
    bad = [name for name, t in model.state_dict().items()
           if t.is_floating_point() and t.device.type != "meta" and not bool(torch.isfinite(t).all())]
    if bad:
        raise VitreduceError(
            f"{str(source)!r} holds NaN or infinite values in {len(bad)} tensor(s) ({listing(bad)}): the weights "
            "diverged or the file was damaged. Use an earlier checkpoint (a run keeps checkpoints/best and "
            "checkpoints/epoch-* folders) or retrain with a lower optimizer.lr"
        )


def copy_unique_tensors(model: nn.Module, shapes: dict[str, tuple], get: Callable[[str], torch.Tensor],
                        source: str | os.PathLike, keep_fresh: Iterable[str] = ()) -> None:
    """Copy stored tensors into each distinct tensor of ``model`` (a shared one once, by its first name).

    Args:
        model: the model to fill; its sharing is already built.
        shapes: {name: shape} of what the source holds (aliases of shared tensors left out).
        get: reads one stored tensor by name (lazily, so a large file is never held twice).
        source: named in errors.
        keep_fresh: names to leave as initialised (e.g. a classifier head of another size).
    """
    keep_fresh = set(keep_fresh)
    aliases = alias_groups(model)
    targets = {n: t for n, t in model.state_dict(keep_vars=True).items()
               if aliases.get(n, n) == n and n not in keep_fresh}
    stored = {n: shape for n, shape in shapes.items() if n not in keep_fresh}
    check_names_and_shapes(source, stored, {n: tuple(t.shape) for n, t in targets.items()})
    with torch.no_grad():
        for name, target in targets.items():
            target.copy_(get(name))

"""Reading plain (timm) weight files safely and loading them strictly.

Pickle-based files (.pth/.pt/.bin) are read only with ``torch.load(weights_only=True)``: a file
whose pickle would construct arbitrary objects (and so could run code) is refused, never unpickled;
a truncated or corrupted one is reported as such.
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

PICKLE_SUFFIXES = (".pth", ".pt", ".bin")
_WRAPPER_KEYS = ("state_dict", "model", "module")  # timm train.py / DeiT / generic checkpoints
_LISTED = 8  # names shown in an error before "and N more"
_SCANNED_BYTES = 1 << 20  # of a plain pickle, to find what it imports


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a local weights file (.safetensors, or .pth/.pt/.bin via weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise VitreduceError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise VitreduceError(
                f"{str(path)!r} is not a readable safetensors file ({err}); it may be truncated or corrupted"
            ) from None
    if path.suffix not in PICKLE_SUFFIXES:
        raise VitreduceError(f"{str(path)!r}: unsupported weights format; use .safetensors, .pth, .pt or .bin")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of files it then refuses
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (a damaged file raises any type; _load_error tells the cases apart)
        raise _load_error(path, err) from None
    return _unwrap(obj, path)


def _load_error(path: Path, err: Exception) -> VitreduceError:
    """Why torch's weights_only loader refused a file: it needs objects other than tensors (refused:
    unpickling them could run code), or it is damaged."""
    imported = _refused_global(path, err)
    if imported:
        return VitreduceError(
            f"refused to load {str(path)!r}: it holds pickled objects other than tensors (it imports {imported}), "
            "and unpickling them could run code; convert it to .safetensors in a trusted environment"
        )
    # torch wraps the unpickler's own complaint ("Unsupported operand 163") in a long generic message.
    inner = err.__context__ if str(err).startswith("Weights only load failed") and err.__context__ else err
    text = str(inner).strip()
    detail = f"{type(inner).__name__}: {text.splitlines()[0][:200]}" if text else type(inner).__name__
    return VitreduceError(f"{str(path)!r} could not be read ({detail}); it may be truncated or corrupted")


def _refused_global(path: Path, err: Exception) -> str | None:
    """The module.name whose import torch refused (None: the file is damaged, not unsafe)."""
    for message in (str(err), str(err.__context__ or "")):
        match = re.search(r"Unsupported global: GLOBAL (\S+)", message)
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


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
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
    """Copy a full state dict into the model strictly (every tensor present, nothing extra, same shapes)."""
    expected = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    check_names_and_shapes(source, {n: tuple(t.shape) for n, t in state.items()}, expected)
    model.load_state_dict(state, strict=True)


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

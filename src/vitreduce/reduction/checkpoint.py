"""Self-describing safetensors checkpoints of (reduced) models.

One file holds the weights, each shared tensor stored once, and in its header metadata the base
timm model name, its kwargs, the reduction spec, the alias map and the vitreduce version, so
``load(path)`` rebuilds the architecture and re-ties the sharing with no other input. (timm's own
export uses safetensors' ``save_file``, which refuses shared tensors.)
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from vitreduce.errors import VitreduceError
from vitreduce.files import atomic_write
from vitreduce.reduction.architecture import check_architecture
from vitreduce.reduction.models import build_info, create_model
from vitreduce.reduction.params import alias_groups
from vitreduce.reduction.spec import ReductionSpec
from vitreduce.reduction.surgery import REDUCTION_ATTR
from vitreduce.reduction.weights import check_finite, check_names_and_shapes, copy_unique_tensors

FORMAT = "vitreduce.model.v1"


def save(model: nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write the model as one self-describing safetensors file (atomically).

    Args:
        model: a model from ``vitreduce.create_model`` or any timm ViT reduced with ``vitreduce.reduce``.
        path: destination ``.safetensors`` file.
        metadata: extra string entries for the header (e.g. epoch, which weights: raw or EMA).
    """
    info = build_info(model)
    state = model.state_dict()
    aliases = _state_aliases(model, state)
    stored = {name: t.detach().cpu().contiguous() for name, t in state.items() if name not in aliases}
    header = {
        "format": FORMAT,
        "vitreduce_version": _version(),
        "base_model": info["base"],
        "model_kwargs": json.dumps(info["kwargs"], sort_keys=True),
        "reduction": str(ReductionSpec.parse(getattr(model, REDUCTION_ATTR, None))),
        "aliases": json.dumps(aliases, sort_keys=True),
    }
    clash = set(header) & set(metadata or {})
    if clash:
        raise VitreduceError(f"metadata keys {sorted(clash)} are reserved by vitreduce; rename them")
    header.update({k: str(v) for k, v in (metadata or {}).items()})
    write_safetensors(path, stored, header)
    return Path(path)


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """safetensors' ``save_file``, atomically, with the header's metadata in sorted key order.

    safetensors keeps the metadata in a hash map whose order changes from process to process, so the same
    weights and header would give files that differ in a few bytes; sorted, identical content gives
    identical bytes (a checksum can tell whether two runs wrote the same model).
    """
    def write(tmp: str) -> None:
        save_file(tensors, tmp, metadata=metadata)
        _sort_metadata(tmp)

    atomic_write(path, write)


def _sort_metadata(path: str) -> None:
    with open(path, "rb+") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > size:  # the same JSON in another key order: cannot be longer
            raise RuntimeError(f"{path}: the sorted safetensors header does not fit in place")
        f.seek(8)
        f.write(text.ljust(size))  # safetensors pads its header with spaces too


def _state_aliases(model: nn.Module, state: dict) -> dict[str, str]:
    """{alias: stored name} for the state-dict entries that repeat a tensor stored under another name."""
    return {n: c for n, c in alias_groups(model).items() if n != c and n in state}


def _version() -> str:
    from vitreduce.version import __version__

    return __version__


def is_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a vitreduce model file (a .safetensors with a vitreduce header), as opposed to
    plain weights; an unreadable .safetensors raises VitreduceError."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("format") == FORMAT
    except (SafetensorError, OSError, ValueError) as err:
        raise VitreduceError(
            f"{str(path)!r} is not a readable safetensors file ({err}); it may be truncated or corrupted"
        ) from None


def reduction_to_apply(metadata: dict[str, str], wanted: str | ReductionSpec, source: str | os.PathLike,
                       setting: str | None = None) -> ReductionSpec | None:
    """What is left to do to turn a checkpoint into a model with reduction ``wanted``: None when the file
    already has it (load it as it is), ``wanted`` when the file is unreduced (load the full-width weights,
    then reduce: the paper's procedure on trained weights). A file reduced otherwise is refused, naming
    both ways forward (a reduction applies to full-width weights only).

    Args:
        metadata: the file's checked header (``read_metadata``).
        wanted: the reduction asked for.
        source: the file, named in errors.
        setting: the option that asked for ``wanted``, where setting it to the file's reduction would use
            the file as it is (named in the refusal).
    """
    stored = ReductionSpec.parse(metadata.get("reduction", "none"))
    wanted = ReductionSpec.parse(wanted)
    if str(stored) == str(wanted):  # canonical: a header written before a spec's order changed still matches
        return None
    if not stored.steps:
        return wanted
    as_is = f"set {setting} to {str(stored)!r} to use it as it is, or " if setting else ""
    raise VitreduceError(
        f"{str(source)!r} is already reduced ({str(stored)!r}) and a reduction applies to full-width weights only: "
        f"{as_is}start from the unreduced model's file (e.g. a baseline run's model_ema.safetensors) to apply "
        f"{str(wanted)!r}"
    )


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The header metadata of a vitreduce checkpoint, checked (``check_header``); clear errors for anything else."""
    path = Path(path)
    if not path.is_file():
        raise VitreduceError(f"checkpoint {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise VitreduceError(
            f"{str(path)!r} is not a readable safetensors file ({err}); it may be truncated or corrupted"
        ) from None
    if metadata.get("format") != FORMAT:
        raise VitreduceError(
            f"{str(path)!r} is not a vitreduce model checkpoint (no '{FORMAT}' header); for plain timm "
            "weights use `vitreduce reduce BASE --weights FILE --reduction SPEC --out FILE`"
        )
    check_header(metadata, path)
    return metadata


def check_header(metadata: dict[str, str], source: str | os.PathLike = "checkpoint") -> None:
    """Refuse a header that does not describe a model vitreduce will build: it must name a supported timm
    base, allowed architecture kwargs (``architecture.check_architecture``: nothing that loads weights or
    reaches a network or a path, at most VITREDUCE_MAX_PARAMS parameters), a valid reduction and a
    {name: name} alias map. A header describes a model; it never commands how to fetch one."""
    base, kwargs, _ = _architecture(metadata, source)
    aliases = _json_field(metadata, "aliases", source, default="{}")
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise VitreduceError(f"{str(source)!r}: header 'aliases' must map tensor names to tensor names; {_EDITED}")
    try:
        check_architecture(base, kwargs, source="header model_kwargs")
    except VitreduceError as err:
        raise VitreduceError(f"{str(source)!r}: {err}") from None


_EDITED = "the file was edited or damaged (vitreduce writes this header itself)"


def _json_field(metadata: dict[str, str], key: str, source: str | os.PathLike, default: str | None = None) -> Any:
    text = metadata.get(key, default)
    if text is None:
        raise VitreduceError(f"{str(source)!r}: header has no '{key}' entry; {_EDITED}")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError, RecursionError) as err:
        raise VitreduceError(f"{str(source)!r}: header '{key}' is not valid JSON ({err}); {_EDITED}") from None


def _architecture(metadata: dict[str, str], source: str | os.PathLike) -> tuple[str, dict[str, Any], ReductionSpec]:
    """(base model, model kwargs, reduction) of a header, each of the right type."""
    kwargs = _json_field(metadata, "model_kwargs", source)
    if not isinstance(kwargs, dict):
        raise VitreduceError(f"{str(source)!r}: header 'model_kwargs' must be a JSON object of timm kwargs, "
                             f"found {type(kwargs).__name__}; {_EDITED}")
    base = metadata.get("base_model")
    if not isinstance(base, str) or not base:
        raise VitreduceError(f"{str(source)!r}: header has no 'base_model' name; {_EDITED}")
    try:
        spec = ReductionSpec.parse(metadata.get("reduction", "none"))
    except VitreduceError as err:
        raise VitreduceError(f"{str(source)!r}: header 'reduction': {err}") from None
    return base, kwargs, spec


def build_from_metadata(metadata: dict[str, str], source: str | os.PathLike = "checkpoint",
                        **overrides: Any) -> nn.Module:
    """Rebuild the (untrained) architecture a checkpoint header describes.

    Args:
        metadata: the header (from ``read_metadata``).
        source: the file, named in errors.
        **overrides: kwargs for ``create_model`` that replace or add to the header's (device, img_size, ...).
    """
    base, kwargs, spec = _architecture(metadata, source)
    try:
        return create_model(base, reduction=spec, **{**kwargs, **overrides})
    except VitreduceError as err:
        raise VitreduceError(f"{str(source)!r}: {err}") from None


def load(path: str | os.PathLike, device: str | torch.device = "cpu", finite: bool = False) -> nn.Module:
    """Rebuild a model from a vitreduce checkpoint, re-tie its sharing, load its weights strictly.

    Missing, unexpected or mis-shaped tensors, or a sharing layout that differs from the one the header
    describes (``check_layout``), raise VitreduceError naming them; with ``finite``, so do NaN or infinite
    values (scoring, analysing or reducing such weights means nothing; fine-tuning from them is left to the
    run's own handling of a non-finite loss, ``faults.nonfinite``).
    """
    metadata = read_metadata(path)
    model = build_from_metadata(metadata, path, device=device)
    check_layout(model, metadata, path)
    read_weights_into(model, path)
    if finite:
        check_finite(model, path)
    return model


def read_checked_metadata(path: str | os.PathLike) -> dict[str, str]:
    """A checkpoint's header, checked against its tensors as ``load`` checks it (``check_layout``), without
    reading a weight: for the commands that describe a file rather than run it (inspect, profile)."""
    metadata = read_metadata(path)
    spec = ReductionSpec.parse(metadata.get("reduction", "none")).with_shapes_only()  # meta: no weights to rank
    check_layout(build_from_metadata({**metadata, "reduction": str(spec)}, path, device="meta"), metadata, path)
    return metadata


def check_layout(model: nn.Module, metadata: dict[str, str], path: str | os.PathLike) -> None:
    """Refuse a file whose header does not describe its tensors: the alias map must be the sharing the
    header's reduction builds, and the stored names and shapes those of ``model`` (built from the header)."""
    state = model.state_dict(keep_vars=True)
    if json.loads(metadata.get("aliases", "{}")) != _state_aliases(model, state):
        raise VitreduceError(
            f"{str(path)!r}: its shared-tensor layout differs from what reduction "
            f"{metadata['reduction']!r} builds; the file was written by a different vitreduce or edited"
        )
    aliases = alias_groups(model)
    expected = {name: tuple(t.shape) for name, t in state.items() if aliases.get(name, name) == name}
    check_names_and_shapes(path, _stored_shapes(path), expected)


def _stored_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except SafetensorError as err:
        raise VitreduceError(f"{str(path)!r} could not be read ({err}); it may be truncated or corrupted") from None


def read_weights_into(model: nn.Module, path: str | os.PathLike) -> None:
    """Copy a vitreduce model file's tensors into a model of the same layout, strictly (each shared
    tensor is stored once, under its first name)."""
    shapes = _stored_shapes(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            copy_unique_tensors(model, shapes, handle.get_tensor, path)
    except SafetensorError as err:
        raise VitreduceError(f"{str(path)!r} could not be read ({err}); it may be truncated or corrupted") from None

"""Typed records to JSON and back: the one serialisation of summary.json (vitreduce.report.summary_file).

A record is a frozen dataclass; its JSON object has one key per field, in field order, and is read back
by the field's type annotation (nested records, ``tuple[X, ...]``, ``list[X]``, ``dict[str, X]``, unions
with None, unions of records told apart by their keys). Two field options keep the file's layout:
``flat()`` writes a nested record's fields into the parent as ``<name>_<field>`` (``<field>`` with
``flat("")``), and ``omitted()`` leaves a field that is None out of the object. A record of another package
whose layout is its own (the statistics' ``SeedResult.record()``) is given it with ``register``.
"""
from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Union

FLAT, OMIT = "codec_flat", "codec_omit"
_OWN: dict[type, tuple[Callable[[Any], dict], Callable[[dict], Any]]] = {}  # layouts of records defined elsewhere


class CodecError(ValueError):
    """A JSON value that does not fit the record's field; says where."""


def flat(prefix: str | None = None, **kwargs) -> Any:
    """A nested record written into its parent's object, its keys prefixed with ``<prefix>_`` (by default the
    field's name; none with an empty prefix)."""
    return dataclasses.field(metadata={FLAT: prefix}, **kwargs)


def omitted(**kwargs) -> Any:
    """A field left out of the object while it is None (read back as None where absent)."""
    return dataclasses.field(default=None, metadata={OMIT: True}, **kwargs)


def register(cls: type, write: Callable[[Any], dict], read: Callable[[dict], Any]) -> None:
    """Give ``cls`` (a record of another package) its own JSON layout: ``write(record)`` and ``read(object)``."""
    _OWN[cls] = write, read


def _prefix(f: dataclasses.Field) -> str:
    return f.name if f.metadata[FLAT] is None else f.metadata[FLAT]


def _key(prefix: str, name: str) -> str:
    return f"{prefix}_{name}" if prefix else name


def to_json(value) -> Any:
    """The JSON form of a record, a container of them or a plain value."""
    if type(value) in _OWN:
        return _OWN[type(value)][0](value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if f.metadata.get(OMIT) and item is None:
                continue
            if FLAT in f.metadata:
                out.update({_key(_prefix(f), k): v for k, v in to_json(item).items()})
            else:
                out[f.name] = to_json(item)
        return out
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_json(tp, data, where: str = "") -> Any:
    """``data`` (parsed JSON) as a value of type ``tp``; CodecError naming the key path where it does not fit."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return data
    if origin in (Union, types.UnionType):
        return _union(args, data, where)
    if origin is Literal:
        if data not in args:
            raise CodecError(f"{where}: {data!r} is not one of {list(args)}")
        return data
    if tp in _OWN:
        try:
            return _OWN[tp][1](_object(data, where))
        except (KeyError, TypeError) as err:
            raise CodecError(f"{where}: {type(err).__name__} {err}") from None
    if dataclasses.is_dataclass(tp):
        return _record(tp, _object(data, where), where)
    if origin in (tuple, list):
        if not isinstance(data, list):
            raise CodecError(f"{where}: expected a list, found {type(data).__name__}")
        item = args[0] if args else Any
        return origin(from_json(item, v, f"{where}[{i}]") for i, v in enumerate(data))
    if origin is dict:
        return {k: from_json(args[1], v, f"{where}.{k}") for k, v in _object(data, where).items()}
    return _plain(tp, data, where)


def _plain(tp, data, where: str):
    if tp is type(None):
        if data is not None:
            raise CodecError(f"{where}: expected null, found {data!r}")
        return None
    if tp is float and isinstance(data, int | float) and not isinstance(data, bool):
        return data
    if tp in (int, str, bool) and type(data) is tp:
        return data
    raise CodecError(f"{where}: expected {getattr(tp, '__name__', tp)}, found {type(data).__name__} {data!r:.40}")


def _object(data, where: str) -> dict:
    if not isinstance(data, dict):
        raise CodecError(f"{where}: expected an object, found {type(data).__name__}")
    return data


def _union(args: tuple, data, where: str):
    if data is None and type(None) in args:
        return None
    records = [a for a in args if dataclasses.is_dataclass(a)]
    if isinstance(data, dict) and len(records) > 1:  # the record whose keys the object has
        records = [a for a in records if {f.name for f in dataclasses.fields(a)} >= set(data)] or records
    errors = []
    for member in [*records, *(a for a in args if a not in records and a is not type(None))]:
        try:
            return from_json(member, data, where)
        except CodecError as err:
            errors.append(str(err))
    raise CodecError(errors[0] if len(errors) == 1 else f"{where}: {data!r:.60} fits none of {args}")


def _record(cls: type, data: dict, where: str):
    hints, values = _hints(cls), {}
    for f in dataclasses.fields(cls):
        if FLAT in f.metadata:
            prefix = _prefix(f)
            sub = {g.name: data[_key(prefix, g.name)] for g in dataclasses.fields(hints[f.name])
                   if _key(prefix, g.name) in data}
            values[f.name] = from_json(hints[f.name], sub, f"{where}.{_key(prefix, '*')}")
        elif f.name in data:
            values[f.name] = from_json(hints[f.name], data[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise CodecError(f"{where}: no {f.name!r}")
    return cls(**values)

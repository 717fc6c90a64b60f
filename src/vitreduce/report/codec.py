"""Typed records to JSON and back: the one serialisation of summary.json (vitreduce.report.summary_file).

A record is a frozen dataclass; pydantic reads and writes it by its type annotations (one key per field, in
field order), strictly: a JSON value that does not fit its field's type is refused, not converted. What is
summary.json's own is the layout: ``flat()`` writes a nested record's fields into the parent (a ``Flat``
record) as ``<name>_<field>`` (``<field>`` with ``flat("")``), ``omitted()`` leaves a field that is None out
of the object, and ``Layout`` gives a record of another package the layout of its own ``record()``.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import typing
from collections.abc import Callable
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import core_schema

FLAT = "codec_flat"


class CodecError(ValueError):
    """A JSON value that does not fit the record's field; says where."""


def flat(prefix: str | None = None, **kwargs) -> Any:
    """A nested record written into its parent's object, its keys prefixed with ``<prefix>_`` (by default the
    field's name; none with an empty prefix). The parent must be a ``Flat`` record."""
    return dataclasses.field(metadata={FLAT: prefix}, **kwargs)


def omitted(**kwargs) -> Any:
    """A field left out of the object while it is None (read back as None where absent)."""
    return dataclasses.field(default=None, metadata={"exclude_if": lambda value: value is None}, **kwargs)


@dataclasses.dataclass(frozen=True, eq=False)
class Layout:
    """A record's layout: its ``flat`` fields ({field: prefix}), the fields its object does not hold (read as
    ``given``) and, where the record writes its object itself, ``write`` (the statistics' ``SeedResult.record``).
    Used as ``Annotated[<record>, Layout(...)]``; a ``Flat`` record's is made from its fields."""

    flat: dict[str, str] = dataclasses.field(default_factory=dict)
    given: dict[str, Any] = dataclasses.field(default_factory=dict)
    write: Callable[[Any], dict] | None = None

    def __get_pydantic_core_schema__(self, source: type, handler) -> core_schema.CoreSchema:
        hints = typing.get_type_hints(source)
        keys = dict(self._keys(source, hints))  # the object's key -> (field, its or the flat record's field, type)
        fields = {key: core_schema.typed_dict_field(handler.generate_schema(tp), required=_required(f),
                                                    serialization_exclude_if=f.metadata.get("exclude_if"))
                  for key, (_, f, tp) in keys.items()}

        def read(values: dict) -> Any:
            nested: dict[str, dict] = {name: {} for name in self.flat}
            plain = dict(self.given)
            for key, value in values.items():
                name, f, _ = keys[key]
                if name in self.flat:
                    nested[name][f.name] = value
                else:
                    plain[name] = value
            return source(**plain, **{name: hints[name](**values) for name, values in nested.items()})

        def write(record, serialize) -> dict:
            values = {name: getattr(record, name) for name, _, _ in keys.values()}
            return serialize({key: getattr(values[name], f.name) if name in self.flat else values[name]
                              for key, (name, f, _) in keys.items()})

        # The object read as it is, its flat keys its own (then regrouped), not reshaped by a function first:
        # pydantic hands a function's result on as Python values, where strict mode refuses a list for a tuple;
        # and a key that does not fit is named as the file has it (``raw.top1_final_mean``).
        schema = core_schema.typed_dict_schema(fields)
        serialization = (core_schema.plain_serializer_function_ser_schema(self.write) if self.write else
                         core_schema.wrap_serializer_function_ser_schema(write, schema=schema))
        return core_schema.no_info_after_validator_function(read, schema, serialization=serialization)

    def _keys(self, source: type, hints: dict):
        for f in dataclasses.fields(source):
            if f.name in self.flat:
                sub = typing.get_type_hints(hints[f.name])
                for g in dataclasses.fields(hints[f.name]):
                    yield _key(self.flat[f.name], g.name), (f.name, g, sub[g.name])
            elif f.name not in self.given:
                yield f.name, (f.name, f, hints[f.name])


class Flat:
    """A record with ``flat()`` fields."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: type, handler) -> core_schema.CoreSchema:
        prefixes = {f.name: f.name if f.metadata[FLAT] is None else f.metadata[FLAT]
                    for f in dataclasses.fields(source) if FLAT in f.metadata}
        return Layout(prefixes).__get_pydantic_core_schema__(source, handler)


def _key(prefix: str, name: str) -> str:
    return f"{prefix}_{name}" if prefix else name


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


@functools.cache
def _adapter(tp) -> TypeAdapter:
    return TypeAdapter(tp)


def to_json(tp, value) -> Any:
    """The JSON form (dicts, lists, numbers, strings) of ``value``, a value of type ``tp``."""
    return _adapter(tp).dump_python(value)


def from_json(tp, data) -> Any:
    """``data`` (parsed JSON) as a value of type ``tp``; CodecError naming the key path where it does not fit."""
    try:
        return _adapter(tp).validate_json(json.dumps(data), strict=True)
    except ValidationError as err:
        raise CodecError("; ".join(_located(e) for e in err.errors()[:3])) from None


def _located(error: dict) -> str:
    where = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in error["loc"]).lstrip(".")
    found = "" if error["type"] == "missing" else f", found {type(error['input']).__name__} {error['input']!r:.40}"
    return f"{where}: {error['msg']}{found}"

"""Config trees: YAML mappings read from files, merged, edited with ``dotted.key=value`` strings,
compared, and their validation errors explained. Used by train configs, study specs and the
``--model-arg`` option, so that every ``KEY=VALUE`` a user types is parsed the same way."""
from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from vitreduce.errors import VitreduceError


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML file holding a mapping; clear errors for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise VitreduceError(f"config file {path} does not exist")
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise VitreduceError(f"{path} is not valid YAML: {err}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise VitreduceError(f"{path} must hold a mapping of config sections, found {type(tree).__name__}")
    return tree


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive merge: mappings merge key by key, anything else in ``update`` replaces."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_assignment(item: str, option: str = "--set", example: str = "optimizer.lr=0.002",
                     form: str = "dotted.key=value") -> tuple[str, Any]:
    """``"a.b=VALUE"`` -> ``("a.b", value)``, the value parsed as YAML (``1e-3`` a float, ``[1,2]`` a
    list, ``null`` None). ``option``, ``form`` and ``example`` make the error say what to type."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise VitreduceError(f"{option} {item!r}: expected {form}, e.g. {example}")
    try:
        return key, yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise VitreduceError(f"{option} {item!r}: the value is not valid YAML ({err})") from None


def set_key(tree: dict[str, Any], key: str, value: Any, item: str | None = None, option: str = "--set") -> None:
    """Set ``tree[a][b][c] = value`` for ``key`` 'a.b.c', creating sections; refuses to descend into a value
    (the error names ``option`` and ``item``, e.g. ``--set 'a.b.c=1'``)."""
    *parents, leaf = key.split(".")
    node = tree
    for depth, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parents[: depth + 1])
            raise VitreduceError(f"{option} {item or key!r}: {where} is a value ({child!r}), not a section")
        node = child
    node[leaf] = value


def apply_override(tree: dict[str, Any], item: str) -> None:
    """Apply one ``a.b.c=value`` override in place (value parsed as YAML)."""
    key, value = parse_assignment(item)
    set_key(tree, key, value, item)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{dotted.key: leaf value} of a nested mapping."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differences(old: dict[str, Any], new: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """Lines ``key: old -> new`` for the leaves that differ, skipping keys starting with ``ignore``."""
    flat_old, flat_new = flatten(old), flatten(new)
    lines = []
    for key in sorted(set(flat_old) | set(flat_new)):
        if ignore and key.startswith(ignore):
            continue
        a, b = flat_old.get(key, "<unset>"), flat_new.get(key, "<unset>")
        if a != b:
            lines.append(f"{key}: {a} -> {b}")
    return lines


def explain_error(error: dict[str, Any], valid_keys: Callable[[list[str]], list[str]], *,
                  loc: list[str] | None = None, show_input: bool = True, unknown: str = "unknown key") -> str:
    """One line for one pydantic error: the dotted key, what is wrong, and for an unknown key the
    close matches and the valid keys at that place.

    Args:
        error: an entry of ``ValidationError.errors()``.
        valid_keys: the field names of the section at a location (a list of keys).
        loc: the location to report (default: the error's own).
        show_input: add the rejected value to value errors.
        unknown: what an unknown key is called there (e.g. "unknown profile option").
    """
    loc = [str(part) for part in error["loc"]] if loc is None else loc
    key = ".".join(loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        valid = valid_keys(loc[:-1])
        close = difflib.get_close_matches(loc[-1], valid, n=3, cutoff=0.5)
        prefix = ".".join(loc[:-1] + [""])
        hint = f"did you mean {', '.join(prefix + c for c in close)}? " if close else ""
        return f"{key}: {unknown}; {hint}valid keys here: {', '.join(valid)}"
    if error["type"] == "missing":
        return f"{key}: required, not set"
    message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if show_input:
        message += f" (got {error.get('input')!r})"
    return f"{key}: {message}"


def kwargs_from(source: Any, *names: str, **renamed: str) -> dict[str, Any]:
    """Keyword arguments read from attributes of ``source`` (a config section, parsed CLI arguments),
    for handing settings to a factory without repeating ``name=source.name`` for each one.

    Args:
        source: the object holding the values.
        names: attributes passed under their own name.
        renamed: ``keyword="attribute"`` pairs, for a factory that calls a setting by another name.

    ``kwargs_from(cfg, "min_lr", rate="decay_rate")`` is ``{"min_lr": cfg.min_lr, "rate": cfg.decay_rate}``.
    """
    return {**{name: getattr(source, name) for name in names},
            **{keyword: getattr(source, name) for keyword, name in renamed.items()}}

"""Config trees: YAML mappings read from files, merged, edited with ``dotted.key=value`` strings,
compared, and their validation errors explained. Used by train configs, study specs and the
``--model-arg`` option, so that every ``KEY=VALUE`` a user types is parsed the same way.

Every YAML a user gives (a file, a ``--set`` value) goes through ``load_yaml_text``: bounded in size,
aliases and nesting, duplicate keys and explicit tags refused, each problem one VitreduceError naming
the file and line. ``Whole`` and ``Real`` are the field types of numeric config values."""
from __future__ import annotations

import difflib
import os
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, Strict

from vitreduce.errors import VitreduceError

# Limits on what a YAML file may hold, checked before and while it is parsed, so that a hostile or
# broken file ends in a clear error instead of exhausting memory or Python's recursion limit. A train
# config or study spec is a few kilobytes holding a few hundred values, nested a few levels deep.
MAX_YAML_BYTES = 1 << 20  # 1 MiB
MAX_ALIASES = 100  # uses of `*anchor` (including `<<: *anchor` merges)
MAX_VALUES = 100_000  # values once every alias is expanded (a billion-laughs file has ~10^9)
MAX_DEPTH = 64  # nesting of mappings and lists, aliases expanded
# Explicit tags a config may use: none (None), the non-specific "!" and "!!str" (quote a value).
_TAGS_ALLOWED = (None, "!", "tag:yaml.org,2002:str")
_MERGE_TAG = "tag:yaml.org,2002:merge"
# The largest seed numpy's legacy RNG and torch.manual_seed both accept: seeds are 32-bit there.
SEED_MAX = 2**32 - 1

# The pydantic validation context of a config checked without torch (a study's dry run without --costs, and
# `study status`): the checks that need timm (model names and sizes, optimizer names, augment policies) are left
# to the commands that build the models. Every other check runs; without a context every check runs.
WITHOUT_TIMM = {"timm_checks": False}


def timm_checks(info: Any) -> bool:
    """Whether a validator given pydantic's ``info`` runs its checks that need timm (and torch)."""
    return (getattr(info, "context", None) or {}).get("timm_checks", True)


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a number, not true/false")
    return value


# Config field types: pydantic would read `true` as 1 or 1.0 (so `epochs: true` trained one epoch).
Whole = Annotated[int, Strict()]  # an integer, nothing else (not true, not 3.0, not "3")
Real = Annotated[float, BeforeValidator(_not_bool)]  # a number (an int or "1e-3" too), not true/false


class _Refused(yaml.YAMLError):
    """A YAML document over a limit (or with a duplicate key); ``mark`` says where."""

    def __init__(self, problem: str, mark: Any):
        super().__init__(problem)
        self.problem, self.mark = problem, mark


class _BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate keys and counts alias uses and nesting as it composes."""

    def __init__(self, text: str, name: str):
        super().__init__(text)
        self.name = name  # marks (and so error messages) name the file
        self._aliases, self._depth = 0, 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _Refused(f"more than {MAX_ALIASES} aliases (*name); write the values out",
                               self.peek_event().start_mark)
            return super().compose_node(parent, index)
        tag = self.peek_event().tag
        if tag not in _TAGS_ALLOWED:  # a config needs none; PyYAML's own crash on e.g. an empty `!!float`
            raise _Refused(f"the YAML tag {tag!r} is not allowed in a config (only !!str); remove it",
                           self.peek_event().start_mark)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _measure(node, {}, set(), 0)
        return node


def _measure(node: yaml.Node, sizes: dict[int, tuple[int, int]], open_: set[int], level: int) -> tuple[int, int]:
    """(values, depth) of ``node`` with aliases expanded (memoised by node: each is walked once);
    refuses more than MAX_VALUES values, more than MAX_DEPTH levels, a collection holding itself and
    a key given twice in one mapping."""
    key = id(node)
    if key in open_:
        raise _Refused("an alias refers to the collection that holds it", node.start_mark)
    if key not in sizes:
        open_.add(key)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            _check_unique_keys(node)
            children = [part for pair in node.value for part in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        values, depth = 1, 0
        for child in children:
            child_values, child_depth = _measure(child, sizes, open_, level + 1)
            values, depth = values + child_values, max(depth, child_depth)
        open_.discard(key)
        sizes[key] = (values, depth + (1 if children else 0))
    values, depth = sizes[key]
    if values > MAX_VALUES:
        raise _Refused(f"holds more than {MAX_VALUES} values once its aliases are expanded", node.start_mark)
    if level + depth > MAX_DEPTH:
        raise _Refused(f"nested more than {MAX_DEPTH} levels deep once its aliases are expanded", node.start_mark)
    return sizes[key]


def _check_unique_keys(node: yaml.MappingNode) -> None:
    """Refuse a key given twice in one mapping (YAML would silently keep the last); ``<<`` merges may be
    overridden by the mapping's own keys, as YAML intends."""
    seen: dict[tuple[str, str], yaml.Node] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
            continue
        ident = (key_node.tag, key_node.value)
        if ident in seen:
            first = seen[ident].start_mark.line + 1
            raise _Refused(f"key {key_node.value!r} given twice (first on line {first}); keep one", key_node.start_mark)
        seen[ident] = key_node


def load_yaml_text(text: str, source: str) -> Any:
    """Parse YAML text with the limits above; any problem is a VitreduceError naming ``source`` and the line.

    Args:
        text: the YAML document.
        source: what it is, for messages: a file path, or e.g. ``--set 'seed=3'``.
    """
    loader = None
    try:
        loader = _BoundedLoader(text, source)  # checks every character is printable
        return loader.get_single_data()
    except _Refused as err:
        line = f", line {err.mark.line + 1}" if err.mark is not None else ""
        raise VitreduceError(f"{source}{line}: {err.problem}") from None
    except yaml.reader.ReaderError as err:
        raise VitreduceError(f"{source} holds the control character {err.character:#x} at position "
                             f"{err.position}; is it a text file?") from None
    except yaml.YAMLError as err:
        raise VitreduceError(f"{source} is not valid YAML: {err}") from None
    except (ValueError, OverflowError, RecursionError) as err:  # e.g. a date like 2024-13-45
        raise VitreduceError(f"{source} holds a value YAML cannot read: {err}") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML file holding a mapping: at most MAX_YAML_BYTES of UTF-8 text, parsed by ``load_yaml_text``;
    a clear VitreduceError naming the file for anything else."""
    path = Path(path)
    if not path.exists():
        raise VitreduceError(f"config file {path} does not exist")
    if not path.is_file():
        raise VitreduceError(f"{path} is not a regular file; give a YAML file")
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_YAML_BYTES + 1)
    except OSError as err:
        raise VitreduceError(f"cannot read {path}: {err.strerror or err}") from None
    if len(data) > MAX_YAML_BYTES:
        raise VitreduceError(f"{path} is larger than {MAX_YAML_BYTES // 1024} KiB, the most a config or "
                             "study spec may be; is it the right file?")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise VitreduceError(f"{path} is not UTF-8 text (byte {data[err.start]:#04x} at offset {err.start}); "
                             "is it the right file? Save it as UTF-8") from None
    tree = load_yaml_text(text, str(path))
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
    return key, load_yaml_text(text, f"{option} {item!r}")


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
        message += f" (got {short_repr(error.get('input'))})"
    return f"{key}: {message}"


def section_keys(model: type[BaseModel], loc: list[str]) -> list[str]:
    """The field names allowed at a dotted location of a pydantic config tree (list positions skipped;
    empty where the location is a value, not a section): what ``explain_error`` lists for an unknown key."""
    section: type[BaseModel] | None = model
    for part in loc:
        if part.isdigit():
            continue
        field = section.model_fields.get(part) if section is not None else None
        if field is None:
            return []
        section = _section_model(field.annotation)
    return list(section.model_fields) if section is not None else []


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (``list[VariantSpec]``, ``AnalysisConfig | None``, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _section_model(arg)
        if found is not None:
            return found
    return None


def short_repr(value: Any, limit: int = 200) -> str:
    """repr of a rejected value, cut to ``limit`` characters (a value can be a whole file's tree)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + " ...)"


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

"""Hypothesis strategies for hostile input, made from the schemas.

For every field of a pydantic model (TrainConfig, StudySpec, their sections) the values drawn are the
ones it accepts (its default, its Literal choices), values at and beside its bounds, and hostile ones:
wrong types, huge integers, NaN and infinities, random and binary-derived text, lists, mappings. An
``edit`` is ``(path, value)``; a tree is a valid tiny config or spec with a few edits applied.
"""
from __future__ import annotations

import copy
import json
import math
import typing
from typing import Any

from annotated_types import Ge, Gt, Le, Lt
from hypothesis import strategies as st
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

HUGE_INTS = (2**31, 2**32, 2**40, 2**53 + 1, 2**63, 2**64, 10**24, -(2**63) - 1)
SPECIAL_FLOATS = (math.nan, math.inf, -math.inf, 1e308, -0.0, 5e-324, 1e24)
Path = tuple[str | int, ...]


def scalars() -> st.SearchStrategy:
    return st.one_of(
        st.none(), st.booleans(), st.integers(-10, 10_000), st.sampled_from(HUGE_INTS),
        st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(SPECIAL_FLOATS),
        st.text(max_size=16), st.binary(max_size=16).map(lambda raw: raw.decode("latin-1")),
    )


def numbers() -> st.SearchStrategy:
    return st.one_of(st.integers(-2, 4), st.floats(-2, 2), st.sampled_from(SPECIAL_FLOATS + HUGE_INTS))


def hostile_values() -> st.SearchStrategy:
    return st.one_of(
        st.sampled_from((*SPECIAL_FLOATS, *HUGE_INTS, True, False, None, "", "1")), scalars(),
        st.lists(numbers(), min_size=1, max_size=4), st.lists(scalars(), max_size=3),
        st.dictionaries(st.text(max_size=6), scalars(), max_size=2),
    )


def json_values() -> st.SearchStrategy:
    """Anything json.dumps writes (NaN and infinities included, as Python's json does)."""
    return st.recursive(scalars(), lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)


# --- the schema, walked ----------------------------------------------------------------------------


def _inner(annotation: Any) -> list[Any]:
    """The annotation and every type inside it (``X | None``, ``list[X]``, ``Annotated[X, ...]``)."""
    found = [annotation]
    for arg in typing.get_args(annotation):
        found += _inner(arg)
    return found


def _section(annotation: Any) -> type[BaseModel] | None:
    return next((t for t in _inner(annotation) if isinstance(t, type) and issubclass(t, BaseModel)), None)


def _is_list(annotation: Any) -> bool:
    return any(typing.get_origin(t) is list for t in _inner(annotation))


def typical(field: FieldInfo) -> list[Any]:
    """Values a field accepts or is about to: its default, its Literal choices, its bounds and beside them."""
    values = [] if field.default in (PydanticUndefined, None) or isinstance(field.default, BaseModel) \
        else [field.default]
    for annotation in _inner(field.annotation):
        if typing.get_origin(annotation) is typing.Literal:
            values += list(typing.get_args(annotation))
    for item in field.metadata:
        for kind in (Ge, Gt, Le, Lt):
            if isinstance(item, kind):
                bound = getattr(item, kind.__name__.lower())
                values += [bound, bound - 1, bound + 1, bound - 1e-9, bound + 1e-9]
    return values


def field_values(field: FieldInfo) -> st.SearchStrategy:
    values = typical(field)
    return st.one_of(st.sampled_from(values), hostile_values()) if values else hostile_values()


def leaf_fields(model: type[BaseModel], prefix: Path = ()) -> list[tuple[Path, FieldInfo]]:
    """(path, field) for every field of ``model`` and of its sections (a list section at index 0)."""
    found = []
    for name, field in model.model_fields.items():
        path = (*prefix, name)
        found.append((path, field))
        section = _section(field.annotation)
        if section is not None:
            found += leaf_fields(section, (*path, 0) if _is_list(field.annotation) else path)
    return found


def dotted_keys(model: type[BaseModel]) -> list[str]:
    return [".".join(map(str, path)) for path, _ in leaf_fields(model)]


def edits(model: type[BaseModel], prefix: Path = ()) -> list[st.SearchStrategy]:
    """One strategy per field of ``model`` (under ``prefix``), each drawing ``(path, value)``; plus one
    for an unknown key in any section."""
    fields = leaf_fields(model, prefix)
    one = [st.tuples(st.just(path), field_values(field)) for path, field in fields]
    sections = [prefix] + [path for path, field in fields if _section(field.annotation)]
    unknown = st.tuples(st.tuples(st.sampled_from(sections), st.text(min_size=1, max_size=8)).map(
        lambda pair: (*pair[0], pair[1])), scalars())
    return [*one, unknown]


def overrides(model: type[BaseModel]) -> st.SearchStrategy:
    """A study's overrides: dotted train-config keys (or any text) to hostile values."""
    keys = st.sampled_from(dotted_keys(model)) | st.text(max_size=10)
    return st.dictionaries(keys, hostile_values(), max_size=3)


def some_edits(choices: list[st.SearchStrategy], most: int = 3) -> st.SearchStrategy:
    return st.lists(st.one_of(choices), min_size=1, max_size=most)


def apply(tree: dict, changes: list[tuple[Path, Any]]) -> dict:
    """A deep copy of ``tree`` with each value set at its path (sections made where missing or replaced)."""
    tree = copy.deepcopy(tree)
    for path, value in changes:
        node: Any = tree
        for part, after in zip(path[:-1], path[1:], strict=True):
            child = _get(node, part)
            if not isinstance(child, list if isinstance(after, int) else dict):
                child = [] if isinstance(after, int) else {}
                _set(node, part, child)
            node = child
        _set(node, path[-1], copy.deepcopy(value))
    return tree


def _get(node: dict | list, key: str | int) -> Any:
    if isinstance(node, list):
        return node[key] if key < len(node) else None
    return node.get(key)


def _set(node: dict | list, key: str | int, value: Any) -> None:
    if isinstance(node, list):
        node.extend({} for _ in range(key + 1 - len(node)))
    node[key] = value


def numeric_leaves(tree: Any, path: str = "") -> list[tuple[str, int | float]]:
    """(dotted path, number) for every int or float in a tree (booleans are not numbers)."""
    if isinstance(tree, dict):
        return [leaf for key, value in tree.items() for leaf in numeric_leaves(value, f"{path}{key}.")]
    if isinstance(tree, list | tuple):
        return [leaf for i, value in enumerate(tree) for leaf in numeric_leaves(value, f"{path}{i}.")]
    return [(path.rstrip("."), tree)] if isinstance(tree, int | float) and not isinstance(tree, bool) else []


def insane_numbers(tree: Any) -> list[str]:
    """The numbers an accepted config must not hold: NaN, infinities, integers beyond int64."""
    return [f"{path}={value!r}" for path, value in numeric_leaves(tree)
            if (isinstance(value, float) and not math.isfinite(value))
            or (isinstance(value, int) and not -(2**63) <= value < 2**63)]


# --- reduction specs and checkpoint headers ---------------------------------------------------------

_SPEC_VALUES = ("0", "1", "2", "3", "12", "0.5", "1.0", "-1", "1e309", "nan", "inf", "-0.0", "1_0", " 2 ", "",
                "\u0662", "\uff11", "\u00b2", "\u0660.\u0665", str(2**32), str(2**40), str(2**64), "0x10",
                "first", "mean", "cycle", "sequence", "magnitude", "random", "auto")


_VALID_VALUES = {"size": ("1", "2", "3", "4"), "scale": ("auto", "0.5", "1.0"), "init": ("first", "mean"),
                 "pattern": ("sequence", "cycle"), "ratio": ("0.25", "0.5", "1.0"),
                 "keep": ("first", "magnitude", "random"), "seed": ("0", "7")}
_STEP_KEYS = {"grouped": ("size", "scale", "init", "pattern"), "shallow": ("ratio", "keep", "seed"), "thin": ("ratio",)}


def _step(name: str) -> st.SearchStrategy:
    """A step ``name:key=value,...``: its own keys (or any) mostly with valid values, else hostile ones."""
    def pair(key: str) -> st.SearchStrategy:
        valid = st.sampled_from(_VALID_VALUES.get(key, ("1",)))
        return st.one_of(valid, valid, st.sampled_from(_SPEC_VALUES), st.text(max_size=6)).map(f"{key}=".__add__)

    keys = st.sampled_from((*_STEP_KEYS.get(name, tuple(_VALID_VALUES)), "x"))
    return st.lists(keys.flatmap(pair), max_size=3).map(lambda pairs: name + (":" + ",".join(pairs) if pairs else ""))


def spec_texts() -> st.SearchStrategy:
    """Reduction spec strings: compositions of steps with valid and hostile values, and any text."""
    step = st.sampled_from(("grouped", "shallow", "thin", "grouped", "shallow", "none", "Grouped", "")).flatmap(_step)
    composed = st.lists(step, min_size=1, max_size=2).map("+".join)
    return st.one_of(composed, composed, composed, st.text(max_size=30))


ARCH_KEYS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "num_classes", "qkv_bias",
             "class_token", "global_pool", "drop_rate", "drop_path_rate", "weight_init", "in_chans", "reg_tokens",
             "no_embed_class", "init_values", "dynamic_img_size", "fc_norm", "pre_norm")
COMMAND_KEYS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir",
                "pretrained_strict", "features_only", "scriptable", "exportable", "block_fn", "mlp_layer")
BASE_NAMES = ("vit_tiny_patch16_224", "vit_base_patch16_224", "resnet50", "hf-hub:timm/vit_tiny_patch16_224",
              "hf_hub:timm/x", "local-dir:/tmp", "", "../../etc/passwd", "vit_tiny_patch16_224.augreg_in21k")


def header_edits(header: dict[str, str]) -> st.SearchStrategy:
    """1 to 3 edits of a real checkpoint header: ``(key, text or None)``, None removing the key."""
    kwargs = json.loads(header["model_kwargs"])
    kwarg_changes = st.dictionaries(st.sampled_from(ARCH_KEYS + COMMAND_KEYS) | st.text(max_size=8),
                                    json_values(), min_size=1, max_size=3)
    texts = st.text(max_size=40) | json_values().map(json.dumps)
    choices = [
        st.tuples(st.just("model_kwargs"), kwarg_changes.map(lambda c: json.dumps({**kwargs, **c})) | texts),
        st.tuples(st.just("base_model"), st.sampled_from(BASE_NAMES) | st.text(max_size=20)),
        st.tuples(st.just("reduction"), spec_texts()),
        st.tuples(st.just("aliases"), texts),
        st.tuples(st.just("format"), st.sampled_from(("vitreduce.model.v1", "vitreduce.model.v2", "")) | texts),
        st.tuples(st.sampled_from(sorted(header)), st.none()),
        st.tuples(st.text(min_size=1, max_size=8), texts),
    ]
    return st.lists(st.one_of(choices), min_size=1, max_size=3)


# --- KEY=VALUE items (--set, --model-arg): the value is YAML text ------------------------------------

_YAML_SNIPPETS = ("*a", "&a [*a, *a]", "!!python/object/apply:os.system ['true']", "!!float", "{", "[", "1e24",
                  "1.0e+24", ".nan", "-.inf", "true", "0x10", "0o7", "1_000", "~", "'", "\x00", "[" * 40 + "]" * 40,
                  "&a [&b [*a]]", "<<: *x", "? a\n: b", "a: 1\na: 2", "%YAML 1.1\n---\n1", str(2**64))


def yaml_texts() -> st.SearchStrategy:
    return st.sampled_from(_YAML_SNIPPETS) | scalars().map(lambda v: json.dumps(v)) | st.text(max_size=20)

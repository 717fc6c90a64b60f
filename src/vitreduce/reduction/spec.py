"""Reduction specs: one small value type with one canonical string form.

The string form is what users type and what configs, checkpoints and reports store:
``none``, ``grouped``, ``grouped:size=3,scale=1.0,init=mean,pattern=cycle``,
``shallow:ratio=0.5,keep=magnitude``, ``thin:ratio=0.5``, ``grouped+shallow:ratio=0.5``,
``grouped:init=mean,scale=1.0,relax=8`` (relaxed sharing: a rank-8 delta per block, ``reduction.relax``).
Steps are applied left to right in canonical order: ``thin`` always runs before ``grouped`` (it
re-initialises the MLPs, which would undo grouped's scaling), so ``grouped+thin`` and ``thin+grouped``
are one spec, printed ``thin:ratio=0.5+grouped``; ``grouped`` and ``shallow`` keep the order written.
Parsing then printing gives the canonical form: steps in that order, keys in a fixed order, defaults
left out except ``ratio``, which always shows because it defines the variant.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from typing import Any

from vitreduce.config_tree import SEED_MAX
from vitreduce.errors import VitreduceError

_Choice = tuple[str, ...]


def _parse_ratio(text: str) -> float:
    value = float(text)
    if not (0.0 < value <= 1.0) or math.isnan(value):
        raise ValueError("must be in (0, 1]")
    return value


def _parse_scale(text: str) -> float | str:
    if text in ("auto", "output"):
        return text
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be 'auto', 'output' or a positive finite number")
    return value


def _parse_choice(choices: _Choice):
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return text

    return parse


_INTEGER = re.compile(r"[+-]?[0-9]{1,20}")


def _parse_int_from(low: int, note: str = "", high: int | None = None):
    """A parser for integers in [``low``, ``high``] written in ASCII digits (Python's int() also takes
    '٣' and '1_0'); ``note`` explains the bound in the error."""

    def parse(text: str) -> int:
        if not _INTEGER.fullmatch(text):
            raise ValueError("must be an integer (digits 0-9)")
        value = int(text)
        if value < low:
            raise ValueError(f"must be >= {low}{note}")
        if high is not None and value > high:
            raise ValueError(f"must be <= {high}{note}")
        return value

    return parse


# strategy -> {key: (default, parser)}; dict order is the canonical key order.
STRATEGIES: dict[str, dict[str, tuple[Any, Any]]] = {
    "grouped": {
        "size": (2, _parse_int_from(1, " (1 = no sharing)")),
        "scale": ("auto", _parse_scale),
        "init": ("first", _parse_choice(("first", "mean"))),
        "pattern": ("sequence", _parse_choice(("sequence", "cycle"))),
        "relax": (0, _parse_int_from(0, " (0 = plain sharing; R = a rank-R delta per block)")),
    },
    "shallow": {
        "ratio": (0.5, _parse_ratio),
        "keep": ("first", _parse_choice(("first", "magnitude", "random"))),
        "seed": (0, _parse_int_from(0, " (a 32-bit seed, as numpy and torch take)", SEED_MAX)),
    },
    "thin": {
        "ratio": (0.5, _parse_ratio),
    },
}
# Keys printed even at their default value.
_ALWAYS_SHOWN = {"ratio"}
# Strategies that replace the MLPs' weights run before every other step, whatever order is written:
# a step before them (grouped's 1/sqrt(n) scaling) would be silently undone.
_RUN_FIRST = ("thin",)
_HELP = (
    "valid: 'none' or steps joined by '+', each STRATEGY[:key=value,...] with "
    "grouped(size=2, scale=auto|output|FLOAT, init=first|mean, pattern=sequence|cycle, relax=0; scale=auto: "
    "1/sqrt(n) on fc1 and fc2.weight for init=first, the same std for init=mean; output: fc2.weight x 1/n, "
    "the output at 1/n for every MLP kind; relax=R: a per-block rank-R delta on the shared weights, 0 = none), "
    "shallow(ratio=0.5, keep=first|magnitude|random, seed=0), thin(ratio=0.5; runs before grouped)"
)


def _format_value(value: Any) -> str:
    """A float as Python writes it, with no '+' in its exponent ('1e+20' would read as two steps)."""
    return repr(value).replace("e+", "e") if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Step:
    """One reduction step: a strategy and its fully resolved parameters."""

    strategy: str
    params: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        defaults = STRATEGIES[self.strategy]
        shown = [
            f"{key}={_format_value(self.params[key])}"
            for key, (default, _) in defaults.items()
            if key in _ALWAYS_SHOWN or self.params[key] != default
        ]
        return self.strategy + (":" + ",".join(shown) if shown else "")

    def __hash__(self) -> int:
        return hash(str(self))


@dataclass(frozen=True)
class ReductionSpec:
    """An ordered composition of reduction steps; empty means no reduction ('none')."""

    steps: tuple[Step, ...] = ()

    def __post_init__(self) -> None:
        # A stable sort: only the _RUN_FIRST strategies move; grouped and shallow keep their order.
        ordered = tuple(sorted(self.steps, key=lambda step: step.strategy not in _RUN_FIRST))
        object.__setattr__(self, "steps", ordered)

    @classmethod
    def parse(cls, text: str | ReductionSpec | None) -> ReductionSpec:
        """Parse a spec string (or pass a spec through). Raises VitreduceError naming valid choices."""
        if isinstance(text, ReductionSpec):
            return text
        if text is None:
            return cls()
        if not isinstance(text, str):
            raise VitreduceError(f"reduction spec must be a string, got {type(text).__name__}; {_HELP}")
        stripped = text.strip()
        if not stripped:  # an unset shell variable, most likely: say so rather than train unreduced
            raise VitreduceError(f"reduction spec {text!r} is empty; write 'none' for no reduction")
        if not stripped.isascii():
            raise VitreduceError(f"reduction spec {text!r} has characters outside ASCII; {_HELP}")
        if stripped == "none":
            return cls()
        steps = tuple(_parse_step(part.strip(), text) for part in stripped.split("+"))
        names = [step.strategy for step in steps]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise VitreduceError(f"reduction spec {text!r} repeats {', '.join(repeated)}; use each strategy once")
        check_relax_order(ReductionSpec(steps).steps, repr(text))
        if "shallow" in names and "thin" in names:
            raise VitreduceError(
                f"reduction spec {text!r} combines shallow and thin; both set the MLP width, choose one"
            )
        return cls(steps)

    def __str__(self) -> str:
        return "+".join(str(step) for step in self.steps) if self.steps else "none"

    def __bool__(self) -> bool:
        return bool(self.steps)

    def step(self, strategy: str) -> Step | None:
        """The step of that strategy, or None."""
        return next((s for s in self.steps if s.strategy == strategy), None)

    def with_shapes_only(self) -> ReductionSpec:
        """The same shapes, buildable on the meta device: keep=magnitude needs real weights, and which units a
        shallow step keeps does not change a shape, so it becomes keep=first."""
        return ReductionSpec(tuple(Step(s.strategy, {**s.params, "keep": "first"})
                                   if s.params.get("keep") == "magnitude" else s for s in self.steps))


def check_relax_order(steps: tuple[Step, ...], what: str) -> None:
    """Refuse a shallow step after a relaxed grouped one: the per-block deltas are built at the width the
    MLP has then, so the width must be set first (``shallow+grouped:relax=R``)."""
    names = [step.strategy for step in steps]
    grouped = next((s for s in steps if s.strategy == "grouped"), None)
    if grouped and grouped.params["relax"] and "shallow" in names[names.index("grouped"):]:
        raise VitreduceError(f"reduction {what} slices the MLPs after relaxing their sharing; write shallow first, "
                             f"e.g. 'shallow+{grouped}'")


def _parse_step(part: str, whole: str) -> Step:
    name, _, arg_text = part.partition(":")
    name = name.strip()
    if name not in STRATEGIES:
        hint = difflib.get_close_matches(name, list(STRATEGIES) + ["none"], n=1)
        did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise VitreduceError(f"unknown reduction strategy {name!r} in {whole!r}{did_you_mean}; {_HELP}")
    schema = STRATEGIES[name]
    params = {key: default for key, (default, _) in schema.items()}
    seen: set[str] = set()
    for item in filter(None, (a.strip() for a in arg_text.split(","))) if arg_text else ():
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if key not in schema:
            raise VitreduceError(
                f"unknown key {key!r} for {name} in {whole!r}; valid keys: {', '.join(schema)}"
            )
        if not sep or not raw:
            raise VitreduceError(f"key {key!r} in {whole!r} needs a value (key=value); {_HELP}")
        if key in seen:
            raise VitreduceError(f"key {key!r} given twice in {whole!r}")
        seen.add(key)
        try:
            params[key] = schema[key][1](raw)
        except ValueError as err:
            reason = str(err) if "must" in str(err) else f"must be {_type_hint(schema[key][0])}"
            raise VitreduceError(f"bad value {raw!r} for {name}.{key} in {whole!r}: {reason}") from None
    if arg_text is not None and ":" in part and not seen:
        raise VitreduceError(f"{name!r} in {whole!r} has ':' but no key=value pairs; {_HELP}")
    return Step(name, params)


def _type_hint(default: Any) -> str:
    return {int: "an integer", float: "a number"}.get(type(default), "a valid value")

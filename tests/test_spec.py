"""Reduction spec strings: canonical form, round trips, clear errors (fuzzed)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vitreduce.errors import VitreduceError
from vitreduce.reduction.spec import ReductionSpec


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("none", "none"),
        ("grouped", "grouped"),
        ("grouped:size=2,scale=auto,init=first,pattern=sequence", "grouped"),
        ("grouped:pattern=cycle,init=mean,scale=1.0,size=3", "grouped:size=3,scale=1.0,init=mean,pattern=cycle"),
        ("shallow", "shallow:ratio=0.5"),
        ("shallow:keep=magnitude", "shallow:ratio=0.5,keep=magnitude"),
        ("shallow:ratio=0.25,keep=random,seed=3", "shallow:ratio=0.25,keep=random,seed=3"),
        ("thin:ratio=0.5", "thin:ratio=0.5"),
        ("grouped+shallow:ratio=0.5", "grouped+shallow:ratio=0.5"),
        ("shallow+grouped", "shallow:ratio=0.5+grouped"),  # stored in checkpoints: kept as written
        # thin runs before grouped whatever the order written: one spec, one string
        ("grouped+thin", "thin:ratio=0.5+grouped"),
        ("thin:ratio=0.25+grouped:size=3", "thin:ratio=0.25+grouped:size=3"),
        ("grouped:init=mean+thin:ratio=0.25", "thin:ratio=0.25+grouped:init=mean"),
        (" grouped : size = 4 ", "grouped:size=4"),
    ],
)
def test_canonical_form(text, canonical):
    spec = ReductionSpec.parse(text)
    assert str(spec) == canonical
    assert ReductionSpec.parse(str(spec)) == spec


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("groupd", "did you mean 'grouped'"),
        ("grouped:sise=2", "valid keys: size, scale, init, pattern"),
        ("shallow:ratio=0", "(0, 1]"),
        ("shallow:ratio=1.5", "(0, 1]"),
        ("shallow:ratio=abc", "shallow.ratio"),
        ("grouped:size=0", ">= 1"),
        ("grouped:init=last", "first, mean"),
        ("grouped:pattern=zigzag", "sequence, cycle"),
        ("grouped:scale=-1", "positive"),
        ("shallow+thin", "choose one"),
        ("grouped+grouped", "repeats grouped"),
        ("grouped:size", "needs a value"),
        ("grouped:size=2,size=3", "given twice"),
        ("grouped:", "no key=value"),
        ("", "write 'none'"),  # an empty --reduction used to mean none
    ],
)
def test_bad_specs_name_the_fix(text, message):
    with pytest.raises(VitreduceError) as info:
        ReductionSpec.parse(text)
    assert message in str(info.value)


_ALPHABET = "groupedshalowthinnme:+=,.0123456789-_ "


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=_ALPHABET, max_size=40))
def test_fuzzed_strings_give_a_spec_or_a_clear_error(text):
    try:
        spec = ReductionSpec.parse(text)
    except VitreduceError as err:
        assert str(err)  # a message, never a traceback from deeper code
        return
    assert ReductionSpec.parse(str(spec)) == spec


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(1, 12),
    scale=st.one_of(st.just("auto"), st.floats(0.01, 10, allow_nan=False)),
    init=st.sampled_from(["first", "mean"]),
    pattern=st.sampled_from(["sequence", "cycle"]),
    ratio=st.floats(0.01, 1.0),
    keep=st.sampled_from(["first", "magnitude", "random"]),
)
def test_valid_specs_round_trip(size, scale, init, pattern, ratio, keep):
    text = f"grouped:size={size},scale={scale},init={init},pattern={pattern}+shallow:ratio={ratio},keep={keep}"
    spec = ReductionSpec.parse(text)
    assert ReductionSpec.parse(str(spec)) == spec
    assert str(ReductionSpec.parse(str(spec))) == str(spec)


def test_thin_and_grouped_in_either_order_are_one_spec():
    assert ReductionSpec.parse("grouped:size=3+thin") == ReductionSpec.parse("thin+grouped:size=3")
    assert [s.strategy for s in ReductionSpec.parse("grouped+thin").steps] == ["thin", "grouped"]


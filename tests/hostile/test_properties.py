"""Property tests: configs, study specs, reduction specs, checkpoint headers and --model-arg values made
from the schemas (strategies.py) end in a valid result or a VitreduceError: never another exception,
never a network call, never an accepted NaN, infinity or integer beyond int64."""
from __future__ import annotations

import string

import pytest
import strategies as hs
import torch
from conftest import tiny_model
from corpus import TINY_ARGS
from harness import (
    ERROR_MAX_CHARS,
    Hang,
    NetworkRefused,
    describe,
    hang_guard,
    memory_guard,
    network_guard,
    problems,
    read_header,
    run_cli,
    write_checkpoint,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vitreduce
from vitreduce.errors import VitreduceError
from vitreduce.reduction.spec import ReductionSpec
from vitreduce.study.plan import expand
from vitreduce.study.spec import StudySpec, load_spec, parse_spec
from vitreduce.train.config import TrainConfig, validate

FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def result_or_refusal(call):
    """``call()`` with no network and bounded memory and time: its result, or None for a VitreduceError
    (whose message must be short and say something); any other exception fails the test."""
    with network_guard() as calls:
        try:
            with memory_guard(), hang_guard():
                result = call()
        except VitreduceError as err:
            assert str(err).strip() and len(str(err)) < ERROR_MAX_CHARS, f"unclear error: {str(err)[:300]!r}"
            result = None
        except (Hang, NetworkRefused) as err:  # BaseExceptions: made failures so hypothesis shrinks them
            raise AssertionError(f"{type(err).__name__}: {err}") from None
    assert not calls, f"reached for the network: {calls[0]}"
    return result


def tiny_spec(tiny_train_config) -> dict:
    return {"name": "hostile", "base": tiny_train_config(epochs=1), "seeds": [0],
            "variants": [{"name": "baseline", "overrides": {"model.reduction": "none"}},
                         {"name": "grouped", "overrides": {"model.reduction": "grouped"}}]}


@FEW
@given(changes=hs.some_edits(hs.edits(TrainConfig)))
def test_train_config_trees_validate_or_are_refused(changes, tiny_train_config):
    tree = hs.apply(tiny_train_config(epochs=1), changes)
    config = result_or_refusal(lambda: validate(tree, source="hostile"))
    if config is not None:
        assert not hs.insane_numbers(config.model_dump()), f"accepted {hs.insane_numbers(config.model_dump())}"
        assert validate(config.to_dict()) == config, "config.yaml would not reload as the same config"


# Four kinds of edit, equally likely: a spec field, a base config field, overrides, seeds.
SPEC_EDITS = [
    st.one_of(hs.edits(StudySpec)), st.one_of(hs.edits(TrainConfig, ("base",))),
    st.tuples(st.sampled_from([("overrides",), ("variants", 0, "overrides")]), hs.overrides(TrainConfig)),
    st.tuples(st.just(("seeds",)), st.lists(st.integers(-3, 3) | st.sampled_from(hs.HUGE_INTS), max_size=3)),
]


@FEW
@given(changes=hs.some_edits(SPEC_EDITS))
def test_study_spec_trees_expand_or_are_refused(changes, tiny_train_config):
    tree = hs.apply(tiny_spec(tiny_train_config), changes)
    plans = result_or_refusal(lambda: expand(parse_spec(tree, source="hostile"), "hostile-study"))
    for plan in plans or []:
        assert not hs.insane_numbers([plan.seed, plan.config.model_dump()]), f"{plan.label}: accepted insane numbers"


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory, tiny_train_config):
    import yaml

    path = tmp_path_factory.mktemp("spec") / "spec.yaml"
    path.write_text(yaml.safe_dump(tiny_spec(tiny_train_config)))
    return path


SET_KEYS = [*hs.dotted_keys(StudySpec), *(f"base.{k}" for k in hs.dotted_keys(TrainConfig)),
            *(f"overrides.{k}" for k in hs.dotted_keys(TrainConfig)), "variants.0.name", "", "a..b", " "]


@FEW
@given(sets=st.lists(st.tuples(st.sampled_from(SET_KEYS) | st.text(max_size=8), hs.yaml_texts()).map("=".join),
                     min_size=1, max_size=3))
def test_study_spec_set_items_apply_or_are_refused(sets, spec_file):
    plans = result_or_refusal(lambda: expand(load_spec(spec_file, sets), "hostile-study"))
    for plan in plans or []:
        assert not hs.insane_numbers([plan.seed, plan.config.model_dump()]), f"{plan.label}: accepted insane numbers"


@settings(FEW, max_examples=100)  # milliseconds each
@given(text=hs.spec_texts())
def test_reduction_spec_strings_parse_and_apply_or_are_refused(text):
    spec = result_or_refusal(lambda: ReductionSpec.parse(text))
    if spec is None:
        return
    assert ReductionSpec.parse(str(spec)) == spec
    assert not [c for c in text if c.isdigit() and not c.isascii()], f"accepted non-ASCII digits in {text!r}"
    result_or_refusal(lambda: vitreduce.reduce(tiny_model(), spec))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = vitreduce.save(tiny_model(), tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")
    return path, read_header(path)


@FEW
@given(data=st.data())
def test_checkpoint_headers_load_or_are_refused(data, tiny_checkpoint):
    source, header = tiny_checkpoint
    edited = dict(header)
    for key, value in data.draw(hs.header_edits(header), label="header edits"):
        if value is None:
            edited.pop(key, None)
        else:
            edited[key] = value
    target = write_checkpoint(source, source.parent / "hostile.safetensors", edited)
    model = result_or_refusal(lambda: vitreduce.load(target))
    assert model is None or isinstance(model, torch.nn.Module)


MODEL_ARG_KEYS = st.sampled_from(hs.ARCH_KEYS + hs.COMMAND_KEYS) | st.text(string.ascii_letters + "_", min_size=1,
                                                                           max_size=8)


@settings(FEW, max_examples=25)
@given(model_args=st.dictionaries(MODEL_ARG_KEYS, hs.yaml_texts(), min_size=1, max_size=3))
def test_model_args_build_or_are_refused(model_args):
    argv = ["inspect", "vit_tiny_patch16_224", *(w for arg in TINY_ARGS for w in ("--model-arg", arg))]
    argv += [word for key, value in model_args.items() for word in ("--model-arg", f"{key}={value}")]
    outcome = run_cli(argv)
    found = problems(outcome)
    assert not found, describe(outcome, found)

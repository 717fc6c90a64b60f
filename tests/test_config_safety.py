"""Hostile configs, study specs and reduction specs: each ends in a valid result or one clear VitreduceError
(exit code 2 from the CLI, the key named, no traceback, nothing written), within bounded time and memory."""
from __future__ import annotations

import copy
import math
import shutil
import tracemalloc
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vitreduce.cli.main import main
from vitreduce.config_tree import (
    MAX_ALIASES,
    MAX_DEPTH,
    MAX_YAML_BYTES,
    SEED_MAX,
    apply_override,
    flatten,
    load_yaml_text,
    read_yaml,
)
from vitreduce.data.synth import SynthConfig
from vitreduce.errors import VitreduceError
from vitreduce.reduction.spec import ReductionSpec
from vitreduce.study.spec import StudySpec, load_spec
from vitreduce.train.config import TrainConfig, changed_keys, load_config, validate

# Nine anchors, each a list of nine aliases of the one before: 9^9 (387 million) strings once expanded.
BILLION_LAUGHS = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10))
DEEP_FLOW = "data: " + "[" * 20_000 + "]" * 20_000 + "\n"
DEEP_BLOCK = "".join(" " * i + f"k{i}:\n" for i in range(200)) + " " * 200 + "v: 1\n"


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def config_file(tmp_path: Path, **tree) -> Path:
    return write(tmp_path / "config.yaml", yaml.safe_dump({"data": {"root": str(tmp_path / "data")}, **tree}))


def spec_text(tmp_path: Path, **tree) -> str:
    spec = {"name": "s", "base": {"data": {"root": str(tmp_path / "data")}, "device": "cpu"},
            "variants": [{"name": "a"}], **tree}
    return yaml.safe_dump(spec)


def cli_refuses(argv: list[str], capsys, *fragments: str, out: Path | None = None) -> str:
    """Run the CLI: exit code 2, one error naming every fragment, no traceback, ``out`` not created."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") < 20, err
    for fragment in fragments:
        assert fragment in err, err
    if out is not None:
        assert not out.exists()
    return err


# ---------------------------------------------------------------------------------------------------
# Reading YAML: bounded before and while parsing


@pytest.mark.parametrize(("text", "message"), [
    (BILLION_LAUGHS, "values once its aliases are expanded"),
    (DEEP_FLOW, f"nested more than {MAX_DEPTH} levels deep"),
    (DEEP_BLOCK, f"nested more than {MAX_DEPTH} levels deep"),
    ("a: &a [1]\n" + "".join(f"b{i}: *a\n" for i in range(MAX_ALIASES + 1)), f"more than {MAX_ALIASES} aliases"),
    ("a: &a [*a]\n", "refers to the collection that holds it"),
    ("data: {root: x}\nepochs: 3\nepochs: 4\n", "line 3: key 'epochs' given twice (first on line 2)"),
    ("data:\n  root: x\n  root: y\n", "line 3: key 'root' given twice"),
    ("seed: !!float 3\n", "YAML tag"),
    ("seed: !!python/object/apply:os.system [echo]\n", "YAML tag"),
    ("seed: !!float\n", "YAML tag"),  # PyYAML itself crashes on an empty explicit float
    ("day: 2024-13-45\n", "cannot read"),
    ("seed: [1\n", "is not valid YAML"),
    ("a: \x00\n", "control character 0x0"),
])
def test_hostile_yaml_is_refused_naming_the_file(tmp_path, text, message):
    path = write(tmp_path / "c.yaml", text)
    tracemalloc.start()
    try:
        with pytest.raises(VitreduceError, match="c.yaml") as info:
            read_yaml(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert message in str(info.value)
    assert len(str(info.value)) < 2000
    assert peak < 200 * 2**20  # a bound far above normal: the billion laughs took 11.7 GB


def test_files_over_the_size_limit_or_not_utf8_or_not_files_are_refused(tmp_path):
    with pytest.raises(VitreduceError, match="larger than 1024 KiB"):
        read_yaml(write(tmp_path / "big.yaml", "# " + "x" * MAX_YAML_BYTES + "\n"))
    with pytest.raises(VitreduceError, match=r"latin1.yaml is not UTF-8 text \(byte 0xe9 at offset 16\)"):
        read_yaml(write(tmp_path / "latin1.yaml", "data: {root: caf\xe9}\n".encode("latin-1")))
    with pytest.raises(VitreduceError, match="not UTF-8 text"):
        read_yaml(write(tmp_path / "model.bin", bytes(range(256)) * 4))
    with pytest.raises(VitreduceError, match="is not a regular file"):
        read_yaml(tmp_path)
    with pytest.raises(VitreduceError, match="does not exist"):
        read_yaml(tmp_path / "missing.yaml")


def test_valid_yaml_still_reads_as_before(tmp_path):
    text = "base: &b {lr: 0.1, wd: 0.05}\nrun:\n  <<: *b\n  lr: 0.2\nbom: !!str 1.0\nlr: 1e-3\n"
    tree = read_yaml(write(tmp_path / "c.yaml", b"\xef\xbb\xbf" + text.encode()))  # a UTF-8 BOM is fine
    assert tree == {"base": {"lr": 0.1, "wd": 0.05}, "run": {"lr": 0.2, "wd": 0.05}, "bom": "1.0", "lr": "1e-3"}
    assert load_yaml_text("[1, 2]", "--set") == [1, 2]


# ---------------------------------------------------------------------------------------------------
# The train config: every value bounded, the same checks for the API and the CLI


@pytest.mark.parametrize(("override", "key"), [
    ("optimizer.betas=[0.9, 1.0]", "optimizer.betas.1"),
    ("optimizer.betas=[-0.1, 0.9]", "optimizer.betas.0"),
    ("optimizer.betas=[.nan, 0.9]", "optimizer.betas.0"),
    ("optimizer.weight_decay=.inf", "optimizer.weight_decay"),
    ("optimizer.lr=.nan", "optimizer.lr"),
    ("optimizer.lr=true", "optimizer.lr"),
    ("optimizer.eps=0", "optimizer.eps"),
    ("optimizer.momentum=1.5", "optimizer.momentum"),
    ("optimizer.clip_grad=.inf", "optimizer.clip_grad"),
    ("optimizer.accum_steps=0", "optimizer.accum_steps"),
    ("schedule.warmup_lr=.inf", "schedule.warmup_lr"),
    ("schedule.min_lr=-1", "schedule.min_lr"),
    ("schedule.decay_epochs=1e30", "schedule.decay_epochs"),
    ("schedule.decay_milestones=[true]", "schedule.decay_milestones.0"),
    ("ema.decay=1.0", "ema.decay"),
    ("epochs=1000000000000000000000000", "epochs"),
    ("epochs=true", "epochs"),
    ("epochs=2.5", "epochs"),
    ("seed=4294967296", "seed"),
    ("seed=-1", "seed"),
    ("data.batch_size=true", "data.batch_size"),
    ("data.workers=-1", "data.workers"),
    ("data.max_bad_fraction=.nan", "data.max_bad_fraction"),
    ("augment.mixup=.inf", "augment.mixup"),
    ("augment.repeated_aug=1000000", "augment.repeated_aug"),
    ("synth.size=100000", "synth.size"),
    ("synth.seed=4294967296", "synth.seed"),
    ("synth.train_per_class=true", "synth.train_per_class"),
    ("model.reduction=''", "write 'none'"),
    ("model.reduction=shallow:seed=4294967296", "must be <= 4294967295"),
    ("model.reduction='grouped:size=\u0663'", "outside ASCII"),
])
def test_out_of_range_values_are_refused_by_api_and_cli(tmp_path, capsys, override, key):
    path = config_file(tmp_path)
    with pytest.raises(VitreduceError, match="invalid config") as info:
        load_config(path, [override])
    assert key in str(info.value)
    out = tmp_path / "run"
    cli_refuses(["train", str(path), "--set", override, "--out", str(out)], capsys, key, out=out)


def test_the_same_values_in_a_file_are_refused_and_the_bounds_themselves_accepted(tmp_path, capsys):
    path = write(tmp_path / "c.yaml", "data: {root: x}\nepochs: true\n")
    out = tmp_path / "run"
    cli_refuses(["train", str(path), "--out", str(out)], capsys, "epochs: Input should be a valid integer", out=out)
    duplicate = write(tmp_path / "d.yaml", "data: {root: x}\noptimizer:\n  lr: 0.1\n  lr: 0.2\n")
    cli_refuses(["train", str(duplicate), "--out", str(out)], capsys, "d.yaml, line 4: key 'lr' given twice", out=out)
    config = load_config(config_file(tmp_path, seed=SEED_MAX, epochs=10**6, optimizer={"betas": [0.0, 0.999]}),
                         ["optimizer.lr=1e-3", "optimizer.weight_decay=0", "model.reduction=shallow:seed=4294967295"])
    assert (config.seed, config.epochs, config.optimizer.betas, config.optimizer.lr) == (SEED_MAX, 10**6,
                                                                                       (0.0, 0.999), 1e-3)


def test_set_values_go_through_the_same_loader(tmp_path, capsys):
    path = config_file(tmp_path)
    with pytest.raises(VitreduceError, match="given twice"):
        load_config(path, ["optimizer={lr: 0.1, lr: 0.2}"])
    with pytest.raises(VitreduceError, match="is not valid YAML"):
        load_config(path, ["optimizer.lr=*missing"])
    cli_refuses(["train", str(path), "--set", "optimizer.lr=!!float 1", "--out", str(tmp_path / "r")], capsys,
                "--set 'optimizer.lr=!!float 1', line 1: the YAML tag")


def test_raising_max_bad_fraction_after_the_bad_image_halt_continues_the_run(tmp_path, capsys, tiny_dataset,
                                                                             tiny_train_config):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    next((data / "train").rglob("*.png")).write_bytes(b"not a png")
    tree = tiny_train_config(epochs=1, data={"root": str(data), "max_bad_fraction": 0.0},
                             checkpoint={"recovery_every_steps": 0})
    path = write(tmp_path / "c.yaml", yaml.safe_dump(tree))
    out = tmp_path / "run"
    cli_refuses(["train", str(path), "--out", str(out)], capsys, "or raise data.max_bad_fraction")
    # The rerun the halt asks for is accepted: the fraction only decides when to halt, not the weights.
    assert main(["train", str(path), "--set", "data.max_bad_fraction=0.5", "--out", str(out)]) == 0
    assert (out / "done.json").is_file()
    assert changed_keys(load_config(path).to_dict(), load_config(path, ["data.max_bad_fraction=0.5"]).to_dict()) == []


# ---------------------------------------------------------------------------------------------------
# Study specs


@pytest.mark.parametrize(("change", "key"), [
    ({"seeds": [SEED_MAX + 1]}, "seeds.0"),
    ({"seeds": [True]}, "seeds.0"),
    ({"seeds": ["\u0663"]}, "seeds.0"),
    ({"nproc_per_node": True}, "nproc_per_node"),
    ({"throughput": {"repeats": 10**12}}, "throughput.repeats"),
])
def test_study_spec_values_are_bounded(tmp_path, capsys, change, key):
    path = write(tmp_path / "spec.yaml", spec_text(tmp_path, **change))
    with pytest.raises(VitreduceError, match="invalid study spec") as info:
        load_spec(path)
    assert key in str(info.value)
    out = tmp_path / "study"
    cli_refuses(["study", str(path), "--out", str(out), "--dry-run"], capsys, key, out=out)


@pytest.mark.parametrize(("text", "message"), [
    (BILLION_LAUGHS, "aliases are expanded"),
    (DEEP_FLOW, "nested more than"),
    (b"name: s\nvariants: [{name: \xff}]\n", "not UTF-8 text"),
    ("name: s\nname: t\n", "key 'name' given twice"),
])
def test_hostile_study_spec_files_end_with_exit_2(tmp_path, capsys, text, message):
    path = write(tmp_path / "spec.yaml", text)
    with pytest.raises(VitreduceError, match=message):
        load_spec(path)
    out = tmp_path / "study"
    cli_refuses(["study", str(path), "--out", str(out)], capsys, "spec.yaml", message, out=out)


def test_a_bad_run_config_in_a_study_is_refused_before_anything_is_written(tmp_path, capsys):
    path = write(tmp_path / "spec.yaml", spec_text(tmp_path, overrides={"optimizer.betas": [0.9, 1.5]}))
    out = tmp_path / "study"
    cli_refuses(["study", str(path), "--out", str(out), "--dry-run"], capsys, "optimizer.betas.1", out=out)
    cli_refuses(["study", str(path), "--out", str(out), "--set", "overrides.optimizer.betas=[0.9, 0.99]",
                 "--set", "seeds=[4294967296]"], capsys, "seeds.0", out=out)


# ---------------------------------------------------------------------------------------------------
# Reduction specs and the synthetic dataset's flags


@pytest.mark.parametrize(("text", "message"), [
    ("", "write 'none'"),
    ("   ", "write 'none'"),
    ("shallow:seed=4294967296", "must be <= 4294967295"),
    ("shallow:seed=\u0663", "outside ASCII"),
    ("grouped:size=\uff13", "outside ASCII"),  # a full-width 3
    ("shallow:ratio=\u0660.\u0665", "outside ASCII"),
    ("grouped:size=1_0", "digits 0-9"),
])
def test_reduction_specs_refuse_empty_non_ascii_and_huge_seeds(tmp_path, capsys, text, message):
    with pytest.raises(VitreduceError, match=message):
        ReductionSpec.parse(text)
    out = tmp_path / "m.safetensors"
    cli_refuses(["reduce", "vit_tiny_patch16_224", "--reduction", text, "--out", str(out)], capsys, message, out=out)
    assert ReductionSpec.parse(None) == ReductionSpec.parse("none")  # the Python API's "no reduction"


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--size", "100000", "--size is 100000; use 8 to 1024"),
    ("--seed", str(SEED_MAX + 1), "--seed is 4294967296"),
    ("--train-per-class", "1000000", "--train-per-class is 1000000; use 1 to 100000"),
    ("--classes", "11", "--classes is 11"),
])
def test_data_synth_flags_use_the_synth_sections_bounds(tmp_path, capsys, flag, value, message):
    out = tmp_path / "synth"
    cli_refuses(["data", "synth", str(out), flag, value], capsys, message, out=out)
    field = flag.removeprefix("--").replace("-", "_")
    with pytest.raises(ValueError, match=field):
        SynthConfig(**{field: int(value)})


# ---------------------------------------------------------------------------------------------------
# Properties: whatever the bytes, a valid result or a VitreduceError


_YAMLISH = st.lists(st.sampled_from(
    list("[]{}:,-&*!|>'\"#\n ab01.~?%@") + ["!!float ", "!!str ", "<<: ", "&a ", "*a ", "seed: ", "epochs: ",
                                           "data: {root: x}\n", "variants: [{name: a}]\n", "name: s\n", "base: ",
                                           "2001-13-14", ".inf", ".nan", "1e999", "true", "---\n", "\x85", "\x00"]),
    max_size=40).map("".join)


def _loads_or_refuses(path: Path, load, kind: type) -> None:
    try:
        assert isinstance(load(path), kind)
    except VitreduceError as err:
        assert str(err) and len(str(err)) < 20_000


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode), _YAMLISH.map(str.encode)))
def test_any_bytes_as_a_config_or_a_study_spec_load_or_give_a_clear_error(tmp_path, data):
    path = write(tmp_path / "fuzz.yaml", data)
    _loads_or_refuses(path, load_config, TrainConfig)
    _loads_or_refuses(path, load_spec, StudySpec)


_VALID = {"data": {"root": "x"}, "synth": {}}
_LEAVES = sorted(flatten(validate(_VALID).to_dict()))
_VALUES = st.one_of(st.integers(-2**70, 2**70).map(str), st.floats().map(repr), st.booleans().map(str),
                    st.sampled_from([".inf", "-.inf", ".nan", "null", "[]", "{}", "''", "[1, 2]", "1e-3", "0x10"]),
                    st.text(max_size=12))


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(_LEAVES), value=_VALUES)
def test_any_value_for_any_key_validates_or_names_the_key(key, value):
    tree = copy.deepcopy(_VALID)
    try:
        apply_override(tree, f"{key}={value}")
        config = validate(tree)
    except VitreduceError as err:
        assert key.split(".")[0] in str(err) or "--set" in str(err), str(err)
        return
    assert isinstance(config, TrainConfig)
    assert all(math.isfinite(v) for v in flatten(config.to_dict()).values() if isinstance(v, float))

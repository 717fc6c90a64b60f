"""The `sweep:` section of a study spec: expansion into named variants, validation, study.yaml round trip,
and the --dry-run --costs table of unique parameters and MACs."""
from pathlib import Path

import pytest
import yaml

from vitreduce.errors import VitreduceError
from vitreduce.reduction import create_model, describe
from vitreduce.study.plan import expand
from vitreduce.study.runner import run_study
from vitreduce.study.spec import load_spec, parse_spec, spec_tree
from vitreduce.study.sweep import SweepSpec, expand_sweep, sweep_labels

REPO = Path(__file__).resolve().parents[1]
TINY = {"name": "vit_tiny_patch16_224", "label": "ti",
        "args": {"num_classes": 3, "img_size": 16, "patch_size": 8, "embed_dim": 16, "depth": 4, "num_heads": 2}}


def _tree(tmp_path, reductions, models=(TINY,), **extra):
    return {"name": "sw", "base": {"epochs": 1, "device": "cpu", "data": {"root": str(tmp_path), "workers": 0}},
            "seeds": [0, 1], "sweep": {"models": list(models), "reductions": reductions}, **extra}


def test_grid_expands_into_named_deduplicated_variants_with_the_baseline_first(tmp_path):
    reductions = [{"shallow": {"ratio": [1, 0.75, 0.5]}}, {"grouped": {"size": [1, 2, 4]}},
                  {"grouped": {"size": 2, "pattern": ["sequence", "cycle"]}, "shallow": {"ratio": 0.5}},
                  "grouped:size=2", "shallow:ratio=0.5"]  # the last two repeat grid entries
    spec = parse_spec(_tree(tmp_path, reductions, models=(TINY, {**TINY, "label": "ti2"})))
    names = [v.name for v in spec.variants]
    assert names[:8] == ["ti.baseline", "ti.shallow-0.75", "ti.shallow-0.5", "ti.grouped-2", "ti.grouped-4",
                         "ti.grouped-2-shallow-0.5", "ti.grouped-2-cycle-shallow-0.5", "ti2.baseline"]
    assert len(names) == 14 and spec.baseline == "ti.baseline"
    reductions_of = {v.name: v.overrides["model.reduction"] for v in spec.variants}
    assert reductions_of["ti.baseline"] == "none"  # ratio 1 and size 1 are the base model, trained once
    assert reductions_of["ti.grouped-2-cycle-shallow-0.5"] == "grouped:pattern=cycle+shallow:ratio=0.5"
    plans = expand(spec, tmp_path / "st")
    assert len(plans) == 28 and plans[0].config.model.depth == 4 and plans[0].config.model.name == TINY["name"]
    assert {p.seed for p in plans if p.variant == "ti2.grouped-4"} == {0, 1}


def test_study_yaml_round_trip_keeps_the_same_runs(tmp_path):
    spec = parse_spec(_tree(tmp_path, [{"shallow": {"ratio": [1, 0.5]}}], variants=[{"name": "extra"}]))
    again = parse_spec(yaml.safe_load(yaml.safe_dump(spec_tree(spec))))
    assert [v.name for v in again.variants] == ["extra", "ti.baseline", "ti.shallow-0.5"] == \
        [v.name for v in spec.variants]
    assert sweep_labels(spec_tree(spec)) == {"ti.baseline": "ti", "ti.shallow-0.5": "ti"}


@pytest.mark.parametrize("reductions, models, message", [
    ([{"shallo": {"ratio": [0.5]}}], (TINY,), "sweep.reductions: entry 0: unknown strategy 'shallo'"),
    ([{"shallow": {"rate": [0.5]}}], (TINY,), "shallow.rate: unknown key; valid keys: ratio"),
    ([{"shallow": {"ratio": [1.5]}}], (TINY,), "bad value '1.5' for shallow.ratio"),
    ([{"grouped": {"size": []}}], (TINY,), "grouped.size: the list of values is empty"),
    ([{"shallow": {"ratio": [0.5]}}], (TINY, TINY), "sweep.models: labels must be unique, repeated: ti"),
    ([{"shallow": {"ratio": [0.5]}}], ({**TINY, "label": "a.b"},), "sweep.models.0.label"),
    ([], (TINY,), "sweep.reductions"),
])
def test_bad_sweeps_name_the_key_to_change(tmp_path, reductions, models, message):
    with pytest.raises(VitreduceError, match="invalid study spec") as err:
        parse_spec(_tree(tmp_path, reductions, models=models))
    assert message in str(err.value)


def test_a_study_above_max_runs_is_refused_before_its_sweep_is_expanded(tmp_path, monkeypatch):
    """1000 ratios x 3 keeps x 300 seeds would plan 900,300 runs: refused by counting, nothing expanded; the
    spec's max_runs confirms a larger study, and a grid entry above MAX_GRID is refused before it is made."""
    import vitreduce.study.spec as spec_module

    monkeypatch.setattr(spec_module, "expand_sweep", lambda sweep: pytest.fail("the sweep was expanded"))
    ratios = [round(0.001 * i, 3) for i in range(1, 1001)]
    tree = {**_tree(tmp_path, [{"shallow": {"ratio": ratios, "keep": ["first", "magnitude", "random"]}}]),
            "seeds": list(range(300))}
    with pytest.raises(VitreduceError) as err:
        parse_spec(tree)
    assert ("the spec makes up to 900,300 runs (3,001 variant(s) x 300 seed(s)), more than max_runs (1,000)"
            in str(err.value)) and "max_runs: 900300" in str(err.value)
    monkeypatch.undo()
    small = _tree(tmp_path, [{"shallow": {"ratio": [0.5, 0.25]}}])  # 3 variants x 2 seeds
    with pytest.raises(VitreduceError, match="up to 6 runs"):
        parse_spec({**small, "max_runs": 5})
    assert len(parse_spec({**small, "max_runs": 6}).variants) == 3
    huge = _tree(tmp_path, [{"shallow": {"ratio": ratios}, "grouped": {"size": list(range(1, 12))}}])
    with pytest.raises(VitreduceError, match=r"the grid makes 11,000 reductions \(1000 x 11\), more than 10,000"):
        parse_spec(huge)


def test_a_group_size_beyond_the_depth_is_refused_before_any_run_naming_the_variant(tmp_path):
    spec = parse_spec(_tree(tmp_path, [{"grouped": {"size": [2, 6]}}]))
    with pytest.raises(VitreduceError, match=r"variant\(s\) ti.grouped-6: .*grouped size 6 exceeds the model depth 4"):
        run_study(spec, tmp_path / "st", dry_run=True, costs=True, echo=lambda line: None)  # the models are built
    assert not (tmp_path / "st").exists()


def test_a_variant_and_the_sweep_may_not_disagree(tmp_path):
    clash = [{"name": "ti.baseline", "overrides": {"model.reduction": "grouped"}}]
    with pytest.raises(VitreduceError, match="'ti.baseline' is also a variant of the sweep"):
        parse_spec(_tree(tmp_path, ["grouped"], variants=clash))


def test_a_variant_may_be_called_pareto(tmp_path):
    named = [{"name": "pareto", "overrides": {"model.reduction": "shallow"}}]  # summary.json keeps variants apart
    assert "pareto" in [v.name for v in parse_spec(_tree(tmp_path, ["grouped"], variants=named)).variants]


def test_dry_run_prints_unique_parameters_and_macs_from_the_accounting(tmp_path):
    spec = parse_spec(_tree(tmp_path, [{"shallow": {"ratio": [0.5]}}, {"grouped": {"size": [2]}}]))
    lines: list[str] = []
    run_study(spec, tmp_path / "st", dry_run=True, costs=True, echo=lines.append)
    table = next(line for line in lines if line.startswith("variant")).splitlines()
    assert table[0].split()[:3] == ["variant", "seeds", "reduction"]
    for row, reduction in zip(table[2:], ("none", "shallow:ratio=0.5", "grouped"), strict=True):
        d = describe(create_model(TINY["name"], reduction=reduction, device="meta", drop_rate=0.0, **TINY["args"]))
        assert row.split()[1:5] == ["2", reduction, f"{d.params:,}", f"{d.mlp_params:,}"]
    assert not list((tmp_path / "st" / "runs").rglob("metrics.jsonl"))  # nothing trained


def test_shipped_degree_study_and_its_tiny_variant():
    full = load_spec(REPO / "studies" / "degree.yaml")
    assert len(full.variants) == 33 and full.baseline == "vit_base.baseline"
    assert {v.name.split(".")[0] for v in full.variants} == {"vit_tiny", "vit_small", "vit_base"}
    tiny = load_spec(REPO / "studies" / "tiny" / "degree.yaml")
    assert [v.name for v in tiny.variants] == ["vit_tiny.baseline", "vit_tiny.shallow-0.5", "vit_tiny.shallow-0.25"]
    assert len(expand_sweep(SweepSpec.model_validate(spec_tree(full)["sweep"]))) == 33


def test_a_dry_run_prints_the_costs_without_the_dataset_and_notes_that_it_is_missing(tmp_path):
    spec = parse_spec(_tree(tmp_path / "absent", [{"shallow": {"ratio": [1, 0.5]}}]))
    lines: list[str] = []
    run_study(spec, tmp_path / "st", dry_run=True, costs=True, echo=lines.append)
    assert any("ti.shallow-0.5" in line and "shallow:ratio=0.5" in line for line in lines)
    assert any(line.startswith("note (dry run; the commands need the data where they run): all variants: data.root")
               for line in lines)
    with pytest.raises(VitreduceError, match="data.root .*absent is not a folder"):
        run_study(spec, tmp_path / "real", echo=lambda line: None)

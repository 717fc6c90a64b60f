"""A study over several base models profiles each model's variants together (interleaved) into one
throughput.json, and the report compares each variant's throughput only with its own base model's baseline."""
import csv
import json

import pytest

from vitreduce.efficiency import profiler
from vitreduce.report.summary_file import read_summary
from vitreduce.report.write import results_table
from vitreduce.study.reporting import write_report
from vitreduce.study.runner import run_study
from vitreduce.study.spec import parse_spec

ARGS = {"num_classes": 3, "img_size": 16, "patch_size": 8, "depth": 2, "num_heads": 2}
MODELS = [{"name": "vit_tiny_patch16_224", "label": "narrow", "args": {**ARGS, "embed_dim": 16}},
          {"name": "vit_tiny_patch16_224", "label": "wide", "args": {**ARGS, "embed_dim": 32}}]
VARIANTS = ["narrow.baseline", "narrow.shallow-0.5", "wide.baseline", "wide.shallow-0.5"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Two base models x (baseline, shallow 0.5), one seed of one epoch each, then throughput on the CPU."""
    root = tmp_path_factory.mktemp("groups")
    calls = []
    real = profiler.profile_variants

    def spy(model_name, reductions, **kwargs):
        calls.append((model_name, [str(r) for r in reductions], kwargs["model_kwargs"]["embed_dim"]))
        return real(model_name, reductions, **kwargs)

    spec = parse_spec({
        "name": "groups", "seeds": [0], "baseline": "narrow.baseline",
        "base": {"epochs": 1, "device": "cpu", "data": {"root": str(root / "synth-groups"), "batch_size": 8,
                                                        "workers": 0},
                 "logging": {"progress": "lines"},
                 "synth": {"classes": 3, "train_per_class": 8, "val_per_class": 4, "size": 16}},
        "sweep": {"models": MODELS, "reductions": [{"shallow": {"ratio": [1, 0.5]}}]},
        "throughput": {"device": "cpu", "batch_size": 4, "repeats": 3, "warmup": 1}})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(profiler, "profile_variants", spy)
        result = run_study(spec, root / "study", echo=lambda _line: None)
    assert not result.failed
    return root / "study", calls


def test_each_base_model_is_profiled_once_with_its_own_variants(study):
    study_dir, calls = study
    # One interleaved profile per base model, holding that model's variants only.
    assert sorted(calls) == [("vit_tiny_patch16_224", ["none", "shallow:ratio=0.5"], 16),
                             ("vit_tiny_patch16_224", ["none", "shallow:ratio=0.5"], 32)]
    records = json.loads((study_dir / "throughput.json").read_text())
    assert sorted(records) == VARIANTS
    bases = {v: r["base_model"] for v, r in records.items()}
    assert bases["narrow.baseline"] == bases["narrow.shallow-0.5"] == "vit_tiny_patch16_224 (embed_dim=16)"
    assert bases["wide.baseline"] == bases["wide.shallow-0.5"] == "vit_tiny_patch16_224 (embed_dim=32)"
    assert all(r["infer_img_s_min"] <= r["infer_img_s"] <= r["infer_img_s_max"] for r in records.values())


def test_each_ratio_is_against_the_baseline_of_its_own_base_model(study):
    study_dir, _ = study
    document = read_summary(study_dir / "summary.json")
    summary = document.variants
    against = {v: summary[v].throughput.ratio_against for v in VARIANTS}
    assert against == {"narrow.baseline": "narrow.baseline", "narrow.shallow-0.5": "narrow.baseline",
                       "wide.baseline": "wide.baseline", "wide.shallow-0.5": "wide.baseline"}
    for variant in VARIANTS:
        t, base = summary[variant].throughput, summary[against[variant]].throughput
        if t.ratio_basis == "ranges apart":
            assert t.ratio_to_baseline == pytest.approx(t.median / base.median)
        else:
            assert t.ratio_basis == "ranges overlap" and t.ratio_to_baseline is None
    with open(study_dir / "results.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["model"] == "ema"]
    assert {r["variant"]: r["throughput_ratio_against"] for r in rows} == against
    assert {r["throughput_base_model"] for r in rows} == {summary[v].throughput.base_model for v in VARIANTS}
    # The Pareto section's throughput axis, per base model.
    for label in ("narrow", "wide"):
        group = document.study.pareto.groups[label]
        assert group.front["ema"]["throughput_img_s"]
        assert all(v.throughput_img_s > 0 for v in group.variants.values())
    # The results table names the variant a ratio is against, unless it is the study's baseline.
    headers, rows = results_table({v: summary[v] for v in VARIANTS}, "ema")
    ratios = {row[0].removesuffix(" (baseline)"): row[headers.index("throughput vs baseline")] for row in rows}
    assert ratios["wide.shallow-0.5"].endswith(" vs wide.baseline")
    assert not any(" vs " in ratios[v] for v in ("narrow.baseline", "narrow.shallow-0.5", "wide.baseline"))
    assert ratios["wide.shallow-0.5"] in (study_dir / "report.md").read_text()


def test_a_model_without_its_own_baseline_gets_no_ratio_and_old_files_compare_with_the_study_baseline(study):
    study_dir, _ = study
    path = study_dir / "throughput.json"
    records = json.loads(path.read_text())
    try:
        path.write_text(json.dumps({v: r for v, r in records.items() if v != "wide.baseline"}))
        summary = write_report(study_dir).summary
        wide = summary["wide.shallow-0.5"].throughput
        assert wide.ratio_to_baseline is None and wide.ratio_basis == "no baseline of its model"
        assert wide.ratio_against is None
        # A file written before base models were recorded: one model, every ratio against the study's baseline.
        path.write_text(json.dumps({v: {k: x for k, x in r.items() if k != "base_model"}
                                    for v, r in records.items()}))
        summary = write_report(study_dir).summary
        assert {summary[v].throughput.ratio_against for v in VARIANTS} == {"narrow.baseline"}
    finally:
        path.write_text(json.dumps(records))

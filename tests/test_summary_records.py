"""summary.json and the report's records: written from them, read back into them (read(write(x)) == x), a
vitreduce 0.1.0 summary (format 1) read into the same records, and a file that does not fit them refused."""
import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest

from vitreduce.errors import VitreduceError
from vitreduce.report.pareto_records import Pareto
from vitreduce.report.records import (
    KindSummary,
    Segmentation,
    SharpnessVsBaseline,
    Spread,
    StudyResults,
    Throughput,
    VariantEntry,
    VsBaseline,
)
from vitreduce.report.summary_file import SUMMARY_FORMAT, Summary, read_summary, summary_text
from vitreduce.statistics.family import SeedResult
from vitreduce.statistics.paired import ClusteredMcNemar, KindComparison, McNemar
from vitreduce.study.reporting import write_report

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "v0_1" / "study" / "out"
COST = {"base": 1.0, "half": 0.5, "quarter": 0.25}  # fraction of MLP parameters kept


def _run(run_dir: Path, variant: str, seed: int, diverge: bool = False) -> None:
    """A finished run as the engine writes it, with a segmentation probe's results; NaN at the end if diverged."""
    run_dir.mkdir(parents=True)
    kept = COST[variant]
    (run_dir / "run.json").write_text(json.dumps({
        "model": "vit_tiny_patch16_224", "reduction": "none" if kept == 1 else f"shallow:ratio={kept}", "seed": seed,
        "params": round(2e6 + 3e6 * kept), "mlp_params": round(3e6 * kept), "unique_mlps": 12,
        "mlp_hidden": round(768 * kept), "embed_dim": 192, "macs_linear": round(4e8 + 6e8 * kept),
        "macs_total": round(5e8 + 6e8 * kept), "num_classes": 10, "epochs": 2}))
    top1 = 70.0 + 8 * kept + 0.3 * seed
    lines = [{"epoch": e, "step": 10 * e, "train_loss": 1.0 / e,
              "raw": {"top1": math.nan if diverge and e == 2 else top1 - 3 + e, "top5": 99.0, "loss": 1.0},
              "ema": {"top1": top1 - 2 + e, "top5": 99.0, "loss": 1.0}} for e in (1, 2)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (run_dir / "done.json").write_text(json.dumps({"epochs": 2, "wall_s": 1.0, "final": {}}))
    probe = run_dir / "analysis" / "segmentation"
    probe.mkdir(parents=True)
    (probe / "results.json").write_text(json.dumps({
        "task": "segmentation", "checkpoint": str(run_dir / "model_ema.safetensors"), "data": "synth-seg",
        "miou": 40.0 + 4 * kept + 0.7 * seed, "pixel_accuracy": 70.0 + seed, "mean_accuracy": 50.0 + kept,
        "options": {"finetune": False, "head": "linear", "blocks": [-1], "epochs": 1, "seed": seed}}))


@pytest.fixture
def swept(tmp_path) -> Path:
    """Three variants of one model at three costs (a Pareto section and its degree test), probed by the
    segmentation probe, one diverged run, and throughput with its spread."""
    root = tmp_path / "study"
    for variant in COST:
        for seed in range(3):
            _run(root / "runs" / variant / f"seed{seed}", variant, seed)
    _run(root / "runs" / "quarter" / "seed3", "quarter", 3, diverge=True)
    (root / "study.yaml").write_text(json.dumps({
        "name": "swept", "baseline": "base", "variants": [{"name": v} for v in COST],
        "analysis": {"weights": "ema", "segmentation": {"data": "synth-seg", "blocks": [-1], "head": "linear"}}}))
    (root / "throughput.json").write_text(json.dumps({
        v: {"infer_img_s": 100.0 / k, "infer_img_s_min": 95.0 / k, "infer_img_s_max": 105.0 / k, "device": "cpu",
            "batch_size": 8, "precision": "fp32"} for v, k in COST.items()}))
    return root


def test_summary_json_is_written_from_the_records_and_read_back_into_them(swept, tmp_path):
    paths = write_report(swept, n_resamples=50)
    written = paths.document
    assert read_summary(paths.summary_json) == written  # read(write(x)) == x
    assert summary_text(written) == paths.summary_json.read_text()
    study, entry = written.study, written.variants["quarter"]
    assert isinstance(study, StudyResults) and isinstance(study.pareto, Pareto) and study.primary == "ema_top1_final"
    assert study.pareto.groups and study.pareto.series == 1 and study.pareto.groups[
        "vit_tiny_patch16_224 (width 192)"].fits[0].degree.steps
    assert isinstance(entry, VariantEntry) and isinstance(entry.raw, KindSummary)
    assert entry.outcomes.diverged == 1 and entry.outcomes.divergence.vs_baseline is not None
    assert isinstance(entry.throughput, Throughput) and entry.throughput.ratio_against == "base"
    assert isinstance(entry.segmentation, Segmentation) and entry.segmentation.miou_vs_baseline.n == 3
    assert isinstance(entry.vs_baseline, VsBaseline) and all(isinstance(r, SeedResult)
                                                             for r in entry.vs_baseline.seed_level)
    assert {r.variant for r in entry.vs_baseline.seed_level} == {"quarter"}  # the name comes back from its key
    # the file's layout is the one summary.json has always had: a flat mean and sd beside the other keys
    assert list(json.loads(paths.summary_json.read_text())["variants"]["quarter"]) == [
        "n", "seeds", "unfinished_included", "outcomes", "model", "reduction", "params", "mlp_params", "unique_mlps",
        "mlp_hidden", "embed_dim", "macs_linear", "macs_total", "num_classes", "epochs", "steps_trained", "ema_decay",
        "expansion", "loss_spikes_mean", "loss_spikes_std", "step_spikes_mean", "step_spikes_std", "raw", "ema",
        "throughput", "throughput_img_s", "sharpness", "baseline", "segmentation", "vs_baseline"]

    # The v0_1 study: image-level tests (per seed, pooled), sharpness and its paired tests.
    study_dir = tmp_path / "v0_1"
    shutil.copytree(FIXTURES, study_dir, symlinks=True)
    paths = write_report(study_dir, n_resamples=50)
    assert read_summary(paths.summary_json) == paths.document
    grouped = paths.document.variants["grouped"]
    kinds = grouped.vs_baseline.kinds
    assert set(kinds) == {"raw", "ema"} and all(isinstance(k, KindComparison) for k in kinds.values())
    assert isinstance(kinds["raw"].per_seed[0].mcnemar, McNemar)
    assert isinstance(kinds["raw"].pooled.mcnemar, ClusteredMcNemar)
    assert isinstance(grouped.sharpness_vs_baseline, SharpnessVsBaseline) and grouped.sharpness["final"].n == 2


def test_a_vitreduce_0_1_summary_reads_into_the_same_records():
    old = read_summary(FIXTURES / "summary.json")
    document = json.loads((FIXTURES / "summary.json").read_text())
    assert old.format == 1 and list(old.variants) == ["baseline", "grouped"] and "format" not in document
    assert old.study == StudyResults(name=None, baseline="baseline", primary=None, pareto=None)
    grouped = old.variants["grouped"]
    assert isinstance(grouped, VariantEntry) and grouped.params == document["grouped"]["params"]
    assert grouped.macs_linear == round(document["grouped"]["macs_linear_g"] * 1e9)  # GMACs, as the count
    assert grouped.raw.top1_final == Spread(document["grouped"]["raw"]["top1_final_mean"],
                                            document["grouped"]["raw"]["top1_final_std"])
    # what 0.1.0 did not record is None (or empty), not invented
    assert (grouped.outcomes, grouped.throughput, grouped.sharpness, grouped.step_spikes) == (
        None, None, {}, Spread(None, None))
    vs = grouped.vs_baseline
    assert vs.seed_level == () and vs.primary is None and vs.raw.top1.mean_diff == document["grouped"][
        "vs_baseline"]["raw"]["top1"]["mean_diff"]
    assert vs.raw.per_seed[0].bootstrap.n_seeds == 1  # the field it predates, at its default
    # written again it is format 2, and reads back into the same records
    again = Summary.from_json(json.loads(summary_text(old)))
    assert json.loads(summary_text(old))["format"] == SUMMARY_FORMAT
    assert (again.study, again.variants) == (old.study, old.variants)


def test_a_format_2_summary_from_before_the_primary_metric_was_recorded_reads(swept):
    paths = write_report(swept, n_resamples=20)
    document = json.loads(paths.summary_json.read_text())
    del document["study"]["primary"]
    del document["variants"]["half"]["segmentation"]["miou_vs_baseline"]["family"]["evidence"]
    paths.summary_json.write_text(json.dumps(document))
    read = read_summary(paths.summary_json)
    assert read.study.primary is None and read.study.pareto == paths.document.study.pareto
    assert read.variants["half"].segmentation.miou_vs_baseline.family.evidence == "exploratory"


def test_a_summary_that_does_not_fit_the_records_is_refused_with_the_key(tmp_path):
    """Refused, not converted: the message names the file's key (a flat one as written) and what to do."""
    fixture = summary_text(read_summary(FIXTURES / "summary.json"))
    for change, message in [
            (lambda g: g["raw"].update(n="two"), r"variants\.grouped\.raw\.n: .* valid integer, found str"),
            (lambda g: g["raw"].update(n=2.0), r"variants\.grouped\.raw\.n: .* valid integer, found float"),
            (lambda g: g["raw"].update(top1_final_mean="70.1"), r"variants\.grouped\.raw\.top1_final_mean: .*number"),
            (lambda g: g.update(baseline=0), r"variants\.grouped\.baseline: Input should be a valid boolean"),
            (lambda g: g["vs_baseline"]["raw"]["per_seed"][0]["bootstrap"].update(n_images="9"),
             r"variants\.grouped\.vs_baseline\.raw\.per_seed\[0\]\.bootstrap\.n_images: .*integer"),
            (lambda g: g.pop("raw"), r"variants\.grouped\.raw: Field required")]:
        document = json.loads(fixture)
        change(document["variants"]["grouped"])
        (tmp_path / "summary.json").write_text(json.dumps(document))
        with pytest.raises(VitreduceError, match=message + r".*rewrite it with `vitreduce report`"):
            read_summary(tmp_path / "summary.json")


def test_a_figure_that_is_not_finite_is_not_written(tmp_path):
    """summary.json is strict JSON: a NaN in a record is refused at writing (an undefined figure is None)."""
    summary = read_summary(FIXTURES / "summary.json")
    grouped = summary.variants["grouped"]
    broken = dataclasses.replace(grouped, raw=dataclasses.replace(grouped.raw, top1_final=Spread(math.nan, None)))
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        summary_text(Summary(summary.study, {**summary.variants, "grouped": broken}))


def test_records_are_frozen():
    entry = read_summary(FIXTURES / "summary.json").variants["grouped"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.n = 3


def test_a_non_finite_token_is_refused_at_reading(tmp_path):
    """summary.json is written without NaN or Infinity; a file holding one (edited by hand) is refused."""
    path = tmp_path / "summary.json"
    path.write_text('{"format": 2, "study": {"name": "s", "baseline": "b", "pareto": null}, '
                    '"variants": {"b": {"x": NaN}}}')
    with pytest.raises(VitreduceError, match="NaN is not JSON"):
        read_summary(path)

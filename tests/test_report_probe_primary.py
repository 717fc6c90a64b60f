"""The segmentation probe's mIoU as a study's primary metric (statistics.primary / --primary probe_miou): its
paired tests become the confirmatory family, stated by the headline with the classification caveats, and
classification top-1 becomes exploratory; a study that probes nothing cannot name it."""
from __future__ import annotations

import json

import pytest
from test_report import _args, _write_run

from vitreduce.cli import report_cmd
from vitreduce.cli.main import main
from vitreduce.errors import VitreduceError
from vitreduce.study.reporting import write_report
from vitreduce.study.spec import parse_spec

# Per seed: grouped's probe is about 3 mIoU points above the baseline's on every seed (a clear confirmatory
# "better"); shallow's is 0.2 above on its 2 seeds (significant, but below statistics.min_effect: negligible,
# and df=1). Classification top-1 is the same noisy curve for every variant (test_report._write_run).
MIOU = {"base": [40.0, 42.0, 41.0], "grouped": [43.1, 44.9, 44.05], "shallow": [40.2, 42.22]}
ANALYSIS = "analysis:\n  weights: ema\n  segmentation: {data: synth-seg, blocks: [-1], head: linear}\n"


def _write_probe(run_dir, miou: float) -> None:
    out = run_dir / "analysis" / "segmentation"
    out.mkdir(parents=True)
    (out / "results.json").write_text(json.dumps({
        "task": "segmentation", "checkpoint": str(run_dir / "model_ema.safetensors"), "data": "synth-seg",
        "miou": miou, "pixel_accuracy": miou + 30, "mean_accuracy": miou + 10,
        "options": {"finetune": False, "head": "linear", "blocks": [-1], "epochs": 10, "seed": 0}}))


@pytest.fixture
def probed(tmp_path):
    root = tmp_path / "study"
    for variant, values in MIOU.items():
        for seed, miou in enumerate(values):
            _write_run(root / "runs" / variant / f"seed{seed}", variant, seed)
            _write_probe(root / "runs" / variant / f"seed{seed}", miou)
    (root / "study.yaml").write_text("name: dense\nvariants:\n  - {name: base}\n  - {name: grouped}\n"
                                     "  - {name: shallow}\n" + ANALYSIS
                                     + "statistics: {primary: probe_miou, min_effect: 0.5}\n")
    return root


def _records(summary: dict, variant: str) -> dict[str, dict]:
    return {f"{r['kind']}_{r['metric']}": r for r in summary[variant]["vs_baseline"]["seed_level"]}


def test_probe_miou_as_primary_is_the_confirmatory_family(probed):
    paths = write_report(probed, n_resamples=20)
    document = json.loads(paths.summary_json.read_text())
    assert document["study"]["primary"] == "probe_miou"
    summary = document["variants"]
    grouped, shallow = _records(summary, "grouped"), _records(summary, "shallow")
    first = summary["grouped"]["vs_baseline"]["seed_level"][0]
    assert (first["evidence"], first["kind"], first["metric"]) == ("confirmatory", "ema", "miou")
    assert first["mean_diff"] == pytest.approx(3.0166667) and first["n"] == 3 and first["verdict"] == "better"
    assert first["family"]["size"] == 2 and first["family"]["correction"] == "holm"
    assert shallow["ema_miou"]["verdict"] == "negligible difference" and shallow["ema_miou"]["df"] == 1
    # Classification is exploratory now: every top-1 and peak-to-final record.
    assert {r["evidence"] for k, r in grouped.items() if k != "ema_miou"} == {"exploratory"}
    seg = summary["grouped"]["segmentation"]
    assert seg["evidence"] == "confirmatory" and seg["miou_vs_baseline"]["reading"] == "better"
    assert seg["miou_vs_baseline"]["p_adjusted"] == pytest.approx(first["p_adjusted"])  # one family, one correction
    md = paths.markdown.read_text()
    head = md[md.index("## Headline"):md.index("## Runs")]
    assert "in segmentation-probe mIoU of the EMA model at the family-wise 5% level (Holm, 2 comparisons): " \
           "grouped is better than the baseline (base) by +3.02 pp" in head
    assert "Weak evidence whatever the p-value: shallow rests on 2 paired seeds (df=1)" in head
    assert "Classification top-1 (of both models) is exploratory here" in head
    assert "Shown to differ from the baseline (base) in segmentation-probe mIoU of the EMA model, but by less " \
           "than matters" in head and "shallow by +0.21 pp" in head
    assert "| segmentation-probe mIoU, EMA model (mean ± sd over n) |" in head
    assert "| grouped | 3 | 58.23M | 44.02 ± 0.90 | 3 | 41.00 → 44.02 | +3.02 [+2.76, +3.28] |" in head
    assert "final_top1.png" not in head  # the classification figure is not the headline's here
    assert "(primary metric probe_miou, named by the study spec)" in md
    assert "| ema_top1_final | grouped |" in md  # top-1 in the exploratory table
    section = md[md.index("## Dense transfer (segmentation probe)"):]
    assert "The confirmatory family (primary metric probe_miou)" in section and "| verdict |" in section


def test_the_answer_follows_the_primary_metric(probed):
    """Top-1 as primary (the flag over the spec): grouped's top-1 shows no difference, its mIoU is exploratory."""
    assert report_cmd.run(_args(probed, "--primary", "ema_top1_final", "--resamples", "20")) == 0
    summary = json.loads((probed / "summary.json").read_text())["variants"]  # the file's contract
    top1 = _records(summary, "grouped")["ema_top1_final"]
    assert top1["evidence"] == "confirmatory" and top1["verdict"] == "no evidence of a difference"
    assert "ema_miou" not in _records(summary, "grouped")  # the probe family lives in its own section
    seg = summary["grouped"]["segmentation"]
    assert seg["evidence"] == "exploratory" and seg["miou_vs_baseline"]["reading"] == "higher than the baseline"
    md = (probed / "report.md").read_text()
    assert "grouped is better" not in md[md.index("## Headline"):md.index("## Runs")]
    assert "Exploratory: they suggest what to test next" in md


def test_probe_miou_without_a_segmentation_analysis_is_refused(probed, capsys):
    spec = (probed / "study.yaml").read_text()
    (probed / "study.yaml").write_text(spec.replace(ANALYSIS, ""))
    with pytest.raises(VitreduceError, match="no analysis.segmentation section.*add analysis.segmentation"):
        write_report(probed)  # the spec names it
    (probed / "study.yaml").write_text(spec.replace(ANALYSIS, "").replace("primary: probe_miou, ", ""))
    assert main(["report", str(probed), "--primary", "probe_miou"]) == 2  # the flag names it
    assert "add analysis.segmentation" in capsys.readouterr().err
    assert not (probed / "summary.json").exists() and not (probed / "report.md").exists()


def test_a_spec_naming_probe_miou_needs_its_analysis_section():
    tree = {"name": "s", "base": {}, "variants": [{"name": "a"}, {"name": "b"}],
            "statistics": {"primary": "probe_miou"}}
    with pytest.raises(VitreduceError, match="no analysis.segmentation section: add one"):
        parse_spec(tree)
    probed = parse_spec({**tree, "analysis": {"segmentation": {"data": "synth-seg"}}})
    assert probed.statistics.primary == "probe_miou"

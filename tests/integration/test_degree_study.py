"""The shipped degree study's tiny variant end to end: the dry run's cost table (--costs), the runs, and a report with
the Pareto section, its figures and summary.json's `pareto`."""
from pathlib import Path

from vitreduce import cli
from vitreduce.report.summary_file import read_summary

TINY = Path(__file__).resolve().parents[2] / "studies" / "tiny" / "degree.yaml"


def test_tiny_degree_study_dry_run_then_end_to_end(tmp_path, capsys):
    out, data = tmp_path / "study", f"overrides.data.root={tmp_path / 'synth-tiny'}"
    assert cli.main(["study", str(TINY), "--out", str(out), "--set", data, "--dry-run", "--costs"]) == 0
    err = capsys.readouterr().err
    assert "params (unique)" in err and "vit_tiny.shallow-0.25" in err and "[6/6] vit_tiny.shallow-0.25/seed43" in err
    assert not list(out.rglob("done.json"))  # the dry run trained nothing

    assert cli.main(["study", str(TINY), "--out", str(out), "--set", data]) == 0
    summary = read_summary(out / "summary.json")
    group = summary.study.pareto.groups["vit_tiny"]
    assert group.baseline == "vit_tiny.baseline" and len(group.variants) == 3
    assert group.front["ema"]["params"] and group.fits[0].strategy == "shallow"
    # The study profiles its variants (throughput:): measured throughput is a third cost, with its own front.
    assert group.front["ema"]["throughput_img_s"] and all(v.throughput_img_s > 0 for v in group.variants.values())
    assert summary.variants["vit_tiny.shallow-0.25"].throughput.ratio_against == "vit_tiny.baseline"
    assert group.fits[0].degree.swept_min_kept < 0.3
    report = (out / "report.md").read_text()
    assert "## Accuracy against cost (Pareto)" in report and "vit_tiny, shallow:" in report
    assert "throughput (img/s)" in report
    for name in ("pareto.png", "pareto.svg", "degree.png", "degree.svg"):
        assert (out / "figures" / name).stat().st_size > 0

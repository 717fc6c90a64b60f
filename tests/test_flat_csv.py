"""results.csv (one row per variant x model), throughput with its spread, and the report's number formats."""
import csv
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from vitreduce.numbers import format_macs, macs_unit
from vitreduce.report.flat import RESULTS_CSV, results_columns
from vitreduce.report.formatting import pm as _pm
from vitreduce.report.formatting import pm_column as _pm_column
from vitreduce.report.records import Throughput
from vitreduce.report.runs import throughput_ratio
from vitreduce.report.write import results_table
from vitreduce.study.reporting import write_report

STUDY = Path(__file__).resolve().parent / "fixtures" / "v0_1" / "study" / "out"


def _study(tmp_path, throughput: dict | None = None) -> Path:
    study = tmp_path / "out"
    shutil.copytree(STUDY, study, symlinks=True)
    if throughput is not None:
        (study / "throughput.json").write_text(json.dumps(throughput))
    return study


def _variants(study: Path) -> dict:
    """summary.json's variants as the file has them (the contract results.csv is checked against)."""
    return json.loads((study / "summary.json").read_text())["variants"]


def _same(cell: str, value) -> bool:
    if value is None:
        return cell == ""
    if isinstance(value, bool):
        return cell == str(value)
    if isinstance(value, int | float):
        return math.isclose(float(cell), value, rel_tol=0, abs_tol=0)
    return cell == str(value)


def test_results_csv_has_a_row_per_variant_and_model_equal_to_summary_json(tmp_path):
    study = _study(tmp_path)
    write_report(study)
    summary = _variants(study)
    with open(study / RESULTS_CSV, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == results_columns()
        rows = list(reader)
    expected = [(v, k) for v in ("baseline", "grouped") for k in ("raw", "ema")]
    assert [(r["variant"], r["model"]) for r in rows] == expected
    for row in rows:
        entry = summary[row["variant"]]
        kind = entry[row["model"]]
        assert _same(row["n"], kind["n"]) and _same(row["params"], entry["params"])
        assert _same(row["macs_total"], entry["macs_total"]) and _same(row["mlp_params"], entry["mlp_params"])
        for name in ("top1_final", "top5_final", "top1_peak", "peak_epoch", "p2f"):
            assert _same(row[f"{name}_mean"], kind[f"{name}_mean"]) and _same(row[f"{name}_std"], kind[f"{name}_std"])
        final = entry["sharpness"]["final"]  # the fixture's runs have sharpness analyses
        assert _same(row["sharpness_loss_mean"], final["loss_mean"])
        assert _same(row["sharpness_trace_per_param_std"], final["trace_per_param_std"])
        assert row["throughput_median"] == ""  # no throughput.json
    grouped_ema = rows[3]
    record = next(r for r in summary["grouped"]["vs_baseline"]["seed_level"]
                  if r["kind"] == "ema" and r["metric"] == "p2f")
    assert _same(grouped_ema["vs_baseline_p2f_mean_diff"], record["mean_diff"])
    assert _same(grouped_ema["vs_baseline_p2f_p_adjusted"], record["p_adjusted"])
    assert grouped_ema["vs_baseline_p2f_verdict"] == record["verdict"]
    assert rows[0]["vs_baseline_top1_final_p"] == ""  # the baseline is not compared with itself
    assert RESULTS_CSV in (study / "report.md").read_text().strip().splitlines()[-1]


def _measured(median, low, high):
    return {"infer_img_s": median, "infer_img_s_min": low, "infer_img_s_max": high, "device": "cuda:0",
            "precision": "bf16", "batch_size": 64}


def test_throughput_ratio_only_where_the_ranges_do_not_overlap(tmp_path):
    # A study once showed 24% faster with identical MACs, ranges 92-289 vs 95-541 img/s, was noise.
    study = _study(tmp_path, {"baseline": _measured(150.0, 92.0, 289.0), "grouped": _measured(186.0, 95.0, 541.0)})
    paths = write_report(study)
    grouped = _variants(study)["grouped"]["throughput"]
    assert grouped["ratio_to_baseline"] is None and grouped["ratio_basis"] == "ranges overlap"
    assert grouped["min"] == 95.0 and grouped["max"] == 541.0 and grouped["device"] == "cuda:0"
    headers, rows = results_table(paths.summary, "ema")
    cells = dict(zip(headers, rows[1], strict=True))
    assert cells["throughput"] == "186 [95-541] img/s" and cells["throughput vs baseline"] == "n/a (ranges overlap)"
    md = (study / "report.md").read_text()
    assert "device cuda:0, batch 64, precision bf16" in md
    with open(study / RESULTS_CSV, newline="") as f:
        row = [r for r in csv.DictReader(f) if r["variant"] == "grouped"][0]
    assert row["throughput_min"] == "95.0" and row["throughput_ratio_basis"] == "ranges overlap"

    def measured(median, low, high):
        return Throughput(median, low, high, None, None, None)

    apart = throughput_ratio(measured(300.0, 290.0, 310.0), measured(200.0, 190.0, 210.0))
    assert apart == (pytest.approx(1.5), "ranges apart")
    assert throughput_ratio(measured(300.0, None, None), measured(200.0, 190.0, 210.0)) == (None, "no range")
    assert throughput_ratio(None, measured(1.0, 1.0, 1.0)) == (None, "no throughput")


def test_numbers_are_printed_to_the_precision_of_their_uncertainty():
    assert _pm(4.3333, 0.57735, 0) == "4.33 ± 0.58"  # peak epoch: not "4 ± 1"
    assert _pm(1.0, 0.0, 0) == "1 ± 0" and _pm(21.875, None) == "21.88"
    assert _pm(112.1, 170.4) == "110 ± 170"  # not "112.1 ± 1.7e+02"
    assert _pm(1.772, 0.00097) == "1.77200 ± 0.00097"
    assert _pm(None, None) == "n/a"
    # one format per column: the most precise nonzero std sets the decimal place of every row
    assert _pm_column([(21.875, 4.419), (25.0, 0.0), (15.625, 13.258)]) == ["21.9 ± 4.4", "25.0 ± 0.0", "15.6 ± 13.3"]
    assert _pm_column([(100.0, 0.0), (99.0, 0.0)]) == ["100.00 ± 0.00", "99.00 ± 0.00"]
    # MACs: exact counts, in the unit where the largest prints between 1 and 1000; never "0.00"
    assert macs_unit([16_848_500_000, 11_269_000_000]) == (1e9, "GMACs")
    assert macs_unit([655_488, 1_246_336]) == (1e6, "MMACs") and macs_unit([655_488]) == (1e3, "KMACs")
    assert macs_unit([512]) == (1.0, "MACs") and macs_unit([None]) == (1.0, "MACs")
    assert [format_macs(x, 1e6) for x in (1_246_336, 655_488, None)] == ["1.25", "0.66", "n/a"]


def _paired_rows(markdown: str) -> list[list[str]]:
    lines = markdown[markdown.index("| variant | checkpoint | measure | paired seeds"):].split("\n")
    table = [line for line in lines[:next(i for i, line in enumerate(lines) if not line.startswith("|"))]]
    return [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]


def test_paired_sharpness_tests_in_summary_json_and_results_csv_are_what_the_report_prints(tmp_path):
    from vitreduce.statistics.pvalue import fmt_p

    study = _study(tmp_path)
    write_report(study)
    summary = _variants(study)
    paired = summary["grouped"]["sharpness_vs_baseline"]
    assert "sharpness_vs_baseline" not in summary["baseline"]
    assert paired["baseline"] == "baseline" and paired["evidence"] == "exploratory"
    assert paired["family"]["size"] == len(paired["tests"]) == 2 and paired["family"]["correction"] == "holm"
    runs = study / "runs"
    rows = _paired_rows((study / "report.md").read_text())
    assert [(r[0], r[1], r[2]) for r in rows] == [("grouped", t["checkpoint"], t["name"]) for t in paired["tests"]]
    for row, test in zip(rows, paired["tests"], strict=True):
        loss = [json.loads((runs / v / f"seed{s}" / "analysis" / "sharpness_final.json").read_text())["loss"]
                for v in ("baseline", "grouped") for s in test["seeds"]]
        if test["measure"] == "loss":  # the per-seed differences are the measured values' differences
            assert test["differences"] == pytest.approx(np.subtract(loss[2:], loss[:2]).tolist(), abs=1e-12)
        assert row[3] == str(test["n"]) and row[5] == fmt_p(test["p"], 0.05)
        assert row[6] == fmt_p(test["p_adjusted"], 0.05)
        assert row[7] == test["reading"] and test["df"] == test["n"] - 1
        printed = [float(x) for x in re.findall(r"[+-]?\d+\.\d+", row[4])]
        decimals = len(row[4].split(" ")[0].split(".")[1])
        for shown, value in zip(printed, (test["mean_diff"], test["ci_low"], test["ci_high"]), strict=True):
            assert abs(shown - value) <= 0.5 * 10 ** -decimals + 1e-12, (row, test)
    with open(study / RESULTS_CSV, newline="") as f:
        csv_rows = {(r["variant"], r["model"]): r for r in csv.DictReader(f)}
    for model in ("raw", "ema"):
        assert all(v == "" for k, v in csv_rows["baseline", model].items() if k.startswith("sharpness_vs_baseline_"))
        row = csv_rows["grouped", model]
        for test in paired["tests"]:
            prefix = f"sharpness_vs_baseline_{test['checkpoint']}_{test['measure']}_"
            for field in ("n", "mean_diff", "ci_low", "ci_high", "t", "df", "p", "p_adjusted", "reading"):
                assert _same(row[prefix + field], test[field]), (prefix, field)
        assert row["sharpness_vs_baseline_final_asam_p"] == ""  # v0_1 measured no ASAM: no test, an empty cell


def test_an_untestable_sharpness_comparison_keeps_its_place_in_the_family(tmp_path):
    """As in the seed-level families, a comparison whose t-test is undefined (here one paired seed) enters the
    sharpness family as p = 1: the family's size counts it, and its adjusted p is n/a, not dropped."""
    study = _study(tmp_path)
    (study / "runs" / "grouped" / "seed1" / "analysis" / "sharpness_final.json").unlink()
    write_report(study)
    paired = _variants(study)["grouped"]["sharpness_vs_baseline"]
    assert paired["family"]["size"] == len(paired["tests"]) == 2
    assert all(t["n"] == 1 and t["p_adjusted"] is None and t["reading"].startswith("not testable")
               for t in paired["tests"])

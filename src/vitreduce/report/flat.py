"""results.csv: summary.json flattened to one row per variant and model kind (raw, EMA), for users' own plots.

A pure function of the summary write_report builds (vitreduce.report.runs.summarize_study plus each variant's
`vs_baseline`); every number the report's tables show is a column, unformatted. Columns are defined in
docs/metrics.md under summary.json; an empty cell is a figure that is undefined or was not measured.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from vitreduce.files import write_text
from vitreduce.report.analysis_files import ANALYSED_CHECKPOINTS
from vitreduce.report.runs import MODEL_KINDS, SHARPNESS_MEASURES
from vitreduce.report.sharpness_paired import KEYS as _PAIRED_MEASURES

RESULTS_CSV = "results.csv"
_ARCH = ("params", "mlp_params", "unique_mlps", "macs_linear", "macs_total", "mlp_hidden", "expansion")
_ACCURACY = ("top1_final", "top5_final", "top1_peak", "peak_epoch", "p2f")
_TESTED = ("top1_final", "p2f")  # the seed-level comparisons with the baseline
_TEST_FIELDS = ("evidence", "mean_diff", "ci_low", "ci_high", "p", "p_adjusted", "verdict")
_SHARPNESS_CHECKPOINT = "final"
# The exploratory paired sharpness tests against the baseline (summary.json's `sharpness_vs_baseline`).
_PAIRED = tuple((c, m) for c in ANALYSED_CHECKPOINTS for m in _PAIRED_MEASURES.values())
_PAIRED_FIELDS = ("n", "mean_diff", "ci_low", "ci_high", "t", "df", "p", "p_adjusted", "reading")
_OUTCOMES = ("listed", "finished", "diverged", "unfinished", "unreadable")  # every run of the variant, by outcome
_THROUGHPUT = ("median", "min", "max", "device", "batch_size", "precision", "base_model", "ratio_to_baseline",
               "ratio_against", "ratio_basis")


def results_columns() -> list[str]:
    """The header of results.csv, in order."""
    return ["variant", "model", "baseline", "n", *(f"runs_{s}" for s in _OUTCOMES), "diverged_epochs", *_ARCH,
            *(f"{name}_{stat}" for name in _ACCURACY for stat in ("mean", "std")),
            *(f"vs_baseline_{metric}_{field}" for metric in _TESTED for field in _TEST_FIELDS),
            "sharpness_n", *(f"sharpness_{name}_{stat}" for name in SHARPNESS_MEASURES for stat in ("mean", "std")),
            *(f"throughput_{field}" for field in _THROUGHPUT),
            *(f"sharpness_vs_baseline_{c}_{m}_{field}" for c, m in _PAIRED for field in _PAIRED_FIELDS)]


def _comparison(entry: dict, kind: str, metric: str) -> dict:
    """The seed-level record of `kind`'s `metric` against the baseline ({} for the baseline or when untested)."""
    records = (entry.get("vs_baseline") or {}).get("seed_level") or []
    return next((r for r in records if r.get("kind") == kind and r.get("metric") == metric), {})


def _paired_sharpness(entry: dict) -> dict:
    """The sharpness_vs_baseline_<checkpoint>_<measure>_<field> cells (empty for the baseline or untested)."""
    tests = {(t["checkpoint"], t["measure"]): t for t in (entry.get("sharpness_vs_baseline") or {}).get("tests", [])}
    return {f"sharpness_vs_baseline_{c}_{m}_{field}": tests.get((c, m), {}).get(field)
            for c, m in _PAIRED for field in _PAIRED_FIELDS}


def results_rows(summary: dict) -> list[dict]:
    """One row per variant and model kind that some seed has, in summary order, raw before EMA; a variant none of
    whose runs is counted (every one diverged, say) still has its raw row, with n 0 and its outcomes."""
    rows = []
    for variant, entry in summary.items():
        for kind in MODEL_KINDS:
            k = entry[kind]
            if not k["n"] and (kind == "ema" or entry["raw"]["n"] or entry["ema"]["n"]):
                continue
            outcomes = entry.get("outcomes") or {}
            row = {"variant": variant, "model": kind, "baseline": bool(entry.get("baseline")), "n": k["n"],
                   **{f"runs_{s}": outcomes.get(s) for s in _OUTCOMES},
                   "diverged_epochs": ";".join(map(str, (outcomes.get("divergence") or {}).get("epochs", []))),
                   **{key: entry.get(key) for key in _ARCH},
                   **{f"{name}_{stat}": k[f"{name}_{stat}"] for name in _ACCURACY for stat in ("mean", "std")}}
            for metric in _TESTED:
                record = _comparison(entry, kind, metric)
                row |= {f"vs_baseline_{metric}_{field}": record.get(field) for field in _TEST_FIELDS}
            sharp = (entry.get("sharpness") or {}).get(_SHARPNESS_CHECKPOINT) or {}
            row["sharpness_n"] = sharp.get("n")
            row |= {f"sharpness_{name}_{stat}": sharp.get(f"{name}_{stat}")
                    for name in SHARPNESS_MEASURES for stat in ("mean", "std")}
            throughput = entry.get("throughput") or {}
            row |= {f"throughput_{field}": throughput.get(field) for field in _THROUGHPUT}
            row |= _paired_sharpness(entry)
            rows.append(row)
    return rows


def write_results_csv(study_dir: Path | str, summary: dict) -> Path:
    """Write STUDY_DIR/results.csv atomically; returns its path."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=results_columns(), lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: "" if v is None else v for k, v in row.items()} for row in results_rows(summary)])
    path = Path(study_dir) / RESULTS_CSV
    write_text(path, buffer.getvalue())
    return path

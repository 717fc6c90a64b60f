"""results.csv: summary.json flattened to one row per variant and model kind (raw, EMA), for users' own plots.

A pure function of the variants' records write_report builds (vitreduce.report.records.VariantEntry); every
number the report's tables show is a column, unformatted. Columns are defined in docs/metrics.md under
summary.json; an empty cell is a figure that is undefined or was not measured.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from vitreduce.files import write_text
from vitreduce.report.analysis_files import ANALYSED_CHECKPOINTS
from vitreduce.report.records import VariantEntry
from vitreduce.report.runs import MODEL_KINDS, SHARPNESS_MEASURES
from vitreduce.report.sharpness_paired import KEYS as _PAIRED_MEASURES
from vitreduce.statistics.family import SeedResult

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


def _tested(result: SeedResult | None) -> dict:
    """The vs_baseline_<metric>_<field> cells of one seed-level result (empty for the baseline or untested)."""
    if result is None:
        return dict.fromkeys(_TEST_FIELDS)
    t = result.test
    return {"evidence": result.family.evidence, "mean_diff": t.mean_diff, "ci_low": t.ci_low, "ci_high": t.ci_high,
            "p": t.p, "p_adjusted": result.p_adjusted, "verdict": result.verdict}


def _paired_sharpness(entry: VariantEntry) -> dict:
    """The sharpness_vs_baseline_<checkpoint>_<measure>_<field> cells (empty for the baseline or untested)."""
    paired = entry.sharpness_vs_baseline
    tests = {(t.checkpoint, t.measure): t for t in (paired.tests if paired else ())}
    return {f"sharpness_vs_baseline_{c}_{m}_{field}": None if (c, m) not in tests else
            getattr(tests[c, m] if field == "n" else tests[c, m].test, field)
            for c, m in _PAIRED for field in _PAIRED_FIELDS}


def _spreads(record, names) -> dict:
    """<name>_mean and <name>_std of each named Spread of a record (None throughout without the record)."""
    return {f"{name}_{stat}": None if record is None else getattr(getattr(record, name), stat)
            for name in names for stat in ("mean", "std")}


def results_rows(summary: dict[str, VariantEntry]) -> list[dict]:
    """One row per variant and model kind that some seed has, in summary order, raw before EMA; a variant none of
    whose runs is counted (every one diverged, say) still has its raw row, with n 0 and its outcomes."""
    rows = []
    for variant, entry in summary.items():
        for kind in MODEL_KINDS:
            k = entry.model_kind(kind)
            if not k.n and (kind == "ema" or entry.raw.n or entry.ema.n):
                continue
            o = entry.outcomes
            row = {"variant": variant, "model": kind, "baseline": entry.baseline, "n": k.n,
                   **{f"runs_{s}": None if o is None else getattr(o, s) for s in _OUTCOMES},
                   "diverged_epochs": ";".join(map(str, o.divergence.epochs if o else ())),
                   **{key: getattr(entry, key) for key in _ARCH}, **_spreads(k, _ACCURACY)}
            for metric in _TESTED:
                result = entry.vs_baseline.result(kind, metric) if entry.vs_baseline else None
                row |= {f"vs_baseline_{metric}_{field}": value for field, value in _tested(result).items()}
            sharp = entry.sharpness.get(_SHARPNESS_CHECKPOINT)
            row["sharpness_n"] = sharp.n if sharp else None
            row |= {f"sharpness_{key}": value for key, value in _spreads(sharp, SHARPNESS_MEASURES).items()}
            row |= {f"throughput_{field}": getattr(entry.throughput, field) if entry.throughput else None
                    for field in _THROUGHPUT}
            row |= _paired_sharpness(entry)
            rows.append(row)
    return rows


def write_results_csv(study_dir: Path | str, summary: dict[str, VariantEntry]) -> Path:
    """Write STUDY_DIR/results.csv atomically; returns its path."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=results_columns(), lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: "" if v is None else v for k, v in row.items()} for row in results_rows(summary)])
    path = Path(study_dir) / RESULTS_CSV
    write_text(path, buffer.getvalue())
    return path

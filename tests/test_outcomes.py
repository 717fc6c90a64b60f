"""Every run counted: diverged, unfinished and unreadable runs are reported by name and never counted as
finished; runs pair by seed; the verdict boundaries (p = alpha, one test image); the headline's caveats."""
import csv
import json
import math

import numpy as np
import pytest

from vitreduce.report.runs import load_run
from vitreduce.report.summary_file import read_summary
from vitreduce.statistics.family import NEGLIGIBLE, NO_EVIDENCE, verdict_word
from vitreduce.statistics.pvalue import fmt_p
from vitreduce.study.reporting import write_report

N_IMAGES = 200


def _write(run_dir, seed, top1s, *, losses=None, correct=None, finished=True, decay=None, ema=False):
    """A run directory as the engine writes it: metrics.jsonl with the given top-1 curve (NaN allowed, written as
    the engine writes it), predictions.csv where the first `correct` of N_IMAGES images are right."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(f"seed: {seed}\n" + (f"ema:\n  decay: {decay}\n" if decay else ""))
    (run_dir / "run.json").write_text(json.dumps({"model": "vit_tiny_patch16_224", "reduction": "none",
                                                  "seed": seed, "params": 10, "epochs": len(top1s)}))
    losses = losses or [1.0] * len(top1s)
    lines = [{"epoch": i + 1, "step": 10 * (i + 1), "train_loss": loss,
              "raw": {"top1": t, "top5": 99.0 if math.isfinite(t) else t, "loss": 1.0},
              "ema": {"top1": t - 5, "top5": 99.0, "loss": 1.0} if ema else None}
             for i, (t, loss) in enumerate(zip(top1s, losses, strict=True))]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))  # NaN as NaN
    if finished:
        k = (round(top1s[-1] * N_IMAGES / 100) if math.isfinite(top1s[-1]) else 0) if correct is None else correct
        labels = np.arange(N_IMAGES) % 4
        raw = np.where(np.arange(N_IMAGES) < k, labels, (labels + 1) % 4)
        rows = ["index,label,raw,ema"] + [f"{i},{labels[i]},{raw[i]},{raw[i] if ema else ''}"
                                          for i in range(N_IMAGES)]
        (run_dir / "predictions.csv").write_text("\n".join(rows) + "\n")
        (run_dir / "done.json").write_text(json.dumps({"epochs": len(top1s), "wall_s": 1.0, "final": {}}))
    return run_dir


def _study(root, variants, seeds):
    root.mkdir(parents=True)
    (root / "study.yaml").write_text(json.dumps({"name": "s", "baseline": variants[0], "seeds": seeds,
                                                 "variants": [{"name": v} for v in variants]}))
    return root


# ---------------------------------------------------------------------------------------------------
# One run, one outcome


def test_nan_at_the_last_epoch_is_diverged_with_no_final_accuracy(tmp_path):
    run = load_run(_write(tmp_path / "seed0", 0, [50.0, 60.0, math.nan]))
    assert run.status == "diverged" and run.raw is None  # never the previous epoch's 60.0 as "final"
    assert (run.outcome.divergence.epoch, run.outcome.divergence.metric) == (3, "raw top1")
    run = load_run(_write(tmp_path / "seed1", 1, [50.0, 60.0], losses=[1.0, math.inf]))
    assert run.status == "diverged" and run.outcome.divergence.metric == "train_loss"


@pytest.mark.parametrize(("content", "why"), [
    (b"", "no evaluated epoch"),
    (b"\x89PNG\r\n\x1a\n\x00\xff\xfe binary", "binary"),
    (b'{"epoch": 1, "train_loss": 1.0, "raw": {"top1": Infinity}}\n', "outside [0, 100]"),
    (b'{"epoch": 1, "train_loss": 1.0, "raw": {"top1": 150.0}}\n', "outside [0, 100]"),
    (b'{"epoch": 1, "train_loss": 1.0, "raw": {"top1": -20}}\n', "outside [0, 100]"),
    (b'{"epoch": 1}\n{oops\n{"epoch": 2}\n', "metrics.jsonl:2"),
])
def test_unreadable_metrics_are_reported_with_the_file_and_why(tmp_path, content, why):
    run_dir = _write(tmp_path / "seed0", 0, [50.0])
    (run_dir / "metrics.jsonl").write_bytes(content)
    run = load_run(run_dir)
    assert run.status == "unreadable" and run.outcome.file == "metrics.jsonl" and why in run.outcome.detail
    assert run.raw is None


def test_a_missing_metrics_file_of_a_finished_run_is_unreadable(tmp_path):
    run_dir = _write(tmp_path / "seed0", 0, [50.0])
    (run_dir / "metrics.jsonl").unlink()
    assert load_run(run_dir).outcome.detail.startswith("missing")


# ---------------------------------------------------------------------------------------------------
# A study: the report names each run and n agrees everywhere


@pytest.fixture
def damaged(tmp_path):
    """base: 3 finished seeds; grouped: seed 0 NaN at its last epoch, seed 1 NaN throughout, seed 2 finished,
    seed 3 with an empty metrics.jsonl, seed 4 never started (listed in study.yaml, no folder)."""
    root = _study(tmp_path / "study", ["base", "grouped"], [0, 1, 2, 3, 4])
    for seed in range(5):
        if seed != 4:
            _write(root / "runs" / "base" / f"seed{seed}", seed, [40.0, 50.0 + seed])
    _write(root / "runs" / "grouped" / "seed0", 0, [45.0, math.nan])
    _write(root / "runs" / "grouped" / "seed1", 1, [math.nan, math.nan], losses=[math.nan, math.nan])
    _write(root / "runs" / "grouped" / "seed2", 2, [45.0, 58.0])
    (_write(root / "runs" / "grouped" / "seed3", 3, [45.0, 58.0]) / "metrics.jsonl").write_text("")
    _write(root / "runs" / "oldname" / "seed0", 0, [45.0, 99.0])  # not in study.yaml: no variant
    return root


def test_every_run_of_a_damaged_study_is_reported_by_name_and_never_counted_as_finished(damaged):
    paths = write_report(damaged, n_resamples=50)
    summary = read_summary(paths.summary_json).variants
    assert "oldname" not in summary
    o = summary["grouped"].outcomes
    assert (o.listed, o.finished, o.diverged, o.unfinished, o.unreadable) == (5, 1, 2, 1, 1)
    d = o.divergence
    assert (d.diverged, d.of, d.epochs, d.seeds) == (2, 3, (2, 1), (0, 1)) and d.vs_baseline is not None
    assert summary["grouped"].n == summary["grouped"].raw.n == 1 and summary["grouped"].seeds == (2,)
    seed_level = summary["grouped"].vs_baseline.seed_level[0]
    assert seed_level.test.n == 1 == len(summary["grouped"].vs_baseline.seeds)  # the runs table's paired n
    md = paths.markdown.read_text()
    runs = md.split("## Runs\n")[1].split("\n## ")[0]
    assert "| grouped | 5 | 1 | 2 | 1 | 1 | 1 | 1 | 2 |" in runs
    assert "| base (baseline) | 5 | 4 | 0 | 1 | 0 | 4 | (baseline) | 0, 1, 2, 3 |" in runs
    assert "grouped: runs/grouped/seed0: diverged: diverged at epoch 2: raw top1 not finite" in runs
    assert "grouped: runs/grouped/seed1: diverged: diverged at epoch 1: train_loss not finite" in runs
    assert "grouped: runs/grouped/seed3: unreadable: metrics.jsonl: metrics.jsonl has no evaluated epoch" in runs
    assert "grouped: runs/grouped/seed4: unfinished: not started (no run directory)" in runs
    assert "not reported: oldname" in runs
    headline = md.split("## Headline\n")[1].split("\n## ")[0]
    assert "grouped 2 of 3 runs (seed 0 at epoch 2, seed 1 at epoch 1)" in headline
    assert "Not counted anywhere: 2 unfinished runs and 1 unreadable run" in headline
    assert "| grouped | 2 of 3 | seed 0: epoch 2, seed 1: epoch 1 |" in md.split("## Training stability")[1]
    with (damaged / "results.csv").open() as f:
        rows = {r["variant"]: r for r in csv.DictReader(f)}
    assert rows["grouped"]["n"] == "1" and rows["grouped"]["runs_diverged"] == "2"
    assert rows["grouped"]["runs_unreadable"] == "1" and rows["grouped"]["diverged_epochs"] == "2;1"


def test_a_variant_whose_every_run_diverged_is_still_reported(tmp_path):
    root = _study(tmp_path / "study", ["base", "grouped"], [0, 1])
    for seed in (0, 1):
        _write(root / "runs" / "base" / f"seed{seed}", seed, [50.0, 55.0])
        _write(root / "runs" / "grouped" / f"seed{seed}", seed, [50.0, math.nan])
    summary = write_report(root, n_resamples=20).summary
    assert summary["grouped"].n == 0 and summary["grouped"].outcomes.divergence.diverged == 2
    headline = (root / "report.md").read_text().split("## Headline\n")[1].split("\n## ")[0]
    assert "supports no claim" in headline and "grouped 2 of 2 runs (seed 0 at epoch 2, seed 1 at epoch 2)" in headline


# ---------------------------------------------------------------------------------------------------
# Pairing by seed, and the boundaries of a verdict


def test_a_missing_baseline_seed_pairs_by_seed_not_by_position(tmp_path):
    """Baseline seeds 0, 2, 3, 4 (seed 1 missing); the variant is exactly +1 pp on every seed it shares with the
    baseline, give or take 0.1. Paired by position, seed 1 of the variant would meet seed 2 of the baseline and
    every later seed the wrong run, giving differences of about -9 pp."""
    root = _study(tmp_path / "study", ["base", "grouped", "shallow"], [0, 1, 2, 3, 4])
    for seed in (0, 2, 3, 4):
        _write(root / "runs" / "base" / f"seed{seed}", seed, [40.0, 50.0 + 10 * seed])
    for seed, jitter in zip(range(5), (0.1, 0.0, -0.1, 0.05, -0.05), strict=True):
        _write(root / "runs" / "grouped" / f"seed{seed}", seed, [40.0, 51.0 + 10 * seed + jitter])
        if seed != 2:  # a variant seed missing as well: shallow shares seeds 0, 3, 4 with the baseline
            _write(root / "runs" / "shallow" / f"seed{seed}", seed, [40.0, 49.0 + 10 * seed + jitter])
    summary = write_report(root, n_resamples=20).summary
    vs = summary["grouped"].vs_baseline
    record = vs.seed_level[0]
    assert vs.seeds == (0, 2, 3, 4) and record.test.n == 4
    assert record.test.differences == pytest.approx([1.1, 0.9, 1.05, 0.95])
    assert record.verdict == "better" and record.test.mean_baseline == pytest.approx(72.5)
    shallow = summary["shallow"].vs_baseline
    assert shallow.seeds == (0, 3, 4) and shallow.seed_level[0].test.differences == pytest.approx([-0.9, -0.95, -1.05])


def test_p_exactly_alpha_gives_no_verdict():
    assert verdict_word(+0.5, 0.05, 0.05, "top1_final") == NO_EVIDENCE
    assert verdict_word(+0.5, math.nextafter(0.05, 0), 0.05, "top1_final") == "better"


def test_a_difference_below_one_test_image_is_negligible():
    assert verdict_word(+0.01, 0.001, 0.05, "top1_final", min_effect=0.01) == "better"  # exactly one image
    assert verdict_word(+0.009, 0.001, 0.05, "top1_final", min_effect=0.01) == NEGLIGIBLE
    assert verdict_word(-0.009, 0.2, 0.05, "top1_final", min_effect=0.01) == NO_EVIDENCE


@pytest.mark.parametrize(("p", "alpha", "text"), [
    (0.0499849, 0.05, "0.04998"), (0.0500001, 0.05, "0.0500001"), (0.05, 0.05, "0.05"), (0.123456, 0.05, "0.123"),
    (0.00999, 0.01, "0.00999"), (0.0099999, 0.01, "0.0099999"), (0.0000123, 0.05, "1.2e-05"),
    (0.000100004, 0.0001, "1.00004e-04"), (1.0, 0.05, "1"),
])
def test_fmt_p_shows_which_side_of_alpha(p, alpha, text):
    assert fmt_p(p, alpha) == text
    assert (float(fmt_p(p, alpha)) < alpha) == (p < alpha) and (float(fmt_p(p, alpha)) == alpha) == (p == alpha)


# ---------------------------------------------------------------------------------------------------
# The headline's caveats


def test_a_two_seed_headline_carries_its_warning_and_a_tiny_difference_is_not_better(tmp_path):
    root = _study(tmp_path / "study", ["base", "tiny", "big"], [0, 1])
    for seed, shift in ((0, 0.0), (1, 2.0)):
        _write(root / "runs" / "base" / f"seed{seed}", seed, [40.0, 50.0 + shift], correct=100)
        # +0.001 pp and +0.0011: significant (identical-ish differences), far below one image (0.5 pp)
        _write(root / "runs" / "tiny" / f"seed{seed}", seed, [40.0, 50.001 + shift + seed * 1e-4], correct=100)
        _write(root / "runs" / "big" / f"seed{seed}", seed, [40.0, 60.0 + shift + seed * 0.01], correct=120)
    summary = write_report(root, n_resamples=20).summary
    tiny = summary["tiny"].vs_baseline.seed_level[0]
    assert tiny.p_adjusted < 0.05 and tiny.verdict == NEGLIGIBLE
    assert tiny.min_effect == pytest.approx(100 / N_IMAGES) and tiny.min_effect_source == "one test image of 200"
    headline = (root / "report.md").read_text().split("## Headline\n")[1].split("\n## ")[0]
    assert "big is better than the baseline" in headline and "tiny is" not in headline
    assert "called neither better nor worse: tiny by +0.00 pp" in headline
    assert "Weak evidence whatever the p-value: tiny, big rest on 2 paired seeds (df=1)" in headline


def test_an_ema_horizon_longer_than_the_run_is_flagged(tmp_path):
    root = _study(tmp_path / "study", ["base", "grouped"], [0, 1, 2])
    for seed in range(3):
        for v in ("base", "grouped"):
            _write(root / "runs" / v / f"seed{seed}", seed, [40.0, 50.0 + seed], decay=0.9998, ema=True)
    write_report(root, n_resamples=20)
    headline = (root / "report.md").read_text().split("## Headline\n")[1].split("\n## ")[0]
    assert ("EMA horizon: base's EMA (decay 0.9998) averages over about 5,000 optimizer steps, more than the 20 "
            "its runs trained, so it still carries its initialisation; its final top-1 is -5.00 pp from the raw "
            "model's.") in headline


def test_summary_json_is_read_back_in_both_formats_and_refused_otherwise(tmp_path):
    from vitreduce.errors import VitreduceError
    from vitreduce.report.summary_file import read_summary

    # (a format 1 file as vitreduce 0.1.0 wrote it: tests/test_summary_records.py)
    (tmp_path / "old.json").write_text(json.dumps({"base": {"n": 2, "baseline": True}, "pareto": None}))
    with pytest.raises(VitreduceError, match=r"old.json does not hold a summary this vitreduce reads \(variants.base."
                                             r"seeds: Field required"):
        read_summary(tmp_path / "old.json")  # a variant without its keys: said which, not read half
    (tmp_path / "future.json").write_text(json.dumps({"format": 3, "variants": []}))
    with pytest.raises(VitreduceError, match="reads formats 1 and 2"):
        read_summary(tmp_path / "future.json")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(VitreduceError, match="not a JSON summary"):
        read_summary(tmp_path / "binary.json")

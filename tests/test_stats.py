"""Statistics against independently computed reference values."""
import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from vitreduce.errors import VitreduceError
from vitreduce.report.compare import compare_to_baseline, read_predictions
from vitreduce.report.runs import load_run
from vitreduce.statistics.paired import (
    Bootstrap,
    McNemar,
    clustered_mcnemar,
    describe_bootstrap,
    describe_mcnemar,
    describe_ttest,
    mcnemar_exact,
    paired_bootstrap_ci,
    paired_ttest,
)


def _outcomes(both: int, neither: int, base_only: int, variant_only: int):
    a = np.array([1] * both + [0] * neither + [1] * base_only + [0] * variant_only, dtype=bool)
    b = np.array([1] * both + [0] * neither + [0] * base_only + [1] * variant_only, dtype=bool)
    return a, b


def _mcnemar_reference(b: int, c: int) -> float:
    """Exact two-sided McNemar p: twice the binomial(b + c, 1/2) tail at min(b, c), capped at 1."""
    n = b + c
    return min(1.0, 2 * sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n)


@pytest.mark.parametrize("base_only,variant_only", [(3, 12), (12, 3), (7, 7), (0, 9), (40, 61)])
def test_mcnemar_matches_binomial_sum(base_only, variant_only):
    m = mcnemar_exact(*_outcomes(50, 20, base_only, variant_only))
    assert (m.base_only, m.variant_only, m.n_pairs) == (base_only, variant_only, 70 + base_only + variant_only)
    assert m.p == pytest.approx(_mcnemar_reference(base_only, variant_only), rel=1e-12)


def test_mcnemar_without_discordant_pairs():
    assert mcnemar_exact(*_outcomes(5, 5, 0, 0)).p == 1.0


def test_paired_ttest_matches_hand_computation():
    base, var = [80.0, 80.5, 81.0], [80.4, 80.6, 81.5]
    d = np.array(var) - np.array(base)
    sd = math.sqrt(sum((x - d.mean()) ** 2 for x in d) / 2)
    t_ref = d.mean() / (sd / math.sqrt(3))
    res = paired_ttest(base, var)
    assert (res.n, res.df, res.warning) == (3, 2, None)
    assert res.mean_diff == pytest.approx(d.mean())
    assert res.t == pytest.approx(t_ref)
    assert res.p == pytest.approx(2 * sps.t.sf(abs(t_ref), 2))
    half = sps.t.ppf(0.975, 2) * sd / math.sqrt(3)  # the t-based 95% interval of the mean difference
    assert (res.ci_low, res.ci_high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert res.sd == pytest.approx(sd) and res.differences == pytest.approx(tuple(d))
    assert "95% CI [" in describe_ttest(res) and "raw p=" in describe_ttest(res)


def test_paired_ttest_warns_with_two_seeds():
    res = paired_ttest([81.0, 81.1], [81.4, 81.6])
    t_ref = 0.45 / (math.sqrt(0.005) / math.sqrt(2))  # d = [0.4, 0.5]
    assert res.df == 1 and res.t == pytest.approx(t_ref) and res.p == pytest.approx(2 * sps.t.sf(t_ref, 1))
    assert "df=1" in res.warning
    assert "warning: only n=2" in describe_ttest(res)


def test_paired_ttest_undefined_cases_are_never_significant():
    same = paired_ttest([81.05, 81.16], [81.47, 81.58])  # identical differences: scipy would say p=0
    assert same.p is None and "identical" in same.warning
    assert "not testable" in describe_ttest(same) and same.ci_low is None
    one = paired_ttest([81.0], [81.5])
    assert one.p is None and one.df is None and one.mean_diff == pytest.approx(0.5)


def test_image_level_statements_follow_the_numbers_and_speak_of_the_trained_models():
    differ, same = "these trained models differ on this test set", "no difference shown between these trained models"
    assert describe_mcnemar(McNemar(100, 10, 12, 0.41)) == f"{same} on this test set (McNemar exact p=0.41)"
    assert describe_mcnemar(McNemar(100, 2, 20, 0.003)) == f"{differ} (McNemar exact p=0.003 < 0.05)"
    assert describe_mcnemar(McNemar(100, 2, 20, 0.03), alpha=0.01).startswith(same)
    assert describe_bootstrap(Bootstrap(0.4, -0.1, 0.9, 0.95, 100, 10, 0)).startswith(same)
    assert describe_bootstrap(Bootstrap(0.4, 0.1, 0.9, 0.95, 100, 10, 0)).startswith(differ)
    assert describe_bootstrap(Bootstrap(-0.4, -0.9, -0.1, 0.95, 100, 10, 0)).startswith(differ)
    for text in (describe_mcnemar(McNemar(100, 2, 20, 0.003)), describe_bootstrap(Bootstrap(1, 1, 1, .95, 9, 9, 0))):
        assert "significant" not in text and "better" not in text


def test_clustered_mcnemar_against_hand_computation():
    # one seed: e_i in {-1, 0, +1}, so X = (c - b)^2 / (b + c), McNemar's chi-square without continuity correction
    a, b = _outcomes(50, 20, 3, 12)
    m = clustered_mcnemar(a, b)
    assert (m.base_only, m.variant_only, m.n_images, m.n_seeds) == (3, 12, 85, 1)
    assert m.chi2 == pytest.approx(81 / 15) and m.p == pytest.approx(sps.chi2.sf(81 / 15, 1))
    # a repeated seed adds no evidence: e_i doubles, X is unchanged (pooled exact McNemar would halve p and more)
    two = clustered_mcnemar(np.stack([a, a], 1), np.stack([b, b], 1))
    assert two.chi2 == pytest.approx(m.chi2) and two.n_images == 85 and two.n_seeds == 2
    assert mcnemar_exact(np.stack([a, a], 1), np.stack([b, b], 1)).p < mcnemar_exact(a, b).p / 10
    # hand case: images with e = +2, +1, -1, 0 -> X = (2 + 1 - 1)^2 / (4 + 1 + 1) = 4/6
    base = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=bool)
    var = np.array([[1, 1], [1, 1], [0, 0], [1, 1]], dtype=bool)
    assert clustered_mcnemar(base, var).chi2 == pytest.approx(4 / 6)
    assert clustered_mcnemar(base, base).p == 1.0


def _synthetic(n, p_base, p_var, seed):
    rng = np.random.default_rng(seed)
    return rng.random(n) < p_base, rng.random(n) < p_var


def test_bootstrap_ci_contains_true_difference_and_is_reproducible():
    a, b = _synthetic(200_000, 0.70, 0.72, seed=1)  # true difference +2 pp
    bs = paired_bootstrap_ci(a, b, n_resamples=2000, seed=3)
    assert bs.low < 2.0 < bs.high and bs.high - bs.low < 1.0
    assert bs.diff == pytest.approx((b.mean() - a.mean()) * 100)
    assert paired_bootstrap_ci(a, b, n_resamples=2000, seed=3) == bs
    assert paired_bootstrap_ci(a, b, n_resamples=2000, seed=4) != bs


def test_bootstrap_matches_resampling_images_directly():
    a, b = _synthetic(2000, 0.6, 0.65, seed=5)
    bs = paired_bootstrap_ci(a, b, n_resamples=4000, seed=0)
    idx = np.random.default_rng(1).integers(0, a.size, size=(4000, a.size))  # (R, N)
    naive = (b[idx].mean(1) - a[idx].mean(1)) * 100
    low, high = np.quantile(naive, [0.025, 0.975])
    assert bs.low == pytest.approx(low, abs=0.25) and bs.high == pytest.approx(high, abs=0.25)


def test_bootstrap_over_seeds_keeps_an_images_seeds_together():
    a, b = _synthetic(5000, 0.6, 0.62, seed=2)
    one = paired_bootstrap_ci(a, b, seed=0)
    assert paired_bootstrap_ci(a[:, None], b[:, None], seed=0) == one
    # Two identical seeds add no information: resampling images (not (image, seed) pairs) gives the
    # one-seed interval, where treating the 2N pairs as independent would narrow it by about 1/sqrt(2).
    two = paired_bootstrap_ci(np.stack([a, a], 1), np.stack([b, b], 1), seed=0)
    assert (two.n_images, two.n_seeds) == (5000, 2)  # images, not images x seeds
    assert (two.diff, two.low, two.high) == pytest.approx((one.diff, one.low, one.high))
    flat = paired_bootstrap_ci(np.concatenate([a, a]), np.concatenate([b, b]), seed=0)
    assert flat.high - flat.low == pytest.approx((one.high - one.low) / math.sqrt(2), rel=0.15)


def _write_run(run_dir, seed, top1s, labels, raw, ema=None):
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"seed": seed, "params": 10}))
    lines = [{"epoch": i + 1, "train_loss": 1.0, "raw": {"top1": t, "top5": 99.0},
              "ema": None if ema is None else {"top1": t, "top5": 99.0}} for i, t in enumerate(top1s)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    rows = ["index,label,raw,ema"]
    order = np.arange(len(labels))[::-1]  # any row order: the reader sorts by index
    rows += [f"{i},{labels[i]},{raw[i]},{'' if ema is None else ema[i]}" for i in order]
    (run_dir / "predictions.csv").write_text("\n".join(rows) + "\n")
    (run_dir / "done.json").write_text(json.dumps({"epochs": len(top1s), "wall_s": 1.0, "final": {}}))
    return load_run(run_dir)


def test_read_predictions(tmp_path):
    run = _write_run(tmp_path / "seed0", 0, [50.0], labels=[1, 2, 3], raw=[1, 0, 3])
    p = read_predictions(run.run_dir / "predictions.csv")
    assert p.index.tolist() == [0, 1, 2] and p.ema is None
    assert p.correct("raw").tolist() == [True, False, True] and p.correct("ema") is None
    (tmp_path / "bad.csv").write_text("idx,label\n")
    with pytest.raises(VitreduceError, match="header"):
        read_predictions(tmp_path / "bad.csv")


def test_compare_to_baseline_pairs_by_seed(tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    labels = rng.integers(0, 10, n)
    base_runs, var_runs, outcomes = [], [], []
    for seed in (0, 1):
        base_pred = np.where(rng.random(n) < 0.6, labels, (labels + 1) % 10)
        var_pred = np.where(rng.random(n) < 0.7, labels, (labels + 1) % 10)
        base_runs.append(_write_run(tmp_path / "base" / f"seed{seed}", seed, [50.0, 60.0 + seed, 59.0],
                                    labels, base_pred, ema=base_pred))
        var_runs.append(_write_run(tmp_path / "var" / f"seed{seed}", seed, [50.0, 61.0, 61.0 + 0.5 * seed],
                                   labels, var_pred, ema=var_pred))
        outcomes.append((base_pred == labels, var_pred == labels))
    # a variant seed without a baseline partner is left out of every paired test
    var_runs.append(_write_run(tmp_path / "var" / "seed7", 7, [1.0], labels, labels))
    c = compare_to_baseline("var", var_runs, "base", base_runs, n_resamples=500, seed=0)
    assert c.seeds == [0, 1] and set(c.kinds) == {"raw", "ema"}
    raw = c.kinds["raw"]
    assert raw.top1.n == 2 and raw.top1.mean_diff == pytest.approx(((61 - 59) + (61.5 - 59)) / 2)
    assert raw.p2f.mean_diff == pytest.approx(((0 - 1) + (0 - 2)) / 2)
    assert [t.label for t in raw.per_seed] == ["seed 0", "seed 1"]
    assert raw.per_seed[1].mcnemar == mcnemar_exact(*outcomes[1])
    assert raw.per_seed[0].bootstrap == paired_bootstrap_ci(*outcomes[0], n_resamples=500, seed=0)
    pooled_a = np.stack([o[0] for o in outcomes], 1)
    pooled_b = np.stack([o[1] for o in outcomes], 1)
    assert raw.pooled.mcnemar == clustered_mcnemar(pooled_a, pooled_b)
    assert raw.pooled.bootstrap.n_images == n and raw.pooled.bootstrap.n_seeds == 2
    assert any("grouped by image" in note for note in raw.notes)
    assert raw.top1.ci_low is not None and raw.top1.confidence == 0.95


def test_compare_without_ema_and_with_mismatched_images(tmp_path):
    base = [_write_run(tmp_path / "b" / "seed0", 0, [50.0], [1, 2], [1, 2])]
    var = [_write_run(tmp_path / "v" / "seed0", 0, [50.0], [1, 2], [1, 1])]
    c = compare_to_baseline("v", var, "b", base)
    assert set(c.kinds) == {"raw"} and c.kinds["raw"].pooled is None
    other = [_write_run(tmp_path / "o" / "seed0", 0, [50.0], [1, 3], [1, 1])]
    with pytest.raises(VitreduceError, match="same eval images"):
        compare_to_baseline("o", other, "b", base)


def test_seeds_scored_on_different_images_get_no_pooled_test(tmp_path):
    base = [_write_run(tmp_path / "b" / f"seed{s}", s, [50.0 + s], [1, 2, 3], [1, 2, 0]) for s in (0, 1)]
    var = [_write_run(tmp_path / "v" / f"seed{s}", s, [51.0 + 2 * s], [1, 2, 3], [1, 0, 3]) for s in (0, 1)]
    for run in (base[1], var[1]):  # seed 1 scored images 5, 6, 7 instead of 0, 1, 2
        path = run.run_dir / "predictions.csv"
        lines = path.read_text().splitlines()
        path.write_text("\n".join([lines[0], *(f"{int(r.split(',')[0]) + 5},{r.split(',', 1)[1]}" for r in lines[1:])])
                        + "\n")
    kc = compare_to_baseline("v", var, "b", base).kinds["raw"]
    assert kc.pooled is None and len(kc.per_seed) == 2
    assert any("not scored on the same images" in note for note in kc.notes)


def test_pooled_image_bootstrap_narrows_as_seeds_are_added():
    # docs/metrics.md: the pooled interval is about these trained models, not retraining, so averaging more
    # trained models (per-image outcomes correlated through the image's difficulty) narrows it.
    rng = np.random.default_rng(4)
    difficulty = rng.beta(0.5, 0.3, 20_000)  # (N,) chance that a trained model gets image i right
    widths = []
    for seeds in (1, 2, 4):
        a = rng.random((difficulty.size, seeds)) < difficulty[:, None]  # (N, S)
        b = rng.random((difficulty.size, seeds)) < difficulty[:, None]
        bs = paired_bootstrap_ci(a, b, seed=0)
        widths.append(bs.high - bs.low)
    assert widths[0] > widths[1] > widths[2] and widths[2] < 0.6 * widths[0]

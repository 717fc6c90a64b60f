"""Families, corrections, verdicts and detectable effects: hand-computed cases, a known power calculation,
and the property that null studies with many variants rarely get a confirmatory verdict."""
import math

import numpy as np
import pytest
from scipy import stats as sps

from vitreduce.errors import VitreduceError
from vitreduce.statistics.family import (
    BETTER,
    NO_EVIDENCE,
    NOT_TESTABLE,
    WORSE,
    StatisticsConfig,
    adjust_pvalues,
    holm_bh_many,
    resolve_primary,
    seed_level,
    verdict_word,
    verdicts_many,
)
from vitreduce.statistics.paired import Comparison, KindComparison, paired_ttest
from vitreduce.statistics.power import MAX_SEEDS, detectable, minimum_detectable, power_paired, seeds_needed
from vitreduce.study.spec import parse_spec, spec_tree


def test_holm_against_hand_computation():
    # sorted p: 0.01, 0.02, 0.03, 0.04 (m=4) -> 4*0.01=0.04, max(0.04, 3*0.02=0.06)=0.06, max(.06, .06)=0.06, .06
    assert adjust_pvalues([0.04, 0.01, 0.03, 0.02], "holm") == pytest.approx([0.06, 0.04, 0.06, 0.06])
    # capped at 1, monotone in the sorted order: 3*0.4=1.2 -> 1
    assert adjust_pvalues([0.4, 0.5, 0.001], "holm") == pytest.approx([0.8, 0.8, 0.003])
    assert adjust_pvalues([0.3], "holm") == [0.3] and adjust_pvalues([], "holm") == []


def test_benjamini_hochberg_against_hand_computation():
    # sorted 0.01, 0.02, 0.03, 0.5 (m=4): m/i * p = 0.04, 0.04, 0.04, 0.5, then the running minimum from the top
    assert adjust_pvalues([0.02, 0.5, 0.01, 0.03], "bh") == pytest.approx([0.04, 0.5, 0.04, 0.04])
    assert adjust_pvalues([0.01, 0.04], "bh") == pytest.approx([0.02, 0.04])


def test_vectorised_adjustment_matches_the_one_family_form():
    p = np.random.default_rng(0).random((50, 7)) ** 3
    for method in ("holm", "bh"):
        many = holm_bh_many(p, method)
        for row, adjusted in zip(p, many, strict=True):
            assert adjusted == pytest.approx(adjust_pvalues(row.tolist(), method), abs=1e-12)


def test_bad_p_values_are_refused():
    with pytest.raises(ValueError):
        adjust_pvalues([0.1, 1.5], "holm")
    with pytest.raises(VitreduceError, match="holm, bh"):
        adjust_pvalues([0.1], "bonferroni")


def test_verdict_words_follow_the_adjusted_p_and_the_metric_direction():
    assert verdict_word(+0.5, 0.01, 0.05, "top1_final") == BETTER
    assert verdict_word(-0.5, 0.01, 0.05, "top1_final") == WORSE
    assert verdict_word(-0.5, 0.01, 0.05, "p2f") == BETTER  # less peak-to-final degradation
    assert verdict_word(+0.5, 0.06, 0.05, "top1_final") == NO_EVIDENCE
    assert verdict_word(+0.5, None, 0.05, "top1_final") == NOT_TESTABLE
    got = verdicts_many(np.array([0.5, -0.5, 0.5]), np.array([0.01, 0.01, 0.2]), 0.05, "top1_final")
    assert got.tolist() == [1, -1, 0]


def test_power_against_a_known_calculation():
    # Two-sided one-sample/paired t-test, alpha 0.05, power 0.8: d=1 needs n=9.94 and d=0.5 needs n=33.37
    # (Cohen 1988; R power.t.test(delta=1, power=.8, type="paired") gives n = 9.937864).
    assert seeds_needed(1.0, 1.0, 0.05) == 10 and seeds_needed(0.5, 1.0, 0.05) == 34
    assert power_paired(1.0, 1.0, 10, 0.05) == pytest.approx(0.8031, abs=2e-4)
    assert 0.99 < minimum_detectable(1.0, 10, 0.05) < 1.0
    assert minimum_detectable(2.0, 10, 0.05) == pytest.approx(2 * minimum_detectable(1.0, 10, 0.05))
    assert power_paired(minimum_detectable(0.3, 4, 0.01), 0.3, 4, 0.01) == pytest.approx(0.8, abs=1e-6)


def test_power_agrees_with_simulated_t_tests():
    rng = np.random.default_rng(1)
    n, effect, alpha = 4, 1.5, 0.05
    d = rng.normal(effect, 1.0, size=(100_000, n))  # (R, n)
    t = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(n))
    simulated = np.mean(2 * sps.t.sf(np.abs(t), n - 1) < alpha)
    assert simulated == pytest.approx(power_paired(effect, 1.0, n, alpha), abs=0.006)


def test_power_where_scipys_noncentral_t_gives_nan():
    # df=1 at a family-adjusted level: scipy's nct returns nan here; the integral form takes over
    power = power_paired(100.0, 1.0, 2, 0.05 / 11)
    assert math.isfinite(power) and 0.5 < power < 1
    assert minimum_detectable(1.0, 2, 0.05 / 11) > 50


def test_detectable_says_why_it_cannot_be_computed():
    one = detectable([0.5], 0.05, 0.42)
    assert one.min_effect is None and one.seeds_needed is None and "at least 2" in one.reason
    flat = detectable([0.5, 0.5, 0.5], 0.05, 0.42)
    assert flat.min_effect is None and "sd 0" in flat.reason
    ok = detectable([0.1, 0.5, 0.3], 0.05 / 3, 0.42)
    assert ok.reason is None and ok.sd == pytest.approx(0.2) and ok.alpha == pytest.approx(0.05 / 3)
    assert ok.seeds_needed == seeds_needed(0.42, 0.2, 0.05 / 3)
    assert seeds_needed(1e-6, 1.0, 0.05) is None and detectable([0, 1.0], 0.05, 1e-6).more_than_max
    assert MAX_SEEDS >= 1000


def _comparison(variant: str, base: list[float], var: list[float]) -> Comparison:
    kc = KindComparison("raw", top1=paired_ttest(base, var), p2f=paired_ttest(var, base))
    return Comparison(variant, "base", 0.05, list(range(len(base))), {"raw": kc})


def test_seed_level_families_adjust_together_and_record_everything():
    comps = [_comparison("a", [80, 81, 82], [81.0, 82.1, 82.9]), _comparison("b", [80, 81, 82], [80.2, 80.9, 82.3]),
             _comparison("c", [80], [81])]
    results = seed_level(comps, StatisticsConfig(primary="raw_top1_final"))
    confirmatory = [r for r in results if r.family.evidence == "confirmatory"]
    assert [r.variant for r in confirmatory] == ["a", "b", "c"]
    raw = [comps[0].kinds["raw"].top1.p, comps[1].kinds["raw"].top1.p, 1.0]  # untestable c enters as p = 1
    expected = adjust_pvalues(raw, "holm")
    assert [r.p_adjusted for r in confirmatory] == pytest.approx([expected[0], expected[1], None])
    assert confirmatory[2].verdict == NOT_TESTABLE
    assert all(r.detectable.alpha == pytest.approx(0.05 / 3) for r in confirmatory)
    record = confirmatory[0].record()
    assert record["family"]["name"] == "confirmatory: raw_top1_final" and record["family"]["size"] == 3
    assert {"p", "p_adjusted", "correction", "ci_low", "ci_high", "evidence", "level", "verdict",
            "detectable"} <= set(record)
    assert {r.family.name for r in results if r.family.evidence == "exploratory"} == {"exploratory: raw_p2f"}


def test_primary_metric_defaults_and_refusals():
    assert resolve_primary(None, [{"raw", "ema"}, {"raw", "ema"}]) == "ema_top1_final"
    assert resolve_primary(None, [{"raw", "ema"}, {"raw"}]) == "raw_top1_final"
    assert resolve_primary("raw_p2f", [{"raw"}]) == "raw_p2f"
    with pytest.raises(VitreduceError, match="raw_top1_final instead"):
        resolve_primary("ema_top1_final", [{"raw"}])
    with pytest.raises(ValueError):
        StatisticsConfig(correction="bonferroni")
    with pytest.raises(ValueError):
        StatisticsConfig(alpha=1.5)


def _simulate(rng, studies: int, variants: int, seeds: int, effects: np.ndarray):
    """Per-seed final top-1 of a baseline and `variants` variants; a seed effect shared by every variant."""
    seed_effect = rng.normal(0, 3.0, size=(studies, 1, seeds))  # cancels in the paired differences
    base = seed_effect[:, 0] + rng.normal(0, 1 / math.sqrt(2), size=(studies, seeds))  # (T, S)
    var = seed_effect + effects[None, :, None] + rng.normal(0, 1 / math.sqrt(2), size=(studies, variants, seeds))
    return base, var  # paired differences have sd 1


def _verdicts(base, var, method, alpha=0.05):
    d = var - base[:, None, :]  # (T, V, S)
    n = d.shape[2]
    t = d.mean(2) / (d.std(2, ddof=1) / math.sqrt(n))
    p = 2 * sps.t.sf(np.abs(t), n - 1)  # (T, V)
    return verdicts_many(d.mean(2), holm_bh_many(p, method), alpha, "top1_final")


@pytest.mark.parametrize("method", ["holm", "bh"])
def test_null_studies_rarely_get_a_confirmatory_verdict(method):
    rng = np.random.default_rng(11)
    studies = 2000
    base, var = _simulate(rng, studies, 10, 3, np.zeros(10))
    verdicts = _verdicts(base, var, method)
    family_wise = np.mean(np.any(verdicts != 0, axis=1))
    # at most alpha, plus three Monte Carlo standard errors
    assert family_wise <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / studies)
    # without the correction the same studies would call a variant better or worse far more often
    d = var - base[:, None, :]
    t = d.mean(2) / (d.std(2, ddof=1) / math.sqrt(3))
    assert np.mean(np.any(2 * sps.t.sf(np.abs(t), 2) < 0.05, axis=1)) > 0.3
    # the vectorised path gives the report's verdicts (checked on a few studies through seed_level)
    for i in range(3):
        comps = [_comparison(f"v{j}", base[i].tolist(), var[i, j].tolist()) for j in range(10)]
        words = [r.verdict for r in seed_level(comps, StatisticsConfig(primary="raw_top1_final", correction=method))
                 if r.family.evidence == "confirmatory"]
        assert words == [{1: BETTER, -1: WORSE, 0: NO_EVIDENCE}[v] for v in verdicts[i]]


def test_a_real_difference_gets_its_verdict():
    rng = np.random.default_rng(12)
    effects = np.zeros(10)
    effects[0] = 3.0  # 3 sd of the paired differences, 5 seeds
    base, var = _simulate(rng, 2000, 10, 5, effects)
    verdicts = _verdicts(base, var, "holm")
    found = np.mean(verdicts[:, 0] == 1)
    assert found > 0.5 and found >= power_paired(3.0, 1.0, 5, 0.05 / 10) - 3 * math.sqrt(0.25 / 2000)
    assert np.mean(verdicts[:, 0] == -1) == 0
    assert np.mean(np.any(verdicts[:, 1:] != 0, axis=1)) <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 2000)


def test_the_spec_statistics_section_is_optional_and_written_only_when_given():
    tree = {"name": "s", "base": {}, "variants": [{"name": "a"}, {"name": "b"}]}
    assert "statistics" not in spec_tree(parse_spec(tree))  # old study.yaml files stay as they were
    given = spec_tree(parse_spec({**tree, "statistics": {"correction": "bh", "effect": 0.3}}))
    assert given["statistics"] == {"correction": "bh", "effect": 0.3}
    assert parse_spec(given).statistics == StatisticsConfig(correction="bh", effect=0.3)
    with pytest.raises(VitreduceError, match="statistics.correction"):
        parse_spec({**tree, "statistics": {"correction": "bonferroni"}})
    with pytest.raises(VitreduceError, match="statistics.primary"):
        parse_spec({**tree, "statistics": {"primary": "top1"}})

"""The report's dense-transfer section: each variant's segmentation-probe mIoU and pixel accuracy (mean ±
sample std over seeds) beside its classification top-1, and the seed-level paired t-test of its mIoU
against the baseline's, the variants adjusted together as one family with the study's correction.

Exploratory, unless the study names ``probe_miou`` as its primary metric (``statistics.primary`` or
``--primary``): then these tests are the confirmatory family (``statistics.family.seed_level`` decides their
verdicts, the headline states them) and classification top-1 is exploratory. Pure functions of study.yaml and
the results.json files a study's analysis wrote (``analysis_files.read_run_probe``;
``vitreduce.study.probe_analysis`` writes them); a study without them gets no section.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from vitreduce.config_tree import read_yaml
from vitreduce.errors import VitreduceError
from vitreduce.report.analysis_files import read_run_probe
from vitreduce.report.formatting import NA, pm_column
from vitreduce.report.plots import ordered_variants
from vitreduce.report.records import PairedRecord, ProbeFamily, ProbeRecord, Segmentation, Spread, VariantEntry
from vitreduce.report.render import Block, Heading, Paragraph, Table
from vitreduce.report.runs import StudyRuns
from vitreduce.report.sharpness_paired import reading  # the same wording for every exploratory paired test
from vitreduce.statistics.family import CORRECTION_NAME, PROBE_MIOU, StatisticsConfig, adjust_pvalues, verdict_word
from vitreduce.statistics.paired import TTest, paired_ttest
from vitreduce.statistics.pvalue import fmt_p
from vitreduce.statistics.sample import mean_std

FAMILY = ("every variant's mIoU difference from the baseline over paired seeds; an undefined test counts in the "
          "family as p = 1; {evidence}")


def probed_kind(study: StudyRuns, config: StatisticsConfig) -> str:
    """The model kind the study's analysis probes (study.yaml's analysis.weights: "ema" or "raw"). With primary
    probe_miou, a study whose study.yaml has no analysis.segmentation section is refused: nothing measures it."""
    path = study.study_dir / "study.yaml"
    analysis = (read_yaml(path) if path.is_file() else {}).get("analysis") or {}
    if config.primary == PROBE_MIOU and not analysis.get("segmentation"):
        raise VitreduceError(f"primary metric {PROBE_MIOU} is the segmentation probe's mIoU, but "
                             f"{study.study_dir}/study.yaml has no analysis.segmentation section, so no run is "
                             "probed: add analysis.segmentation (its data: a dataset in the ADE20K layout; "
                             "docs/dense-tasks.md) to the study spec and run the study again, or name another "
                             "primary metric (statistics.primary or --primary)")
    return analysis.get("weights", "ema")


def _evidence(config: StatisticsConfig) -> str:
    return "confirmatory" if config.primary == PROBE_MIOU else "exploratory"


@dataclass(frozen=True)
class ProbeTest:
    variant: str
    test: TTest
    p_adjusted: float | None = None
    seeds: tuple[int, ...] = ()


def probe_results(study: StudyRuns) -> dict[str, dict[int, dict]]:
    """{variant: {seed: results.json}} for the runs that were probed."""
    found: dict[str, dict[int, dict]] = {}
    for variant, runs in study.variants.items():
        for run in runs:
            result = read_run_probe(run.run_dir)
            if result is not None:
                found.setdefault(variant, {})[run.seed] = result
    return found


def probe_tests(study: StudyRuns, results: dict[str, dict[int, dict]], config: StatisticsConfig) -> list[ProbeTest]:
    """The paired mIoU test of every variant against the baseline over the seeds both probed, adjusted together."""
    base = results.get(study.baseline, {})
    tests = []
    for variant in ordered_variants(study)[1:] if study.baseline in study.variants else []:
        seeds = sorted(set(base) & set(results.get(variant, {})))
        if seeds:
            t = paired_ttest([base[s]["miou"] for s in seeds], [results[variant][s]["miou"] for s in seeds],
                             confidence=1 - config.alpha)
            tests.append(ProbeTest(variant, t, seeds=tuple(seeds)))
    # As in the other families, an undefined test enters as p = 1: the family keeps its size.
    adjusted = adjust_pvalues([1.0 if t.test.p is None else t.test.p for t in tests], config.correction)
    return [dataclasses.replace(t, p_adjusted=None if t.test.p is None else p)
            for t, p in zip(tests, adjusted, strict=True)]


def probe_vs_baseline(study: StudyRuns, summary: dict[str, VariantEntry], config: StatisticsConfig
                      ) -> tuple[dict[str, VariantEntry], dict[str, dict[int, dict]], list[ProbeTest]]:
    """The entries with each probed variant's scores and paired test (``segmentation``), the results and the
    tests for the section (one computation per report)."""
    results = probe_results(study)
    tests = probe_tests(study, results, config)
    evidence = _evidence(config)
    family = ProbeFamily(FAMILY.format(evidence=evidence), evidence, len(tests), config.correction, config.alpha)
    out = dict(summary)
    for variant, by_seed in results.items():
        test = next((t for t in tests if t.variant == variant), None)
        out[variant] = dataclasses.replace(summary[variant], segmentation=Segmentation(
            tuple(sorted(by_seed)), tuple(sorted({r["data"] for r in by_seed.values()})), evidence,
            *(Spread.of([r[key] for r in by_seed.values()]) for key in ("miou", "pixel_accuracy", "mean_accuracy")),
            miou_vs_baseline=None if test is None else ProbeRecord(
                study.baseline, test.seeds, test.test.n,
                PairedRecord.of(test.test, test.p_adjusted, _reading(test, config)), family)))
    return out, results, tests


def _reading(t: ProbeTest, config: StatisticsConfig) -> str:
    """The confirmatory verdict (the rule of every confirmatory family), or the exploratory reading."""
    if config.primary != PROBE_MIOU:
        return reading(t, config.alpha)
    return verdict_word(t.test.mean_diff, t.p_adjusted, config.alpha, "miou", config.min_effect)


def probe_section(study: StudyRuns, summary: dict[str, VariantEntry], results: dict[str, dict[int, dict]],
                  tests: list[ProbeTest], config: StatisticsConfig) -> list[Block]:
    """The section: scores per variant beside top-1, the paired tests; nothing when no run was probed."""
    if not results:
        return []
    variants = [v for v in ordered_variants(study) if v in results]
    stats = {v: {k: mean_std([r[k] for r in results[v].values()]) for k in ("miou", "pixel_accuracy")}
             for v in variants}
    top1 = [_top1(summary[v]) for v in variants]
    columns = [pm_column([stats[v][k][:2] for v in variants]) for k in ("miou", "pixel_accuracy")]
    rows = [[v, str(len(results[v])), miou, acc, t1] for v, miou, acc, t1 in zip(variants, *columns, top1, strict=True)]
    any_result = next(iter(next(iter(results.values())).values()))
    options = any_result["options"]
    backbone = "fine-tuned" if options["finetune"] else "frozen"
    return [
        Heading("Dense transfer (segmentation probe)"),
        Paragraph(f"The segmentation probe (docs/dense-tasks.md) of each run's final model on {any_result['data']}: "
                  f"a {options['head']} head on the patch tokens of blocks {options['blocks']}, backbone {backbone}, "
                  f"{options['epochs']} epoch(s), seeded with the run's seed (results in "
                  "runs/*/seed*/analysis/segmentation/results.json); mean ± sample std over seeds. Comparable "
                  "between these variants, not with published leaderboards."),
        Table(["variant", "probed runs", "mIoU (%)", "pixel accuracy (%)", "top-1 (%)"], rows),
        *_test_blocks(tests, study.baseline, config),
    ]


def _top1(entry: VariantEntry) -> str:
    for kind in ("ema", "raw"):
        mean = entry.model_kind(kind).top1_final.mean
        if mean is not None:
            return f"{mean:.2f} ({kind})"
    return NA


def _test_blocks(tests: list[ProbeTest], baseline: str, config: StatisticsConfig) -> list[Block]:
    if not tests:
        return []
    rows = [[t.variant, str(t.test.n), NA if t.test.mean_diff is None else f"{t.test.mean_diff:+.2f}",
             NA if t.test.ci_low is None else f"[{t.test.ci_low:+.2f}, {t.test.ci_high:+.2f}]",
             NA if t.test.p is None else fmt_p(t.test.p, config.alpha),
             NA if t.p_adjusted is None else fmt_p(t.p_adjusted, config.alpha),
             _reading(t, config)] for t in tests]
    primary = config.primary == PROBE_MIOU
    meaning = (f"The confirmatory family (primary metric {PROBE_MIOU}): its verdicts are the headline's, and "
               "classification top-1 is exploratory." if primary else
               "Exploratory: they suggest what to test next and confirm nothing.")
    return [
        Paragraph(f"Paired mIoU difference from {baseline} (variant minus baseline over the seeds both "
                  f"probed, percentage points), {1 - config.alpha:.0%} t-based CI, two-sided paired t-test over "
                  f"seeds; the variants form one family adjusted with {CORRECTION_NAME[config.correction]} at "
                  f"alpha={config.alpha:g}. {meaning}"),
        Table(["variant", "paired seeds", f"mIoU difference vs {baseline}", "CI", "raw p", "adjusted p",
               "verdict" if primary else "exploratory reading"], rows),
    ]

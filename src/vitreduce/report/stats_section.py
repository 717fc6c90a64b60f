"""The report's statistics section: the families and their correction, the seed-level verdicts with what
the seeds could detect, the exploratory families, and the image-level statements about the trained models.

Every sentence is generated from the numbers of vitreduce.statistics.family and vitreduce.statistics.paired.
"""
from __future__ import annotations

from dataclasses import dataclass

from vitreduce.report.render import Block, Bullets, Heading, Paragraph, Table
from vitreduce.report.runs import KIND_TITLE, StudyRuns
from vitreduce.statistics.family import (
    CORRECTION_NAME,
    NOT_TESTABLE,
    SeedResult,
    StatisticsConfig,
    primary_title,
)
from vitreduce.statistics.paired import Comparison
from vitreduce.statistics.power import MAX_SEEDS, describe_detectable
from vitreduce.statistics.pvalue import fmt_p

NA = "n/a"
SHORT_NAME = {"holm": "Holm", "bh": "Benjamini-Hochberg"}
IMAGE_LEVEL = "statements about these trained models on this test set, not verdicts on the variant"


@dataclass(frozen=True)
class StatsSettings:
    """How the statistics were computed, stated in the report's text."""

    config: StatisticsConfig  # primary resolved
    primary_source: str  # "the default", "the study spec" or "--primary"
    n_resamples: int
    bootstrap_seed: int


def _p(p: float | None, alpha: float) -> str:
    return NA if p is None else fmt_p(p, alpha)


def _ci(r: SeedResult) -> str:
    t = r.test
    return NA if t.ci_low is None else f"[{t.ci_low:+.2f}, {t.ci_high:+.2f}]"


def _diff(r: SeedResult) -> str:
    return NA if r.test.mean_diff is None else f"{r.test.mean_diff:+.2f}"


def _seeds_needed(r: SeedResult) -> str:
    d = r.detectable
    if d.reason is not None:
        return NA
    return f"> {MAX_SEEDS:,}" if d.more_than_max else str(d.seeds_needed)


def _lead(results: list[SeedResult], settings: StatsSettings) -> str:
    c = settings.config
    first = next((r.family for r in results if r.family.evidence == "confirmatory"), None)
    what = primary_title(c.primary, "ema" if first is None else first.kind)  # the probed model's kind where probed
    size = sum(r.family.evidence == "confirmatory" for r in results)
    return (f"Confirmatory family: the {size} comparison(s) of each variant with the baseline on "
            f"{what} (primary metric {c.primary}, "
            f"{settings.primary_source}), "
            f"{CORRECTION_NAME[c.correction]} correction at alpha={c.alpha:g}. Only the seed-level paired t-test "
            "decides a verdict, on its adjusted p: better, worse, or no evidence of a difference. Every other metric "
            "and model kind is exploratory, adjusted within its own family. Differences are variant minus baseline, "
            "in percentage points.")


def statistics_blocks(study: StudyRuns, comparisons: list[Comparison], results: list[SeedResult],
                      settings: StatsSettings) -> list[Block]:
    blocks: list[Block] = [Heading(f"Statistics against the baseline ({study.baseline})")]
    if study.baseline not in study.variants or not comparisons:
        return [*blocks, Paragraph(f"The baseline {study.baseline} has no finished runs, or no other variant has: "
                                   "no comparisons.")]
    return [*blocks, Paragraph(_lead(results, settings)), *_seed_level(results, settings),
            Paragraph("The image-level tests (per seed and pooled) are in the appendix.")]


def image_level_blocks(study: StudyRuns, comparisons: list[Comparison], settings: StatsSettings) -> list[Block]:
    """The appendix's image-level tables: statements about these trained models, one table per comparison."""
    if study.baseline not in study.variants or not comparisons:
        return []
    blocks: list[Block] = [Heading(f"Image level: {IMAGE_LEVEL}", level=3), Paragraph(image_level_method(settings))]
    for c in comparisons:
        blocks += _image_level(c, settings.config.alpha)
    return blocks


def _seed_level(results: list[SeedResult], settings: StatsSettings) -> list[Block]:
    c = settings.config
    confirmatory = [r for r in results if r.family.evidence == "confirmatory"]
    exploratory = [r for r in results if r.family.evidence == "exploratory"]
    if not confirmatory:  # primary probe_miou, and no variant's probe pairs with the baseline's
        return [Paragraph("No variant has a primary-metric result on seeds the baseline shares: no verdicts."),
                *_exploratory_blocks(exploratory, c)]
    first = confirmatory[0].family
    level = f"{1 - c.alpha:.0%}"
    conf = f"{level} CI (pp)"
    blocks: list[Block] = [
        Heading("Seed level: does the difference survive retraining?", level=3),
        Paragraph(f"Paired t-test over seeds (runs paired by seed, two-sided) with the t-based {level} interval of "
                  f"the mean difference (unadjusted); raw p and {SHORT_NAME[c.correction]}-adjusted p side by side. "
                  "Detectable: the smallest true difference this t-test would find with 80% power, from the "
                  "observed seed-to-seed sd of the paired differences and n, at the family's first-rank level "
                  f"alpha/m = {first.alpha:g}/"
                  f"{first.size} = {first.first_rank_alpha:.3g} (the level its smallest p must clear); seeds needed: "
                  f"paired seeds to detect {c.effect:+.2f} pp at that sd and level. Both take the observed sd as "
                  "the true one."),
        Table(["variant", "n", "difference (pp)", conf, "raw p", "adjusted p", "verdict",
               "detectable at 80% power (pp)", f"seeds for {c.effect:+.2f} pp"],
              [[r.variant, str(r.test.n), _diff(r), _ci(r), _p(r.test.p, c.alpha), _p(r.p_adjusted, c.alpha),
                r.verdict,
                NA if r.detectable.min_effect is None else f"{r.detectable.min_effect:.2f}", _seeds_needed(r)]
               for r in confirmatory]),
    ]
    notes = [f"{r.variant}: {r.test.warning}" for r in confirmatory if r.test.warning]
    notes += [f"{r.variant}: detectable effect {describe_detectable(r.detectable)}" for r in confirmatory
              if r.detectable.reason is not None]
    if notes:
        blocks.append(Bullets(notes))
    return [*blocks, *_exploratory_blocks(exploratory, c)]


def _exploratory_blocks(exploratory: list[SeedResult], c: StatisticsConfig) -> list[Block]:
    conf = f"{1 - c.alpha:.0%} CI (pp)"
    blocks: list[Block] = []
    if exploratory:
        blocks += [
            Heading("Seed level, exploratory families (not confirmatory)", level=3),
            Paragraph(f"Each family (model kind x metric) adjusted on its own ({SHORT_NAME[c.correction]}); "
                      "peak-to-final: lower is better. A reading here suggests what to test in a new study; it is "
                      "not a result."),
            Table(["family", "variant", "n", "difference (pp)", conf, "raw p", "adjusted p", "reading"],
                  [[r.family.name.removeprefix("exploratory: "), r.variant, str(r.test.n), _diff(r), _ci(r),
                    _p(r.test.p, c.alpha), _p(r.p_adjusted, c.alpha),
                    r.verdict if r.verdict == NOT_TESTABLE else f"{r.verdict} (exploratory)"] for r in exploratory]),
        ]
    return blocks


def _image_level(c: Comparison, alpha: float) -> list[Block]:
    blocks: list[Block] = []
    for kind, kc in c.kinds.items():
        blocks.append(Heading(f"{c.variant} vs {c.baseline}, {KIND_TITLE[kind]} (image level)", level=3))
        tests = [*kc.per_seed, *([kc.pooled] if kc.pooled else [])]
        if tests:
            rows = [[pt.label, f"{pt.bootstrap.n_images:,}", str(pt.bootstrap.n_seeds), f"{pt.top1_base:.2f}",
                     f"{pt.top1_variant:.2f}", f"{pt.bootstrap.diff:+.2f}",
                     f"[{pt.bootstrap.low:+.2f}, {pt.bootstrap.high:+.2f}]",
                     f"{pt.mcnemar.base_only:,} / {pt.mcnemar.variant_only:,}", fmt_p(pt.mcnemar.p, alpha),
                     _image_reading(pt, alpha)] for pt in tests]
            level = f"{tests[0].bootstrap.confidence:.0%}"
            blocks.append(Table(["predictions", "images", "seeds", f"{c.baseline} top-1", f"{c.variant} top-1",
                                 "difference (pp)", f"bootstrap {level} CI (pp)",
                                 "discordant (baseline only / variant only)", "McNemar p (unadjusted)",
                                 "these trained models on this test set"], rows))
        else:
            blocks.append(Paragraph("No image-level tests: no pair of runs with predictions.csv for this model."))
        if kc.notes:
            blocks.append(Bullets(kc.notes))
    return blocks


def _image_reading(pt, alpha: float) -> str:
    """One reading per row from both tests (the column header says what they are about)."""
    ci, mc = pt.bootstrap.low > 0 or pt.bootstrap.high < 0, pt.mcnemar.p < alpha
    if ci and mc:
        return "differ (CI excludes 0, p < alpha)"
    if ci or mc:
        return "CI excludes 0, McNemar does not reject" if ci else "McNemar rejects, CI includes 0"
    return "no difference shown"


def image_level_method(settings: StatsSettings) -> str:
    """The image-level paragraph: which tests, and what they cover."""
    return (f"Per seed, the paired percentile bootstrap over images ({settings.n_resamples} resamples, "
            f"seed {settings.bootstrap_seed}) and McNemar's exact test; pooled over seeds, the same bootstrap "
            "resampling images with every seed's outcomes on an image together, and the clustered McNemar test "
            "(Durkalski et al. 2003, clusters = images). They say whether these trained models differ on this "
            "test set, not whether a difference survives retraining: they decide no verdict, and their p-values "
            "are not adjusted.")

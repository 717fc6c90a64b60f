"""The study report: report.md, report.html, summary.json and figures/*.png of a study directory.

`write_report(study_dir)` is the entry point (the study runner calls it at the end of a study);
`format_results_table(summary)` is the results table as text for the terminal. Both are pure functions
of the run directories (docs/run-directory.md); the figures are defined in docs/metrics.md. This module
formats the numbers and lays out the document; vitreduce.report.figures draws, vitreduce.report.render
turns the document into markdown and HTML.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from vitreduce.console import text_table
from vitreduce.errors import VitreduceError
from vitreduce.files import write_bytes
from vitreduce.numbers import format_macs, macs_unit
from vitreduce.report.compare import compare_to_baseline
from vitreduce.report.figures import write_figures
from vitreduce.report.flat import RESULTS_CSV, write_results_csv
from vitreduce.report.formatting import pm_column as _pm_column
from vitreduce.report.formatting import variant_label
from vitreduce.report.headline import headline, headline_table
from vitreduce.report.pareto_section import pareto_section
from vitreduce.report.probe_section import ProbeTest, probe_section, probe_vs_baseline, probed_kind
from vitreduce.report.records import StudyResults, Throughput, VariantEntry, VsBaseline
from vitreduce.report.render import Block, Heading, Image, Paragraph, Table, render_html, render_markdown
from vitreduce.report.runs import (
    DEFAULT_SPIKE_THRESHOLD,
    DEFAULT_SPIKE_WINDOW,
    DEFAULT_STEP_SPIKE_WINDOW,
    DEFAULT_STEP_SPIKE_Z,
    KIND_TITLE,
    MODEL_KINDS,
    LabelsOf,
    ModelKind,
    StudyRuns,
    load_study,
    summarize_study,
)
from vitreduce.report.runs_section import ReportSettings, runs_section, stability_section
from vitreduce.report.sharpness_paired import sharpness_tests, sharpness_vs_baseline
from vitreduce.report.sharpness_section import sharpness_section
from vitreduce.report.stability import divergence_tests
from vitreduce.report.stats_section import IMAGE_LEVEL, StatsSettings, image_level_blocks, statistics_blocks
from vitreduce.report.summary_file import Summary, summary_text
from vitreduce.statistics.family import PROBE_MIOU, SeedResult, StatisticsConfig, resolve_primary, seed_level
from vitreduce.statistics.paired import DEFAULT_BOOTSTRAP_SEED, DEFAULT_RESAMPLES, Comparison

NA = "n/a"


@dataclass(frozen=True)
class ReportPaths:
    markdown: Path
    html: Path
    summary_json: Path
    figures: list[Path]
    document: Summary  # what summary.json holds, as records

    @property
    def summary(self) -> dict[str, VariantEntry]:
        """summary.json's variants (format_results_table takes them)."""
        return self.document.variants


def read_throughput(study_dir: Path) -> dict | None:
    """STUDY_DIR/throughput.json ({variant: {"infer_img_s": float}}), written by the profiler; None if absent."""
    path = Path(study_dir) / "throughput.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise VitreduceError(f"{path} is not valid JSON ({err}); rewrite or delete it") from err
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise VitreduceError(f'{path} must map each variant to {{"infer_img_s": <float>}}')
    return data


# ---------------------------------------------------------------------------------------------------
# Numbers and tables (shared by the terminal, markdown and html)


def _num(x, digits: int = 2) -> str:
    return NA if x is None else f"{x:.{digits}f}"


def _throughput(t: Throughput | None) -> str:
    """median [min-max] img/s of throughput.json."""
    if t is None:
        return NA
    spread = "" if t.min is None or t.max is None else f" [{t.min:,.0f}-{t.max:,.0f}]"
    return f"{t.median:,.0f}{spread} img/s"


def _ratio(t: Throughput | None, unnamed: tuple[str | None, ...] = ()) -> str:
    """The throughput ratio to the baseline of the same base model, given only where the [min, max] ranges do not
    overlap; the variant it is against is named unless it is one of ``unnamed`` (the study's baseline, itself)."""
    if t is None:
        return NA
    against = f" vs {t.ratio_against}" if t.ratio_against not in (None, *unnamed) else ""
    return (f"{t.ratio_to_baseline:.2f}x" if t.ratio_to_baseline is not None
            else f"{NA} ({t.ratio_basis})") + against


def _count(x) -> str:
    if isinstance(x, list):  # one MLP width per stage (Swin)
        return "/".join(_count(v) for v in x)
    return NA if x is None else f"{x:,}"


def results_table(summary: dict[str, VariantEntry], kind: ModelKind) -> tuple[list[str], list[list[str]]]:
    """The paper's results table for one model kind: mean ± std (ddof=1) over n seeds."""
    headers = ["variant", "n", "params", "top-1 final", "top-5 final", "top-1 peak", "peak epoch",
               "peak-to-final", "throughput", "throughput vs baseline"]
    spreads = [(k.top1_final, k.top5_final, k.top1_peak, k.peak_epoch, k.p2f)
               for k in (e.model_kind(kind) for e in summary.values())]
    columns = [_pm_column([(row[j].mean, row[j].std) for row in spreads], digits=0 if j == 3 else 2)
               for j in range(5)]  # j = 3: the peak epoch, a whole number
    baseline = next((name for name, e in summary.items() if e.baseline), None)
    rows = [[variant_label(name, e), str(e.model_kind(kind).n), NA if e.params is None else f"{e.params / 1e6:.2f}M",
             *(column[i] for column in columns), _throughput(e.throughput), _ratio(e.throughput, (baseline, name))]
            for i, (name, e) in enumerate(summary.items())]
    return headers, rows


def architecture_table(summary: dict[str, VariantEntry]) -> tuple[list[str], list[list[str]]]:
    divisor, unit = macs_unit(e.macs_total for e in summary.values())
    headers = ["variant", "reduction", "params", "MLP params", "unique MLPs", f"{unit} (linear)",
               f"{unit} (incl. attention)", "MLP hidden", "expansion"]
    rows = [[variant_label(name, e), e.reduction or NA, _count(e.params), _count(e.mlp_params),
             _count(e.unique_mlps), format_macs(e.macs_linear, divisor), format_macs(e.macs_total, divisor),
             _count(e.mlp_hidden), _num(e.expansion)] for name, e in summary.items()]
    return headers, rows


def _throughput_note(summary: dict[str, VariantEntry]) -> str:
    """What the throughput columns are and the conditions they were measured under."""
    measured = {name: e.throughput for name, e in summary.items() if e.throughput}
    conditions = sorted({f"device {t.device or NA}, batch {t.batch_size or NA}, precision "
                         f"{t.precision or NA}" for t in measured.values()})
    return ("Throughput: inference images/s from throughput.json (vitreduce profile), median [min-max] over "
            "its timed repeats; n/a where absent. The ratio to the baseline's median is given only where the "
            "two [min-max] ranges do not overlap; overlapping ranges cannot tell the variants apart. Each "
            "variant is compared with the baseline of its own base model: the study's baseline, else that "
            "model's unreduced variant (named after the ratio); n/a without one."
            + (f" Measured with {'; '.join(conditions)}." if conditions else ""))


def _kinds_present(summary: dict[str, VariantEntry]) -> list[str]:
    """The model kinds some run has, EMA first (the paper reports the EMA model)."""
    present = [k for k in MODEL_KINDS if any(e.model_kind(k).n for e in summary.values())]
    return sorted(present, key=lambda k: k != "ema")


def format_results_table(summary: dict[str, VariantEntry]) -> str:
    """The results table(s) as plain text: one block per model kind present (EMA first)."""
    blocks = []
    for kind in _kinds_present(summary):
        blocks.append(f"{KIND_TITLE[kind]} (mean ± std over n seeds, std ddof=1; top-1/top-5 of the last epoch)\n"
                      + text_table(*results_table(summary, kind)))
    return "\n\n".join(blocks)


# ---------------------------------------------------------------------------------------------------
# The document


# The figure shown beside the headline, the first one written: the per-seed final top-1, else the curves.
SUMMARY_FIGURES = ("final_top1.png", "top1_vs_epoch.png")


def _document(study: StudyRuns, summary: dict[str, VariantEntry], comparisons: list[Comparison],
              results: list[SeedResult], figures: list[tuple[str, str]], settings: ReportSettings, sentences: list[str],
              paired_sharpness: list | None = None) -> list[Block]:
    """Title, context, the headline (sentences, one figure, one table); the sections; the appendix last."""
    lead = next((f for name in SUMMARY_FIGURES for f in figures if f[0].endswith("/" + name)), None)
    lead = None if settings.stats.config.primary == PROBE_MIOU else lead  # they draw top-1, not the primary mIoU
    return [
        Heading(f"Study report: {study.name}", level=1),
        Paragraph(f"Study directory {study.study_dir}; baseline variant: {study.baseline}. "
                  "Every figure is defined in docs/metrics.md. Top-1 and top-5 are of the last evaluated "
                  "epoch; mean ± sample std (ddof=1) over seeds, std left out where n=1."),
        Heading("Headline"),
        Paragraph(" ".join(sentences)),
        *([Image(*lead)] if lead else []),
        Table(*headline_table(summary, study.baseline, settings.stats.config.primary)),
        *runs_section(study, summary),
        *_results_sections(summary),
        *stability_section(study, summary, settings),
        *statistics_blocks(study, comparisons, results, settings.stats),
        *sharpness_section(study, settings.stats.config, paired_sharpness),
        Heading("Figures"),
        *(Image(src, caption) for src, caption in figures if (src, caption) != lead),
        Heading("Appendix"),
        Paragraph("Per-seed and per-image detail; summary.json holds every number."),
        *image_level_blocks(study, comparisons, settings.stats),
    ]


def _results_sections(summary: dict[str, VariantEntry]) -> list[Block]:
    blocks: list[Block] = []
    for kind in _kinds_present(summary):
        blocks += [Heading(f"Results, {KIND_TITLE[kind]}"), Table(*results_table(summary, kind))]
    return [*blocks,
            Paragraph(_throughput_note(summary)),
            Heading("Architecture"), Table(*architecture_table(summary))]


# ---------------------------------------------------------------------------------------------------
# Writing the report


def _compare(study: StudyRuns, summary: dict[str, VariantEntry], settings: StatsSettings, probe: list[ProbeTest],
             probe_kind: str) -> tuple[dict[str, VariantEntry], list[Comparison], list[SeedResult]]:
    """Every variant against the baseline, and the families' results; each goes into its entry (``vs_baseline``).
    ``probe``: the segmentation probe's mIoU tests, a family here only when they are the primary metric."""
    if study.baseline not in study.variants:
        return summary, [], []
    cfg = settings.config
    comparisons = [compare_to_baseline(variant, runs, study.baseline, study.variants[study.baseline], alpha=cfg.alpha,
                                       n_resamples=settings.n_resamples, seed=settings.bootstrap_seed)
                   for variant, runs in study.variants.items() if variant != study.baseline]
    miou = [(t.variant, t.test) for t in probe] if cfg.primary == PROBE_MIOU else []
    results = seed_level(comparisons, cfg, miou, probe_kind)
    out = dict(summary)
    for c in comparisons:
        out[c.variant] = dataclasses.replace(summary[c.variant], vs_baseline=VsBaseline(
            c.baseline, c.alpha, tuple(c.seeds), cfg.primary, cfg.correction, cfg.effect,
            tuple(r for r in results if r.variant == c.variant), IMAGE_LEVEL, c.kinds["raw"], c.kinds.get("ema")))
    return out, comparisons, results


def _stats_settings(study: StudyRuns, alpha: float | None, correction: str | None, primary: str | None,
                    effect: float | None, n_resamples: int, bootstrap_seed: int) -> StatsSettings:
    """study.yaml's `statistics:` with the arguments on top, checked before any work; primary resolved."""
    given = {k: v for k, v in (("alpha", alpha), ("correction", correction), ("primary", primary),
                               ("effect", effect)) if v is not None}
    try:
        from_spec = StatisticsConfig.model_validate(study.statistics or {}).model_dump(exclude_unset=True)
        config = StatisticsConfig.model_validate({**from_spec, **given})
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise VitreduceError(f"statistics settings for {study.study_dir} (study.yaml's statistics: section and the "
                             f"report options --alpha/--correction/--primary/--effect): {problems}") from None
    source = "named by --primary" if primary else "named by the study spec" if config.primary else "the default"
    has_base = study.baseline in study.variants
    kinds = [_kinds(study, v) for v in study.variants if v != study.baseline] if has_base else []
    config = config.model_copy(update={"primary": resolve_primary(config.primary, kinds)})
    return StatsSettings(config, source, n_resamples, bootstrap_seed)


def _kinds(study: StudyRuns, variant: str) -> set[str]:
    """The model kinds a comparison of `variant` with the baseline will have (EMA where both have one)."""
    base = {r.seed: r for r in study.variants[study.baseline]}
    pairs = [(base[r.seed], r) for r in study.variants[variant] if r.seed in base]
    return {"raw"} | ({"ema"} if any(b.ema is not None and v.ema is not None for b, v in pairs) else set())


MAX_RESAMPLES = 100_000  # the bootstrap's draws are held in memory, and the Pareto fit loops over them


def _check_options(study_dir: Path, n_resamples: int, bootstrap_seed: int) -> None:
    """Refuse what would fail (or run for hours) halfway, before anything is read or written."""
    if not 1 <= n_resamples <= MAX_RESAMPLES:
        raise VitreduceError(f"--resamples must be in [1, {MAX_RESAMPLES:,}], got {n_resamples:,} (2,000 is the "
                             "default; more only narrows the Monte Carlo error of an interval's ends)")
    if not 0 <= bootstrap_seed < 2**63:
        raise VitreduceError(f"--bootstrap-seed must be an integer in [0, 2^63), got {bootstrap_seed}")
    if (study_dir / "figures").exists() and not (study_dir / "figures").is_dir():
        raise VitreduceError(f"{study_dir / 'figures'} is not a folder; the report writes its figures there: move "
                             "or remove that file")
    for name in ("report.md", "report.html", "summary.json", "results.csv"):
        if (study_dir / name).is_dir():
            raise VitreduceError(f"{study_dir / name} is a folder; the report writes that file: move or remove it")


def write_report(study_dir: Path | str, baseline: str | None = None, *, alpha: float | None = None,
                 correction: str | None = None, primary: str | None = None, effect: float | None = None,
                 n_resamples: int = DEFAULT_RESAMPLES, bootstrap_seed: int = DEFAULT_BOOTSTRAP_SEED,
                 include_unfinished: bool = False, spike_window: int = DEFAULT_SPIKE_WINDOW,
                 spike_threshold: float = DEFAULT_SPIKE_THRESHOLD, step_spike_window: int = DEFAULT_STEP_SPIKE_WINDOW,
                 step_spike_z: float = DEFAULT_STEP_SPIKE_Z, labels_of: LabelsOf | None = None) -> ReportPaths:
    """Write summary.json, figures/*.png, report.md and report.html into `study_dir` (atomically).

    alpha, correction ("holm" or "bh"), primary (e.g. "ema_top1_final") and effect (pp) default to
    study.yaml's `statistics:` section, else 0.05, Holm, EMA final top-1 (raw without an EMA), +0.42.
    step_spike_window and step_spike_z define the spikes of logged steps (docs/metrics.md); labels_of names a
    sweep's variants (vitreduce.study.write_report passes the spec's).
    """
    study_dir = Path(study_dir)
    _check_options(study_dir, n_resamples, bootstrap_seed)
    study = load_study(study_dir, baseline=baseline, include_unfinished=include_unfinished,
                       spike_window=spike_window, spike_threshold=spike_threshold,
                       step_spike_window=step_spike_window, step_spike_z=step_spike_z, labels_of=labels_of)
    settings = ReportSettings(_stats_settings(study, alpha, correction, primary, effect, n_resamples, bootstrap_seed),
                         spike_window, spike_threshold, step_spike_window, step_spike_z)
    cfg = settings.stats.config
    probe_kind = probed_kind(study, cfg)  # refuses primary probe_miou for a study that probes nothing
    summary = divergence_tests(summarize_study(study, read_throughput(study_dir)), study.baseline, cfg.alpha)
    summary, probed, probe_tests = probe_vs_baseline(study, summary, cfg)  # the segmentation probe, where analysed
    summary, comparisons, results = _compare(study, summary, settings.stats, probe_tests, probe_kind)
    paired = sharpness_tests(study, cfg)  # the table, the figure and summary.json
    summary = sharpness_vs_baseline(summary, paired, study.baseline, cfg)
    fig_dir = study_dir / "figures"
    figures = write_figures(study, summary, fig_dir, paired)
    sentences = headline(summary, study.baseline, cfg.primary)
    blocks = _document(study, summary, comparisons, results,
                       [(f"figures/{name}", caption) for name, caption in figures], settings, sentences, paired)
    section, pareto = pareto_section(study, summary, fig_dir, alpha=cfg.alpha, margin=cfg.margin,
                                     n_resamples=n_resamples, seed=bootstrap_seed)
    blocks[blocks.index(Heading("Figures")):blocks.index(Heading("Figures"))] = section  # before the figures
    at = blocks.index(Heading("Figures"))
    blocks[at:at] = probe_section(study, summary, probed, probe_tests, cfg)
    blocks.append(Paragraph(f"Every number of this report, unformatted: summary.json, and {RESULTS_CSV} (one row per "
                            "variant and model, columns in docs/metrics.md) for your own tables and plots."))
    paths = ReportPaths(markdown=study_dir / "report.md", html=study_dir / "report.html",
                        summary_json=study_dir / "summary.json", figures=[fig_dir / n for n, _ in figures] +
                        [study_dir / b.src for b in section if isinstance(b, Image)],
                        document=Summary(StudyResults(study.name, study.baseline, cfg.primary, pareto), summary))
    write_bytes(paths.summary_json, summary_text(paths.document).encode())
    write_results_csv(study_dir, summary)
    write_bytes(paths.markdown, render_markdown(blocks).encode())
    write_bytes(paths.html, render_html(blocks, f"vitreduce study report: {study.name}", base=study_dir).encode())
    return paths

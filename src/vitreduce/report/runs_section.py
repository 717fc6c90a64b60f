"""The report's sections on the runs themselves: what became of each run (Runs) and how stably they trained
(divergence, loss spikes of epochs and of logged steps)."""
from __future__ import annotations

from dataclasses import dataclass

from vitreduce.report.formatting import NA, variant_label
from vitreduce.report.formatting import pm as _pm
from vitreduce.report.records import VariantEntry
from vitreduce.report.render import Block, Bullets, Heading, Paragraph, Table
from vitreduce.report.runs import StudyRuns
from vitreduce.report.spikes import DEFAULT_STEP_SPIKE_WINDOW, DEFAULT_STEP_SPIKE_Z
from vitreduce.report.stability import DIVERGENCE_TEST
from vitreduce.report.stats_section import StatsSettings
from vitreduce.statistics.pvalue import fmt_p


@dataclass(frozen=True)
class ReportSettings:
    """How the report was computed, stated in its text."""

    stats: StatsSettings
    spike_window: int
    spike_threshold: float
    step_spike_window: int = DEFAULT_STEP_SPIKE_WINDOW
    step_spike_z: float = DEFAULT_STEP_SPIKE_Z


def runs_section(study: StudyRuns, summary: dict[str, VariantEntry]) -> list[Block]:
    """Every run of the study with its outcome: the counts per variant, then each run no figure counts."""
    rows = []
    for v, e in summary.items():
        o, vs = e.outcomes, e.vs_baseline
        paired = "(baseline)" if e.baseline else NA if vs is None else str(len(vs.seeds))
        rows.append([variant_label(v, e), str(o.listed), str(o.finished), str(o.diverged), str(o.unfinished),
                     str(o.unreadable), str(e.n), paired,
                     ", ".join(map(str, e.seeds)) or "none"])
    blocks: list[Block] = [
        Heading("Runs"),
        Paragraph("Every run of the study and what became of it. n: the runs every mean, sd and figure is over "
                  "(finished" + (", and unfinished ones as far as they got" if any(
                      e.unfinished_included for e in summary.values()) else "") + "); paired: the seeds the "
                  "paired tests use (n of the variant's seeds that the baseline also has). A diverged run (a "
                  "loss or accuracy that is not finite) has no final accuracy and counts only in the stability "
                  "outcome; unfinished and unreadable runs count nowhere."),
        Table(["variant", "listed", "finished", "diverged", "unfinished", "unreadable", "n", "paired", "seeds in n"],
              rows),
    ]
    if study.excluded:
        blocks.append(Paragraph("Runs left out of n:"))
        blocks.append(Bullets([f"{v}: {_run_name(study, r)}: {_why_excluded(r)}" for v, r in study.excluded]))
    if study.unlisted:
        blocks.append(Paragraph(f"Run folders of variants study.yaml does not name, not reported: "
                                f"{', '.join(study.unlisted)}."))
    return blocks


def _run_name(study: StudyRuns, run) -> str:
    return str(run.run_dir.relative_to(study.study_dir))


def _why_excluded(run) -> str:
    o = run.outcome
    if o.status == "unfinished" and run.run_dir.is_dir():
        hint = "; vitreduce report --include-unfinished reports it as far as it got"
        return f"unfinished (epoch {run.epochs_logged} of {run.epochs_planned or '?'}, no done.json){hint}"
    if o.status == "unreadable":
        return f"unreadable: {o.file}: {o.detail}"
    return f"{o.status}: {o.detail}"


def stability_section(study: StudyRuns, summary: dict[str, VariantEntry], settings: ReportSettings) -> list[Block]:
    rows = [[variant_label(v, summary[v]), str(len(runs)),
             _pm(summary[v].loss_spikes.mean, summary[v].loss_spikes.std, 1),
             "; ".join(f"seed {r.seed}: {list(r.loss_spike_epochs) or 'none'}" for r in runs)]
            for v, runs in study.variants.items()]
    return [
        Heading("Training stability"),
        *_divergence_blocks(summary, settings.stats.config.alpha),
        Paragraph(f"Loss spike: an epoch whose train loss is not finite or exceeds {1 + settings.spike_threshold:g} "
                  f"x the minimum train loss of the previous {settings.spike_window} logged epochs."),
        Table(["variant", "n", "loss spikes per run", "spike epochs"], rows),
        *_step_spike_blocks(study, summary, settings),
    ]


def _divergence_blocks(summary: dict[str, VariantEntry], alpha: float) -> list[Block]:
    """Divergence per variant, with Fisher's exact test against the baseline (Holm across the variants)."""
    rows = []
    for v, e in summary.items():
        d = e.outcomes.divergence
        vs = d.vs_baseline
        rows.append([variant_label(v, e), f"{d.diverged} of {d.of}",
                     ", ".join(f"seed {s}: epoch {x}" for s, x in zip(d.seeds, d.epochs, strict=True)) or "none",
                     NA if vs is None else fmt_p(vs.p, alpha), NA if vs is None else fmt_p(vs.p_adjusted, alpha),
                     "" if vs is None else "differs" if vs.differs else "no evidence of a difference"])
    return [Paragraph("Divergence: a run whose train loss, or an evaluated model's loss, top-1 or top-5, is not finite "
                      "at some epoch; counted over the runs that finished or diverged. Exploratory family: "
                      f"{DIVERGENCE_TEST}, at alpha={alpha:g}."),
            Table(["variant", "diverged", "where", "raw p", "adjusted p", "reading"], rows)]


def _step_spike_blocks(study: StudyRuns, summary: dict[str, VariantEntry], settings: ReportSettings) -> list[Block]:
    """Spikes of the logged steps (steps.jsonl); nothing when no run has one (older runs report as before)."""
    if not any(r.steps for runs in study.variants.values() for r in runs):
        return []
    rows = [[variant_label(v, summary[v]), str(sum(bool(r.steps) for r in runs)),
             _pm(summary[v].step_spikes.mean, summary[v].step_spikes.std, 1),
             "; ".join(f"seed {r.seed}: " + ("no steps.jsonl" if r.step_spike_steps is None else
                                              str(list(r.step_spike_steps)) if r.step_spike_steps else "none")
                       for r in runs)] for v, runs in study.variants.items()]
    return [
        Paragraph(f"Step-level loss spike (steps.jsonl, every logging.step_every optimizer steps): a logged step "
                  f"whose loss is not finite, or exceeds the median of the previous {settings.step_spike_window} "
                  f"finite logged losses by more than {settings.step_spike_z:g} x 1.4826 x their median absolute "
                  "deviation (a robust z-score). Runs without steps.jsonl are left out of the mean."),
        Table(["variant", "runs with steps", "step spikes per run", "spike steps"], rows),
    ]

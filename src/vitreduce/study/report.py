"""The study report: report.md, report.html, summary.json and figures/*.png of a study directory.

`write_report(study_dir)` is the entry point (the study runner calls it at the end of a study);
`format_results_table(summary)` is the results table as text for the terminal. Both are pure functions
of the run directories (docs/run-directory.md); the figures are defined in docs/metrics.md.
"""
from __future__ import annotations

import dataclasses
import html
import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitreduce.errors import VitreduceError
from vitreduce.files import atomic_write
from vitreduce.study.report_sharpness import sharpness_figures, sharpness_headers, sharpness_rows
from vitreduce.study.runs import (
    DEFAULT_SPIKE_THRESHOLD,
    DEFAULT_SPIKE_WINDOW,
    MODEL_KINDS,
    RunMetrics,
    StudyRuns,
    load_study,
    summarize_study,
)
from vitreduce.study.stats import (
    DEFAULT_ALPHA,
    DEFAULT_BOOTSTRAP_SEED,
    DEFAULT_RESAMPLES,
    Comparison,
    compare_to_baseline,
    verdict_bootstrap,
    verdict_mcnemar,
    verdict_ttest,
)

KIND_TITLE = {"raw": "raw model", "ema": "EMA model"}
NA = "n/a"


@dataclass(frozen=True)
class ReportPaths:
    markdown: Path
    html: Path
    summary_json: Path
    figures: list[Path]
    summary: dict  # the content of summary.json, for format_results_table


# ---------------------------------------------------------------------------------------------------
# Files


def _write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def _save_png(fig, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


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
# Tables (shared by the terminal, markdown and html)


def _num(x, digits: int = 2) -> str:
    return NA if x is None else f"{x:.{digits}f}"


def _pm(mean, std, digits: int = 2) -> str:
    """mean ± sample std; the std is left out where undefined (n = 1)."""
    if mean is None:
        return NA
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _gmacs(x) -> str:
    """Two decimals like the paper (16.85), but never a bare 0.00 for a tiny model: 3 significant digits."""
    if x is None:
        return NA
    return f"{x:.2f}" if abs(x) >= 1 else f"{x:.3g}"


def _count(x) -> str:
    return NA if x is None else f"{x:,}"


def _variant_label(name: str, entry: dict) -> str:
    return f"{name} (baseline)" if entry.get("baseline") else name


def results_table(summary: dict, kind: str) -> tuple[list[str], list[list[str]]]:
    """The paper's results table for one model kind: mean ± std (ddof=1) over n seeds."""
    headers = ["variant", "n", "params", "top-1 final", "top-5 final", "top-1 peak", "peak epoch",
               "peak-to-final", "throughput"]
    rows = []
    for name, e in summary.items():
        k = e[kind]
        tput = e.get("throughput_img_s")
        rows.append([
            _variant_label(name, e), str(k["n"]), NA if e["params"] is None else f"{e['params'] / 1e6:.2f}M",
            _pm(k["top1_final_mean"], k["top1_final_std"]), _pm(k["top5_final_mean"], k["top5_final_std"]),
            _pm(k["top1_peak_mean"], k["top1_peak_std"]), _pm(k["peak_epoch_mean"], k["peak_epoch_std"], 0),
            _pm(k["p2f_mean"], k["p2f_std"]), NA if tput is None else f"{tput:,.0f} img/s",
        ])
    return headers, rows


def architecture_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    headers = ["variant", "reduction", "params", "MLP params", "unique MLPs", "GMACs (linear)",
               "GMACs (incl. attention)", "MLP hidden", "expansion"]
    rows = [[_variant_label(name, e), e.get("reduction") or NA, _count(e["params"]), _count(e["mlp_params"]),
             _count(e["unique_mlps"]), _gmacs(e["macs_linear_g"]), _gmacs(e["macs_total_g"]), _count(e["mlp_hidden"]),
             _num(e["expansion"])] for name, e in summary.items()]
    return headers, rows


def _kinds_present(summary: dict) -> list[str]:
    return [k for k in MODEL_KINDS if any(e[k]["n"] for e in summary.values())]


def _text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def format_results_table(summary: dict) -> str:
    """The results table(s) as plain text: one block per model kind present (EMA first)."""
    blocks = []
    for kind in sorted(_kinds_present(summary), key=lambda k: k != "ema"):
        blocks.append(f"{KIND_TITLE[kind]} (mean ± std over n seeds, std ddof=1; top-1/top-5 of the last epoch)\n"
                      + _text_table(*results_table(summary, kind)))
    return "\n\n".join(blocks)


# ---------------------------------------------------------------------------------------------------
# Figures (matplotlib's Figure renders PNG with Agg; pyplot and its global state are not used)


def _band(runs: Sequence[RunMetrics], series: Callable[[RunMetrics], tuple | None]):
    """Per epoch over the runs that reached it: epochs, mean, min, max."""
    by_epoch: dict[int, list[float]] = defaultdict(list)
    for run in runs:
        s = series(run)
        if s is not None:
            for epoch, value in zip(*s, strict=True):
                by_epoch[epoch].append(value)
    epochs = sorted(by_epoch)
    vals = [by_epoch[e] for e in epochs]
    return (np.array(epochs), np.array([np.mean(v) for v in vals]), np.array([min(v) for v in vals]),
            np.array([max(v) for v in vals]))


def _top1_series(kind: str):
    def series(run: RunMetrics):
        m = run.model(kind)
        return None if m is None else (m.epochs, m.top1)
    return series


def _fig_top1(study: StudyRuns, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, kind in zip(axes, MODEL_KINDS, strict=True):
        drawn = False
        for i, (variant, runs) in enumerate(study.variants.items()):
            epochs, mean, lo, hi = _band(runs, _top1_series(kind))
            if epochs.size:
                ax.plot(epochs, mean, color=f"C{i}", label=f"{variant} (n={len(runs)})")
                ax.fill_between(epochs, lo, hi, color=f"C{i}", alpha=0.2, linewidth=0)
                drawn = True
        if drawn:
            ax.legend(loc="lower right", fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no {KIND_TITLE[kind]} in these runs", transform=ax.transAxes, ha="center")
        ax.set(title=f"top-1, {KIND_TITLE[kind]}", xlabel="epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 (%)")
    _save_png(fig, path)


def _fig_p2f(study: StudyRuns, summary: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(5.0, 1.4 * len(summary) + 2), 4), layout="constrained")
    ax = fig.subplots()
    names = list(study.variants)
    x = np.arange(len(names))
    for j, kind in enumerate(MODEL_KINDS):
        off = (j - 0.5) * 0.38
        have = [i for i, v in enumerate(names) if summary[v][kind]["p2f_mean"] is not None]
        if not have:
            continue
        ax.bar(x[have] + off, [summary[names[i]][kind]["p2f_mean"] for i in have], 0.38,
               yerr=[summary[names[i]][kind]["p2f_std"] or 0.0 for i in have], capsize=4, color=f"C{j}",
               alpha=0.7, label=KIND_TITLE[kind])
        for i, v in enumerate(names):  # every seed's value on its bar
            pts = [r.model(kind).p2f for r in study.variants[v] if r.model(kind) is not None]
            ax.scatter([x[i] + off] * len(pts), pts, color="k", s=10, zorder=3)
    ax.set_xticks(x, names)
    ax.set(ylabel="peak-to-final (pp)", title="peak-to-final degradation (bars: mean, error: ±1 std, dots: seeds)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _save_png(fig, path)


def _fig_loss(study: StudyRuns, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.subplots()
    for i, (variant, runs) in enumerate(study.variants.items()):
        epochs, mean, lo, hi = _band(runs, lambda r: (r.loss_epochs, r.train_loss))
        if not epochs.size:
            continue
        ax.plot(epochs, mean, color=f"C{i}", label=f"{variant} (n={len(runs)})")
        ax.fill_between(epochs, lo, hi, color=f"C{i}", alpha=0.2, linewidth=0)
        for r in runs:  # mark each run's loss spikes on its own loss
            loss = dict(zip(r.loss_epochs, r.train_loss, strict=True))
            spikes = [e for e in r.loss_spike_epochs if np.isfinite(loss[e])]
            ax.scatter(spikes, [loss[e] for e in spikes], color=f"C{i}", marker="x", zorder=3)
    ax.set(title="train loss (x: loss spikes)", xlabel="epoch", ylabel="train loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save_png(fig, path)


# ---------------------------------------------------------------------------------------------------
# Document: a list of blocks rendered to markdown and to html


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def render_markdown(blocks: Sequence[tuple]) -> str:
    out = []
    for kind, *args in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"{'#' * int(kind[1])} {args[0]}")
        elif kind == "p":
            out.append(args[0])
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in args[0]))
        elif kind == "table":
            headers, rows = args
            lines = ["| " + " | ".join(map(_md_cell, headers)) + " |", "|" + "---|" * len(headers)]
            lines += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in rows]
            out.append("\n".join(lines))
        elif kind == "img":
            out.append(f"![{args[1]}]({args[0]})\n\n*{args[1]}*")
    return "\n\n".join(out) + "\n"


_CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.4}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:left}"
        "th{background:#eee}img{max-width:100%}figcaption{font-style:italic}")


def render_html(blocks: Sequence[tuple], title: str) -> str:
    esc = html.escape
    out = [f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{esc(title)}</title>"
           f"<style>{_CSS}</style></head><body>"]
    for kind, *args in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{esc(args[0])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{esc(args[0])}</p>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{esc(i)}</li>" for i in args[0]) + "</ul>")
        elif kind == "table":
            headers, rows = args
            head = "".join(f"<th>{esc(h)}</th>" for h in headers)
            body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "img":
            out.append(f"<figure><img src='{esc(args[0])}' alt='{esc(args[1])}'>"
                       f"<figcaption>{esc(args[1])}</figcaption></figure>")
    return "\n".join(out) + "\n</body></html>\n"


def _comparison_blocks(c: Comparison) -> list[tuple]:
    blocks: list[tuple] = []
    for kind, kc in c.kinds.items():
        blocks.append(("h3", f"{c.variant} vs {c.baseline}, {KIND_TITLE[kind]}"))
        items = []
        for what, t in (("final top-1", kc.top1), ("peak-to-final", kc.p2f)):
            diff = NA if t.mean_diff is None else f"{t.mean_diff:+.2f} pp"
            items.append(f"{what}, mean paired difference {diff} over n={t.n} seeds: {verdict_ttest(t, c.alpha)}")
        blocks.append(("ul", items))
        tests = [*kc.per_seed, *([kc.pooled] if kc.pooled else [])]
        if tests:
            rows = [[pt.label, f"{pt.bootstrap.n_images:,}", f"{pt.top1_base:.2f}", f"{pt.top1_variant:.2f}",
                     f"{pt.bootstrap.diff:+.2f}", verdict_bootstrap(pt.bootstrap),
                     f"{pt.mcnemar.base_only:,} / {pt.mcnemar.variant_only:,}", verdict_mcnemar(pt.mcnemar, c.alpha)]
                    for pt in tests]
            blocks.append(("table", ["predictions", "images", f"{c.baseline} top-1", f"{c.variant} top-1",
                                     "difference (pp)", "paired bootstrap", "discordant (baseline only / variant only)",
                                     "McNemar exact"], rows))
        else:
            blocks.append(("p", "No per-image tests: no pair of runs with predictions.csv for this model."))
        if kc.notes:
            blocks.append(("ul", kc.notes))
    return blocks


def _document(study: StudyRuns, summary: dict, comparisons: list[Comparison], figures: list[tuple[str, str]],
              *, alpha: float, n_resamples: int, bootstrap_seed: int, spike_window: int,
              spike_threshold: float) -> list[tuple]:
    b: list[tuple] = [("h1", f"Study report: {study.name}"),
                      ("p", f"Study directory {study.study_dir}; baseline variant: {study.baseline}. "
                            "Every figure is defined in docs/metrics.md. Top-1 and top-5 are of the last evaluated "
                            "epoch; mean ± sample std (ddof=1) over seeds, std left out where n=1.")]
    b.append(("h2", "Runs"))
    b.append(("table", ["variant", "n", "seeds", "unfinished included"],
              [[_variant_label(v, e), str(e["n"]), ", ".join(map(str, e["seeds"])), str(e["unfinished_included"])]
               for v, e in summary.items()]))
    if study.excluded:
        b.append(("p", "Unfinished runs left out (no done.json; vitreduce report --include-unfinished "
                       "reports them as far as they got):"))
        b.append(("ul", [f"{v}: {r.run_dir.relative_to(study.study_dir)} (epoch {r.epochs_logged} of "
                         f"{r.epochs_planned or '?'})" for v, r in study.excluded]))
    for kind in sorted(_kinds_present(summary), key=lambda k: k != "ema"):
        b.append(("h2", f"Results, {KIND_TITLE[kind]}"))
        b.append(("table", *results_table(summary, kind)))
    b.append(("p", "Throughput: inference images/s from throughput.json (vitreduce profile); n/a where absent."))
    b.append(("h2", "Architecture"))
    b.append(("table", *architecture_table(summary)))
    b.append(("h2", "Training stability"))
    b.append(("p", f"Loss spike: an epoch whose train loss is not finite or exceeds {1 + spike_threshold:g} x the "
                   f"minimum train loss of the previous {spike_window} logged epochs."))
    b.append(("table", ["variant", "n", "loss spikes per run", "spike epochs"],
              [[_variant_label(v, summary[v]), str(len(runs)), _pm(summary[v]["loss_spikes_mean"],
                summary[v]["loss_spikes_std"], 1),
                "; ".join(f"seed {r.seed}: {list(r.loss_spike_epochs) or 'none'}" for r in runs)]
               for v, runs in study.variants.items()]))
    b.append(("h2", f"Statistics against the baseline ({study.baseline})"))
    b.append(("p", f"alpha = {alpha:g}. Differences are variant minus baseline in percentage points. Paired t-test "
                   "over seeds (runs paired by seed, two-sided). Per-image tests use the final models' "
                   f"predictions.csv: paired percentile bootstrap over images ({n_resamples} resamples, seed "
                   f"{bootstrap_seed}) and McNemar's exact test (two-sided binomial test on the discordant pairs)."))
    if study.baseline not in study.variants:
        b.append(("p", f"The baseline {study.baseline} has no finished runs: no comparisons."))
    for c in comparisons:
        b += _comparison_blocks(c)
    sharpness = sharpness_rows(study)
    if sharpness:
        b.append(("h2", "Sharpness (the flat-minima hypothesis)"))
        b.append(("p", "Measured by the study spec's analysis section on each run's final and/or peak (best epoch) "
                       "checkpoint (options in "
                       "runs/*/seed*/analysis/sharpness_*.json): the training loss on a fixed seeded subset of the "
                       "training split with the eval transform, in eval mode; mean ± sample std over seeds. "
                       "Larger = sharper."))
        b.append(("table", sharpness_headers(), sharpness))
    b.append(("h2", "Figures"))
    b += [("img", src, caption) for src, caption in figures]
    return b


def _json_default(obj):
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_report(study_dir: Path | str, baseline: str | None = None, *, alpha: float = DEFAULT_ALPHA,
                 n_resamples: int = DEFAULT_RESAMPLES, bootstrap_seed: int = DEFAULT_BOOTSTRAP_SEED,
                 include_unfinished: bool = False, spike_window: int = DEFAULT_SPIKE_WINDOW,
                 spike_threshold: float = DEFAULT_SPIKE_THRESHOLD) -> ReportPaths:
    """Write summary.json, figures/*.png, report.md and report.html into `study_dir` (atomically)."""
    study_dir = Path(study_dir)
    study = load_study(study_dir, baseline=baseline, include_unfinished=include_unfinished,
                       spike_window=spike_window, spike_threshold=spike_threshold)
    summary = summarize_study(study, read_throughput(study_dir))
    comparisons = []
    if study.baseline in study.variants:
        for variant, runs in study.variants.items():
            if variant == study.baseline:
                continue
            c = compare_to_baseline(variant, runs, study.baseline, study.variants[study.baseline], alpha=alpha,
                                    n_resamples=n_resamples, seed=bootstrap_seed)
            comparisons.append(c)
            summary[variant]["vs_baseline"] = {"baseline": c.baseline, "alpha": c.alpha, "seeds": c.seeds, **{
                kind: dataclasses.asdict(kc) for kind, kc in c.kinds.items()}}

    fig_dir = study_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    figures = [
        ("top1_vs_epoch.png", "Top-1 vs epoch, raw (left) and EMA (right): mean over seeds, band = min-max over "
                              "seeds (at each epoch, over the runs that reached it)."),
        ("peak_to_final.png", "Peak-to-final degradation (pp): bars = mean over seeds, error bars = ±1 sample std "
                              "(ddof=1, none when n=1), dots = individual seeds."),
        ("train_loss.png", "Train loss vs epoch: mean over seeds, band = min-max over seeds; x marks a loss spike."),
    ]
    _fig_top1(study, fig_dir / figures[0][0])
    _fig_p2f(study, summary, fig_dir / figures[1][0])
    _fig_loss(study, fig_dir / figures[2][0])
    figures += sharpness_figures(study, fig_dir)
    rel_figures = [(f"figures/{name}", caption) for name, caption in figures]

    blocks = _document(study, summary, comparisons, rel_figures, alpha=alpha, n_resamples=n_resamples,
                       bootstrap_seed=bootstrap_seed, spike_window=spike_window, spike_threshold=spike_threshold)
    paths = ReportPaths(markdown=study_dir / "report.md", html=study_dir / "report.html",
                        summary_json=study_dir / "summary.json", figures=[fig_dir / n for n, _ in figures],
                        summary=summary)
    _write_bytes(paths.summary_json,
                  (json.dumps(summary, indent=2, allow_nan=False, default=_json_default) + "\n").encode())
    _write_bytes(paths.markdown, render_markdown(blocks).encode())
    _write_bytes(paths.html, render_html(blocks, f"vitreduce study report: {study.name}").encode())
    return paths


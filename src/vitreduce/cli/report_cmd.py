"""Write a study's report: report.md, report.html, summary.json and figures/ from its run directories.

Reads STUDY_DIR/runs/<variant>/seed<S>/ (docs/run-directory.md) and STUDY_DIR/study.yaml (`baseline:`,
`variants:`, `name:`, `statistics:`), compares every variant with the baseline (seed level: paired t-test
over seeds, adjusted across its family, which alone decides the verdicts; image level: bootstrap CI and
McNemar tests on the trained models' predictions), prints the results table. Every figure is defined in
docs/metrics.md.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from vitreduce.cli.args import add_threads_option
from vitreduce.errors import VitreduceError
from vitreduce.report.runs import DEFAULT_SPIKE_THRESHOLD, DEFAULT_SPIKE_WINDOW
from vitreduce.statistics.family import DEFAULT_EFFECT, PRIMARY_CHOICES
from vitreduce.statistics.paired import DEFAULT_ALPHA, DEFAULT_BOOTSTRAP_SEED, DEFAULT_RESAMPLES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study_dir", type=Path, metavar="STUDY_DIR", help="the --out directory of `vitreduce study`")
    parser.add_argument("--baseline", default=None,
                        help="baseline variant (default: study.yaml's baseline, else the first variant)")
    parser.add_argument("--alpha", type=float, default=None,
                        help=f"significance level of every family (default: study.yaml's statistics.alpha, "
                             f"else {DEFAULT_ALPHA})")
    parser.add_argument("--primary", choices=PRIMARY_CHOICES, default=None,
                        help="the confirmatory family's metric (default: study.yaml's statistics.primary, else "
                             "ema_top1_final when every comparison has an EMA model, else raw_top1_final; "
                             "probe_miou: the segmentation probe's mIoU, for a study whose analysis probes its runs)")
    parser.add_argument("--correction", choices=("holm", "bh"), default=None,
                        help="multiple-comparison correction within each family: holm (family-wise error) or bh "
                             "(Benjamini-Hochberg false discovery rate) (default: study.yaml's, else holm)")
    parser.add_argument("--effect", type=float, default=None,
                        help=f"effect in pp whose seeds-needed the report states (default: study.yaml's "
                             f"statistics.effect, else the paper's {DEFAULT_EFFECT:+g})")
    parser.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES,
                        help=f"bootstrap resamples (default {DEFAULT_RESAMPLES})")
    parser.add_argument("--bootstrap-seed", type=int, default=DEFAULT_BOOTSTRAP_SEED,
                        help=f"seed of the bootstrap's random generator (default {DEFAULT_BOOTSTRAP_SEED})")
    parser.add_argument("--include-unfinished", action="store_true",
                        help="include runs without done.json, as far as they got (default: list them, leave out)")
    parser.add_argument("--spike-window", type=int, default=DEFAULT_SPIKE_WINDOW,
                        help=f"loss spike reference: previous epochs (default {DEFAULT_SPIKE_WINDOW})")
    parser.add_argument("--spike-threshold", type=float, default=DEFAULT_SPIKE_THRESHOLD,
                        help=f"loss spike: relative rise over the reference (default {DEFAULT_SPIKE_THRESHOLD})")
    add_threads_option(parser)


def run(args: argparse.Namespace) -> int:
    from vitreduce.report.write import format_results_table
    from vitreduce.study.reporting import write_report

    if not (math.isfinite(args.spike_threshold) and args.spike_threshold >= 0):  # NaN compares false with all
        raise VitreduceError(f"--spike-threshold must be a finite number >= 0 (a relative rise), got "
                             f"{args.spike_threshold}")
    paths = write_report(args.study_dir, args.baseline, alpha=args.alpha, correction=args.correction,
                         primary=args.primary, effect=args.effect, n_resamples=args.resamples,
                         bootstrap_seed=args.bootstrap_seed, include_unfinished=args.include_unfinished,
                         spike_window=args.spike_window, spike_threshold=args.spike_threshold)
    print(format_results_table(paths.summary))
    print(f"\nreport: {paths.markdown} (and {paths.html.name}, {paths.summary_json.name}, figures/)")
    return 0

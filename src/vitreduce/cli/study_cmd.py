"""Run a study: every variant x seed of a spec in its own run directory, then the report.

SPEC is a study YAML (docs/studies.md): a base train config, overrides, variants and seeds. Runs go
to STUDY_DIR/runs/<variant>/seed<S>/ (STUDY_DIR: --out, else the spec's `out`, else
runs/studies/<name>). Every run's config is validated, and every model and dataset checked, before
any run starts. Rerunning the command skips finished runs and resumes interrupted ones; a run that
another process is training (its lock file is held) is skipped; a STUDY_DIR made from a spec that
would change any run is refused, saying what differs. A failing run is reported (with its log,
RUN_DIR/train.log) without stopping the others, and the command then ends with status 1. At the end
the report is written (report.md, report.html, summary.json, figures/) and the results table printed.

--set KEY=VALUE (value parsed as YAML): base.K=V or overrides.K=V set train-config key K for every
run (variants still override it); other keys set spec keys (seeds=[0,1], launcher=torchrun,
nproc_per_node=2, throughput=true).

Examples:
  vitreduce study studies/demo.yaml --jobs 2
  vitreduce study studies/paper_vit_b16_in1k.yaml --set base.data.root=/data/imagenet --dry-run
  vitreduce study studies/paper_vit_b16_in1k.yaml --set base.data.root=/data/imagenet \\
      --set nproc_per_node=4 --set base.optimizer.accum_steps=1
  vitreduce study studies/tiny/group_size.yaml --out /tmp/gs --set seeds=[0]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from vitreduce.cli.args import add_threads_option


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", type=Path, metavar="SPEC", help="study spec YAML")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at once on this machine (default 1: one after another, in this process); "
                             "N > 1 starts N worker processes, the threads divided between them (--threads)")
    parser.add_argument("--out", type=Path, default=None,
                        help="study directory (default: the spec's out, else runs/studies/<name>)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check everything, write study.yaml and every run's config.yaml, print each unfinished "
                             "run's command (to launch by hand or submit to a cluster), train nothing")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a spec key, e.g. --set base.data.root=/data/imagenet (repeatable)")
    add_threads_option(parser, " per run (default: that budget divided between the runs side by side)")
    parser.set_defaults(_threads_per_run=True)  # run_study divides the threads between its runs


def run(args: argparse.Namespace) -> int:
    from vitreduce.study.runner import print_results, run_study
    from vitreduce.study.spec import load_spec

    spec = load_spec(args.spec, args.sets)
    result = run_study(spec, args.out, jobs=args.jobs, dry_run=args.dry_run, threads=args.threads)
    if not args.dry_run:
        print_results(result)
    return 1 if result.failed else 0

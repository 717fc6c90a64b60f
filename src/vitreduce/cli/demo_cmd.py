"""Run the demo: baseline, grouped, shallow and thin tiny ViTs on the built-in dataset, 2 seeds, then the report.

Runs the study studies/demo.yaml (8 runs, no GPU needed; under 5 minutes on a 2-core CPU with
--jobs 2, as `make demo` runs it): the built-in synthetic dataset is generated under data/ on first
use, the runs go to runs/studies/demo/runs/<variant>/seed<S>/, and the command ends by printing the
results table and the report's path. --jobs defaults to 1, as for `vitreduce study`. --quick runs
studies/tiny/demo.yaml instead (2 epochs, 400 training and 200 validation images, under a minute): a
smoke test of the whole pipeline whose numbers mean nothing.
Rerunning skips finished runs (and resumes an interrupted one), so a finished demo just prints its
report again.

Examples:
  vitreduce demo --jobs 2
  vitreduce demo --quick
  vitreduce demo --out /tmp/demo
"""
from __future__ import annotations

import argparse
from pathlib import Path

from vitreduce.cli.args import add_threads_option

# The studies/ folder of the source tree this package runs from (src/vitreduce/cli/ -> repo root).
STUDIES = Path(__file__).resolve().parents[3] / "studies"
QUICK_NOTE = ("QUICK DEMO: 2 epochs on 400 training images, a smoke test of the pipeline; its numbers mean "
              "nothing. Run `vitreduce demo --jobs 2` (under 5 minutes on 2 cores) for the real demo.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="the smoke-test demo (studies/tiny/demo.yaml, under a minute; numbers mean nothing)")
    parser.add_argument("--out", type=Path, default=None,
                        help="study directory (default runs/studies/demo, or runs/studies/demo-quick)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at once, the threads divided between them (--threads) (default 1, as for "
                             "`vitreduce study`; 2 on a 2-core CPU halves the demo's time)")
    add_threads_option(parser, " per run (default: that budget divided between the runs side by side)")
    parser.set_defaults(_threads_per_run=True)  # run_study divides the threads between its runs


def run(args: argparse.Namespace) -> int:
    from vitreduce.errors import VitreduceError
    from vitreduce.study.runner import print_results, run_study
    from vitreduce.study.spec import load_spec

    path = STUDIES / ("tiny/demo.yaml" if args.quick else "demo.yaml")
    if not path.is_file():
        raise VitreduceError(f"{path} not found: `vitreduce demo` runs from a source checkout of vitreduce "
                             "(pip install -e .); elsewhere use `vitreduce study SPEC.yaml`")
    spec = load_spec(path)
    if args.quick:
        print(QUICK_NOTE, flush=True)
    result = run_study(spec, args.out, jobs=args.jobs, threads=args.threads)
    print_results(result, note=QUICK_NOTE if args.quick else "")
    return result.exit_status

"""Run a study: every variant x seed of a spec in its own run directory, then the report.

SPEC is a study YAML (docs/studies.md): a base train config, overrides, variants and seeds. Runs go
to STUDY_DIR/runs/<variant>/seed<S>/ (STUDY_DIR: --out, else the spec's `out`, else
runs/studies/<name>). Every run's config is validated, and every model and dataset checked, before
any run starts. Rerunning the command skips finished runs and resumes interrupted ones; a run that
another process is training (its lock file is held) is skipped; a STUDY_DIR made from a spec that
would change any run is refused, saying what differs. A failing run is reported (with its log,
RUN_DIR/train.log) without stopping the others, and the command then ends with status 1; so does a
run whose analysis is refused (analysis: section; e.g. its class folders renamed or reordered since
it trained, which would shift the labels), the other runs still measured. At the end
the report is written (report.md, report.html, summary.json, figures/) and the results table printed.

--dry-run plans without importing torch (it starts at once): it checks the spec, every run's config
(all but the checks that need timm), the datasets and the study directory, writes study.yaml and
every run's config.yaml, and prints each variant and each unfinished run's command. What needs timm
(model names, shapes and sizes, optimizer names, augment policies) is left out, and it says so;
--dry-run --costs imports torch, makes those checks too, builds every model on the meta device and
prints each variant's unique parameters, MLP parameters and MACs (exact, from the models). A bad
value stops either before anything is written (exit status 2).

--set KEY=VALUE (value parsed as YAML): base.K=V or overrides.K=V set train-config key K for every
run (variants still override it); other keys set spec keys (seeds=[0,1], launcher=torchrun,
nproc_per_node=2, throughput=true).

On SLURM (--launcher slurm, or launcher: slurm in the spec): every unfinished run is one job of a
submitit job array, sized by the spec's slurm: section (--slurm-* flags override it); a run that no
job has yet is submitted, one already queued or running is left alone. A job stopped by its time
limit or a preemption stops at the first safe point (after the current step, with a recovery
checkpoint; during an evaluation, at the epoch's checkpoint) and is requeued (at most
slurm.max_requeues times); `vitreduce train` itself exits with status 75 (EX_TEMPFAIL) after such a
stop (SIGTERM, SIGUSR1, SIGUSR2) and resumes exactly when rerun. --wait waits for the jobs and writes the report;
without it, `vitreduce report STUDY_DIR` writes it later.

  vitreduce study status STUDY_DIR   one line per run: state (pending, running, requeued, done,
                                     failed), job id, epoch, last metric, time used; a failed run's
                                     log path and last lines. Exit status 1 if any run failed.
                                     Local studies too (states from the run directories).
                                     Imports no torch.

Examples:
  vitreduce study studies/demo.yaml --jobs 2
  vitreduce study studies/paper_vit_b16_in1k.yaml --set base.data.root=/data/imagenet \\
      --launcher slurm --slurm-partition gpu --out /shared/studies/paper --wait
  vitreduce study status /shared/studies/paper
  vitreduce study studies/paper_vit_b16_in1k.yaml --set base.data.root=/data/imagenet --dry-run
  vitreduce study studies/paper_vit_b16_in1k.yaml --set base.data.root=/data/imagenet \\
      --set nproc_per_node=4 --set base.optimizer.accum_steps=1
  vitreduce study studies/tiny/group_size.yaml --out /tmp/gs --set seeds=[0]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from vitreduce.cli.args import add_threads_option
from vitreduce.errors import VitreduceError

# --slurm-<flag> -> the spec's slurm.<key> (other keys: --set slurm.KEY=VALUE)
_SLURM_FLAGS = {"partition": "partition", "account": "account", "qos": "qos", "constraint": "constraint",
                "nodes": "nodes", "gpus-per-node": "gpus_per_node", "cpus-per-task": "cpus_per_task",
                "mem-gb": "mem_gb", "timeout-min": "timeout_min", "max-requeues": "max_requeues"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", type=Path, metavar="SPEC", help="study spec YAML (or `status`, then STUDY_DIR)")
    parser.add_argument("study_dir", type=Path, nargs="?", metavar="STUDY_DIR",
                        help="with `vitreduce study status`: the study directory")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at once on this machine (default 1: one after another, in this process); "
                             "N > 1 starts N worker processes, the threads divided between them (--threads)")
    parser.add_argument("--out", type=Path, default=None,
                        help="study directory (default: the spec's out, else runs/studies/<name>)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the spec, every run's config and the study directory, write study.yaml and "
                             "every run's config.yaml, print each variant and each unfinished run's command (to "
                             "launch by hand or submit to a cluster), train nothing; imports no torch, so it leaves "
                             "out what needs timm (model names, shapes and sizes, optimizer names, augment "
                             "policies): add --costs for those")
    parser.add_argument("--costs", action="store_true",
                        help="with --dry-run: also build every model on the meta device (imports torch), make the "
                             "checks that need timm, and print each variant's unique parameters, MLP parameters "
                             "and MACs")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a spec key, e.g. --set base.data.root=/data/imagenet (repeatable)")
    parser.add_argument("--launcher", choices=["python", "torchrun", "slurm"], default=None,
                        help="how runs are started (default: the spec's launcher, else python)")
    parser.add_argument("--wait", action="store_true",
                        help="with --launcher slurm: wait for the jobs, then write the report (exit status 1 if a "
                             "run failed); without it the command returns once the jobs are submitted")
    from vitreduce.study.spec import SlurmOptions

    for flag, key in _SLURM_FLAGS.items():
        default = SlurmOptions.model_fields[key].default
        parser.add_argument(f"--slurm-{flag}", dest=f"slurm_{key}", default=None, metavar=key.upper(),
                            help=f"overrides the spec's slurm.{key} (default: {default or 'none'})")
    add_threads_option(parser, " per run (default: that budget divided between the runs side by side)")
    parser.set_defaults(_threads_per_run=True)  # run_study divides the threads between its runs


def run(args: argparse.Namespace) -> int:
    from vitreduce.study.runner import print_results, run_study
    from vitreduce.study.spec import load_spec

    if str(args.spec) == "status" and args.study_dir is not None:
        return _status(args.study_dir)
    if args.study_dir is not None:
        raise VitreduceError(f"unexpected argument {args.study_dir}: give one SPEC, or `status STUDY_DIR`")
    if args.costs and not args.dry_run:
        raise VitreduceError("--costs goes with --dry-run (a study checks every model itself before it trains)")
    sets = list(args.sets) + ([f"launcher={args.launcher}"] if args.launcher else [])
    sets += [f"slurm.{key}={getattr(args, 'slurm_' + key)}" for key in _SLURM_FLAGS.values()
             if getattr(args, "slurm_" + key) is not None]
    spec = load_spec(args.spec, sets)
    result = run_study(spec, args.out, jobs=args.jobs, dry_run=args.dry_run, threads=args.threads, wait=args.wait,
                       costs=args.costs)
    if not args.dry_run:
        print_results(result)
    return result.exit_status


def _status(study_dir: Path) -> int:
    from vitreduce.study.status import RunState, format_status, study_status

    lines = study_status(study_dir)
    print(format_status(lines))
    return 1 if any(line.state is RunState.FAILED for line in lines) else 0

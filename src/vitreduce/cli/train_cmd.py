"""Train a (reduced) ViT from a YAML config into a run directory; rerunning resumes it.

CONFIG files merge left to right (a later file overrides keys of an earlier one); --set overrides
single keys, each value parsed as YAML. The run directory receives config.yaml, run.json,
metrics.jsonl, checkpoints/, train.log (what the command prints, appended), and at the end
predictions.csv, model.safetensors, model_ema.safetensors and done.json (docs/run-directory.md).
Rerunning the same command continues from the newest checkpoint; a finished run is left alone.
SIGTERM, SIGUSR1 or SIGUSR2 (a scheduler's preemption or time-limit warning) stop the run at the first
safe point: after the current optimizer step with a recovery checkpoint, or, during start-up, an
evaluation or an epoch's checkpoint, before the next step (the epoch's checkpoint is the state to resume
from). The command then exits with status 75 (EX_TEMPFAIL): rerun it (or let the scheduler requeue it)
to resume exactly.

Examples:
  vitreduce train configs/demo/baseline.yaml
  vitreduce train configs/demo/grouped.yaml --set epochs=5 --out runs/grouped5
  torchrun --nproc_per_node 2 -m vitreduce train configs/paper/vit_b16_in1k_grouped.yaml \\
      --set data.root=/data/imagenet --out runs/grouped
  vitreduce train --resume --out runs/grouped
  vitreduce train --resume --out runs/grouped --set epochs=400 --extend   # a finished run, to 400 epochs
"""
from __future__ import annotations

import argparse
from pathlib import Path

from vitreduce.cli.args import add_threads_option


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("configs", nargs="*", type=Path, metavar="CONFIG",
                        help="YAML config file(s), merged left to right (optional with --resume)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set optimizer.lr=0.002 (repeatable)")
    parser.add_argument("--out", type=Path, help="run directory (default: runs/<CONFIG names joined by '+'>)")
    parser.add_argument("--resume", action="store_true",
                        help="require an existing run in --out and continue it (CONFIG defaults to its config.yaml)")
    parser.add_argument("--extend", action="store_true",
                        help="continue a run (finished or not) to a larger epochs count, e.g. --resume --out RUN "
                             "--set epochs=N --extend; the LR schedule becomes that of an N-epoch run from the "
                             "next epoch on (docs/training.md)")
    add_threads_option(parser, " (under torchrun: per process)")


# timm train.py flags whose config key has another leaf name (the others match by leaf: --epochs, --lr, ...).
_TIMM_FLAGS = {"model": "model.name", "drop_path": "model.drop_path_rate", "drop": "model.drop_rate",
               "opt": "optimizer.name", "opt_eps": "optimizer.eps", "opt_betas": "optimizer.betas",
               "sched": "schedule.name", "warmup_lr": "schedule.warmup_lr", "model_ema": "ema.enabled",
               "model_ema_decay": "ema.decay", "data_dir": "data.root", "b": "data.batch_size",
               "j": "data.workers", "validation_batch_size": "data.eval_batch_size"}


def unknown_hint(unknown: list[str]) -> str:
    """The ``--set`` form of the timm/Hydra-style options among argparse's leftovers (``--epochs 2``,
    ``--optimizer.lr=0.1``), to add to its "unrecognized arguments" error; "" when none is a config key."""
    hints, rest = [], list(unknown)
    while rest:
        item = rest.pop(0)
        if not item.startswith("-") or item[1:2].isdigit():
            continue
        name, eq, value = item.lstrip("-").partition("=")
        if not eq and rest and not rest[0].startswith("-"):
            value = rest.pop(0)
        hints += [f"--set {key}={value or 'VALUE'}" for key in _keys_named(name.replace("-", "_"))]
    return f"; config keys are set with --set: did you mean {' or '.join(hints)}?" if hints else ""


def _keys_named(name: str) -> list[str]:
    """The dotted config keys ``name`` may mean: itself, the keys with that last part, or timm's flag."""
    from vitreduce.train.config import TrainConfig

    def walk(section, prefix: str):
        for field, info in section.model_fields.items():
            inner = [t for t in getattr(info.annotation, "__args__", (info.annotation,)) if hasattr(t, "model_fields")]
            yield from walk(inner[0], f"{prefix}{field}.") if inner else (f"{prefix}{field}",)

    keys = list(walk(TrainConfig, ""))
    if name in keys:
        return [name]
    return [key for key in keys if key.rsplit(".", 1)[-1] == name] or [k for k in [_TIMM_FLAGS.get(name)] if k in keys]


def _refuse_overrides_as_configs(configs: list[Path]) -> None:
    """A bare ``KEY=VALUE`` (Hydra's form) where a CONFIG file is expected: say to use --set."""
    from vitreduce.errors import VitreduceError

    for path in configs:
        text = str(path)
        if "=" in text and not path.exists():
            item = text.lstrip("+~")
            raise VitreduceError(f"{text!r} is not a config file: a key is overridden with --set KEY=VALUE; "
                                 f"did you mean --set {item}?")


def run(args: argparse.Namespace) -> int:
    import contextlib
    import os

    from vitreduce.console import LOGGED_ENV, tee
    from vitreduce.errors import VitreduceError
    from vitreduce.train.config import load_config
    from vitreduce.train.loop import train
    from vitreduce.train.rundir import CONFIG, LOG

    configs = list(args.configs)
    _refuse_overrides_as_configs(configs)
    if not configs:
        if not (args.resume and args.out):
            raise VitreduceError("give a CONFIG file (or --resume --out RUN_DIR to continue a run)")
        configs = [args.out / CONFIG]
        if not configs[0].is_file():
            raise VitreduceError(f"--resume: {args.out} holds no run ({CONFIG} missing); nothing to resume")
    out = args.out or Path("runs") / "+".join(path.stem for path in configs)
    config = load_config(configs, args.overrides)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    # Rank 0's lines also go to RUN_DIR/train.log, as a study run's do (unless a study already logs them).
    logged = tee(out / LOG) if main_rank and not os.environ.get(LOGGED_ENV) else contextlib.nullcontext()
    try:
        with logged:
            train(config, out, resume=args.resume, extend=args.extend)
    except VitreduceError:
        if not main_rank:
            return 2  # under torchrun rank 0 reports the error; the others stop quietly
        raise
    return 0

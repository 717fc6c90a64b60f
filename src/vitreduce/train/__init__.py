"""Training: one run directory from one config, resumable bit for bit, on CPU, one GPU or torchrun.

Modules: ``config`` (the typed config tree), ``model`` (the model a config names, fine-tuning starts),
``step`` (one optimizer step), ``optim`` (parameter groups over unique tensors, timm's factories),
``ema``, ``evaluate`` (top-1/top-5/loss, ``vitreduce eval``), ``state`` (training-state checkpoints),
``resume`` (choosing the newest intact checkpoint, setting damaged ones aside),
``rundir`` (new / resume / finished, the files written once), ``logs`` (metrics.jsonl, steps.jsonl, TensorBoard),
``telemetry`` (per-step measurements), ``summary`` (summary.csv in timm's layout), ``history`` (the kept
``checkpoints/epoch-<E>/``), ``extend`` (the schedule of a run extended to more epochs),
``distributed`` (torchrun), ``preempt`` (stop after a step on SIGTERM/SIGUSR1/SIGUSR2, exit status 75),
``loop`` (the ``Trainer`` that runs the epochs).
"""
from vitreduce.lazy import lazy_exports

# Imported on first use (vitreduce.lazy): ``preempt`` must be importable before torch is.
_EXPORTS = {"TrainConfig": "vitreduce.train.config", "load_config": "vitreduce.train.config",
            "evaluate_checkpoint": "vitreduce.train.evaluate", "RunResult": "vitreduce.train.loop",
            "train": "vitreduce.train.loop"}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = ["RunResult", "TrainConfig", "evaluate_checkpoint", "load_config", "train"]

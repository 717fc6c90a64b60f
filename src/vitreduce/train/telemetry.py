"""Per-step telemetry: RUN_DIR/steps.jsonl and the trackers' per-step scalars (docs/run-directory.md).

Every ``logging.step_every`` optimizer steps, rank 0 probes the step (``vitreduce.train.step.StepProbe``)
and writes one line: loss, learning rate, global gradient norm, update norm, whether the step was
skipped, and the gradient norm of each unique MLP. The file is append-only like metrics.jsonl and cut
back to the checkpoint's step on resume, so a resumed run's file equals an uninterrupted run's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from vitreduce.numbers import is_finite
from vitreduce.train.logs import StepsFile
from vitreduce.train.step import StepProbe, StepResult

STEPS = "steps.jsonl"  # in the run directory, beside metrics.jsonl


class StepTelemetry:
    """steps.jsonl (and the trackers' ``step/`` scalars) of one run; inert on ranks other than 0.

    Args:
        run_dir: the run directory (the file is RUN_DIR/steps.jsonl).
        module: the unwrapped model (its unique MLPs and trainable parameters are probed).
        every: optimizer steps between logged steps (``logging.step_every``); 0: none.
        steps_done: the position's step: on rank 0 the file is cut back to it.
        trackers: where the per-step scalars also go, if anywhere (``tracking.Trackers``: TensorBoard, MLflow, W&B).
        main: whether this is rank 0 (the one process that measures and writes).
    """

    def __init__(self, run_dir: Path, module: nn.Module, every: int, steps_done: int,
                 trackers: Any = None, main: bool = True):
        self.file = StepsFile(Path(run_dir) / STEPS)
        self.every = every if main else 0
        self.trackers = trackers
        self._probe = StepProbe.build(module) if self.every else None
        if main:
            self.file.truncate(steps_done)  # even when no step is logged now: no line past the checkpoint stays

    def probe(self, step: int) -> StepProbe | None:
        """The probe to hand ``train_step`` for optimizer step ``step`` (from 1), or None when it is not logged."""
        if self._probe is None or step % self.every:
            return None
        self._probe.mlp_grad_norms, self._probe.update_norm = {}, 0.0
        return self._probe

    def log(self, probe: StepProbe | None, epoch: int, step: int, lr: float, result: StepResult) -> None:
        """Write step ``step``'s line (of epoch ``epoch``, from 0) when it was probed; nothing otherwise."""
        if probe is None:
            return
        record = step_record(probe, epoch + 1, step, lr, result)
        self.file.append(record)
        if self.trackers is not None:
            self.trackers.step(record)


def step_record(probe: StepProbe, epoch: int, step: int, lr: float, result: StepResult) -> dict[str, Any]:
    """One line of steps.jsonl; a number that is not finite is written as null (strict JSON)."""
    return {
        "step": step,
        "epoch": epoch,
        "lr": lr,
        "loss": _finite(result.loss),
        "grad_norm": _finite(result.grad_norm),
        "update_norm": probe.update_norm,
        "skipped": result.skipped,
        "mlp_grad_norm": dict(probe.mlp_grad_norms),  # null where not finite
        **({"distill": {name: _finite(value) for name, value in result.distill.items()}} if result.distill else {}),
    }


def _finite(value: float) -> float | None:
    return value if is_finite(value) else None

"""Graceful stop on a scheduler's signal: finish the optimizer step, write a recovery checkpoint, exit 75.

SIGTERM (what ``kill``, SLURM's preemption and ``scancel`` send), SIGUSR1 (``sbatch --signal=USR1@T``)
and SIGUSR2 (submitit's timeout and preemption signal) make a training run stop after the optimizer step
in progress: it writes a recovery checkpoint (the state a crashed run resumes from, ``train.state``)
and raises ``Preempted``, a ``SystemExit`` with status ``REQUEUE_EXIT`` (75, EX_TEMPFAIL in sysexits.h:
"try again later"). Rerunning the same command, or the scheduler requeueing the job, resumes exactly
where it stopped. Under torchrun every rank learns of a signal any rank received at the end of the
same step (one small all-reduce per step), so the ranks stop together.

The handlers are installed for the duration of ``train`` (main thread only) and the previous ones put
back after it: a stop that arrives after the last step leaves the run to finish normally.
"""
from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import torch

from vitreduce.train.distributed import DistInfo, all_sum

REQUEUE_EXIT = 75  # EX_TEMPFAIL: the run stopped cleanly and wants to be run again
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)

_received: list[int] = []  # signal numbers noted by the handler since ``catch_signals``


class Preempted(SystemExit):
    """The run stopped on a signal after writing a recovery checkpoint; exit status ``REQUEUE_EXIT``."""

    def __init__(self, signum: int, step: int):
        super().__init__(REQUEUE_EXIT)
        self.signum, self.step = signum, step

    def __str__(self) -> str:
        return (f"stopped on {signal.Signals(self.signum).name} after step {self.step}, recovery checkpoint "
                f"written; rerun the command (or let the scheduler requeue it) to resume exactly "
                f"(exit status {REQUEUE_EXIT})")


def _note(signum: int, frame: Any) -> None:
    _received.append(signum)


def catch_signals() -> Callable[[], None]:
    """Note SIGTERM/SIGUSR1/SIGUSR2 instead of dying; returns the function that puts the old handlers back.
    Outside the main thread (where Python cannot set handlers) nothing is installed."""
    _received.clear()
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {signum: signal.signal(signum, _note) for signum in SIGNALS}

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    return restore


def requested(info: DistInfo) -> bool:
    """Whether this rank, or any rank under torchrun, has received a stop signal."""
    if not info.distributed:
        return bool(_received)
    return bool(all_sum(torch.tensor(float(bool(_received)), device=info.device)).item())


def after_step(position: Any, every: int | None, steps_in_epoch: int, info: DistInfo,
               save: Callable[[], None], on_event: Callable[[str], None]) -> None:
    """The end of an optimizer step: the recovery checkpoint when due (every ``every`` steps, not at an
    epoch's end, which has its own) or when a stop was requested, the "step" event, then the stop."""
    stop = requested(info)
    if stop or (every and position.step % every == 0 and position.batch < steps_in_epoch):
        save()
    on_event("step")
    if stop:  # another rank may have received it: this one then names SIGTERM
        stopped = Preempted(_received[0] if _received else signal.SIGTERM, position.step)
        info.on_main(print, f"vitreduce train: {stopped}", file=sys.stderr, flush=True)
        raise stopped

"""Graceful stop on a scheduler's signal: stop at the first safe point, with the state on disk, and exit 75.

SIGTERM (what ``kill``, SLURM's preemption and ``scancel`` send), SIGUSR1 (``sbatch --signal=USR1@T``)
and SIGUSR2 (submitit's timeout and preemption signal) make a training run stop at the first safe point
and raise ``Preempted``, a ``SystemExit`` with status ``REQUEUE_EXIT`` (75, EX_TEMPFAIL in sysexits.h:
"try again later"). The safe points:

- the end of an optimizer step (``after_step``): a recovery checkpoint is written (the state a crashed
  run resumes from, ``train.state``), then the run stops;
- the start of an epoch (``at_safe_point``): at start-up, before the first step, and right after the
  previous epoch's checkpoint, so a signal that arrives during start-up, an evaluation or the epoch's
  checkpoint write stops the run without training another step and without writing anything more.

Rerunning the same command, or the scheduler requeueing the job, resumes exactly where it stopped.
Under torchrun every rank learns of a signal any rank received at the same safe point (after a step, from
the step's own all-reduce in ``train.step``; at an epoch's start, one small all-reduce), so the ranks stop
together.

The handlers are installed for the duration of ``train`` (main thread only) and the previous ones put
back after it: a stop that arrives during the last epoch's evaluation, or after it, leaves the run to
finish normally (only its final files remain to be written). A process whose only work is one training run
(`vitreduce train`, each task of a SLURM job) calls ``catch_early`` as its first statement, before the
imports that take tens of seconds on a busy node: a signal during start-up is then noted too, and honoured
at the first safe point (before the first step) with exit status 75, instead of killing the process.

This module imports no torch at import time (``catch_early`` must run before torch is imported).
"""
from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vitreduce.train.distributed import DistInfo

REQUEUE_EXIT = 75  # EX_TEMPFAIL: the run stopped cleanly and wants to be run again
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)

_received: list[int] = []  # signal numbers noted by the handler since ``catch_signals``


class Preempted(SystemExit):
    """The run stopped on a signal after writing a recovery checkpoint; exit status ``REQUEUE_EXIT``."""

    def __init__(self, signum: int, step: int, where: str | None = None):
        super().__init__(REQUEUE_EXIT)
        self.signum, self.step = signum, step
        self.where = where or f"after step {step}, recovery checkpoint written"

    def __str__(self) -> str:
        return (f"stopped on {signal.Signals(self.signum).name} {self.where}; rerun the command (or let the "
                f"scheduler requeue it) to resume exactly (exit status {REQUEUE_EXIT})")


def _note(signum: int, frame: Any) -> None:
    _received.append(signum)


def catch_early() -> None:
    """Note SIGTERM/SIGUSR1/SIGUSR2 from now on, for the rest of the process: the first statement of a process
    that trains one run. Signals noted before ``train`` starts stop it at its first safe point.

    The three are also unblocked: one that arrived while the parent had them blocked (an inherited mask) is
    delivered now, not never."""
    if threading.current_thread() is threading.main_thread():
        for signum in SIGNALS:
            signal.signal(signum, _note)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def catch_signals() -> Callable[[], None]:
    """Note SIGTERM/SIGUSR1/SIGUSR2 instead of dying; returns the function that puts the old handlers back.
    Outside the main thread (where Python cannot set handlers) nothing is installed. Signals noted since
    ``catch_early`` are kept (they stop the run at its first safe point); otherwise older notes (an earlier
    run in this process) are forgotten."""
    if threading.current_thread() is not threading.main_thread():
        _received.clear()
        return lambda: None
    previous = {signum: signal.signal(signum, _note) for signum in SIGNALS}
    if any(handler is not _note for handler in previous.values()):
        _received.clear()

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    return restore


def signalled() -> bool:
    """Whether this rank has received a stop signal (``train.step`` shares it with the other ranks)."""
    return bool(_received)


def requested(info: DistInfo) -> bool:
    """Whether this rank, or any rank under torchrun, has received a stop signal."""
    if not info.distributed:
        return signalled()
    import torch

    from vitreduce.train.distributed import all_sum

    return bool(all_sum(torch.tensor(float(signalled()), device=info.device)).item())


def after_step(position: Any, every: int | None, steps_in_epoch: int, info: DistInfo, stopping: bool,
               save: Callable[[], None], on_event: Callable[[str], None]) -> None:
    """The end of an optimizer step: the recovery checkpoint when due (every ``every`` steps, not at an
    epoch's end, which has its own) or when a stop was requested, the "step" event, then the stop.

    ``stopping``: some rank had a signal at the step's own sync (``StepResult.stop``: no second all-reduce
    per step); a single process also stops on a signal that came after it.
    """
    stop = stopping or (not info.distributed and signalled())
    if stop or (every and position.step % every == 0 and position.batch < steps_in_epoch):
        save()
    on_event("step")
    if stop:
        _stop(info, Preempted(_signum(), position.step))


def at_safe_point(position: Any, info: DistInfo) -> None:
    """Before an epoch's first step (at start-up, or right after the previous epoch's checkpoint): stop if a
    signal came. The run directory already holds the state a rerun resumes from, so nothing is written."""
    if not requested(info):
        return
    if position.step == 0:
        where = "before the first step (nothing to save yet)"
    elif position.batch == 0:
        where = f"at the checkpoint of epoch {position.epochs_done} (step {position.step}), already written"
    else:
        where = f"at the recovery checkpoint of step {position.step}, already written"
    _stop(info, Preempted(_signum(), position.step, where))


def _signum() -> int:
    """The signal this rank received; SIGTERM when only another rank received one."""
    return _received[0] if _received else signal.SIGTERM


def _stop(info: DistInfo, stopped: Preempted) -> None:
    info.on_main(print, f"vitreduce train: {stopped}", file=sys.stderr, flush=True)
    raise stopped

"""Several runs of a study at once (``--jobs N``): N worker processes, each importing torch once and
training runs one after another (a process per run would pay the import, several seconds, for every run).
A worker that dies (out of memory, a signal) fails its run and is replaced."""
from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnContext, SpawnProcess

from vitreduce.study.launch import Outcome, RunLauncher, to_stderr
from vitreduce.study.plan import RunPlan
from vitreduce.train.rundir import RunStatus

Task = tuple[int, RunPlan, RunStatus]  # (index in the study, the run, its status before this invocation)


def _work(conn: Connection, launcher: RunLauncher) -> None:
    """A worker process: train the runs it is sent until it is sent None."""
    import torch

    torch.set_num_threads(launcher.threads)
    try:
        while (task := conn.recv()) is not None:
            plan, index, status = task
            conn.send(launcher.run(plan, index, status, to_stderr))
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        pass  # Ctrl-C reaches the study process too, which reports it; EOF: the study process is gone


@dataclass
class _Worker:
    conn: Connection
    proc: SpawnProcess
    task: Task | None = None

    @classmethod
    def start(cls, ctx: SpawnContext, launcher: RunLauncher) -> _Worker:
        parent, child = ctx.Pipe()
        threads = str(launcher.threads)
        saved = {key: os.environ.get(key) for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        os.environ.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        try:  # the environment is read when the worker starts, before torch is imported
            proc = ctx.Process(target=_work, args=(child, launcher), daemon=True)
            proc.start()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key)
                else:
                    os.environ[key] = value
        child.close()
        return cls(parent, proc)

    def give(self, task: Task) -> None:
        self.task = task
        index, plan, status = task
        self.conn.send((plan, index, status))

    def receive(self) -> Outcome | None:
        """The outcome of its run if it has sent it (the worker is then free)."""
        with contextlib.suppress(EOFError):
            if self.conn.poll():
                outcome = self.conn.recv()
                self.task = None
                return outcome
        return None


def run_pool(launcher: RunLauncher, todo: list[Task], jobs: int, echo, on_outcome=None) -> list[Outcome]:
    """Train ``todo`` on ``jobs`` worker processes; the outcomes in the order the runs finish, each also
    handed to ``on_outcome`` as it comes (the study's ETA)."""
    ctx = multiprocessing.get_context("spawn")
    launcher = dataclasses.replace(launcher, prefix=True)
    workers, pending, outcomes = [_Worker.start(ctx, launcher) for _ in range(jobs)], list(todo), []
    try:
        while pending or any(w.task for w in workers):
            for worker in workers:
                if worker.task is None and pending:
                    worker.give(pending.pop(0))
            busy = [w for w in workers if w.task]
            wait([w.conn for w in busy] + [w.proc.sentinel for w in busy])
            for worker in busy:
                outcome = worker.receive()
                if outcome is None and not worker.proc.is_alive():
                    index, plan, _ = worker.task
                    outcome = launcher.lost(plan, index, worker.proc.exitcode, echo)
                    workers[workers.index(worker)] = _Worker.start(ctx, launcher)
                if outcome is not None:
                    outcomes.append(outcome)
                    if on_outcome is not None:
                        on_outcome(outcome)
    finally:
        _stop(workers, finished=not (pending or any(w.task for w in workers)))
    return outcomes


def _stop(workers: list[_Worker], finished: bool) -> None:
    """Tell every worker to exit; one still busy (the study was interrupted) is terminated."""
    for worker in workers:
        with contextlib.suppress(OSError, BrokenPipeError):
            worker.conn.send(None)
    for worker in workers:
        worker.proc.join(timeout=5 if finished else 0)
        if worker.proc.is_alive():
            worker.proc.terminate()
            worker.proc.join()

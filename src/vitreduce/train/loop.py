"""Training orchestration: set-up, epochs, evaluation, checkpoints, logging (the step is vitreduce.train.step).

``train(config, out_dir)`` runs (or resumes, or reports as finished) one run directory as described
in docs/run-directory.md; ``vitreduce train`` is its command-line face. Under torchrun every rank
calls it; only rank 0 writes. ``Trainer`` builds every part of a run in ``__init__``; ``Trainer.run``
is the epoch loop, handing each step to ``train_step``, each evaluation to ``evaluate`` and each
checkpoint to ``state.save``.
"""
from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import vitreduce.data as data
from vitreduce.console import Progress
from vitreduce.data import ensure_synth
from vitreduce.errors import VitreduceError
from vitreduce.locks import RunLock
from vitreduce.train import distributed, preempt, rundir, state, telemetry
from vitreduce.train.config import TrainConfig
from vitreduce.train.distill import build_distiller, check_teacher
from vitreduce.train.distributed import DistInfo, gather_objects
from vitreduce.train.ema import Ema
from vitreduce.train.evaluate import EvalResult, evaluate, gather_predictions
from vitreduce.train.extend import follow_config
from vitreduce.train.logs import MetricsFile, epoch_line
from vitreduce.train.model import check_init_checkpoint, start_model
from vitreduce.train.optim import create_optimizer, create_scheduler, param_names
from vitreduce.train.resume import choose, latest, verify
from vitreduce.train.rundir import RunStatus
from vitreduce.train.state import EpochTotals
from vitreduce.train.step import NonFiniteError, StepContext, train_step
from vitreduce.train.tracking import open_trackers

Event = str
# Called with "step" after every optimizer step, and on rank 0 after each step of a checkpoint's save:
# "save" (its files written, not yet visible), "save:renamed", "save:link:<kind>" after each symlink
# (best before last), "save:pruned". Where tests inject faults (tests/killer.py SIGKILLs there).
EventHook = Callable[[Event], None]
Evaluation = dict[str, EvalResult | None]  # {"raw": ..., "ema": ... or None}


class TrainStatus(StrEnum):
    FINISHED = "finished"  # trained now (the whole run, or what a resume left)
    ALREADY_DONE = "already-done"  # done.json was there: nothing ran


@dataclass
class RunResult:
    """What ``train`` did."""

    run_dir: Path
    status: TrainStatus
    epochs: int
    final: dict[str, Any] = field(default_factory=dict)  # {"raw": {...}, "ema": {...} or None}
    resumed_from: str | None = None


def train(config: TrainConfig, out_dir: str | os.PathLike, resume: bool = False,
          on_event: EventHook | None = None, extend: bool = False) -> RunResult:
    """Train (or resume) the run directory ``out_dir`` with ``config``.

    Args:
        config: the validated config.
        out_dir: run directory; created if missing, resumed if it holds this config's run.
        resume: require an existing run to resume (``--resume``).
        on_event: fault injection for tests (see ``EventHook``); None in normal use.
        extend: continue the run to ``config.epochs`` when that is more than it had (``--extend``).
    """
    out = Path(out_dir)
    info = distributed.init(config.device)
    session_start = time.perf_counter()
    lock = RunLock(out)  # taken by rank 0 in _preflight, held until the run ends
    restore_signals = preempt.catch_signals()  # SIGTERM/SIGUSR1/SIGUSR2: stop after a step (train.preempt)
    try:
        if config.precision == "fp16" and info.device.type != "cuda":
            raise VitreduceError("precision: fp16 needs a CUDA GPU (GradScaler); on CPU set precision: bf16 or fp32")
        start = info.agree(lambda: _preflight(config, out, resume, lock, extend))
        if start.status is RunStatus.DONE:
            info.on_main(print, f"{out}: run already finished (done.json); nothing to do")
            return RunResult(out, TrainStatus.ALREADY_DONE, config.epochs, start.done.get("final", {}))
        return Trainer(config, out, info, start.status is RunStatus.RESUME, session_start, on_event).run()
    finally:
        restore_signals()
        lock.release()
        distributed.shutdown(info)


def _preflight(config: TrainConfig, out: Path, resume: bool, lock: RunLock, extend: bool) -> rundir.RunStart:
    """Every check that can fail, before any work: run directory, data, init checkpoint; then the run lock,
    and config.yaml written under it."""
    start = rundir.inspect(out, config, must_exist=resume, extend=extend)
    if start.status is RunStatus.DONE:
        return start
    if config.synth is not None:
        ensure_synth(Path(config.data.root).expanduser(), config.synth)
    data.check_dataset(config.data, config.model.num_classes)
    check_init_checkpoint(config.model, config.data)  # with data: a kept head's recorded classes are compared
    check_teacher(config)
    rundir.create(out)
    if not lock.acquire():
        raise VitreduceError(
            f"{out} is being trained by another process ({lock.holder()}; lock file {lock.path}). Wait for it to "
            "finish, or stop it and rerun this command to resume; to train a separate run, choose another --out"
        )
    start = rundir.inspect(out, config, resume, extend)  # again, under the lock: the other may have changed it
    if start.status is not RunStatus.DONE:
        rundir.begin(out, config, start)
    return start


class Trainer:
    """One run directory in training. ``__init__`` builds every part, in the order that keeps a resumed
    run bitwise identical to an uninterrupted one (weights seeded alike on every rank, then the RNG
    streams restored or seeded per rank, then the DDP wrapper, which broadcasts rank 0's weights).

    Args:
        config: the validated config.
        out: the run directory (``_preflight`` has checked it and written config.yaml).
        info: this process's rank and device.
        resuming: resume from the newest whole checkpoint (``vitreduce.train.resume.choose``), else start a new run.
        session_start: ``time.perf_counter()`` when this session began (for the run's wall time).
        on_event: see ``EventHook``.
    """

    def __init__(self, config: TrainConfig, out: Path, info: DistInfo, resuming: bool,
                 session_start: float, on_event: EventHook | None = None):
        self.cfg, self.out, self.info = config, out, info
        self.resumed_from: str | None = None
        self.session_start = session_start
        self.on_event: EventHook = on_event or (lambda event: None)
        self.ckpt_dir = out / rundir.CHECKPOINTS
        self.bad_paths: list[str] = []  # this rank's unreadable files not yet counted in the position

        _seed_everything(config.seed)  # the same initial weights on every rank
        self.module, self.init = start_model(config.model, info.device)  # init: what init_checkpoint loaded
        self.ema = Ema(self.module, config.ema.decay) if config.ema.enabled else None
        self.optimizer = create_optimizer(self.module, config.optimizer)
        self.distiller = build_distiller(config, self.module, info.device)  # None without a teacher
        self.loader, self.eval_loader = _loaders(config, info, tuple(self.module.patch_embed.img_size))
        steps_per_epoch = -(-len(self.loader) // config.optimizer.accum_steps)
        self.scheduler = create_scheduler(self.optimizer, config.schedule, config.epochs, steps_per_epoch)
        self.scaler = torch.amp.GradScaler(info.device.type, enabled=config.precision == "fp16")
        self.trainables = state.Trainables(self.module, self.optimizer, self.scheduler, self.scaler, self.ema,
                                           param_names(self.module),  # model files record classes, preprocessing:
                                           data.header_entries(self.loader.dataset.classes, config.augment))
        self.position = self._resume() if resuming else self._fresh()
        self.wall_base = self.position.wall_s
        self.eval_model, self.step_context = self._wrap()
        self.last_lr = self.optimizer.param_groups[0]["lr"]  # of the latest step, for the epoch's record
        self.metrics_file = MetricsFile(out / rundir.METRICS)
        info.on_main(self.metrics_file.truncate, self.position.epochs_done)
        # TensorBoard, MLflow, W&B: those the logging section turns on, fed the same scalars (train.tracking).
        self.trackers = info.on_main(open_trackers, config.logging, config.to_dict(), out, self.position.step)
        self.steps = telemetry.StepTelemetry(out, self.module, config.logging.step_every, self.position.step,
                                             self.trackers, main=info.is_main)  # steps.jsonl
        progress = config.logging.progress if info.is_main else "none"
        self.progress = Progress(progress, config.epochs, config.logging.every_steps)

    def _resume(self) -> state.Position:
        """Load the newest whole checkpoint: rank 0 checks and loads the candidates in turn (setting damaged
        ones aside), the other ranks then load the one it chose."""
        loaded: dict[str, tuple[state.Position, dict[str, Any]]] = {}
        built = self.scheduler.state_dict()  # this config's schedule: an extension follows it (train.extend)

        def use(path: Path) -> None:
            verify(path, self.trainables, self.info.world_size)
            loaded[str(path)] = state.load(path, self.trainables, self.info.rank)

        self.resumed_from = self.info.agree(lambda: str(choose(self.ckpt_dir, use)))
        position, rng = loaded.get(self.resumed_from) or state.load(self.resumed_from, self.trainables, self.info.rank)
        state.restore_rng(rng)
        follow_config(self.scheduler, built, position.epochs_done, position.step)
        return position

    def _fresh(self) -> state.Position:
        teacher = self.distiller and self.distiller.record(self.cfg, self.eval_loader, self.info.device)  # all ranks
        self.info.on_main(rundir.write_run_record, self.out, self.module, self.cfg, self.info.world_size, self.init,
                          teacher)
        _seed_everything(self.cfg.seed + self.info.rank)  # per-rank streams for drop-path, as timm does
        return state.Position(world_size=self.info.world_size)

    def _wrap(self) -> tuple[nn.Module, StepContext]:
        """The model evaluation runs (compiled or not) and the step's context (DDP-wrapped when distributed)."""
        model = torch.compile(self.module) if self.cfg.compile else self.module
        eval_model = model  # evaluation needs no gradient synchronisation
        if self.info.distributed:
            ids = [self.info.device.index] if self.info.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids)
        context = StepContext.build(
            model, self.module, loss_fn=data.train_loss_fn(self.cfg.augment), optimizer=self.optimizer,
            scaler=self.scaler, ema=self.ema, precision=self.cfg.precision, device=self.info.device,
            clip_grad=self.cfg.optimizer.clip_grad, nonfinite=self.cfg.faults.nonfinite, distill=self.distiller,
        )
        return eval_model, context

    # ---- the loop -----------------------------------------------------------------------------

    def run(self) -> RunResult:
        """Train the remaining epochs, then write the run's final files."""
        position = self.position
        if self.resumed_from:
            self.progress.write(f"resuming {self.out} from {self.resumed_from} (epoch {position.epochs_done + 1}, "
                                f"batch {position.batch}, step {position.step})")
        try:
            final = None
            for epoch in range(position.epochs_done, self.cfg.epochs):
                preempt.at_safe_point(position, self.info)  # a signal at start-up or in the last epoch's eval/save
                train_time = self._train_epoch(epoch)
                final = self._end_epoch(epoch, train_time, last=epoch == self.cfg.epochs - 1)
            if final is None:  # resumed after the last epoch's checkpoint: evaluate once more
                final = self._evaluate(keep_predictions=True)
            metrics = self._finish(final)
        finally:
            if self.trackers is not None:
                self.trackers.close()
        return RunResult(self.out, TrainStatus.FINISHED, self.cfg.epochs, metrics, self.resumed_from)

    def _train_epoch(self, epoch: int) -> float:
        """Train epoch ``epoch`` (from 0) from ``position.batch`` on; its training time (all sessions)."""
        position = self.position
        self.loader.set_epoch(epoch, start_batch=position.batch)
        self.progress.start_epoch(epoch + 1, len(self.loader), position.batch)
        started = time.perf_counter() - position.sums.elapsed_s
        for batches in _step_groups(self.loader, self.cfg.optimizer.accum_steps, self.bad_paths):
            self._step(epoch, batches, started)
        train_time = time.perf_counter() - started
        self.progress.end_epoch()
        return train_time

    def _step(self, epoch: int, batches: list[data.Batch], started: float) -> None:
        """One optimizer step over ``batches``, counted in the position; a recovery checkpoint when due."""
        device, position = self.info.device, self.position
        micro = [(b.images.to(device, non_blocking=True), b.targets.to(device, non_blocking=True)) for b in batches]
        probe = self.steps.probe(position.step + 1)  # None unless this step is logged
        try:
            result = train_step(self.step_context, micro, probe)
        except NonFiniteError as err:
            raise self._halted(epoch, position.step + 1, batches[-1].index, err) from None
        position.step += 1
        position.batch = batches[-1].index + 1
        images = sum(len(b.images) for b in batches) * self.info.world_size
        position.sums.add_step(result.loss, result.skipped, images)
        position.sums.elapsed_s = time.perf_counter() - started
        self.last_lr = self.optimizer.param_groups[0]["lr"]
        self.steps.log(probe, epoch, position.step, self.last_lr, result)  # before a save at this step
        if result.skipped:
            self.progress.write(f"epoch {epoch + 1} step {position.step}: step skipped (loss {result.loss:.4g}, "
                                f"gradient norm {result.grad_norm:.4g})")
        self.scheduler.step_update(num_updates=position.step)
        self.progress.update(len(batches), images, result.loss, self.last_lr)
        preempt.after_step(position, self.cfg.checkpoint.recovery_every_steps, len(self.loader), self.info,
                           result.stop, save=lambda: self._save(["recovery"]), on_event=self.on_event)  # may stop

    def _halted(self, epoch: int, step: int, batch: int, err: NonFiniteError) -> VitreduceError:
        newest = self.info.on_main(latest, self.ckpt_dir)  # what a rerun resumes from
        where = f"newest checkpoint, where a rerun resumes: {newest}" if newest else "no checkpoint yet"
        return VitreduceError(
            f"epoch {epoch + 1}, step {step} (batch {batch}): {err}; the step was not taken and the run stopped "
            f"({where}). Lower optimizer.lr, set optimizer.clip_grad, or set faults.nonfinite: skip to skip such steps"
        )

    def _end_epoch(self, epoch: int, train_time: float, last: bool) -> Evaluation:
        """Evaluate, log the epoch's record, step the schedule and save the epoch's checkpoint."""
        self._count_bad_images()
        epoch_start = time.perf_counter() - train_time
        results = self._evaluate(keep_predictions=last)
        record = self._record(epoch, train_time, epoch_start, results)
        self.info.on_main(self.metrics_file.append, record)
        if self.trackers is not None:
            self.trackers.epoch(record)
        self.progress.write(epoch_line(record, self.cfg.epochs))
        self.scheduler.step(epoch + 1)
        self.position.epochs_done, self.position.batch, self.position.sums = epoch + 1, 0, EpochTotals()
        self._save(["last"] + (["best"] if self._is_best(record) else []))
        return results

    def _record(self, epoch: int, train_time: float, epoch_start: float, results: Evaluation) -> dict[str, Any]:
        """The epoch's line of metrics.jsonl (docs/run-directory.md)."""
        totals = self.position.sums
        return {
            "epoch": epoch + 1,
            "step": self.position.step,
            "lr": self.last_lr,
            "train_loss": totals.train_loss,  # None: no finite step
            "img_s": totals.images / train_time if train_time > 0 else 0.0,
            "epoch_time_s": time.perf_counter() - epoch_start,
            "raw": results["raw"].metrics(),
            "ema": results["ema"].metrics() if results["ema"] else None,
            **(self.distiller.cost(totals.images, train_time) if self.distiller else {}),  # teacher_s, img/s without
            "skipped_steps": totals.skipped,
            "bad_images": totals.bad_images,
        }

    def _evaluate(self, keep_predictions: bool) -> Evaluation:
        def run(model: nn.Module) -> EvalResult:
            return evaluate(model, self.eval_loader, self.cfg.precision, self.info.device, keep_predictions)

        return {"raw": run(self.eval_model), "ema": run(self.ema.module) if self.ema is not None else None}

    def _is_best(self, record: dict[str, Any]) -> bool:
        """Whether this epoch beats the best so far by ``best_metric`` (recording it if so; ties keep the first)."""
        kind, _ = self.cfg.best_metric.split("_")
        value = record[kind]["top1"]
        best = self.position.best
        if best is not None and value <= best["value"]:
            return False
        self.position.best = {"metric": self.cfg.best_metric, "value": value, "epoch": record["epoch"]}
        return True

    def _count_bad_images(self) -> None:
        """Add every rank's unreadable images since the last count to the position, and log their paths."""
        paths = [p for part in gather_objects(self.bad_paths, self.info) or [] for p in part]
        self.bad_paths.clear()  # the list _step_groups fills
        mine = torch.tensor(len(paths) if self.info.is_main else 0, device=self.info.device)
        self.position.sums.bad_images += int(distributed.all_sum(mine).item())
        if paths:
            self.progress.write(f"skipped {len(paths)} unreadable image(s): {', '.join(paths)}")

    def _save(self, kinds: list[str]) -> None:
        self._count_bad_images()
        self.position.wall_s = self._wall_s()
        rng = gather_objects(state.capture_rng(), self.info)
        self.info.on_main(state.save, self.ckpt_dir, kinds, self.trainables, self.position, rng,
                          on_event=lambda step: self.on_event("save" if step == "written" else f"save:{step}"),
                          keep_every=self.cfg.checkpoint.keep_every_epochs)
        self.info.barrier()

    def _wall_s(self) -> float:
        """Training wall time of the run so far, over every session."""
        return self.wall_base + time.perf_counter() - self.session_start

    # ---- the end ------------------------------------------------------------------------------

    def _finish(self, final: Evaluation) -> dict[str, Any]:
        """predictions.csv, the model files, done.json; returns the final metrics."""
        gathered = {kind: gather_predictions(result, self.info) if result else None for kind, result in final.items()}
        metrics = {kind: result.metrics() if result else None for kind, result in final.items()}
        if not self.info.is_main:
            return metrics
        indices, labels, raw = gathered["raw"]
        rundir.write_predictions(self.out, indices, labels, raw, gathered["ema"][2] if gathered["ema"] else None)
        rundir.write_final_models(self.out, self.module, self.ema, self.position, self.trainables.header)
        rundir.write_done(self.out, self.cfg.epochs, self._wall_s(), metrics)
        self.progress.write(f"done: {self.out} ({epoch_line({'epoch': self.cfg.epochs, **metrics}, self.cfg.epochs)})")
        return metrics


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _loaders(config: TrainConfig, info: DistInfo,
             img_size: tuple[int, int]) -> tuple[data.TrainLoader, data.EvalLoader]:
    """This rank's shard of the training and eval splits."""
    train_loader = data.build_train_loader(config.data, config.augment, img_size, config.model.num_classes,
                                           seed=config.seed, rank=info.rank, world_size=info.world_size)
    eval_loader = data.build_eval_loader(config.data, config.augment, img_size, rank=info.rank,
                                         world_size=info.world_size)
    return train_loader, eval_loader


def _step_groups(loader: data.TrainLoader, accum: int, bad_paths: list[str]) -> Iterator[list[data.Batch]]:
    """The loader's batches grouped into optimizer steps of ``accum`` micro-batches.

    A group ends at a multiple of ``accum`` or at the epoch's last batch, or early when a batch of the
    next group arrives first (the loader leaves out batches with no readable image). Each batch's
    unreadable paths go to ``bad_paths`` when it joins its group, not before the previous group's step:
    a recovery checkpoint taken at that step must not count a batch it does not include (a run resumed
    from it reads that batch again).
    """
    pending: list[data.Batch] = []
    for batch in loader:
        if pending and batch.index // accum != pending[0].index // accum:
            yield pending
            pending = []
        bad_paths.extend(batch.bad_paths)
        pending.append(batch)
        if (batch.index + 1) % accum == 0 or batch.index == len(loader) - 1:
            yield pending
            pending = []
    if pending:
        yield pending


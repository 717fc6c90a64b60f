"""Training orchestration: set-up, epochs, evaluation, checkpoints, logging (the step is vitreduce.train.step).

``train(config, out_dir)`` runs (or resumes, or reports as finished) one run directory as described
in docs/run-directory.md; ``vitreduce train`` is its command-line face. Under torchrun every rank
calls it; only rank 0 writes.
"""
from __future__ import annotations

import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from vitreduce.console import Progress
from vitreduce.data import loaders as data
from vitreduce.data.synth import ensure_synth
from vitreduce.errors import VitreduceError
from vitreduce.files import write_json
from vitreduce.reduction import checkpoint
from vitreduce.reduction.accounting import describe
from vitreduce.train import distributed, rundir, state
from vitreduce.train.config import TrainConfig
from vitreduce.train.distributed import DistInfo, gather_objects
from vitreduce.train.ema import Ema
from vitreduce.train.logs import MetricsFile, TensorBoard
from vitreduce.train.model import build_model
from vitreduce.train.optim import create_optimizer, create_scheduler, param_names
from vitreduce.train.step import EvalResult, NonFiniteError, StepContext, evaluate, train_step
from vitreduce.version import __version__

KILL_ENV = "VITREDUCE_TEST_KILL"  # "step:N" or "save:N": SIGKILL this process at the N-th event (tests)


@dataclass
class RunResult:
    """What ``train`` did."""

    run_dir: Path
    status: str  # "finished" (trained now) or "already-done"
    epochs: int
    final: dict[str, Any] = field(default_factory=dict)  # {"raw": {...}, "ema": {...} or None}
    resumed_from: str | None = None


def train(config: TrainConfig, out_dir: str | os.PathLike, resume: bool = False) -> RunResult:
    """Train (or resume) the run directory ``out_dir`` with ``config``.

    Args:
        config: the validated config.
        out_dir: run directory; created if missing, resumed if it holds this config's run.
        resume: require an existing run to resume (``--resume``).
    """
    info = distributed.init(config.device)
    try:
        return _Run(config, Path(out_dir), info).run(resume)
    finally:
        distributed.shutdown(info)


class _Run:
    def __init__(self, config: TrainConfig, out: Path, info: DistInfo):
        self.cfg, self.out, self.info = config, out, info
        self.ckpt_dir = out / rundir.CHECKPOINTS
        self.kills: dict[str, int] = {}
        self.bad_paths: list[str] = []  # this rank's unreadable files not yet counted in the position
        self.session_start = time.perf_counter()

    # ---- set-up -------------------------------------------------------------------------------

    def run(self, resume: bool) -> RunResult:
        cfg, info = self.cfg, self.info
        if cfg.precision == "fp16" and info.device.type != "cuda":
            raise VitreduceError("precision: fp16 needs a CUDA GPU (GradScaler); on CPU set precision: bf16 or fp32")
        start = info.agree(lambda: self._preflight(resume))
        if start.status == "done":
            info.on_main(print, f"{self.out}: run already finished (done.json); nothing to do")
            return RunResult(self.out, "already-done", cfg.epochs, start.done.get("final", {}))
        self._build()
        position = self._resume(start.checkpoint) if start.checkpoint else self._fresh()
        self.wall_base = position.wall_s
        self._wrap()
        self.metrics_file = MetricsFile(self.out / rundir.METRICS)
        info.on_main(self.metrics_file.truncate, position.epochs_done)
        self.tensorboard = info.on_main(self._tensorboard, position) if cfg.logging.tensorboard else None
        self.progress = Progress(cfg.logging.progress if info.is_main else "none", cfg.epochs, cfg.logging.every_steps)
        if start.checkpoint:
            self.progress.write(f"resuming {self.out} from {start.checkpoint} (epoch {position.epochs_done + 1}, "
                                f"batch {position.batch}, step {position.step})")
        try:
            final = self._epochs(position)
            self._finish(position, final)
        finally:
            if self.tensorboard is not None:
                self.tensorboard.close()
        return RunResult(self.out, "finished", cfg.epochs, self.final, start.checkpoint)

    def _preflight(self, resume: bool) -> rundir.RunStart:
        """Every check that can fail, before any work: run directory, data, init checkpoint."""
        cfg = self.cfg
        start = rundir.inspect(self.out, cfg, must_exist=resume)
        if start.status == "done":
            return start
        if cfg.synth is not None:
            ensure_synth(Path(cfg.data.root).expanduser(), cfg.synth)
        data.check_dataset(cfg.data, cfg.model.num_classes)
        if cfg.model.init_checkpoint and not Path(cfg.model.init_checkpoint).is_file():
            raise VitreduceError(f"model.init_checkpoint {cfg.model.init_checkpoint} does not exist")
        rundir.begin(self.out, cfg)
        return start

    def _build(self) -> None:
        cfg, info = self.cfg, self.info
        _seed_everything(cfg.seed)  # the same initial weights on every rank
        self.module = build_model(cfg.model).to(info.device)
        img_size = tuple(self.module.patch_embed.img_size)
        self.ema = Ema(self.module, cfg.ema.decay) if cfg.ema.enabled else None
        self.optimizer = create_optimizer(self.module, cfg.optimizer)
        self.loader = data.build_train_loader(cfg.data, cfg.augment, img_size, cfg.model.num_classes, seed=cfg.seed,
                                              rank=info.rank, world_size=info.world_size)
        self.eval_loader = data.build_eval_loader(cfg.data, cfg.augment, img_size, rank=info.rank,
                                                  world_size=info.world_size)
        self.steps_per_epoch = -(-len(self.loader) // cfg.optimizer.accum_steps)
        self.scheduler = create_scheduler(self.optimizer, cfg.schedule, cfg.epochs, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(info.device.type, enabled=cfg.precision == "fp16")
        self.trainables = state.Trainables(self.module, self.optimizer, self.scheduler, self.scaler, self.ema,
                                           param_names(self.module))

    def _fresh(self) -> state.Position:
        desc = describe(self.module)
        record = {**desc.record(), "seed": self.cfg.seed, "num_classes": self.cfg.model.num_classes,
                  "epochs": self.cfg.epochs, "vitreduce_version": __version__, "world_size": self.info.world_size}
        self.info.on_main(write_json, self.out / rundir.RUN, record)
        _seed_everything(self.cfg.seed + self.info.rank)  # per-rank streams for drop-path, as timm does
        return state.Position(world_size=self.info.world_size)

    def _resume(self, path: str) -> state.Position:
        position, rng = state.load(path, self.trainables, self.info.rank)
        if position.world_size != self.info.world_size:
            raise VitreduceError(
                f"{path} was saved by {position.world_size} process(es), this run has {self.info.world_size}: "
                "exact resume needs the same number (the data order and RNG streams are per rank)"
            )
        state.restore_rng(rng)
        return position

    def _wrap(self) -> None:
        model = self.module
        if self.cfg.compile:
            model = torch.compile(model)
        self.eval_model = model  # evaluation needs no gradient synchronisation
        if self.info.distributed:
            ids = [self.info.device.index] if self.info.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids)
        self.model = model
        self.ctx = StepContext.build(
            model, self.module, loss_fn=data.train_loss_fn(self.cfg.augment), optimizer=self.optimizer,
            scaler=self.scaler, ema=self.ema, precision=self.cfg.precision, device=self.info.device,
            clip_grad=self.cfg.optimizer.clip_grad, nonfinite=self.cfg.faults.nonfinite,
        )

    def _tensorboard(self, position: state.Position) -> TensorBoard:
        return TensorBoard(self.out / "tensorboard", purge_step=position.step + 1 if position.step else None)

    # ---- the loop -----------------------------------------------------------------------------

    def _epochs(self, position: state.Position) -> dict[str, EvalResult | None] | None:
        final = None
        for epoch in range(position.epochs_done, self.cfg.epochs):
            self._train_epoch(epoch, position)
            final = self._end_epoch(epoch, position, last=epoch == self.cfg.epochs - 1)
        return final

    def _train_epoch(self, epoch: int, position: state.Position) -> None:
        """Train epoch ``epoch`` (from 0) from ``position.batch`` on, updating ``position`` as it goes."""
        accum = self.cfg.optimizer.accum_steps
        self.loader.set_epoch(epoch, start_batch=position.batch)
        self.progress.start_epoch(epoch + 1, len(self.loader), position.batch)
        started = time.perf_counter() - position.sums["elapsed_s"]
        pending: list[data.Batch] = []
        for batch in self.loader:
            self.bad_paths.extend(batch.bad_paths)
            if pending and batch.index // accum != pending[0].index // accum:
                self._step(epoch, pending, position, started)  # a group cut short by an all-bad batch
                pending = []
            pending.append(batch)
            if (batch.index + 1) % accum == 0 or batch.index == len(self.loader) - 1:
                self._step(epoch, pending, position, started)
                pending = []
        if pending:
            self._step(epoch, pending, position, started)
        self.train_time = time.perf_counter() - started
        self.progress.end_epoch()

    def _step(self, epoch: int, batches: list[data.Batch], position: state.Position, started: float) -> None:
        device = self.info.device
        micro = [(b.images.to(device, non_blocking=True), b.targets.to(device, non_blocking=True)) for b in batches]
        try:
            result = train_step(self.ctx, micro)
        except NonFiniteError as err:
            last = self.ckpt_dir / "last"
            where = f"last good checkpoint: {last} -> {os.readlink(last)}" if last.is_symlink() else "no checkpoint yet"
            raise VitreduceError(
                f"epoch {epoch + 1}, step {position.step + 1} (batch {batches[-1].index}): {err}; the step was not "
                f"taken and the run stopped ({where}). Lower optimizer.lr, set optimizer.clip_grad, or set "
                "faults.nonfinite: skip to skip such steps"
            ) from None
        sums = position.sums
        position.step += 1
        position.batch = batches[-1].index + 1
        images = sum(len(b.images) for b in batches) * self.info.world_size
        if result.loss == result.loss and abs(result.loss) != float("inf"):
            sums["loss"] += result.loss
            sums["steps"] += 1
        sums["skipped"] += int(result.skipped)
        sums["images"] += images
        sums["elapsed_s"] = time.perf_counter() - started
        self.last_lr = self.optimizer.param_groups[0]["lr"]
        if result.skipped:
            self.progress.write(f"epoch {epoch + 1} step {position.step}: step skipped (loss {result.loss:.4g}, "
                                f"gradient norm {result.grad_norm:.4g})")
        self.scheduler.step_update(num_updates=position.step)
        self.progress.update(len(batches), images, result.loss, self.last_lr)
        every = self.cfg.checkpoint.recovery_every_steps
        if every and position.step % every == 0 and position.batch < len(self.loader):
            self._save(["recovery"], position)
        self._kill_hook("step")

    def _end_epoch(self, epoch: int, position: state.Position, last: bool) -> dict[str, EvalResult | None]:
        self._count_bad_images(position)
        epoch_start = time.perf_counter() - self.train_time
        results = self._evaluate(keep_predictions=last)
        sums = position.sums
        record = {
            "epoch": epoch + 1,
            "step": position.step,
            "lr": getattr(self, "last_lr", self.optimizer.param_groups[0]["lr"]),
            "train_loss": sums["loss"] / sums["steps"] if sums["steps"] else None,  # None: no finite step
            "img_s": sums["images"] / self.train_time if self.train_time > 0 else 0.0,
            "epoch_time_s": time.perf_counter() - epoch_start,
            "raw": results["raw"].metrics(),
            "ema": results["ema"].metrics() if results["ema"] else None,
            "skipped_steps": int(sums["skipped"]),
            "bad_images": int(sums["bad_images"]),
        }
        self.info.on_main(self.metrics_file.append, record)
        if self.tensorboard is not None:
            self.tensorboard.epoch(record)
        self.progress.write(_summary(record, self.cfg.epochs))
        self.scheduler.step(epoch + 1)
        kinds = ["last"] + (["best"] if self._is_best(record, position) else [])
        position.epochs_done, position.batch = epoch + 1, 0
        position.sums = state.Position().sums
        self._save(kinds, position)
        return results

    def _evaluate(self, keep_predictions: bool) -> dict[str, EvalResult | None]:
        def run(model):
            return evaluate(model, self.eval_loader, self.cfg.precision, self.info.device, keep_predictions)

        return {"raw": run(self.eval_model), "ema": run(self.ema.module) if self.ema is not None else None}

    def _is_best(self, record: dict[str, Any], position: state.Position) -> bool:
        kind, _ = self.cfg.best_metric.split("_")
        value = record[kind]["top1"]
        if position.best is not None and value <= position.best["value"]:
            return False
        position.best = {"metric": self.cfg.best_metric, "value": value, "epoch": record["epoch"]}
        return True

    def _count_bad_images(self, position: state.Position) -> None:
        """Add every rank's unreadable images since the last count to the position, and log their paths."""
        paths = [p for part in gather_objects(self.bad_paths, self.info) or [] for p in part]
        self.bad_paths = []
        mine = torch.tensor(len(paths) if self.info.is_main else 0, device=self.info.device)
        count = int(distributed.all_sum(mine).item())
        position.sums["bad_images"] += count
        if paths:
            self.progress.write(f"skipped {len(paths)} unreadable image(s): {', '.join(paths)}")

    def _save(self, kinds: list[str], position: state.Position) -> None:
        self._count_bad_images(position)
        position.wall_s = self.wall_base + time.perf_counter() - self.session_start
        rng = gather_objects(state.capture_rng(), self.info)
        self.info.on_main(state.save, self.ckpt_dir, kinds, self.trainables, position, rng,
                          on_written=lambda: self._kill_hook("save"))
        self.info.barrier()

    # ---- the end ------------------------------------------------------------------------------

    def _finish(self, position: state.Position, final: dict[str, EvalResult | None] | None) -> None:
        """predictions.csv, model files, done.json (re-evaluating when resumed after the last epoch)."""
        if final is None:
            final = self._evaluate(keep_predictions=True)
        gathered = {kind: _gather_predictions(result, self.info) if result else None for kind, result in final.items()}
        self.final = {kind: result.metrics() if result else None for kind, result in final.items()}
        if not self.info.is_main:
            return
        indices, labels, raw = gathered["raw"]
        ema = gathered["ema"][2] if gathered["ema"] else None
        rundir.write_predictions(self.out / rundir.PREDICTIONS, indices, labels, raw, ema)
        metadata = {"epoch": str(position.epochs_done), "step": str(position.step)}
        checkpoint.save(self.module, self.out / "model.safetensors", {**metadata, "weights": "raw"})
        if self.ema is not None:
            checkpoint.save(self.ema.module, self.out / "model_ema.safetensors", {**metadata, "weights": "ema"})
        wall = self.wall_base + time.perf_counter() - self.session_start
        write_json(self.out / rundir.DONE, {"epochs": self.cfg.epochs, "wall_s": wall, "final": self.final})
        self.progress.write(f"done: {self.out} ({_summary({'epoch': self.cfg.epochs, **self.final}, self.cfg.epochs)})")

    def _kill_hook(self, event: str) -> None:
        """Test hook: with VITREDUCE_TEST_KILL=event:n the process SIGKILLs itself at the n-th event."""
        spec = os.environ.get(KILL_ENV)
        if not spec:
            return
        target, _, count = spec.partition(":")
        if target == event:
            self.kills[event] = self.kills.get(event, 0) + 1
            if self.kills[event] == int(count):
                os.kill(os.getpid(), signal.SIGKILL)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _gather_predictions(result: EvalResult, info: DistInfo):
    parts = gather_objects((result.indices, result.labels, result.predictions), info)
    if not info.is_main:
        return None
    return tuple(torch.cat([p[i] for p in parts]) for i in range(3))


def _summary(record: dict[str, Any], epochs: int) -> str:
    text = f"epoch {record['epoch']}/{epochs}"
    if "train_loss" in record:
        loss = float("nan") if record["train_loss"] is None else record["train_loss"]
        text += f" train_loss {loss:.4f} lr {record['lr']:.3e} {record['img_s']:.1f} img/s"
    for kind in ("raw", "ema"):
        if record.get(kind):
            m = record[kind]
            text += f" | {kind} top1 {m['top1']:.2f} top5 {m['top5']:.2f} loss {m['loss']:.4f}"
    return text


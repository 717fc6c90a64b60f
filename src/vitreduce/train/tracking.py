"""Experiment trackers: TensorBoard, MLflow and Weights & Biases get the same scalars and the same config.

Each is off unless the train config's ``logging:`` section turns it on, so the packages are imported
only then (MLflow: ``mlflow-skinny``; W&B: ``wandb``). Every tracker receives, on rank 0:

- the run's config, flattened to dotted keys (``model.reduction``, ``model.name``, ``seed``, ...), as
  TensorBoard hparams, MLflow params and the W&B config, so runs can be filtered by any setting;
- the scalars of metrics.jsonl (``train/...``, ``eval_raw/...``, ``eval_ema/...``) and steps.jsonl
  (``step/...``, ``grad_norm_mlp/...``) at x = the optimizer step (``logs.epoch_scalars`` /
  ``logs.step_scalars``).

MLflow logs to ``logging.mlflow.uri`` (a tracking server's http(s):// URI, a ``file:`` URI or a folder),
by default a local file store in RUN_DIR/mlruns (``mlflow ui --backend-store-uri RUN_DIR/mlruns``).
W&B logs into RUN_DIR/wandb, offline by default (no network; ``wandb sync`` uploads later). A resumed
run continues the same MLflow run and W&B run (their ids are kept in RUN_DIR/tracking.json); the steps
trained again after the checkpoint are logged again (MLflow keeps both points; W&B keeps the first).
The report reads none of them.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from vitreduce.config_tree import flatten
from vitreduce.errors import VitreduceError
from vitreduce.files import write_json
from vitreduce.train.config import LoggingConfig, MlflowConfig, WandbConfig
from vitreduce.train.logs import TensorBoard, epoch_scalars, step_scalars

IDS = "tracking.json"  # {"mlflow": run id, "wandb": run id}: what a resumed run continues
_MLFLOW_BATCH = 100  # params per log_batch call: MLflow refuses more


def flat_params(config: dict[str, Any]) -> dict[str, str | int | float | bool]:
    """The config tree as ``{dotted key: scalar}``; lists and None as their JSON text."""
    return {key: value if isinstance(value, str | int | float | bool) else json.dumps(value)
            for key, value in flatten(config).items()}


class Trackers:
    """Every tracker the config turns on, fed alike (the trainer calls ``step``, ``epoch`` and ``close``)."""

    def __init__(self, sinks: list[Any]):
        self.sinks = sinks

    def step(self, record: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.step(record)

    def epoch(self, record: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.epoch(record)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def open_trackers(logging: LoggingConfig, config: dict[str, Any], out: Path, step: int) -> Trackers | None:
    """The trackers ``logging`` turns on for the run directory ``out``, each given the config; None when none is.

    Args:
        logging: the config's ``logging:`` section.
        config: the whole config tree (``TrainConfig.to_dict``).
        out: the run directory.
        step: the optimizer step the run starts from (0, or a resumed checkpoint's).
    """
    params = flat_params(config)
    ids = _read_ids(out)
    sinks: list[Any] = []
    if logging.tensorboard:
        sinks.append(TensorBoard(out / "tensorboard", purge_step=step + 1 if step else None))
    if logging.mlflow.enabled:
        sinks.append(MlflowTracker(logging.mlflow, out, ids.get("mlflow")))
    if logging.wandb.enabled:
        sinks.append(WandbTracker(logging.wandb, out, ids.get("wandb"), params))
    for sink in sinks:
        sink.params(params)
    started = {name: sink.run_id for sink in sinks if (name := getattr(sink, "name", None))}
    if started and started != ids:
        write_json(out / IDS, {**ids, **started})
    return Trackers(sinks) if sinks else None


def _read_ids(out: Path) -> dict[str, str]:
    try:
        ids = json.loads((out / IDS).read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in ids.items() if isinstance(v, str)} if isinstance(ids, dict) else {}


def _missing(package: str, key: str) -> VitreduceError:
    return VitreduceError(f"{key}: true needs the {package} package, which is not installed: pip install {package} "
                          f"(the version in requirements.lock), or set {key}: false")


def _run_name(out: Path) -> str:
    """``variant/seedN`` for a study's run directory, else the folder's name."""
    return f"{out.parent.name}/{out.name}" if out.name.startswith("seed") else out.name


class MlflowTracker:
    """One MLflow run per run directory, through ``MlflowClient`` (no global active run)."""

    name = "mlflow"

    def __init__(self, cfg: MlflowConfig, out: Path, run_id: str | None):
        uri = cfg.uri or str((out / "mlruns").absolute())
        if "://" not in uri and not uri.startswith("file:"):
            uri = Path(uri).expanduser().absolute().as_uri()  # a folder: MLflow's local file store
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks before using a file store
        try:
            from mlflow.entities import Metric, Param
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise _missing("mlflow-skinny", "logging.mlflow.enabled") from None
        self.metric, self.param = Metric, Param
        self.client = MlflowClient(tracking_uri=uri)
        if run_id is None:
            found = self.client.get_experiment_by_name(cfg.experiment)
            experiment = found.experiment_id if found else self.client.create_experiment(cfg.experiment)
            run_id = self.client.create_run(experiment, run_name=_run_name(out)).info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def params(self, params: dict[str, Any]) -> None:
        if self.client.get_run(self.run_id).data.params:
            return  # a resumed run: logged at its start (MLflow refuses to change a param)
        items = [self.param(key, str(value)) for key, value in params.items()]
        for start in range(0, len(items), _MLFLOW_BATCH):
            self.client.log_batch(self.run_id, params=items[start:start + _MLFLOW_BATCH])

    def _log(self, scalars: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[self.metric(tag, float(value), now, step)
                                                    for tag, value in scalars.items()])

    def step(self, record: dict[str, Any]) -> None:
        self._log(step_scalars(record), record["step"])

    def epoch(self, record: dict[str, Any]) -> None:
        self._log(epoch_scalars(record), record["step"])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandbTracker:
    """One W&B run per run directory, written under RUN_DIR/wandb."""

    name = "wandb"

    def __init__(self, cfg: WandbConfig, out: Path, run_id: str | None, params: dict[str, Any]):
        try:
            import wandb
        except ImportError:
            raise _missing("wandb", "logging.wandb.enabled") from None
        settings = wandb.Settings(silent=True, console="off", x_disable_stats=True)
        self.run = wandb.init(project=cfg.project, entity=cfg.entity, mode=cfg.mode, dir=str(out.absolute()),
                              name=_run_name(out), id=run_id, resume="allow" if run_id else None, config=params,
                              settings=settings)
        self.run_id = self.run.id

    def params(self, params: dict[str, Any]) -> None:
        pass  # given to wandb.init, which records them with the run

    def step(self, record: dict[str, Any]) -> None:
        self.run.log(step_scalars(record), step=record["step"])

    def epoch(self, record: dict[str, Any]) -> None:
        self.run.log(epoch_scalars(record), step=record["step"])

    def close(self) -> None:
        self.run.finish()

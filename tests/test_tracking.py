"""Experiment tracking: TensorBoard gets the config as hparams; MLflow (a local file store) and W&B (offline
mode) get the same scalars and config; none of them is on unless configured."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from vitreduce.train.config import validate
from vitreduce.train.logs import read_metrics
from vitreduce.train.loop import train
from vitreduce.train.tracking import IDS

WANTED = {"model.reduction": "grouped", "model.name": "vit_tiny_patch16_224", "seed": 3}


@pytest.fixture(scope="module")
def tracked(tiny_train_config, tmp_path_factory) -> Path:
    """A one-epoch run logged to TensorBoard, MLflow's local file store and W&B in offline mode."""
    home = tmp_path_factory.mktemp("home")
    patch = pytest.MonkeyPatch()
    for key in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # nothing written outside the test
        patch.setenv(key, str(home))
    out = tmp_path_factory.mktemp("tracked") / "run"
    logging = {"tensorboard": True, "mlflow": {"enabled": True}, "wandb": {"enabled": True}}
    try:
        train(validate(tiny_train_config(epochs=1, logging=logging)), out)
    finally:
        patch.undo()
    return out


def test_tensorboard_gets_the_config_as_hparams(tracked):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    hparams = {}
    for path in (tracked / "tensorboard").glob("events.*"):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "hparams":
                    data = HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    for key, item in data.session_start_info.hparams.items():
                        hparams[key] = item.string_value or item.number_value
    assert {key: hparams[key] for key in WANTED} == WANTED


def test_mlflow_local_store_gets_the_scalars_and_config(tracked):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(tracked / "mlruns").as_uri())
    run_id = json.loads((tracked / IDS).read_text())["mlflow"]
    run = client.get_run(run_id)
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert {key: run.data.params[key] for key in WANTED} == {key: str(value) for key, value in WANTED.items()}
    record = read_metrics(tracked / "metrics.jsonl")[-1]
    history = client.get_metric_history(run_id, "eval_ema/top1")
    assert [(point.step, point.value) for point in history] == [(record["step"], record["ema"]["top1"])]
    assert {point.step for point in client.get_metric_history(run_id, "step/loss")} == {1, 2, 3, 4}


def wandb_records(path: Path) -> list:
    """The protobuf records of a W&B offline run file (its LevelDB-style log: 32 KiB blocks of
    checksum(4) length(2) type(1) chunks; type 1 a whole record, 2/3/4 its first/middle/last part)."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, records, pending, position = path.read_bytes(), [], b"", 7  # after ':W&B', magic, version
    assert data[:4] == b":W&B"
    while position + 7 <= len(data):
        if 32768 - position % 32768 < 7:
            position += 32768 - position % 32768  # the block's tail is padding
            continue
        length, kind = struct.unpack("<HB", data[position + 4:position + 7])
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            records.append(Record.FromString(pending))
            pending = b""
    return records


def test_wandb_offline_gets_the_same_scalars_and_config(tracked):
    (file,) = (tracked / "wandb").glob("offline-run-*/run-*.wandb")
    config, history = {}, []
    for record in wandb_records(file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
    assert {key: config[key]["value"] if isinstance(config[key], dict) else config[key] for key in WANTED} == WANTED
    record = read_metrics(tracked / "metrics.jsonl")[-1]
    epoch = [row for row in history if "eval_ema/top1" in row]
    assert [(row["_step"], row["eval_ema/top1"]) for row in epoch] == [(record["step"], record["ema"]["top1"])]
    assert json.loads((tracked / IDS).read_text())["wandb"] in file.name


def test_no_tracker_runs_unless_configured(tiny_train_config, tmp_path):
    out = tmp_path / "run"
    train(validate(tiny_train_config(epochs=1)), out)
    assert not any((out / name).exists() for name in ("tensorboard", "mlruns", "wandb", IDS))

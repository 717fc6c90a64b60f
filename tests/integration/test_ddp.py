"""torchrun with 2 CPU processes (gloo) reaches the weights of 1 process with the same global batch."""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from vitreduce.train.config import validate
from vitreduce.train.loop import train


def config_tree(tiny_train_config, batch_size: int, accum_steps: int) -> dict:
    """The tiny train config with no augmentation and no drop-path: the only randomness left is the data
    order, which is the same global order for any number of ranks."""
    return tiny_train_config(
        seed=5, epochs=2, model={"drop_path_rate": 0.0}, data={"batch_size": batch_size, "workers": 0},
        augment={"enabled": False},  # the eval transform; no mixup/cutmix, erasing or repeats
        # SGD, not AdamW: Adam is nearly invariant to the gradient's scale, so it would hide a wrong average.
        optimizer={"name": "momentum", "lr": 0.05, "betas": None, "eps": None, "accum_steps": accum_steps},
        checkpoint={"recovery_every_steps": 0}, logging={"every_steps": 50},  # the defaults: no recovery saves
    )


@pytest.mark.slow
def test_two_ranks_match_one_process(tiny_train_config, python_one_thread, tmp_path):
    single = tmp_path / "single"
    # One thread here (conftest) and in each rank (python_one_thread).
    train(validate(config_tree(tiny_train_config, batch_size=8, accum_steps=1)), single)
    # 2 ranks x 2 images x 2 accumulated micro-batches = the same 8 images per optimizer step.
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(config_tree(tiny_train_config, batch_size=2, accum_steps=2)))
    ddp = tmp_path / "ddp"
    proc = python_one_thread(
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "vitreduce", "train", config, "--out", ddp,
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name in ("model.safetensors", "model_ema.safetensors"):
        a, b = load_file(str(single / name)), load_file(str(ddp / name))
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5, msg=f"{name}: {key}")
    # Rank 0 alone wrote the run: one line per epoch, eval over both ranks' shards.
    lines = [json.loads(line) for line in (ddp / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (single / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and [r["step"] for r in lines] == [r["step"] for r in reference]
    for got, want in zip(lines, reference, strict=True):
        assert got["raw"]["top1"] == want["raw"]["top1"]
        assert got["train_loss"] == pytest.approx(want["train_loss"], abs=1e-5)
    rows = (ddp / "predictions.csv").read_text().splitlines()
    assert rows[0] == "index,label,raw,ema" and [int(r.split(",")[0]) for r in rows[1:]] == list(range(16))
    assert json.loads((ddp / "run.json").read_text())["world_size"] == 2

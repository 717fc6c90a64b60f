"""A distillation run SIGKILLed mid-epoch and rerun ends bitwise identical to an uninterrupted one (the teacher
is rebuilt from its file, frozen, and draws nothing from the RNG streams)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import vitreduce

TIMING = ("img_s", "epoch_time_s", "teacher_s", "img_s_without_teacher")


def _config(tmp: Path, tiny_train_config) -> Path:
    torch.manual_seed(5)
    arch = dict(num_classes=4, img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2)
    teacher = vitreduce.save(vitreduce.create_model("vit_tiny_patch16_224", **arch), tmp / "teacher.safetensors")
    tree = tiny_train_config(distill={"teacher": str(teacher), "hard": 0.25, "hidden": 0.5},
                             model={"reduction": "grouped:relax=2"})
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _train(python, config: Path, out: Path):
    return python("-m", "vitreduce", "train", config, "--out", out, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_killed_distillation_run_resumes_bitwise(tiny_train_config, python_one_thread, killer, tmp_path):
    config = _config(tmp_path, tiny_train_config)
    reference = _train(python_one_thread, config, tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "run"
    killed = python_one_thread(killer, "step:7", config, out, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr
    resumed = _train(python_one_thread, config, out)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr + resumed.stdout
    for name in ("model.safetensors", "model_ema.safetensors"):
        a, b = load_file(str(tmp_path / "reference" / name)), load_file(str(out / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert (tmp_path / "reference" / "steps.jsonl").read_text() == (out / "steps.jsonl").read_text()

    def metrics(run: Path) -> list[dict]:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]

    assert metrics(tmp_path / "reference") == metrics(out)
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert all(s["distill"]["hidden"] > 0 for s in steps)

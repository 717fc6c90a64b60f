"""Distillation: the terms (zero soft loss when the teacher is the student), a frozen teacher in eval mode, the
config section, and a short run that logs the terms per step and records its teacher in run.json."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model

import vitreduce
from vitreduce.cli.main import main
from vitreduce.errors import VitreduceError
from vitreduce.train.config import changed_keys, validate
from vitreduce.train.distill import Distiller, file_sha256, load_teacher

TEACHER_ARCH = dict(num_classes=4, img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2)


def _cfg(tree: dict, teacher=None, **weights):
    return validate({**tree, "distill": {"teacher": str(teacher) if teacher else None, **weights}})


def test_the_teacher_as_student_gives_zero_soft_and_hidden_loss(images):
    student = tiny_model(drop_path_rate=0.0).train()  # train mode, but nothing stochastic in it
    cfg = validate({"data": {"root": "."}, "distill": {"teacher": "t.safetensors", "hidden": 1.0}}).distill
    distiller = Distiller(copy.deepcopy(student).eval().requires_grad_(False), student, cfg)
    targets = torch.tensor([0, 1, 2])
    loss = distiller.loss(student, images, targets, torch.nn.CrossEntropyLoss())
    parts = distiller.take()
    assert parts["soft"] == 0.0 and parts["hidden"] == 0.0
    logits = student(images)
    assert parts["hard"] == pytest.approx(F.cross_entropy(logits, logits.argmax(-1)).item(), rel=1e-6)
    assert loss.item() == pytest.approx(0.5 * parts["task"] + 1.0 * parts["hidden"], rel=1e-6)
    other = Distiller(tiny_model(seed=1, drop_path_rate=0.0), student, cfg)
    other.loss(student, images, targets, torch.nn.CrossEntropyLoss())
    assert other.take()["soft"] > 1e-4  # another teacher: the term can be non-zero


def test_the_teacher_is_frozen_in_eval_mode_and_must_predict_the_runs_classes(tmp_path, tiny_train_config):
    path = vitreduce.save(vitreduce.create_model("vit_tiny_patch16_224", **TEACHER_ARCH), tmp_path / "t.safetensors")
    teacher = load_teacher(_cfg(tiny_train_config(), path))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    wrong = vitreduce.save(vitreduce.create_model("vit_tiny_patch16_224", **{**TEACHER_ARCH, "num_classes": 3}),
                           tmp_path / "w.safetensors")
    with pytest.raises(VitreduceError, match="predicts 3 classes"):
        load_teacher(_cfg(tiny_train_config(), wrong))


def test_config_section_checks_and_old_runs_resume(tiny_train_config):
    with pytest.raises(VitreduceError, match="every loss weight"):
        _cfg(tiny_train_config(), "t.safetensors", task=0, soft=0)
    with pytest.raises(VitreduceError, match="distill.temperature"):
        _cfg(tiny_train_config(), "t.safetensors", temperature=0)
    new = _cfg(tiny_train_config()).to_dict()
    old = {k: v for k, v in new.items() if k != "distill"}  # a config.yaml written before the section
    assert changed_keys(old, new) == []
    assert changed_keys(old, _cfg(tiny_train_config(), "t.safetensors").to_dict())  # adding a teacher is a change


def test_a_distillation_run_logs_each_term_and_records_its_teacher(tmp_path, tiny_train_config):
    teacher = vitreduce.save(vitreduce.create_model("vit_tiny_patch16_224", **TEACHER_ARCH), tmp_path / "t.safetensors")
    tree = tiny_train_config(epochs=1, distill={"teacher": str(teacher), "hard": 0.25, "hidden": 0.25})
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(tree))
    assert main(["train", str(config), "--out", str(tmp_path / "run")]) == 0
    record = json.loads((tmp_path / "run" / "run.json").read_text())["teacher"]
    assert record["sha256"] == file_sha256(teacher) and record["file"] == str(teacher)
    assert set(record["val"]) == {"top1", "top5", "loss"} and record["params"] == vitreduce.describe(
        vitreduce.load(teacher)).params
    steps = [json.loads(line) for line in (tmp_path / "run" / "steps.jsonl").read_text().splitlines()]
    assert len(steps) == 4 and all(set(s["distill"]) == {"task", "soft", "hard", "hidden"} for s in steps)
    assert all(s["distill"]["soft"] > 0 for s in steps)
    epoch = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert epoch["teacher_s"] > 0 and epoch["img_s_without_teacher"] > epoch["img_s"]  # the teacher's cost

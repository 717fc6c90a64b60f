"""vitreduce compress: the config it writes (trained scale, relax, distillation, the teacher as init and
teacher), an end-to-end run on a tiny model with the side-by-side table, and its refusals."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import vitreduce
from vitreduce.cli.main import main
from vitreduce.errors import VitreduceError
from vitreduce.train.compress import TRAINED_SCALE, trained_spec
from vitreduce.train.config import load_config

ARCH = dict(num_classes=4, img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2)


def test_trained_spec_passes_the_scale_for_trained_weights_explicitly():
    assert str(trained_spec("grouped")) == f"grouped:scale={TRAINED_SCALE!r}"
    assert str(trained_spec("grouped:scale=auto,init=mean", relax=4)) == "grouped:init=mean,relax=4"
    assert str(trained_spec("shallow")) == "shallow:ratio=0.5"
    with pytest.raises(VitreduceError, match="shares nothing"):
        trained_spec("shallow", relax=2)


def test_compress_runs_end_to_end_and_writes_the_config_it_ran(tmp_path, tiny_dataset, capsys):
    torch.manual_seed(0)
    teacher = vitreduce.save(vitreduce.create_model("vit_tiny_patch16_224", **ARCH), tmp_path / "teacher.safetensors")
    out = tmp_path / "runs" / "small"
    code = main(["compress", str(teacher), "--reduction", "grouped:init=mean", "--relax", "2", "--hidden", "0.5",
                 "--data", str(tiny_dataset), "--epochs", "1", "--out", str(out), "--set", "data.batch_size=8",
                 "--set", "data.workers=0", "--set", "logging.progress=none"])
    assert code == 0
    config = load_config(tmp_path / "runs" / "small.yaml")
    assert config.model.reduction == "grouped:scale=1.0,init=mean,relax=2"
    assert config.model.init_checkpoint == config.distill.teacher == str(teacher)
    assert (config.distill.soft, config.distill.hidden, config.model.embed_dim) == (0.5, 0.5, 16)
    assert (out / "done.json").is_file()
    printed = capsys.readouterr().out
    lines = {line.split("  ")[0]: line for line in printed.splitlines()}
    for row in ("teacher", "student, zero-shot", "student, trained (raw)", "student, trained (ema)"):
        assert row in lines
    student = vitreduce.describe(vitreduce.load(out / "model.safetensors"))
    assert f"{student.params:,}" in lines["student, trained (ema)"]
    assert f"{vitreduce.describe(vitreduce.load(teacher)).params:,}" in lines["teacher"]
    assert "img/s with the teacher" in printed


def test_compress_refusals(tmp_path, tiny_dataset, capsys):
    plain = tmp_path / "plain.safetensors"
    save_file(vitreduce.create_model("vit_tiny_patch16_224", **ARCH).state_dict(), plain)
    base = ["compress", str(plain), "--reduction", "grouped", "--data", str(tiny_dataset), "--out",
            str(tmp_path / "run")]
    assert main(base) == 2
    assert "name it with --model" in capsys.readouterr().err
    assert main([*base, "--model", "vit_tiny_patch16_224", "--relax", "-1"]) == 2
    assert "--relax -1" in capsys.readouterr().err
    assert main([*base[:-2], "--model", "vit_tiny_patch16_224", "--data", str(tmp_path / "nowhere"), "--out",
                 str(tmp_path / "run")]) == 2
    assert "nowhere" in capsys.readouterr().err
    (tmp_path / "run.yaml").write_text("mine")
    assert main([*base, "--model", "vit_tiny_patch16_224", "--set", "model.num_classes=4"]) == 2
    assert "exists with another config" in capsys.readouterr().err
    assert (tmp_path / "run.yaml").read_text() == "mine" and not (tmp_path / "run").exists()


def test_a_teacher_trained_on_other_class_names_is_refused(tmp_path, tiny_dataset, capsys):
    """The student keeps the teacher's head and distils from its outputs, so its classes must be the folders',
    in order: one renamed folder would pair every later output with a shifted label. Refused before any file of
    the run is written, by compress (the student's init) and by a train config's distill.teacher."""
    import json
    import shutil

    from vitreduce.data.recorded import CLASSES
    from vitreduce.train.config import TrainConfig
    from vitreduce.train.distill import check_teacher

    classes = sorted(p.name for p in (tiny_dataset / "train").iterdir())
    teacher = vitreduce.save(vitreduce.create_model("vit_tiny_patch16_224", **ARCH), tmp_path / "t.safetensors",
                             metadata={CLASSES: json.dumps(classes)})
    data = tmp_path / "renamed"
    shutil.copytree(tiny_dataset, data)
    for split in ("train", "val"):
        (data / split / classes[1]).rename(data / split / "zz_renamed")
    out = tmp_path / "run"
    assert main(["compress", str(teacher), "--reduction", "grouped", "--data", str(data), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "does not hold the classes the teacher" in err and "zz_renamed" in err and not out.exists()
    config = TrainConfig.model_validate({"model": {"name": "vit_tiny_patch16_224", **ARCH},
                                         "data": {"root": str(data)}, "distill": {"teacher": str(teacher)}})
    with pytest.raises(VitreduceError, match="does not hold the classes distill.teacher"):
        check_teacher(config)
    check_teacher(config.model_copy(update={"data": config.data.model_copy(update={"root": str(tiny_dataset)})}))


@pytest.mark.slow
def test_the_tiny_compress_study_runs_every_way_back(tmp_path, monkeypatch):
    """studies/tiny/compress.yaml, one epoch: every variant trains from the teacher (the scratch one without it),
    and the summary counts the relaxed deltas as parameters."""
    import json
    from pathlib import Path

    from vitreduce.study import load_spec, run_study

    monkeypatch.chdir(tmp_path)
    teacher = tmp_path / "runs" / "studies" / "demo" / "runs" / "baseline" / "seed0" / "model_ema.safetensors"
    teacher.parent.mkdir(parents=True)
    torch.manual_seed(0)
    vitreduce.save(vitreduce.create_model("vit_tiny_patch16_224", num_classes=4, img_size=32, patch_size=8,
                                          embed_dim=32, depth=4, num_heads=2), teacher)
    spec = load_spec(Path(__file__).resolve().parents[1] / "studies" / "tiny" / "compress.yaml",
                     ["overrides.epochs=1"])
    run_study(spec, tmp_path / "study", echo=lambda *_: None)
    written = json.loads((tmp_path / "study" / "summary.json").read_text())  # the file's contract
    summary = written["variants"]
    pareto = written["study"]["pareto"]  # accuracy against unique parameters for every way back
    assert pareto is not None and {v for g in pareto["groups"].values() for v in g["variants"]} == set(summary)
    params = {name: summary[name]["params"] for name in ("baseline_ft", "grouped_ft", "relax4_distil",
                                                         "relax16_distil", "grouped_scratch")}
    assert params["grouped_ft"] == params["grouped_scratch"] < params["relax4_distil"] < params["relax16_distil"]
    assert params["relax4_distil"] < params["baseline_ft"]  # (width 32: rank 16 costs more than sharing saves)
    runs = tmp_path / "study" / "runs"
    assert "teacher" in json.loads((runs / "relax4_distil" / "seed0" / "run.json").read_text())
    assert "init" not in json.loads((runs / "grouped_scratch" / "seed0" / "run.json").read_text())

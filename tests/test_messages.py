"""Messages that say what to change, and shipped text that does not mislead.

Each case runs the command as a user would (``vitreduce.cli.main``) and checks the exit code and the words.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import tiny_model

import vitreduce
from vitreduce.cli import inspect_cmd
from vitreduce.cli.main import main
from vitreduce.data import DataConfig
from vitreduce.data.images import check_dataset
from vitreduce.errors import VitreduceError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted([*ROOT.glob("configs/**/*.yaml"), *ROOT.glob("studies/**/*.yaml")])


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A finished run's model files (4 classes, as tiny_dataset), with raw and EMA weights that differ."""
    run = tmp_path / "run"
    run.mkdir()
    vitreduce.save(tiny_model(num_classes=4, seed=0), run / "model.safetensors")
    vitreduce.save(tiny_model(num_classes=4, seed=1), run / "model_ema.safetensors")
    return run


def _fails(capsys, args: list[str], *words: str) -> str:
    assert main(args) == 2, args
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for word in words:
        assert word in err, (word, err)
    return err


# --- point 8: a run directory where eval takes one ---------------------------------------------------

SHARPNESS = ["--batches", "1", "--batch-size", "4", "--top-k", "0", "--trace-samples", "0", "--quiet", "--json",
             "--device", "cpu"]


@pytest.mark.parametrize("flags, name", [([], "model.safetensors"), (["--ema"], "model_ema.safetensors")])
def test_sharpness_takes_a_run_directory(run_dir, tiny_dataset, capsys, flags, name):
    assert main(["sharpness", str(run_dir), "--data", str(tiny_dataset), *SHARPNESS, *flags]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["checkpoint"] == str(run_dir / name)
    assert result["sam_sharpness"] == pytest.approx(result["sam_sharpness"])  # a number, not NaN


def test_sharpness_of_an_unfinished_run_says_what_is_missing(tmp_path, tiny_dataset, capsys):
    (tmp_path / "run").mkdir()
    _fails(capsys, ["sharpness", str(tmp_path / "run"), "--data", str(tiny_dataset), *SHARPNESS],
           "has no model.safetensors", "has not finished")


def test_landscape_takes_a_run_directory(run_dir, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "plots"
    args = ["landscape", str(run_dir), "--other", str(run_dir), "--ema", "--data", str(tiny_dataset), "--steps", "3",
            "--no-2d", "--batches", "1", "--batch-size", "4", "--device", "cpu", "--quiet"]
    assert main([*args, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert str(run_dir / "model_ema.safetensors") in text and (out / "surface_1d.csv").is_file()
    assert main(args) == 0  # default --out: beside the model file, inside the run directory
    assert (run_dir / "model_ema_landscape").is_dir()


def test_inspect_takes_a_run_directory(run_dir, capsys):
    assert main(["inspect", str(run_dir), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["reduction"] for row in rows] == ["none"]
    assert rows[0]["params"] == vitreduce.describe(tiny_model(num_classes=4)).params


def test_inspect_of_a_missing_path_is_not_called_an_unknown_model(tmp_path, capsys):
    err = _fails(capsys, ["inspect", str(tmp_path / "runs" / "nowhere")], "does not exist", "run directory")
    assert "unknown timm model" not in err and "hub id" not in err


def test_a_mistyped_vit_name_suggests_vits_only(capsys):
    err = _fails(capsys, ["inspect", "vit_bse_patch16_224"], "unknown timm model", "did you mean",
                 "vit_base_patch16_224")
    suggested = err.split("did you mean", 1)[1]
    assert all(name.startswith(("vit_", "deit_", "deit3_")) for name in re.findall(r"\w+_\w+", suggested))
    err = _fails(capsys, ["inspect", "resnt50"], "unknown timm model", "vit_*")
    assert "did you mean" not in err


def test_fp16_on_cpu_is_one_line_naming_precision_and_device(tiny_train_config, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_train_config()))
    err = _fails(capsys, ["train", str(config), "--set", "precision=fp16", "--set", "device=cpu",
                          "--out", str(tmp_path / "run")], "precision: fp16", "device is cpu", "bf16 or fp32")
    lines = err[err.index("vitreduce train: error:"):].splitlines()  # after any warning about threads
    assert len(lines) == 2 and lines[1].strip().startswith("precision: fp16")
    assert "'seed'" not in err and "(top level)" not in err and "got {" not in err
    assert not (tmp_path / "run").exists()


def test_eval_of_a_missing_split_names_split_and_the_folders_there(run_dir, tiny_dataset, tmp_path, capsys):
    err = _fails(capsys, ["eval", str(run_dir), "--data", str(tiny_dataset), "--split", "test", "--device", "cpu"],
                 "--split", "test/", "train/", "val/")
    assert "data." not in err
    _fails(capsys, ["eval", str(run_dir), "--data", str(tmp_path / "nodata"), "--device", "cpu"],
           "--data", "nodata", "is not a folder")


def test_training_on_a_missing_split_names_its_key_and_the_folders_there(tiny_dataset):
    data = DataConfig(root=str(tiny_dataset), val_split="test")
    with pytest.raises(VitreduceError, match=r"test is not a folder \(.* holds train/, val/\).*data\.val_split"):
        check_dataset(data, None)


# --- point 10: shipped text that names things that exist ---------------------------------------------

def _comments(path: Path) -> list[str]:
    return [line.split("#", 1)[1] for line in path.read_text().splitlines() if "#" in line]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_comments_cite_only_paths_a_user_has(path):
    for comment in _comments(path):
        for absolute in re.findall(r"(?<![\w.])/[\w.-]+(?:/[\w.-]+)*", comment):
            # Placeholders a user replaces (/path/to/..., /data/imagenet) are fine; a machine's own path is not.
            assert absolute.startswith(("/path/to/", "/data/")), (path, comment)
        for cited in re.findall(r"\b(?:configs|studies)/[\w./-]*\.yaml", comment):
            assert (ROOT / cited).is_file(), (path, cited)


@pytest.mark.parametrize("path", sorted(ROOT.glob("configs/demo/*.yaml")), ids=lambda p: p.name)
def test_each_demo_config_shows_its_own_command(path):
    commands = [c for c in _comments(path) if "vitreduce train" in c]
    assert commands, path
    for command in commands:
        assert f"configs/demo/{path.name}" in command and f"runs/{path.stem}" in command, command


def test_inspect_help_examples_name_placeholders_or_real_names():
    examples = [line.split("(")[0].split()[2:] for line in inspect_cmd.__doc__.splitlines()
                if line.strip().startswith("vitreduce inspect")]
    assert examples
    for words in examples:
        model = words[0]
        assert model.startswith("RUN_DIR") or "/" not in model and not model.endswith(".safetensors"), model

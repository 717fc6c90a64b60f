"""End to end on CPU: every shipped config's tiny variant trains, the run directory follows the contract,
bad input is refused before training, faults are handled, fine-tuning keeps the sharing, eval agrees."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

import vitreduce
from vitreduce.cli.main import main
from vitreduce.train.config import ModelConfig, load_config
from vitreduce.train.model import build_model

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "configs" / "paper").glob("*.yaml")) + sorted((REPO / "configs" / "demo").glob("*.yaml"))
TINY_CONFIG = REPO / "configs" / "tiny.yaml"
RUN_KEYS = {"model", "reduction", "seed", "params", "mlp_params", "unique_mlps", "mlp_hidden", "embed_dim",
            "macs_linear", "macs_total", "num_classes", "epochs", "vitreduce_version"}
METRIC_KEYS = {"epoch", "step", "lr", "train_loss", "img_s", "epoch_time_s", "raw", "ema", "skipped_steps",
               "bad_images"}


def train_cli(*args: str) -> int:
    return main(["train", *map(str, args)])


@pytest.mark.parametrize("config", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_tiny_variant_of_each_shipped_config_trains(config, tiny_dataset, tmp_path):
    out = tmp_path / "run"
    assert train_cli(config, TINY_CONFIG, "--set", f"data.root={tiny_dataset}", "--out", out) == 0
    resolved = load_config(out / "config.yaml")
    assert resolved == load_config([config, TINY_CONFIG], [f"data.root={tiny_dataset}"])
    run = json.loads((out / "run.json").read_text())
    assert set(run) >= RUN_KEYS and run["embed_dim"] == 16 and run["reduction"] == resolved.model.reduction
    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert set(record) == METRIC_KEYS and record["epoch"] == 1
    steps = -(-4 // resolved.optimizer.accum_steps)  # 32 images / batch 8 = 4 micro-batches
    assert record["step"] == steps and math.isfinite(record["train_loss"])
    assert set(record["raw"]) == {"top1", "top5", "loss"} and set(record["ema"]) == {"top1", "top5", "loss"}
    rows = (out / "predictions.csv").read_text().splitlines()
    assert rows[0] == "index,label,raw,ema" and len(rows) == 1 + 16
    done = json.loads((out / "done.json").read_text())
    assert done["epochs"] == 1 and done["final"]["raw"] == record["raw"] and done["final"]["ema"] == record["ema"]
    raw, ema = vitreduce.load(out / "model.safetensors"), vitreduce.load(out / "model_ema.safetensors")
    assert vitreduce.describe(raw).unique_mlps == run["unique_mlps"] == vitreduce.describe(ema).unique_mlps


def test_synth_data_tensorboard_and_eval(tmp_path, capsys):
    """data.root missing + a synth section: the dataset is generated; TensorBoard files; `vitreduce eval` agrees."""
    root, out = tmp_path / "synth-generated", tmp_path / "run"
    assert train_cli(REPO / "configs" / "demo" / "grouped.yaml", TINY_CONFIG, "--set", f"data.root={root}",
                     "--set", "logging.tensorboard=true", "--out", out) == 0
    assert (root / "vitreduce_synth.json").is_file() and list((out / "tensorboard").glob("events.out.tfevents.*"))
    capsys.readouterr()
    assert main(["eval", str(out), "--data", str(root), "--ema", "--json", "--workers", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    final = json.loads((out / "done.json").read_text())["final"]["ema"]
    assert result["images"] == 16 and result["top1"] == pytest.approx(final["top1"])
    assert result["loss"] == pytest.approx(final["loss"], rel=1e-5)
    assert main(["eval", str(out / "checkpoints" / "best" / "model.safetensors"), "--data", str(root)]) == 0


def test_synth_folder_made_with_other_settings_is_refused(tiny_dataset):
    from vitreduce.data.synth import SynthConfig, ensure_synth

    ensure_synth(tiny_dataset, SynthConfig(classes=4, train_per_class=8, val_per_class=4, size=16))  # matches: used
    with pytest.raises(vitreduce.VitreduceError, match="delete that folder or point data.root elsewhere"):
        ensure_synth(tiny_dataset, SynthConfig(classes=4, train_per_class=9, val_per_class=4, size=16))


# ---- bad input: refused before training, exit code 2 -----------------------------------------


def _tiny_args(dataset: Path, out: Path, *sets: str) -> list:
    args = [REPO / "configs" / "demo" / "baseline.yaml", TINY_CONFIG, "--set", f"data.root={dataset}", "--out", out]
    for item in sets:
        args += ["--set", item]
    return args


def test_placeholder_data_root_is_refused(tmp_path, capsys):
    paper = REPO / "configs" / "paper" / "vit_b16_in1k_baseline.yaml"
    assert train_cli(paper, "--set", "precision=bf16", "--out", tmp_path / "run") == 2
    assert "data.root /path/to/imagenet is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_empty_class_folder_is_refused(tiny_dataset, tmp_path, capsys):
    root = tmp_path / "data"
    for split in ("train", "val"):
        (root / split / "a").mkdir(parents=True)
        (root / split / "b").mkdir(parents=True)
        (root / split / "a" / "x.png").write_bytes((tiny_dataset / split / "c0_stripes_h" / "00000.png").read_bytes())
    assert train_cli(*_tiny_args(root, tmp_path / "run", "model.num_classes=2")) == 2
    assert "is not a usable ImageFolder tree" in capsys.readouterr().err


def test_num_classes_mismatch_is_refused(tiny_dataset, tmp_path, capsys):
    assert train_cli(*_tiny_args(tiny_dataset, tmp_path / "run", "model.num_classes=7")) == 2
    assert "set model.num_classes=4" in capsys.readouterr().err


def test_unwritable_run_directory_is_refused(tiny_dataset, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert train_cli(*_tiny_args(tiny_dataset, blocker / "run")) == 2
    assert "cannot create run directory" in capsys.readouterr().err


def test_missing_init_checkpoint_is_refused(tiny_dataset, tmp_path, capsys):
    assert train_cli(*_tiny_args(tiny_dataset, tmp_path / "run", f"model.init_checkpoint={tmp_path / 'no.pth'}")) == 2
    assert "does not exist" in capsys.readouterr().err


def test_foreign_nonempty_directory_is_refused(tiny_dataset, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    assert train_cli(*_tiny_args(tiny_dataset, tmp_path / "run")) == 2
    assert "holds no vitreduce run" in capsys.readouterr().err


# ---- faults during training --------------------------------------------------------------------


def _copy_dataset(dataset: Path, target: Path) -> Path:
    for path in dataset.rglob("*.png"):
        dest = target / path.relative_to(dataset)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(path.read_bytes())
    return target


def test_corrupt_images_are_skipped_counted_and_logged(tiny_dataset, tmp_path, capsys):
    root = _copy_dataset(tiny_dataset, tmp_path / "data")
    bad = root / "train" / "c1_stripes_v" / "00003.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert train_cli(*_tiny_args(root, tmp_path / "ok", "data.max_bad_fraction=0.2")) == 0
    (record,) = [json.loads(line) for line in (tmp_path / "ok" / "metrics.jsonl").read_text().splitlines()]
    assert record["bad_images"] == 1
    assert str(bad) in capsys.readouterr().err
    assert train_cli(*_tiny_args(root, tmp_path / "strict", "data.max_bad_fraction=0.0")) == 2
    assert "could not be read" in capsys.readouterr().err


@pytest.fixture(scope="module")
def nan_checkpoint(tmp_path_factory) -> Path:
    """A tiny baseline checkpoint with one NaN weight: every loss is NaN."""
    config = load_config([REPO / "configs" / "demo" / "baseline.yaml", TINY_CONFIG])
    model = build_model(config.model)
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    return vitreduce.save(model, tmp_path_factory.mktemp("nan") / "nan.safetensors")


def test_nonfinite_loss_halts_naming_epoch_and_step(tiny_dataset, nan_checkpoint, tmp_path, capsys):
    assert train_cli(*_tiny_args(tiny_dataset, tmp_path / "run", f"model.init_checkpoint={nan_checkpoint}")) == 2
    err = capsys.readouterr().err
    assert "epoch 1, step 1" in err and "non-finite loss" in err and "no checkpoint yet" in err
    assert "faults.nonfinite: skip" in err


def test_nonfinite_skip_counts_the_skipped_steps(tiny_dataset, nan_checkpoint, tmp_path):
    out = tmp_path / "run"
    assert train_cli(*_tiny_args(tiny_dataset, out, f"model.init_checkpoint={nan_checkpoint}",
                                 "faults.nonfinite=skip")) == 0
    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert record["skipped_steps"] == record["step"] == 4 and record["train_loss"] is None


# ---- fine-tuning -------------------------------------------------------------------------------

FINETUNE_VIT = dict(img_size=16, patch_size=4, embed_dim=16, depth=4, num_heads=2)


def test_finetune_from_a_grouped_checkpoint_keeps_the_sharing_with_a_new_head(tmp_path):
    torch.manual_seed(0)
    source = vitreduce.create_model("vit_tiny_patch16_224", reduction="grouped", num_classes=5, **FINETUNE_VIT)
    path = vitreduce.save(source, tmp_path / "grouped.safetensors")
    cfg = ModelConfig(name="vit_tiny_patch16_224", reduction="grouped", num_classes=3, init_checkpoint=str(path),
                      **FINETUNE_VIT)
    model = build_model(cfg)
    assert model.head.weight.shape == (3, 16)
    for first in (0, 2):
        assert model.blocks[first].mlp is model.blocks[first + 1].mlp  # still shared
        for name, value in model.blocks[first].mlp.state_dict().items():
            assert torch.equal(value, source.blocks[first].mlp.state_dict()[name])
    assert torch.equal(model.pos_embed, source.pos_embed)
    # A reduced file cannot take another reduction; the message names both ways forward.
    with pytest.raises(vitreduce.VitreduceError, match="already reduced.*set model.reduction to 'grouped'.*unreduced"):
        build_model(cfg.model_copy(update={"reduction": "shallow:ratio=0.5"}))
    with pytest.raises(vitreduce.VitreduceError, match="set model.name to vit_tiny_patch16_224"):
        build_model(cfg.model_copy(update={"name": "vit_small_patch16_224"}))


def test_finetune_from_a_timm_state_dict_applies_the_reduction(tmp_path):
    torch.manual_seed(1)
    full = vitreduce.create_model("vit_tiny_patch16_224", num_classes=5, **FINETUNE_VIT)
    path = tmp_path / "timm.pth"
    torch.save(full.state_dict(), path)
    cfg = ModelConfig(name="vit_tiny_patch16_224", reduction="grouped", num_classes=3, init_checkpoint=str(path),
                      **FINETUNE_VIT)
    model = build_model(cfg)
    assert model.blocks[0].mlp is model.blocks[1].mlp and model.head.weight.shape == (3, 16)
    # Block 0's trained MLP kept as it is: scale=auto multiplies trained weights by 1 (docs/reductions.md);
    # the published 1/sqrt(2) on request.
    assert torch.equal(model.blocks[0].mlp.fc1.weight, full.blocks[0].mlp.fc1.weight)
    scaled = build_model(cfg.model_copy(update={"reduction": "grouped:scale=0.7071067811865475"}))
    torch.testing.assert_close(scaled.blocks[0].mlp.fc1.weight, full.blocks[0].mlp.fc1.weight / math.sqrt(2))
    assert torch.equal(model.blocks[3].attn.qkv.weight, full.blocks[3].attn.qkv.weight)


def test_paper_recipe_builds_on_a_real_vit_b16_layout():
    """The full-size grouped recipe builds (meta device: no memory) with one optimizer entry per unique tensor."""
    from vitreduce.reduction.params import unique_parameters
    from vitreduce.train.optim import create_optimizer, param_groups

    config = load_config(REPO / "configs" / "paper" / "vit_b16_in1k_grouped.yaml")
    model = vitreduce.create_model(config.model.name, reduction=config.model.reduction, device="meta",
                                   **config.model.timm_kwargs())
    optimizer = create_optimizer(model, config.optimizer)
    count = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    assert count == sum(p.numel() for p in unique_parameters(model)) == 58_233_064
    decayed = param_groups(model, 0.05)[1]["params"]
    assert all(p.ndim == 2 or p.ndim == 4 for p in decayed)
    assert yaml.safe_load((REPO / "configs" / "paper" / "vit_b16_in1k_grouped.yaml").read_text())["data"]["root"]

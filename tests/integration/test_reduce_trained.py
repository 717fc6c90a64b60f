"""Reducing and fine-tuning trained weights: timm train.py's .pth.tar checkpoints (raw and EMA), unreduced
vitreduce model files reduced after loading, what fine-tuning loaded, and init_checkpoint stored absolute."""
from __future__ import annotations

import argparse
import json
import math
import os

import pytest
import timm
import torch
import yaml

import vitreduce
from vitreduce.cli.main import main
from vitreduce.reduction.weights import read_state_dict
from vitreduce.train.config import ModelConfig, changed_keys, load_config
from vitreduce.train.model import build_model, start_model

ARCH = dict(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2)  # tiny_train_config's model
ARCH_ARGS = [f"--model-arg={k}={v}" for k, v in ARCH.items()]


def full_model(seed: int, num_classes: int = 5) -> torch.nn.Module:
    torch.manual_seed(seed)
    return vitreduce.create_model("vit_tiny_patch16_224", num_classes=num_classes, **ARCH)


def write_timm_checkpoint(path, model, ema) -> None:
    """A file laid out as timm's train.py CheckpointSaver writes model_best.pth.tar (timm/utils/checkpoint_saver.py)."""
    optimizer = torch.optim.AdamW(model.parameters())
    args = argparse.Namespace(model="vit_tiny_patch16_224", lr=1e-3, epochs=3, model_ema=True, mean=None,
                              data_dir="/data/imagenet", sched="cosine")
    torch.save({
        "epoch": 2, "arch": args.model, "optimizer": optimizer.state_dict(), "version": 2, "args": args,
        "state_dict": model.state_dict(), "state_dict_ema": ema.state_dict(), "metric": 61.5,
        "saver": {"epoch": 2, "metric": 61.5, "checkpoint_files": [["./checkpoint-2.pth.tar", 61.5]]},
    }, path)


@pytest.fixture
def timm_checkpoint(tmp_path):
    model, ema = full_model(0), full_model(1)
    path = tmp_path / "model_best.pth.tar"
    write_timm_checkpoint(path, model, ema)
    return path, model, ema


def test_a_timm_train_checkpoint_reads_raw_by_default_and_ema_on_request(timm_checkpoint):
    path, model, ema = timm_checkpoint
    raw = read_state_dict(path)
    assert raw.keys() == model.state_dict().keys()
    assert all(torch.equal(raw[k], v) for k, v in model.state_dict().items())
    for selected in (read_state_dict(path, "state_dict_ema"), read_state_dict(f"{path}#state_dict_ema")):
        assert all(torch.equal(selected[k], v) for k, v in ema.state_dict().items())


def test_a_namespace_outside_args_and_code_under_args_are_refused(tmp_path):
    sneaky = tmp_path / "sneaky.pth.tar"
    torch.save({"state_dict": full_model(0).state_dict(), "optimizer": {"hidden": argparse.Namespace(a=1)}}, sneaky)
    with pytest.raises(vitreduce.VitreduceError, match="argparse.Namespace.*weights_only=False.*state_dict"):
        read_state_dict(sneaky)

    class RunsCode:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": full_model(0).state_dict(), "args": RunsCode()}, evil)
    with pytest.raises(vitreduce.VitreduceError, match="refused to load.*system"):
        read_state_dict(evil)


def test_missing_ema_and_selection_in_a_safetensors_file_are_named(tmp_path):
    plain = tmp_path / "plain.pth"
    torch.save({"state_dict": full_model(0).state_dict()}, plain)
    with pytest.raises(vitreduce.VitreduceError, match="no 'state_dict_ema' entry.*drop the EMA choice"):
        read_state_dict(plain, "state_dict_ema")
    saved = vitreduce.save(full_model(0), tmp_path / "model.safetensors")
    with pytest.raises(vitreduce.VitreduceError, match="holds one set of weights"):
        read_state_dict(saved, "state_dict_ema")


def test_reduce_cli_takes_the_ema_of_a_timm_checkpoint(timm_checkpoint, tmp_path, capsys):
    path, _, ema = timm_checkpoint
    expected = vitreduce.reduce(ema, "shallow")
    for weights, extra in ((str(path), ["--ema"]), (f"{path}#state_dict_ema", [])):
        out = tmp_path / f"shallow{len(extra)}.safetensors"
        assert main(["reduce", "vit_tiny_patch16_224", "--weights", weights, *extra, "--reduction", "shallow",
                     *ARCH_ARGS, "--out", str(out)]) == 0
        assert "(EMA)" in capsys.readouterr().out or not extra
        reduced = vitreduce.load(out)
        assert all(torch.equal(reduced.state_dict()[k], v) for k, v in expected.state_dict().items())


def test_reduce_cli_reads_the_architecture_from_a_vitreduce_header(tmp_path, capsys):
    baseline = vitreduce.save(full_model(2), tmp_path / "model_ema.safetensors")
    out = tmp_path / "grouped.safetensors"
    assert main(["reduce", "--weights", str(baseline), "--reduction", "grouped", "--out", str(out)]) == 0
    assert "vit_tiny_patch16_224 grouped" in capsys.readouterr().out
    expected = vitreduce.reduce(vitreduce.load(baseline), "grouped", trained=True)  # scale=auto: x1 on trained
    images = torch.randn(2, 3, 16, 16)  # (B, C, H, W)
    assert torch.equal(vitreduce.load(out).eval()(images), expected.eval()(images))
    refusals = (
        (["--model-arg", "depth=2"], "header gives the architecture; drop --model-arg"),
        (["vit_small_patch16_224"], "holds vit_tiny_patch16_224, not vit_small_patch16_224"),
        (["--ema"], "drop --ema"),
    )
    for extra, message in refusals:
        assert main(["reduce", *extra, "--weights", str(baseline), "--reduction", "grouped",
                     "--out", str(tmp_path / "x.safetensors")]) == 2
        assert message in capsys.readouterr().err
    for reduction, message in (("shallow", "already reduced ('grouped')"), ("grouped", "nothing to do")):
        assert main(["reduce", "--weights", str(out), "--reduction", reduction,
                     "--out", str(tmp_path / "y.safetensors")]) == 2
        assert message in capsys.readouterr().err
    assert main(["reduce", "--reduction", "grouped", "--out", str(tmp_path / "w.safetensors")]) == 2
    assert "name the timm model" in capsys.readouterr().err


def test_an_unreduced_vitreduce_file_is_reduced_after_loading_with_a_fresh_head(tmp_path):
    baseline = full_model(3, num_classes=5)
    path = vitreduce.save(baseline, tmp_path / "model_ema.safetensors")
    cfg = ModelConfig(name="vit_tiny_patch16_224", reduction="grouped", num_classes=4, init_checkpoint=str(path),
                      **ARCH)
    model, report = start_model(cfg)
    assert model.blocks[0].mlp is model.blocks[1].mlp and model.head.weight.shape == (4, 16)
    # Trained weights: scale=auto keeps the first block's MLP as it was trained (docs/reductions.md).
    assert torch.equal(model.blocks[0].mlp.fc1.weight, baseline.blocks[0].mlp.fc1.weight)
    scaled, _ = start_model(cfg.model_copy(update={"reduction": "grouped:scale=0.7071067811865475"}))
    torch.testing.assert_close(scaled.blocks[0].mlp.fc1.weight, baseline.blocks[0].mlp.fc1.weight / math.sqrt(2))
    assert report.reduction_applied == "grouped" and report.reinitialised == ["head.bias", "head.weight"]
    assert report.skipped == ["head.bias", "head.weight"] and report.loaded == len(baseline.state_dict()) - 2
    assert report.line().startswith(f"model.init_checkpoint: loaded {report.loaded} tensors from {path} into the "
                                    "full model, then applied reduction grouped; skipped head.bias, head.weight")
    _, thin = start_model(cfg.model_copy(update={"reduction": "thin:ratio=0.5", "num_classes": 5}))
    assert thin.skipped == [] and "blocks.0.mlp.fc1.weight" in thin.reinitialised  # thin builds fresh MLPs
    same = start_model(cfg.model_copy(update={"reduction": "none"}))[1]
    assert same.reduction_applied is None and "into the full model" not in same.line()


def test_init_checkpoint_is_stored_absolute_and_a_relative_rerun_compares_equal(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = ModelConfig(init_checkpoint="weights/model_best.pth.tar#state_dict_ema", **ARCH)
    assert cfg.init_checkpoint == f"{tmp_path}/weights/model_best.pth.tar#state_dict_ema"
    new = {"model": {"init_checkpoint": cfg.init_checkpoint}}
    assert changed_keys({"model": {"init_checkpoint": "weights/model_best.pth.tar#state_dict_ema"}}, new) == []
    assert changed_keys({"model": {"init_checkpoint": "other.pth"}}, new)


def test_train_from_a_timm_ema_checkpoint_says_what_it_loaded(timm_checkpoint, tiny_train_config, tmp_path,
                                                               monkeypatch, capsys):
    path, _, ema = timm_checkpoint
    monkeypatch.chdir(path.parent)
    tree = tiny_train_config(epochs=1, model={"init_checkpoint": f"{path.name}#state_dict_ema", "num_classes": 4},
                             checkpoint={"recovery_every_steps": 0})
    config = tmp_path / "finetune.yaml"
    config.write_text(yaml.safe_dump(tree))
    out = tmp_path / "run"
    assert main(["train", str(config), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"loaded {len(ema.state_dict()) - 2} tensors from {path}#state_dict_ema into the full model, then applied " \
           "reduction grouped; skipped head.bias, head.weight (shape differs); re-initialised head.bias" in printed
    init = json.loads((out / "run.json").read_text())["init"]
    assert init == {"source": f"{path}#state_dict_ema", "loaded": len(ema.state_dict()) - 2,
                    "skipped": ["head.bias", "head.weight"], "reinitialised": ["head.bias", "head.weight"],
                    "reduction_applied": "grouped", "scaling": init["scaling"]}
    assert init["scaling"].startswith("grouped: shared MLPs' fc1 and fc2.weight x1 for 2 block(s) (scale=auto on "
                                      "trained weights")
    assert load_config(out / "config.yaml").model.init_checkpoint == f"{path}#state_dict_ema"
    # The same relative path given again from the same directory is the same config: the run is done.
    assert main(["train", str(config), "--out", str(out)]) == 0
    assert "already finished" in capsys.readouterr().out
    started = build_model(load_config(config).model)
    assert started.blocks[0].mlp is started.blocks[1].mlp


def test_registered_variants_of_every_size_build_and_promise_no_weights():
    for size, width in (("tiny", 192), ("small", 384), ("base", 768), ("large", 1024)):
        for variant in ("grouped", "shallow", "thin"):
            name = f"vit_{size}_patch16_224_{variant}_mlp"
            model = timm.create_model(name, num_classes=10, device="meta")
            d = vitreduce.describe(model)
            assert d.embed_dim == width and d.model == f"vit_{size}_patch16_224" and model.num_classes == 10
            assert d.unique_mlps == (len(model.blocks) // 2 if variant == "grouped" else len(model.blocks))
            cfg = timm.models.get_pretrained_cfg(name)
            assert cfg.architecture == name and not cfg.hf_hub_id and not cfg.url and not cfg.has_weights
            assert not model.pretrained_cfg.get("hf_hub_id") and not model.pretrained_cfg.get("url")
            with pytest.raises(vitreduce.VitreduceError, match="no pretrained weights"):
                timm.create_model(name, pretrained=True)
    assert not timm.list_models("vit_*_mlp", pretrained=True)


def test_train_reduces_a_baseline_model_file_given_with_set(tiny_train_config, tmp_path, capsys):
    """The issue's command: a trained baseline's model_ema.safetensors plus another model.reduction."""
    baseline = vitreduce.save(full_model(4, num_classes=4), tmp_path / "model_ema.safetensors")
    config = tmp_path / "baseline.yaml"
    config.write_text(yaml.safe_dump(tiny_train_config(epochs=1, model={"reduction": "none"},
                                                       checkpoint={"recovery_every_steps": 0})))
    out = tmp_path / "shallow"
    assert main(["train", str(config), "--set", f"model.init_checkpoint={baseline}", "--set", "model.reduction=shallow",
                 "--out", str(out)]) == 0
    assert f"from {baseline} into the full model, then applied reduction shallow:ratio=0.5" in capsys.readouterr().out
    init = json.loads((out / "run.json").read_text())["init"]
    assert init["reinitialised"] == [] and init["reduction_applied"] == "shallow:ratio=0.5"
    grouped = vitreduce.save(vitreduce.reduce(full_model(4, num_classes=4), "grouped"), tmp_path / "g.safetensors")
    assert main(["train", str(config), "--set", f"model.init_checkpoint={grouped}", "--set", "model.reduction=shallow",
                 "--out", str(tmp_path / "refused")]) == 2
    assert "set model.reduction to 'grouped' to use it as it is" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()

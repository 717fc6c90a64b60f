"""Swin and EVA-02 through the command line as a ViT goes: `reduce` writes a file that reloads with its
sharing and the counts `inspect` gives; `train`, `eval`, `sharpness` and `profile` accept the family."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from torch import nn

import vitreduce
from vitreduce.cli.main import main
from vitreduce.data.synth import write_synth_dataset
from vitreduce.reduction.blocks import block_stages

# Tiny shapes of the two new families on 32x32 images (as in studies/tiny/architectures.yaml):
# Swin: a stage of two blocks in 4x4 windows, a patch merging, then a single-block stage;
# EVA-02 (SwiGLU MLPs, rotary embeddings): four blocks of width 32.
FAMILIES = {
    "swin": ("swin_tiny_patch4_window7_224",
             {"embed_dim": 16, "depths": [2, 1], "num_heads": [1, 2], "window_size": 4, "patch_size": 4,
              "img_size": 32}),
    "eva02": ("eva02_small_patch14_224",
              {"embed_dim": 32, "depth": 4, "num_heads": 2, "patch_size": 8, "img_size": 32}),
}
CLASSES = 3


def model_args(arch: dict) -> list[str]:
    """``--model-arg KEY=VALUE`` for each kwarg (values in YAML's flow form, lists as [2, 1])."""
    return [item for key, value in arch.items()
            for item in ("--model-arg", f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}")]


def unique_parameters(model: nn.Module) -> int:
    """Parameters counted once per storage, independently of nn.Module's own de-duplication."""
    sizes = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() // p.element_size()
             for _, p in model.named_parameters(remove_duplicate=False)}
    return sum(sizes.values())


def inspect_json(capsys, *argv: str) -> list[dict]:
    capsys.readouterr()
    assert main(["inspect", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_synth_dataset(tmp_path_factory.mktemp("data") / "synth", classes=CLASSES, train_per_class=4,
                               val_per_class=2, size=32)


@pytest.mark.parametrize("reduction", ["grouped", "shallow"])
@pytest.mark.parametrize("family", FAMILIES)
def test_reduce_writes_a_file_that_reloads_with_its_sharing_and_inspect_counts(family, reduction, tmp_path, capsys):
    name, arch = FAMILIES[family]
    out = tmp_path / "reduced.safetensors"
    assert main(["reduce", name, *model_args(arch), "--num-classes", str(CLASSES), "--reduction", reduction,
                 "--out", str(out), "--threads", "1"]) == 0
    assert f"wrote {out}: {name}" in capsys.readouterr().out
    model = vitreduce.load(out)
    stages = block_stages(model)
    mlps = [ref.block.mlp for stage in stages for ref in stage]
    if reduction == "grouped":  # pairs within a stage: the same module, the same storage; never across stages
        expected = [[0, 0], [1]] if family == "swin" else [[0, 0, 1, 1]]
        ids = [id(m) for m in mlps]
        assert [[sorted(set(ids), key=ids.index).index(id(ref.block.mlp)) for ref in stage] for stage in stages] \
            == expected
        first, second = stages[0][0].block.mlp, stages[0][1].block.mlp
        for (key, a), (_, b) in zip(first.named_parameters(), second.named_parameters(), strict=True):
            assert a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr(), key
    else:  # shallow: one MLP per block, each of half the full hidden width
        assert len({id(m) for m in mlps}) == len(mlps)
        full = vitreduce.create_model(name, reduction="none", device="meta", num_classes=CLASSES, **arch)
        full_hidden = [ref.block.mlp.fc2.in_features for stage in block_stages(full) for ref in stage]
        assert [m.fc2.in_features for m in mlps] == [h // 2 for h in full_hidden]
    row, = inspect_json(capsys, str(out))
    assert row["model"] == name and row["reduction"] == vitreduce.ReductionSpec.parse(reduction).__str__()
    assert row["params"] == unique_parameters(model) == sum(p.numel() for p in model.parameters())
    assert row["unique_mlps"] == len({id(m) for m in mlps})
    assert main(["inspect", str(out)]) == 0
    assert f"{row['params']:,}" in capsys.readouterr().out
    # The same counts from the name and --model-arg, built on the meta device.
    by_name = inspect_json(capsys, name, *model_args(arch), "--model-arg", f"num_classes={CLASSES}",
                           "--reduction", reduction)
    assert by_name == [row]


@pytest.fixture(scope="module", params=list(FAMILIES))
def trained(request, data, tmp_path_factory) -> tuple[str, Path]:
    """(family, run directory) of a 1-epoch grouped run on the tiny dataset."""
    family = request.param
    name, arch = FAMILIES[family]
    tmp = tmp_path_factory.mktemp(family)
    tree = {"seed": 0, "epochs": 1, "device": "cpu", "precision": "fp32",
            "model": {"name": name, "reduction": "grouped", "num_classes": CLASSES, **arch},
            "data": {"root": str(data), "batch_size": 4, "workers": 0},
            "schedule": {"warmup_epochs": 0},
            "checkpoint": {"recovery_every_steps": 0}, "logging": {"tensorboard": False}}
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump(tree))
    assert main(["train", str(config), "--out", str(tmp / "run"), "--threads", "1"]) == 0
    return family, tmp / "run"


def test_train_writes_a_grouped_run_that_eval_and_inspect_read(trained, data, capsys):
    family, run = trained
    name, _ = FAMILIES[family]
    assert (run / "done.json").is_file()
    model = vitreduce.load(run / "model.safetensors")
    first = block_stages(model)[0]
    assert first[0].block.mlp is first[1].block.mlp  # the trained file keeps the sharing
    row, = inspect_json(capsys, str(run))
    assert (row["model"], row["reduction"]) == (name, "grouped")
    assert row["params"] == unique_parameters(model)
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(data), "--workers", "0", "--device", "cpu", "--json",
                 "--threads", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 2 * CLASSES and 0 <= result["top1"] <= 100 and result["loss"] > 0


def test_sharpness_of_a_trained_run(trained, data, capsys):
    _, run = trained
    capsys.readouterr()
    assert main(["sharpness", str(run), "--data", str(data), "--batches", "1", "--batch-size", "4", "--top-k", "1",
                 "--iters", "2", "--trace-samples", "2", "--device", "cpu", "--json", "--quiet",
                 "--threads", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["parameters"] == unique_parameters(vitreduce.load(run / "model.safetensors"))
    assert len(result["top_eigenvalues"]) == 1 and result["trace"] is not None and result["loss"] > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_profile_takes_model_args_and_counts_as_inspect(family, capsys):
    name, arch = FAMILIES[family]
    args = [*model_args(arch), "--model-arg", f"num_classes={CLASSES}"]
    rows = inspect_json(capsys, name, *args, "--reduction", "none", "--reduction", "grouped")
    assert main(["profile", name, *args, "--reduction", "none", "--reduction", "grouped", "--batch-size", "1",
                 "--repeats", "1", "--warmup", "0", "--mode", "infer", "--no-memory", "--json",
                 "--threads", "1"]) == 0
    profiles = json.loads(capsys.readouterr().out)
    assert [(p["reduction"], p["params"], p["unique_mlps"]) for p in profiles] == \
        [(r["reduction"], r["params"], r["unique_mlps"]) for r in rows]
    assert all(p["infer_img_s"] > 0 for p in profiles)

"""Self-describing checkpoints: exact round trips with sharing, strict and safe loading."""
from __future__ import annotations

import json
import pickle

import pytest
import timm
import torch
from conftest import TINY_VIT, tiny_model
from safetensors.torch import save_file

import vitreduce
from vitreduce.cli.main import main
from vitreduce.errors import VitreduceError
from vitreduce.reduction.checkpoint import read_metadata
from vitreduce.reduction.surgery import unique_mlps


def _same_sharing(a, b) -> bool:
    def layout(model):
        return [[i for i, blk in enumerate(model.blocks) if blk.mlp is mlp] for _, mlp in unique_mlps(model)]

    return layout(a) == layout(b)


@pytest.mark.parametrize("reduction", ["none", "grouped", "grouped:size=3,pattern=cycle+shallow:keep=magnitude",
                                       "thin:ratio=0.25"])
def test_round_trip_gives_identical_logits_and_sharing(tmp_path, images, reduction):
    model = tiny_model(reduction)
    path = vitreduce.save(model, tmp_path / "m.safetensors", metadata={"epoch": 3})
    loaded = vitreduce.load(path).eval()
    assert torch.equal(loaded(images), model(images))
    assert _same_sharing(loaded, model)
    assert read_metadata(path)["epoch"] == "3"
    assert read_metadata(path)["reduction"] == str(vitreduce.ReductionSpec.parse(reduction))


def test_shared_tensors_are_stored_once(tmp_path):
    path = vitreduce.save(tiny_model("grouped"), tmp_path / "g.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        names = set(handle.keys())  # noqa: SIM118
    assert "blocks.0.mlp.fc1.weight" in names and "blocks.1.mlp.fc1.weight" not in names
    assert json.loads(read_metadata(path)["aliases"])["blocks.1.mlp.fc1.weight"] == "blocks.0.mlp.fc1.weight"


def test_any_timm_vit_reduced_in_place_round_trips(tmp_path, images):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", **TINY_VIT, qkv_bias=False, global_pool="avg").eval()
    vitreduce.reduce(model, "shallow:ratio=0.5")
    vitreduce.reduce(model, "grouped")  # composed across two calls
    loaded = vitreduce.load(vitreduce.save(model, tmp_path / "m.safetensors")).eval()
    assert read_metadata(tmp_path / "m.safetensors")["reduction"] == "shallow:ratio=0.5+grouped"
    assert torch.equal(loaded(images), model(images)) and _same_sharing(loaded, model)


def test_corrupted_and_truncated_files_give_clear_errors(tmp_path):
    good = vitreduce.save(tiny_model(), tmp_path / "good.safetensors").read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good[: len(good) // 2])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a safetensors file at all")
    for path in (truncated, garbage):
        with pytest.raises(VitreduceError, match="truncated or corrupted"):
            vitreduce.load(path)
    with pytest.raises(VitreduceError, match="does not exist"):
        vitreduce.load(tmp_path / "missing.safetensors")


def test_plain_safetensors_is_not_mistaken_for_a_checkpoint(tmp_path):
    save_file(tiny_model().state_dict(), tmp_path / "plain.safetensors")
    with pytest.raises(VitreduceError, match="not a vitreduce model checkpoint.*vitreduce reduce"):
        vitreduce.load(tmp_path / "plain.safetensors")


def test_mismatched_tensors_are_named(tmp_path):
    path = vitreduce.save(tiny_model("grouped"), tmp_path / "g.safetensors")
    metadata = read_metadata(path)
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    tensors.pop("head.bias")
    tensors["extra.weight"] = torch.zeros(1)
    tensors["head.weight"] = torch.zeros(7, 32)
    save_file(tensors, tmp_path / "bad.safetensors", metadata=metadata)
    with pytest.raises(VitreduceError) as info:
        vitreduce.load(tmp_path / "bad.safetensors")
    message = str(info.value)
    assert "missing head.bias" in message and "unexpected extra.weight" in message
    assert "head.weight (file (7, 32), model (5, 32))" in message


def test_edited_sharing_layout_is_refused(tmp_path):
    path = vitreduce.save(tiny_model("grouped"), tmp_path / "g.safetensors")
    metadata = read_metadata(path)
    metadata["reduction"] = "grouped:size=4"
    from safetensors.torch import load_file

    save_file(load_file(str(path)), tmp_path / "edited.safetensors", metadata=metadata)
    with pytest.raises(VitreduceError, match="shared-tensor layout differs"):
        vitreduce.load(tmp_path / "edited.safetensors")


class _RunsCode:
    def __reduce__(self):
        return (open, ("/tmp/vitreduce-pwned-marker", "w"))


def test_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path, capsys):
    import os

    marker = "/tmp/vitreduce-pwned-marker"
    if os.path.exists(marker):
        os.remove(marker)
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as handle:
        pickle.dump({"state_dict": {"x": _RunsCode()}}, handle)
    code = main(["reduce", "vit_tiny_patch16_224", "--reduction", "grouped", "--weights", str(evil),
                 "--out", str(tmp_path / "out.safetensors")])
    assert code == 2
    assert "refused to load" in capsys.readouterr().err
    assert not os.path.exists(marker)
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_reduce_command_reduces_local_weights(tmp_path, images, suffix):
    full = timm.create_model("vit_tiny_patch16_224", **TINY_VIT).eval()
    weights = tmp_path / f"full{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": {f"module.{k}": v for k, v in full.state_dict().items()}}, weights)
    else:
        save_file(full.state_dict(), weights)
    out = tmp_path / "shallow.safetensors"
    args = ["reduce", "vit_tiny_patch16_224", "--reduction", "shallow", "--weights", str(weights), "--out", str(out)]
    assert main(args) == 2  # tiny kwargs differ from vit_tiny's defaults: the strict load names the problem
    model_args = [f"--model-arg={k}={v}" for k, v in TINY_VIT.items() if k != "num_classes"]
    assert main(args + model_args) == 0
    expected = vitreduce.reduce(full, "shallow")
    assert torch.equal(vitreduce.load(out).eval()(images), expected(images))


def test_reduce_command_fresh_and_inspect(tmp_path, capsys):
    out = tmp_path / "g.safetensors"
    assert main(["reduce", "vit_tiny_patch16_224", "--reduction", "grouped", "--out", str(out)]) == 0
    assert main(["reduce", "vit_tiny_patch16_224", "--reduction", "grouped", "--out", str(out)]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert main(["inspect", str(out), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["reduction"] == "grouped" and row["unique_mlps"] == 6


def test_identical_content_gives_identical_bytes(tmp_path):
    # safetensors orders header metadata by a per-map hash seed; vitreduce sorts it, so a checksum can tell
    # whether two runs wrote the same model.
    model = tiny_model("grouped")
    paths = [vitreduce.save(model, tmp_path / f"m{i}.safetensors", metadata={f"k{j}": str(j) for j in range(8)})
             for i in range(6)]
    assert len({p.read_bytes() for p in paths}) == 1
    header = paths[0].read_bytes()[8:8 + int.from_bytes(paths[0].read_bytes()[:8], "little")]
    keys = list(json.loads(header)["__metadata__"])
    assert keys == sorted(keys) and len(keys) == 14
    loaded = vitreduce.load(paths[0])
    assert loaded.blocks[0].mlp is loaded.blocks[1].mlp  # the rewritten header still loads, sharing kept

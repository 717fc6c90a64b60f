"""A model file scores the same wherever it lies: it carries its eval preprocessing and class names, its
header is checked against its tensors by every command that reads it, NaN weights are refused, and
reducing trained weights says what scale it applied."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from safetensors import safe_open
from safetensors.torch import save_file

import vitreduce
from vitreduce.cli.main import main
from vitreduce.data.recorded import CLASSES, PREPROCESSING
from vitreduce.data.transforms import DEFAULTS, HEADER
from vitreduce.train.config import validate
from vitreduce.train.loop import train

NON_DEFAULT = {"interpolation": "bilinear", "crop_pct": 0.75, "mean": [0.4, 0.45, 0.5], "std": [0.2, 0.25, 0.3]}
EVAL = ("--workers", "0", "--device", "cpu", "--batch-size", "8")


@pytest.fixture(scope="module")
def run(tiny_train_config, tmp_path_factory) -> Path:
    """A one-epoch unreduced run with the non-default eval preprocessing."""
    out = tmp_path_factory.mktemp("records") / "run"
    tree = tiny_train_config(epochs=1, augment=NON_DEFAULT, ema={"enabled": False})
    tree["model"]["reduction"] = "none"
    train(validate(tree), out)
    return out


def header(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def rewrite(source: Path, dest: Path, edit: dict[str, str | None] | None = None, tensors=None) -> Path:
    """``source`` written to ``dest`` with header entries replaced (None: removed) and tensors changed."""
    meta = header(source)
    for key, value in (edit or {}).items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    with safe_open(str(source), framework="pt") as handle:
        stored = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (no __iter__)
    save_file({**stored, **(tensors or {})}, str(dest), metadata=meta)
    return dest


def eval_json(path: Path, data: Path, capsys, *extra: str) -> dict:
    assert main(["eval", str(path), "--data", str(data), *EVAL, "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_copied_model_file_scores_as_in_its_run(run, tiny_dataset, tmp_path, capsys):
    inside = eval_json(run / "model.safetensors", tiny_dataset, capsys)
    copied = shutil.copy(run / "model.safetensors", tmp_path / "copied.safetensors")
    outside = eval_json(Path(copied), tiny_dataset, capsys)
    assert inside["preprocessing"] == outside["preprocessing"] == {"source": HEADER, **NON_DEFAULT}
    assert (inside["top1"], inside["loss"]) == (outside["top1"], outside["loss"])
    # Not vacuous: without the header entry the copy falls back to the recipe's defaults, another score.
    bare = rewrite(run / "model.safetensors", tmp_path / "bare.safetensors", {PREPROCESSING: None})
    defaults = eval_json(bare, tiny_dataset, capsys)
    assert defaults["preprocessing"]["source"] == DEFAULTS and defaults["loss"] != outside["loss"]
    # The command line sets it, and says so; the text output names what was used.
    assert main(["eval", str(copied), "--data", str(tiny_dataset), *EVAL, "--crop-pct", "0.9"]) == 0
    text = capsys.readouterr().out
    assert "preprocessing: bilinear resize, centre crop 0.9," in text and "with --crop-pct set" in text
    assert "the 4 folders of" in text and "match the model's classes" in text
    for value, said in (("nan", "--crop-pct nan: Input should be a finite number"), ("2", "--crop-pct 2.0: ")):
        assert main(["eval", str(copied), "--data", str(tiny_dataset), *EVAL, "--crop-pct", value]) == 2
        assert said in capsys.readouterr().err  # the flag named with its value


def test_reduce_keeps_the_preprocessing_and_classes_and_states_the_scale(run, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "grouped.safetensors"
    assert main(["reduce", "--weights", str(run / "model.safetensors"), "--reduction", "grouped",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "x1 for 2 block(s) (scale=auto on trained weights" in printed
    meta = header(out)
    assert json.loads(meta[PREPROCESSING]) == NON_DEFAULT
    assert json.loads(meta[CLASSES]) == sorted(p.name for p in (tiny_dataset / "val").iterdir())
    assert eval_json(out, tiny_dataset, capsys)["preprocessing"]["source"] == HEADER
    # Trained weights: scale=auto keeps the first block's trained MLP as it is.
    full, grouped = vitreduce.load(run / "model.safetensors"), vitreduce.load(out)
    assert torch.equal(grouped.blocks[0].mlp.fc1.weight, full.blocks[0].mlp.fc1.weight)
    assert grouped.blocks[1].mlp is grouped.blocks[0].mlp
    # The published rule on request, and said.
    scaled = tmp_path / "scaled.safetensors"
    assert main(["reduce", "--weights", str(run / "model.safetensors"), "--reduction", "grouped:scale=0.7071",
                 "--out", str(scaled)]) == 0
    assert "x0.7071 for 2 block(s) (scale=0.7071 as given)" in capsys.readouterr().out
    assert torch.allclose(vitreduce.load(scaled).blocks[0].mlp.fc1.weight, full.blocks[0].mlp.fc1.weight * 0.7071)


def test_fresh_reduce_states_the_published_rule(tmp_path, capsys):
    assert main(["reduce", "vit_tiny_patch16_224", "--model-arg", "depth=4", "--model-arg", "embed_dim=32",
                 "--model-arg", "num_heads=2", "--img-size", "16", "--model-arg", "patch_size=4",
                 "--reduction", "grouped", "--out", str(tmp_path / "g.safetensors")]) == 0
    assert "x0.7071 for 2 block(s) (scale=auto on fresh weights: the published 1/sqrt(n))" in capsys.readouterr().out


def renamed_copy(tiny_dataset: Path, dest: Path, renames: dict[str, str]) -> Path:
    shutil.copytree(tiny_dataset, dest)
    for split in ("train", "val"):
        for old, new in renames.items():
            (dest / split / old).rename(dest / split / f"{new}.tmp")
            (dest / split / f"{new}.tmp").rename(dest / split / new)
    return dest


def test_class_folders_are_checked_by_name(run, tiny_dataset, tmp_path, capsys):
    names = sorted(p.name for p in (tiny_dataset / "val").iterdir())
    # One folder renamed, one case-changed: still 4 folders, so a count check alone lets it through.
    hostile = renamed_copy(tiny_dataset, tmp_path / "renamed", {names[0]: "zzz", names[1]: names[1].upper()})
    assert main(["eval", str(run / "model.safetensors"), "--data", str(hostile), *EVAL]) == 2
    err = capsys.readouterr().err
    assert "does not hold the classes" in err and "'zzz'" in err and repr(names[0]) in err
    # The same names in another order: swapped folder contents are swapped labels.
    swapped = renamed_copy(tiny_dataset, tmp_path / "swapped", {names[0]: "tmp", names[1]: names[0]})
    (swapped / "val" / "tmp").rename(swapped / "val" / names[1])
    (swapped / "train" / "tmp").rename(swapped / "train" / names[1])
    assert eval_json(run / "model.safetensors", swapped, capsys)["classes"].endswith("match the model's classes")
    moved = tmp_path / "moved"
    shutil.copytree(tiny_dataset, moved)
    for split in ("train", "val"):
        (moved / split / names[0]).rename(moved / split / ("~" + names[0]))  # sorts last: every label shifts
    assert main(["eval", str(run / "model.safetensors"), "--data", str(moved), *EVAL]) == 2
    assert "does not hold the classes" in capsys.readouterr().err
    for verb in (["sharpness", "--top-k", "1", "--iters", "1", "--trace-samples", "0", "--quiet"],
                 ["landscape", "--steps", "3", "--no-2d", "--directions", "1", "--quiet",
                  "--out", str(tmp_path / "l")]):
        argv = [verb[0], str(run / "model.safetensors"), *verb[1:], "--data", str(hostile), "--batches", "1",
                "--batch-size", "4", "--device", "cpu"]
        assert main(argv) == 2, verb[0]
        assert "does not hold the classes" in capsys.readouterr().err


def test_nan_weights_are_refused_by_eval_and_reduce(run, tiny_dataset, tmp_path, capsys):
    source = run / "model.safetensors"
    broken = rewrite(source, tmp_path / "nan.safetensors",
                     tensors={"blocks.1.mlp.fc1.weight": torch.full((64, 16), float("nan"))})
    assert main(["eval", str(broken), "--data", str(tiny_dataset), *EVAL]) == 2
    assert "NaN or infinite values in 1 tensor(s) (blocks.1.mlp.fc1.weight)" in capsys.readouterr().err
    out = str(tmp_path / "o.safetensors")
    assert main(["reduce", "--weights", str(broken), "--reduction", "grouped", "--out", out]) == 2
    assert "NaN or infinite" in capsys.readouterr().err
    state = vitreduce.load(source).state_dict()
    state["head.bias"] = torch.full_like(state["head.bias"], float("inf"))
    save_file(state, str(tmp_path / "timm.safetensors"))
    argv = ["reduce", "vit_tiny_patch16_224", "--weights", str(tmp_path / "timm.safetensors"), "--reduction", "grouped",
            "--out", str(tmp_path / "o.safetensors")]
    for arg in ("img_size=16", "patch_size=4", "embed_dim=16", "depth=2", "num_heads=2"):
        argv += ["--model-arg", arg]
    assert main(argv) == 2
    assert "NaN or infinite values in 1 tensor(s) (head.bias)" in capsys.readouterr().err
    assert not (tmp_path / "o.safetensors").exists()


@pytest.mark.parametrize("reduction, edit, message", [
    ("none", {"model_kwargs": "DEPTH"}, "does not match the model: missing blocks.4"),
    ("grouped", {"aliases": "{}"}, "shared-tensor layout differs"),
    ("grouped", {"reduction": "none", "aliases": "{}"}, "does not match the model: missing blocks.1.mlp"),
], ids=["depth-over-fewer-blocks", "emptied-alias-map", "none-over-grouped-tensors"])
def test_inspect_and_profile_check_the_header_against_the_tensors_as_eval_does(reduction, edit, message, tmp_path,
                                                                              tiny_dataset, capsys):
    good = vitreduce.save(tiny_model(reduction, num_classes=4), tmp_path / "good.safetensors")
    if edit.get("model_kwargs") == "DEPTH":
        edit = {"model_kwargs": json.dumps({**json.loads(header(good)["model_kwargs"]), "depth": 6})}
    lying = rewrite(good, tmp_path / "lying.safetensors", edit)
    for argv in (["eval", str(lying), "--data", str(tiny_dataset), *EVAL], ["inspect", str(lying)],
                 ["profile", str(lying), "--repeats", "1", "--warmup", "0", "--no-memory", "--batch-size", "2"]):
        assert main(argv) == 2, argv[0]
        assert message in capsys.readouterr().err, argv[0]
    assert main(["inspect", str(good)]) == 0  # the same file, truthful, is described


def test_fine_tuning_says_when_a_kept_head_meets_other_class_names(run, tiny_train_config, tiny_dataset, tmp_path,
                                                                   capsys):
    names = sorted(p.name for p in (tiny_dataset / "val").iterdir())
    renamed = renamed_copy(tiny_dataset, tmp_path / "renamed", {names[0]: "zzz"})
    tree = tiny_train_config(epochs=1, ema={"enabled": False})
    tree["model"].update(reduction="none", init_checkpoint=str(run / "model.safetensors"))
    train(validate({**tree, "data": {**tree["data"], "root": str(tiny_dataset)}}), tmp_path / "same")
    assert "note: model.init_checkpoint" not in capsys.readouterr().out
    train(validate({**tree, "data": {**tree["data"], "root": str(renamed)}}), tmp_path / "other")
    out = capsys.readouterr().out
    assert "has a head trained on other classes" in out and f"{names[0]!r} -> {names[1]!r}" in out

"""timm interop and extending a run: summary.csv in timm's layout, the kept checkpoint history, --extend to
more epochs (its refusals and what it says of the schedule), and the --set form for timm/Hydra-style options."""
from __future__ import annotations

import csv
import json
import shlex
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file
from timm.utils import update_summary

import vitreduce
from vitreduce.cli.main import main
from vitreduce.train.config import validate
from vitreduce.train.extend import lr_at
from vitreduce.train.summary import summary_row


def write_config(path: Path, tree: dict) -> Path:
    path.write_text(yaml.safe_dump(tree))
    return path


def metrics_lines(out: Path) -> list[str]:
    return (out / "metrics.jsonl").read_text().splitlines(keepends=True)


def summary(out: Path) -> list[list[str]]:
    with open(out / "summary.csv", newline="") as handle:
        return list(csv.reader(handle))


@pytest.fixture(scope="module")
def finished(tiny_train_config, tmp_path_factory) -> tuple[Path, Path]:
    """A finished 2-epoch run with the history of every epoch kept; (its config file, its run directory)."""
    tmp = tmp_path_factory.mktemp("two_epochs")
    config = write_config(tmp / "config.yaml", tiny_train_config(epochs=2, checkpoint={"keep_every_epochs": 1}))
    assert main(["train", str(config), "--out", str(tmp / "run")]) == 0
    return config, tmp / "run"


def test_summary_csv_has_timm_columns_and_the_metrics_values(finished, tmp_path):
    _, out = finished
    timm_file = tmp_path / "timm_summary.csv"  # what timm's train.py writes for one epoch with an eval
    update_summary(0, OrderedDict(loss=1.0), OrderedDict(loss=2.0, top1=3.0, top5=4.0), str(timm_file), lr=0.1)
    timm_header = timm_file.read_text().splitlines()[0]
    rows = summary(out)
    assert (out / "summary.csv").read_text().splitlines()[0] == timm_header
    records = [json.loads(line) for line in metrics_lines(out)]
    assert len(rows) == 1 + len(records) == 3
    for row, record in zip(rows[1:], records, strict=True):
        epoch, train_loss, eval_loss, top1, top5, lr = row
        assert int(epoch) == record["epoch"] - 1  # timm counts epochs from 0
        assert float(train_loss) == record["train_loss"] and float(lr) == record["lr"]
        assert [float(eval_loss), float(top1), float(top5)] == [record["ema"][k] for k in ("loss", "top1", "top5")]


def test_summary_row_without_ema_uses_the_raw_model_and_nan_for_no_loss():
    record = {"epoch": 4, "lr": 0.5, "train_loss": None, "raw": {"top1": 1.0, "top5": 2.0, "loss": 3.0}, "ema": None}
    row = summary_row(record)
    assert row[0] == 3 and row[1] != row[1] and row[2:] == [3.0, 1.0, 2.0, 0.5]


def test_every_kept_epoch_loads_and_is_never_pruned(finished):
    _, out = finished
    ckpt = out / "checkpoints"
    assert sorted(p.name for p in ckpt.glob("epoch-*")) == ["epoch-1", "epoch-2"]
    for epoch in (1, 2):
        for name in ("model.safetensors", "model_ema.safetensors"):
            file = ckpt / f"epoch-{epoch}" / name
            vitreduce.load(file)
            with safe_open(str(file), framework="pt") as handle:
                assert handle.metadata()["epoch"] == str(epoch)
        assert not (ckpt / f"epoch-{epoch}" / "state.safetensors").exists()  # model files only
    final, kept = load_file(str(out / "model.safetensors")), load_file(str(ckpt / "epoch-2" / "model.safetensors"))
    assert final.keys() == kept.keys() and all(torch.equal(final[k], kept[k]) for k in final)


def test_history_of_three_epochs(tiny_train_config, tmp_path):
    config = write_config(tmp_path / "config.yaml", tiny_train_config(checkpoint={"keep_every_epochs": 1}))
    assert main(["train", str(config), "--out", str(tmp_path / "run")]) == 0
    kept = sorted((tmp_path / "run" / "checkpoints").glob("epoch-*"))
    assert [p.name for p in kept] == ["epoch-1", "epoch-2", "epoch-3"]
    for folder in kept:
        assert vitreduce.load(folder / "model_ema.safetensors") is not None


def test_a_larger_epochs_count_is_refused_naming_the_extend_command(finished, capsys):
    config, out = finished
    assert main(["train", str(config), "--out", str(out), "--set", "epochs=3"]) == 2
    err = capsys.readouterr().err
    assert f"vitreduce train --resume --out {out} --set epochs=3 --extend" in err
    assert "differs from a run trained for 3 epochs from the start" in err
    assert json.loads((out / "done.json").read_text())["epochs"] == 2  # untouched


def test_extend_refusals(finished, tmp_path, capsys):
    config, out = finished
    assert main(["train", str(config), "--out", str(out), "--set", "epochs=1", "--extend"]) == 2
    assert "cannot be shortened" in capsys.readouterr().err
    assert main(["train", str(config), "--out", str(out), "--set", "epochs=3", "--set", "seed=4", "--extend"]) == 2
    assert "--extend lets only epochs differ" in capsys.readouterr().err
    assert main(["train", str(config), "--out", str(tmp_path / "none"), "--extend"]) == 2
    assert "nothing to extend" in capsys.readouterr().err


def test_extending_a_finished_run_keeps_its_first_epochs_and_follows_the_new_schedule(finished, tmp_path, capsys):
    config, source = finished
    out = tmp_path / "run"
    main(["train", str(config), "--out", str(out)])  # a copy of the finished run, trained alike
    assert main(["train", str(config), "--out", str(out), "--set", "epochs=3"]) == 2
    command = next(line.strip() for line in capsys.readouterr().err.splitlines() if line.startswith("  vitreduce"))
    first = metrics_lines(out)
    end_model = (out / "model_ema.safetensors").read_bytes()  # moved, not rewritten
    assert main(shlex.split(command)[1:]) == 0
    err = capsys.readouterr().err
    assert "schedule built for 3 epochs" in err and "differs from a run trained for 3 epochs" in err
    assert metrics_lines(out)[:2] == first and len(metrics_lines(out)) == 3
    assert json.loads((out / "done.json").read_text())["epochs"] == 3
    aside = out / "end-epoch-2"
    assert json.loads((aside / "done.json").read_text())["epochs"] == 2
    assert (aside / "model_ema.safetensors").read_bytes() == end_model
    assert yaml.safe_load((aside / "config.yaml").read_text())["epochs"] == 2
    assert yaml.safe_load((out / "config.yaml").read_text())["epochs"] == 3
    run = json.loads((out / "run.json").read_text())
    assert run["epochs"] == 3 and run["extended_from"] == [2]
    third = json.loads(metrics_lines(out)[2])
    three = validate(yaml.safe_load((out / "config.yaml").read_text()))
    assert third["lr"] == pytest.approx(lr_at(three, 3, 2), rel=1e-12)  # the 3-epoch schedule at epoch 3
    assert len(summary(out)) == 4
    assert main(shlex.split(command)[1:]) == 0  # again: finished, nothing to do
    assert "nothing to do" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "hint"), [
    (["--epochs", "2"], "did you mean --set epochs=2?"),
    (["--lr=0.01"], "did you mean --set optimizer.lr=0.01?"),
    (["--optimizer.weight_decay", "0.1"], "did you mean --set optimizer.weight_decay=0.1?"),
    (["--model", "vit_small_patch16_224"], "did you mean --set model.name=vit_small_patch16_224?"),
])
def test_timm_style_options_answer_with_the_set_form(finished, argv, hint, capsys):
    config, _ = finished
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(config), *argv])
    assert exit_info.value.code == 2
    assert hint in capsys.readouterr().err


def test_hydra_style_override_answers_with_the_set_form(finished, capsys):
    config, _ = finished
    assert main(["train", str(config), "epochs=2"]) == 2
    assert "did you mean --set epochs=2?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", str(config), "--no-such-flag"])
    assert "did you mean" not in capsys.readouterr().err

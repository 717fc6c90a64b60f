"""`vitreduce study SPEC --dry-run` and `vitreduce study status DIR` import no torch (20-30 s on a busy node):
checked in a fresh interpreter, by what it has imported. `--dry-run --costs` builds the models (with torch) for the
exact parameter/MAC table and the checks that need timm; either refuses a bad value before anything is written."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vitreduce.cli.main import main

# Runs the command line in a fresh interpreter; prints its exit status, then whether torch was imported.
CLI = ("import sys\nfrom vitreduce.cli.main import main\ncode = main(sys.argv[1:])\n"
       "print(code)\nprint('torch' in sys.modules)\n")


def fresh(*args: str) -> tuple[int, bool, str]:
    """(exit status, whether torch was imported, stderr) of `vitreduce ARGS` run in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True, check=True)
    code, imported = done.stdout.strip().splitlines()[-2:]
    return int(code), imported == "True", done.stderr


def spec_file(tmp_path: Path, **change) -> Path:
    """A spec of a 2-block ViT, 2 variants x 2 seeds; its dataset absent (a dry run notes that)."""
    base = {"device": "cpu", "epochs": 2, "data": {"root": str(tmp_path / "data"), "workers": 0},
            "model": {"name": "vit_tiny_patch16_224", "num_classes": 4, "img_size": 16, "patch_size": 8,
                      "embed_dim": 16, "depth": 2, "num_heads": 2}}
    spec = {"name": "s", "base": base, "seeds": [0, 1],
            "variants": [{"name": "baseline", "overrides": {"model.reduction": "none"}},
                         {"name": "grouped", "overrides": {"model.reduction": "grouped"}}], **change}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_dry_run_imports_no_torch_and_says_what_it_left_out(tmp_path):
    out = tmp_path / "study"
    code, imported, err = fresh("study", str(spec_file(tmp_path)), "--dry-run", "--out", str(out))
    assert code == 0 and not imported, err
    assert "not checked in this dry run (it imports no torch)" in err and "--dry-run --costs" in err
    assert "params (unique)" not in err  # the table needs the models
    assert (out / "study.yaml").is_file()
    assert (out / "runs" / "grouped" / "seed1" / "config.yaml").is_file()
    code, imported, err = fresh("study", str(spec_file(tmp_path)), "--dry-run", "--out", str(out))  # a rerun
    assert code == 0 and not imported and "0 finished, 0 to resume, 4 to train" in err


def test_the_config_a_dry_run_writes_is_the_one_the_study_validates_with_timm(tmp_path):
    from vitreduce.study.plan import expand
    from vitreduce.study.spec import load_spec

    out = tmp_path / "study"
    spec = spec_file(tmp_path)
    assert main(["study", str(spec), "--dry-run", "--out", str(out)]) == 0
    for plan in expand(load_spec(spec), out):  # every check, timm's included
        assert yaml.safe_load((plan.run_dir / "config.yaml").read_text()) == plan.config.to_dict()


def study_with_a_finished_and_a_damaged_run(tmp_path: Path) -> Path:
    out = tmp_path / "study"
    assert main(["study", str(spec_file(tmp_path)), "--dry-run", "--out", str(out)]) == 0
    finished, damaged = out / "runs" / "baseline" / "seed0", out / "runs" / "baseline" / "seed1"
    for run in (finished, damaged):
        (run / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "raw": {"top1": 40.0 + e}}) + "\n"
                                                   for e in (1, 2)))
    (finished / "done.json").write_text(json.dumps({"epochs": 2, "wall_s": 3.0, "final": {}}))
    (damaged / "done.json").write_text('{"epochs": 2, "wal')  # cut short by a full disk
    return out


def test_study_status_imports_no_torch(tmp_path):
    out = study_with_a_finished_and_a_damaged_run(tmp_path)
    done = subprocess.run([sys.executable, "-c", CLI, "study", "status", str(out)], capture_output=True, text=True,
                          check=True)
    *table, code, imported = done.stdout.strip().splitlines()
    assert code == "1" and imported == "False", done.stderr  # 1: a run failed (its done.json is damaged)
    text = "\n".join(table)
    assert "2 pending, 1 done, 1 failed" in text
    assert "baseline/seed1 failed" in text and "done.json is damaged" in text


def test_the_checks_can_fail(tmp_path):
    out = tmp_path / "study"
    code, imported, err = fresh("study", str(spec_file(tmp_path)), "--dry-run", "--costs", "--out", str(out))
    assert code == 0 and imported, err  # --costs builds the models: it imports torch, and says so
    assert "--costs: importing torch" in err and "params (unique)" in err
    assert "not checked in this dry run" not in err


def test_costs_print_the_exact_table_from_the_models(tmp_path, capsys):
    from vitreduce.reduction.accounting import describe
    from vitreduce.reduction.models import create_model

    assert main(["study", str(spec_file(tmp_path)), "--dry-run", "--costs", "--out", str(tmp_path / "st")]) == 0
    err = capsys.readouterr().err
    model = create_model("vit_tiny_patch16_224", reduction="grouped", device="meta", num_classes=4, img_size=16,
                         patch_size=8, embed_dim=16, depth=2, num_heads=2)
    row = next(line for line in err.splitlines() if line.startswith("grouped "))
    assert f"{describe(model).params:,}" in row.split()


@pytest.mark.parametrize("flags", [["--dry-run"], ["--dry-run", "--costs"]], ids=["dry run", "costs"])
def test_a_bad_value_is_refused_before_anything_is_written(tmp_path, capsys, flags):
    path = spec_file(tmp_path, overrides={"optimizer.betas": [0.9, 1.5]})
    out = tmp_path / "study"
    assert main(["study", str(path), *flags, "--out", str(out)]) == 2
    assert "optimizer.betas.1" in capsys.readouterr().err and not out.exists()


def test_what_needs_timm_is_refused_by_costs_and_by_the_study_before_anything_is_written(tmp_path, capsys):
    path = spec_file(tmp_path, overrides={"model.name": "vit_tiny_patch16_244"})
    out = tmp_path / "study"
    assert main(["study", str(path), "--dry-run", "--costs", "--out", str(out)]) == 2
    assert "unknown timm model 'vit_tiny_patch16_244'" in capsys.readouterr().err and not out.exists()
    # Without --costs the name is not looked up (timm imports torch); the dry run says so, and the study refuses it
    # before writing anything more.
    assert main(["study", str(path), "--dry-run", "--out", str(out)]) == 0
    assert "timm model names" in capsys.readouterr().err
    written = sorted(p for p in out.rglob("*"))
    assert main(["study", str(path), "--out", str(out)]) == 2
    assert "unknown timm model" in capsys.readouterr().err and sorted(out.rglob("*")) == written


def test_costs_go_with_a_dry_run(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["study", str(spec_file(tmp_path)), "--costs", "--out", str(out)]) == 2
    assert "--costs goes with --dry-run" in capsys.readouterr().err and not out.exists()


def test_a_dry_run_refuses_a_hub_id_without_timm(tmp_path, capsys):
    path = spec_file(tmp_path, overrides={"model.name": "hf-hub:someone/vit"})
    out = tmp_path / "study"
    assert main(["study", str(path), "--dry-run", "--out", str(out)]) == 2
    assert "is a hub id, URL or path" in capsys.readouterr().err and not out.exists()

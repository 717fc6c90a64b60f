"""Studies: spec validation, expansion into runs, resume/skip/lock semantics, --jobs, the shipped specs, the demo."""
from __future__ import annotations

import fcntl
import json
from pathlib import Path

import pytest
import yaml

from vitreduce import cli
from vitreduce.cli import demo_cmd
from vitreduce.errors import VitreduceError
from vitreduce.locks import LOCK_FILE as LOCK
from vitreduce.study.plan import (
    LOG,
    ensure_synth_data,
    expand,
    preflight,
    prepare_runs,
    prepare_study_dir,
)
from vitreduce.study.runner import run_study
from vitreduce.study.spec import load_spec, parse_spec
from vitreduce.train import rundir
from vitreduce.train.loop import train

REPO = Path(__file__).resolve().parents[2]
STUDIES = REPO / "studies"
SHIPPED = sorted(STUDIES.glob("*.yaml"))
TINY_SPECS = sorted(p for p in (STUDIES / "tiny").glob("*.yaml") if not p.name.startswith("_"))


def base_tree(data_root: Path) -> dict:
    """A 2-block ViT on 16x16 images of a 3-class built-in dataset: a 2-epoch run takes about a second."""
    return {
        "epochs": 2, "device": "cpu",
        "model": {"name": "vit_tiny_patch16_224", "num_classes": 3, "img_size": 16, "patch_size": 8,
                  "embed_dim": 16, "depth": 2, "num_heads": 2, "drop_path_rate": 0.0},
        "data": {"root": str(data_root), "batch_size": 8, "workers": 0},
        "augment": {"auto_augment": None, "mixup": 0.0, "cutmix": 0.0, "reprob": 0.0, "repeated_aug": 1,
                    "crop_pct": 1.0},
        "optimizer": {"lr": 1e-3}, "schedule": {"warmup_epochs": 0}, "ema": {"decay": 0.9},
        "logging": {"progress": "lines"},
        "synth": {"classes": 3, "train_per_class": 8, "val_per_class": 4, "size": 16},
    }


def tiny_spec(tmp_path: Path, variants=("baseline", "grouped"), seeds=(0,), **extra):
    reductions = {"baseline": "none", "grouped": "grouped", "shallow": "shallow:ratio=0.5", "thin": "thin:ratio=0.5"}
    return parse_spec({"name": "tiny", "base": base_tree(tmp_path / "synth"), "seeds": list(seeds),
                       "variants": [{"name": v, "overrides": {"model.reduction": reductions.get(v, "none")}}
                                    for v in variants], **extra})


def files_of(study_dir: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under runs/ with its mtime and bytes (lock files and logs aside)."""
    return {str(p.relative_to(study_dir)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted((study_dir / "runs").rglob("*")) if p.is_file() and p.name not in (LOCK, LOG)}


# ---------------------------------------------------------------------------------------------------
# The spec


def test_spec_errors_name_the_key_and_the_closest_valid_ones(tmp_path):
    good = {"name": "s", "base": base_tree(tmp_path), "variants": [{"name": "a"}, {"name": "b"}]}
    cases = [
        ({"variant": []}, ["variant: unknown key", "did you mean variants"]),
        ({"variants": [{"name": "a", "overides": {}}]}, ["variants.0.overides: unknown key", "overrides"]),
        ({"variants": [{"name": "a"}, {"name": "a"}]}, ["names must be unique, repeated: a"]),
        ({"baseline": "bb"}, ["baseline: 'bb' is not a variant", "variants: a, b"]),
        ({"variants": [{"name": "a/b"}]}, ["variants.0.name: must be a folder name"]),
        ({"overrides": {"seed": 3}}, ["overrides: 'seed' is set per run"]),
        ({"seeds": [1, 1]}, ["seeds: must be distinct"]),
        ({"nproc_per_node": 2}, ["nproc_per_node > 1 needs launcher: torchrun"]),
        ({"variants": []}, ["variants:"]),
        ({"throughput": {"batch": 8}}, ["throughput.batch: unknown profile option", "batch_size"]),
    ]
    for change, messages in cases:
        with pytest.raises(VitreduceError) as err:
            parse_spec({**good, **change})
        for message in messages:
            assert message in str(err.value), (change, str(err.value))
    assert parse_spec(good).baseline == "a"  # default: the first variant


def test_bad_variant_fails_before_any_run_naming_variant_and_key(tmp_path):
    spec = tiny_spec(tmp_path)
    tree = spec.model_dump()
    tree["variants"][1]["overrides"] = {"model.reductoin": "grouped"}
    with pytest.raises(VitreduceError, match=r"variant 'grouped'(.|\n)*model\.reductoin: unknown key; did you mean "
                                             r"model\.reduction\?"):
        run_study(parse_spec(tree), tmp_path / "study")
    tree["variants"][1]["overrides"] = {"model.reduction": "grouped:size=3"}  # valid spec, but 3 > depth 2
    with pytest.raises(VitreduceError, match=r"variant\(s\) grouped: model .*grouped size 3 exceeds the model depth"):
        run_study(parse_spec(tree), tmp_path / "study")
    tree["base"]["data"]["root"], tree["base"]["synth"] = str(tmp_path / "nowhere"), None
    with pytest.raises(VitreduceError, match=r"nowhere is not a folder.*--set base\.data\.root="):
        run_study(parse_spec(tree), tmp_path / "study")
    assert not (tmp_path / "study").exists()  # nothing was started


def test_expansion_order_dirs_and_precedence(tmp_path):
    spec = parse_spec({"name": "s", "base": base_tree(tmp_path), "seeds": [3, 1],
                       "overrides": {"optimizer.lr": 0.002, "epochs": 3},
                       "variants": [{"name": "a"}, {"name": "b", "overrides": {"optimizer.lr": 0.005,
                                                                                "model": {"reduction": "grouped"}}}]})
    plans = expand(spec, tmp_path / "st")
    assert [p.label for p in plans] == ["a/seed3", "a/seed1", "b/seed3", "b/seed1"]
    assert plans[1].run_dir == tmp_path / "st" / "runs" / "a" / "seed1"
    assert [p.config.seed for p in plans] == [3, 1, 3, 1]
    assert [p.config.optimizer.lr for p in plans] == [0.002, 0.002, 0.005, 0.005]  # variant > study > base
    assert [p.config.model.reduction for p in plans] == ["none", "none", "grouped", "grouped"]
    assert plans[2].config.model.embed_dim == 16 and plans[2].config.epochs == 3  # nested mapping merged


def test_load_spec_reads_base_relative_to_the_spec_extends_and_set(tmp_path):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "base.yaml").write_text(yaml.safe_dump(base_tree(tmp_path / "data")))
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "full.yaml").write_text(yaml.safe_dump(
        {"name": "full", "base": "../cfg/base.yaml", "overrides": {"epochs": 5},
         "variants": [{"name": "a"}, {"name": "b"}], "seeds": [0, 1]}))
    (tmp_path / "specs" / "small.yaml").write_text(yaml.safe_dump(
        {"extends": "full.yaml", "name": "small", "overrides": {"optimizer.lr": 0.01}}))
    spec = load_spec(tmp_path / "specs" / "small.yaml",
                     ["base.data.batch_size=4", "overrides.epochs=1", "seeds=[7]", "baseline=b"])
    assert (spec.name, spec.seeds, spec.baseline) == ("small", [7], "b")
    assert spec.overrides == {"epochs": 1, "optimizer.lr": 0.01}
    config = expand(spec, tmp_path / "st")[0].config
    assert (config.data.batch_size, config.epochs, config.optimizer.lr) == (4, 1, 0.01)
    with pytest.raises(VitreduceError, match="train-config key; use --set overrides.epochs"):
        load_spec(tmp_path / "specs" / "small.yaml", ["epochs=3"])
    with pytest.raises(VitreduceError, match="epoch: unknown key"):
        load_spec(tmp_path / "specs" / "small.yaml", ["epoch=3"])
    with pytest.raises(VitreduceError, match="would have no effect: the spec overrides optimizer.lr"):
        load_spec(tmp_path / "specs" / "small.yaml", ["base.optimizer.lr=0.5"])


# ---------------------------------------------------------------------------------------------------
# The study directory: a changed spec is refused, saying what differs


def test_changed_spec_is_refused_saying_what_differs(tmp_path):
    study = tmp_path / "study"
    spec = tiny_spec(tmp_path, seeds=(0,))
    prepare_study_dir(study, spec)
    saved = yaml.safe_load((study / "study.yaml").read_text())
    assert saved["name"] == "tiny" and saved["baseline"] == "baseline"
    assert [v["name"] for v in saved["variants"]] == ["baseline", "grouped"]

    changed = spec.model_dump()
    changed["base"]["optimizer"]["lr"] = 0.002
    changed["variants"][1]["overrides"]["model.reduction"] = "shallow:ratio=0.5"
    changed["seeds"] = [0, 1]
    started = study / "runs" / "baseline" / "seed0"  # one run has logged an epoch: the spec is the study's now
    started.mkdir(parents=True)
    (started / rundir.METRICS).write_text('{"epoch": 1}\n')
    with pytest.raises(VitreduceError) as err:
        run_study(parse_spec(changed), study)
    message = str(err.value)
    assert "holds a study made from a different spec" in message
    assert "optimizer.lr: 0.001 -> 0.002 (all runs)" in message
    assert "model.reduction: grouped -> shallow:ratio=0.5 (grouped/seed0)" in message
    assert "runs added: baseline/seed1, grouped/seed1" in message
    assert sorted(p.name for p in (study / "runs").rglob("*")) == ["baseline", rundir.METRICS, "seed0"]  # untouched

    same_runs = spec.model_dump()
    same_runs["base"]["logging"]["every_steps"] = 7  # logging does not change a run: accepted
    same_runs["throughput"] = False
    prepare_study_dir(study, parse_spec(same_runs))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(VitreduceError, match="not empty and holds no study.yaml"):
        prepare_study_dir(tmp_path / "other", spec)


def test_a_built_in_dataset_made_with_other_settings_is_refused_before_anything_is_written(tmp_path):
    from vitreduce.data.synth import write_synth_dataset

    write_synth_dataset(tmp_path / "synth", classes=4, train_per_class=2, val_per_class=1, size=16)  # spec: 3
    study = tmp_path / "study"
    for dry_run in (True, False):
        with pytest.raises(VitreduceError, match="holds a synthetic dataset made with"):
            run_study(tiny_spec(tmp_path), study, dry_run=dry_run)
        assert not study.exists()


def test_a_dry_runs_spec_is_replaced_until_a_run_starts(tmp_path, capfd):
    """A dry run writes study.yaml and the runs' config.yaml; the spec corrected afterwards (a wrong value found
    by the study's own checks, which a plain dry run leaves to --costs) takes its place and says what changed."""
    study = tmp_path / "study"
    spec = tiny_spec(tmp_path, seeds=(0,))
    run_study(spec, study, dry_run=True)
    corrected = spec.model_dump()
    corrected["base"]["optimizer"]["lr"] = 0.002
    run_study(parse_spec(corrected), study, dry_run=True)
    err = capfd.readouterr().err
    assert "no run had started, so this spec replaces the one it held:\n  optimizer.lr: 0.001 -> 0.002" in err
    assert parse_spec(yaml.safe_load((study / "study.yaml").read_text())).base["optimizer"]["lr"] == 0.002
    config = yaml.safe_load((study / "runs" / "grouped" / "seed0" / "config.yaml").read_text())
    assert config["optimizer"]["lr"] == 0.002
    (study / "slurm").mkdir()  # submitted to SLURM: a job may start from its config.yaml at any time
    with pytest.raises(VitreduceError, match="holds a study made from a different spec"):
        prepare_study_dir(study, spec)


# ---------------------------------------------------------------------------------------------------
# Running: resume, skip, lock, --jobs


def test_interrupted_study_resumes_and_finished_runs_are_left_alone(python_one_thread, killer, tmp_path, capfd):
    study = tmp_path / "study"
    spec = tiny_spec(tmp_path, variants=("baseline", "grouped"))
    plans = expand(spec, study)
    killed = plans[1]
    # A study process killed mid-run (3 steps per epoch: killed in epoch 2, after the epoch-1 checkpoint).
    prepare_study_dir(study, spec)
    ensure_synth_data(plans)
    prepare_runs([killed])
    proc = python_one_thread(killer, "step:5", killed.run_dir / "config.yaml", killed.run_dir, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert not (killed.run_dir / rundir.DONE).exists()

    result = run_study(spec, study)
    out = capfd.readouterr().err
    assert [o.status for o in result.outcomes] == ["trained", "trained"]
    assert f"[2/2] grouped/seed0: resuming in {killed.run_dir}" in out and "resuming" in (
        killed.run_dir / LOG).read_text()
    # The resumed run is the run it would have been without the kill (the trainer resumes exactly).
    reference = train(killed.config, tmp_path / "reference")
    assert reference.status == "finished"
    predictions = (killed.run_dir / "predictions.csv").read_bytes()
    assert predictions == (tmp_path / "reference" / "predictions.csv").read_bytes()
    epochs = [json.loads(line)["epoch"] for line in (killed.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]

    # Rerun with one run made unfinished again: the finished one is not touched, the other completes.
    before = files_of(study)
    (killed.run_dir / rundir.DONE).unlink()
    result = run_study(spec, study)
    assert [(o.plan.label, o.status) for o in result.outcomes] == [("baseline/seed0", "skipped"),
                                                                   ("grouped/seed0", "trained")]
    after = files_of(study)
    assert {k: v for k, v in after.items() if "baseline" in k} == {k: v for k, v in before.items() if "baseline" in k}
    assert (killed.run_dir / rundir.DONE).is_file()
    assert "[1/2] baseline/seed0: finished before (done.json), skipped" in capfd.readouterr().err


def test_a_locked_run_is_not_trained_twice(tmp_path, capfd):
    study = tmp_path / "study"
    spec = tiny_spec(tmp_path)
    taken = expand(spec, study)[0]
    prepare_study_dir(study, spec)
    prepare_runs([taken])
    with open(taken.run_dir / LOCK, "a+") as handle:  # another process is training this run
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = run_study(spec, study)
        assert [o.status for o in result.outcomes] == ["locked", "trained"]
        assert not (taken.run_dir / "metrics.jsonl").exists()
        assert "baseline/seed0: being trained by another process" in capfd.readouterr().err
        # the report counts the finished run only, and names the locked one as unfinished
        summary = result.report.summary
        assert list(summary) == ["baseline", "grouped"]
        assert (summary["baseline"].n, summary["grouped"].n) == (0, 1)
        assert summary["baseline"].outcomes.unfinished == 1
    result = run_study(spec, study)  # lock released: now it trains
    assert [o.status for o in result.outcomes] == ["skipped", "trained"]
    assert (taken.run_dir / rundir.DONE).is_file()


def test_jobs_2_runs_side_by_side_and_reports_a_failing_run(tmp_path, capfd):
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    spec = tiny_spec(tmp_path, variants=("baseline", "broken", "thin"), seeds=(0,))
    tree = spec.model_dump()
    tree["variants"][1]["overrides"] = {"model.init_checkpoint": str(tmp_path / "bad.safetensors")}
    spec = parse_spec(tree)
    study = tmp_path / "study"
    result = run_study(spec, study, jobs=2)
    err = capfd.readouterr().err
    status = {o.plan.label: o.status for o in result.outcomes}
    assert status == {"baseline/seed0": "trained", "broken/seed0": "failed", "thin/seed0": "trained"}
    assert "2 at a time, 1 thread(s) each" in err
    assert "[2/3] broken/seed0: FAILED:" in err and str(study / "runs/broken/seed0/train.log") in err
    assert "  [thin/seed0] epoch 2/2" in err  # the engine's lines, labelled
    assert "epoch 2/2" in (study / "runs/thin/seed0" / LOG).read_text()
    summary = result.report.summary  # the failed run is named, never counted
    assert [summary[v].n for v in ("baseline", "broken", "thin")] == [1, 0, 1]
    assert summary["broken"].outcomes.finished == 0
    # The command ends non-zero and says which run failed.
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(tree))
    assert cli.main(["study", str(spec_file), "--out", str(study), "--jobs", "2"]) == 1
    assert "broken/seed0: failed" in capfd.readouterr().err


# ---------------------------------------------------------------------------------------------------
# Shipped studies


@pytest.mark.parametrize("path", SHIPPED + TINY_SPECS, ids=lambda p: str(p.relative_to(STUDIES)))
def test_shipped_specs_validate(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths resolve here: compress.yaml's teacher, made below
    teacher = tmp_path / "runs" / "studies" / "demo" / "runs" / "baseline" / "seed0" / "model_ema.safetensors"
    teacher.parent.mkdir(parents=True)
    teacher.touch()
    spec = load_spec(path)
    plans = expand(spec, tmp_path)  # every run's config validates
    assert len(plans) == len(spec.variants) * len(spec.seeds) and len(spec.seeds) >= 2
    if path.parent.name == "tiny":
        preflight(spec, plans)  # builds every model on the meta device
        full = load_spec(STUDIES / path.name)
        variants, full_variants = ([(v.name, v.overrides) for v in s.variants] for s in (spec, full))
        if full.sweep is not None:  # a sweep's tiny variant runs a few of its variants (and their baseline),
            full_overrides = dict(full_variants)  # each with the full one's overrides, and may shrink the model
            assert all(name in full_overrides and full_overrides[name].items() <= overrides.items()
                       for name, overrides in variants) and spec.seeds == full.seeds
            return
        assert variants == full_variants
        assert spec.seeds == full.seeds and spec.baseline == full.baseline


@pytest.mark.parametrize("name, variant", [("paper_vit_b16_in1k", "grouped"), ("group_size", "size2_cycle"),
                                           ("init_ablation", "shallow_magnitude_jax"), ("scales", "s_shallow")])
def test_one_tiny_run_of_each_research_study(name, variant, tmp_path):
    spec = load_spec(STUDIES / "tiny" / f"{name}.yaml", [f"overrides.data.root={tmp_path / 'synth'}"])
    plans = [p for p in expand(spec, tmp_path) if p.variant == variant][:1]
    ensure_synth_data(plans)
    result = train(plans[0].config, tmp_path / "run")
    assert result.status == "finished" and (tmp_path / "run" / rundir.DONE).is_file()


def test_paper_study_runs_each_run_under_torchrun():
    spec = load_spec(STUDIES / "paper_vit_b16_in1k.yaml")
    assert (spec.launcher, spec.nproc_per_node, spec.seeds) == ("torchrun", 2, [42, 43])
    assert [p.config.model.reduction for p in expand(spec, "x")[::2]] == ["none", "grouped", "shallow:ratio=0.5"]


def test_demo_command_end_to_end_then_rerun_just_reports(tmp_path, monkeypatch, capsys):
    # The quick demo's spec, made smaller still; relative paths (data/, runs/) land in tmp_path.
    (tmp_path / "studies" / "tiny").mkdir(parents=True)
    (tmp_path / "studies" / "tiny" / "demo.yaml").write_text(yaml.safe_dump({
        "extends": str(STUDIES / "tiny" / "demo.yaml"),
        "overrides": {"synth.train_per_class": 6, "synth.val_per_class": 4, "model.embed_dim": 16},
        "throughput": {"device": "cpu", "batch_size": 4, "repeats": 1, "warmup": 0}}))
    monkeypatch.setattr(demo_cmd, "STUDIES", tmp_path / "studies")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo", "--quick", "--jobs", "1"]) == 0
    out, err = capsys.readouterr()
    # The study's ETA as runs finish, and the analysis phase's progress per run with its own ETA.
    assert "study: 1/8 runs done, 7 left, " in err and ", ETA " in err and "study: 8/8 runs done, 0 left" in err
    assert "analysis [1/8] baseline/seed0: sharpness of " in err and "analysis: 1/8 runs done, 7 left" in err
    study = tmp_path / "runs" / "studies" / "demo-quick"
    assert "QUICK DEMO" in out and "smoke test" in out
    assert "EMA model" in out and "raw model" in out and f"report: {Path('runs/studies/demo-quick/report.md')}" in out
    for variant in ("baseline", "grouped", "shallow", "thin"):
        assert f"\n{variant}" in out
        for seed in (0, 1):
            run = study / "runs" / variant / f"seed{seed}"
            assert all((run / name).is_file() for name in ("config.yaml", "run.json", "metrics.jsonl",
                                                            "predictions.csv", "done.json", LOG))
    assert (tmp_path / "data" / "synth-demo-quick" / "train").is_dir()
    report = (study / "report.md").read_text()
    assert "EMA model" in report and "raw model" in report
    for figure in ("top1_vs_epoch.png", "peak_to_final.png", "train_loss.png"):
        assert f"figures/{figure}" in report and (study / "figures" / figure).stat().st_size > 0
    document = json.loads((study / "summary.json").read_text())  # the file's contract
    summary = document["variants"]
    assert list(summary) == ["baseline", "grouped", "shallow", "thin"]
    (group,) = document["study"]["pareto"]["groups"].values()  # four costs: a Pareto section
    assert sorted(group["variants"]) == sorted(list(summary)[:4]) and group["baseline"] == "baseline"
    assert summary["baseline"]["baseline"] is True and "vs_baseline" in summary["grouped"]
    assert summary["grouped"]["unique_mlps"] == 2 and summary["baseline"]["unique_mlps"] == 4
    for variant in ("baseline", "grouped", "shallow", "thin"):
        entry = summary[variant]
        assert entry["n"] == 2 and entry["seeds"] == [0, 1] and entry["throughput_img_s"] > 0
        assert {"top1_final_mean", "top1_final_std", "p2f_mean", "peak_epoch_mean"} <= set(entry["ema"])

    before = files_of(study)
    assert cli.main(["demo", "--quick"]) == 0  # finished: skips every run, prints the report again
    captured = capsys.readouterr()
    assert captured.err.count("finished before (done.json), skipped") == 8
    assert "EMA model" in captured.out and files_of(study) == before


def test_dry_run_writes_every_config_and_prints_each_runs_torchrun_command(tmp_path, capfd):
    spec = load_spec(STUDIES / "tiny" / "paper_vit_b16_in1k.yaml",
                     [f"overrides.data.root={tmp_path / 'synth'}", "launcher=torchrun", "nproc_per_node=2"])
    with pytest.raises(VitreduceError, match="--jobs > 1 with launcher: torchrun"):
        run_study(spec, tmp_path / "study", jobs=2)
    result = run_study(spec, tmp_path / "study", dry_run=True)
    err = capfd.readouterr().err
    assert result.outcomes == [] and result.report is None
    for plan in expand(spec, tmp_path / "study"):
        assert (f"torchrun --standalone --nproc_per_node=2 -m vitreduce train {plan.run_dir / 'config.yaml'} "
                f"--out {plan.run_dir}") in err
        assert (plan.run_dir / "config.yaml").is_file() and not (plan.run_dir / "metrics.jsonl").exists()


@pytest.mark.slow
def test_torchrun_launcher_trains_a_run_on_two_processes(tmp_path, capfd):
    spec = tiny_spec(tmp_path, variants=("grouped",), launcher="torchrun", nproc_per_node=2)
    result = run_study(spec, tmp_path / "study")
    assert [o.status for o in result.outcomes] == ["trained"], capfd.readouterr().err[-3000:]
    run_dir = tmp_path / "study" / "runs" / "grouped" / "seed0"
    assert json.loads((run_dir / "run.json").read_text())["world_size"] == 2
    assert "torch.distributed.run --standalone --nproc_per_node=2" in (run_dir / LOG).read_text()

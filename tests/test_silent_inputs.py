"""Inputs that used to be accepted silently, or with a misleading label: each is now refused with what to
change, or done and said."""
from __future__ import annotations

import json
import os

import pytest

from vitreduce.cli.main import main
from vitreduce.data.config import DataConfig
from vitreduce.data.images import check_dataset, scan_split
from vitreduce.efficiency.results import VariantProfile, format_table
from vitreduce.errors import VitreduceError
from vitreduce.reduction.spec import ReductionSpec
from vitreduce.study.plan import prepare_study_dir
from vitreduce.study.spec import parse_spec
from vitreduce.study.status import RunState, study_status
from vitreduce.train import rundir

TINY = ["vit_tiny_patch16_224", "--model-arg", "embed_dim=32", "--model-arg", "depth=2", "--model-arg",
        "num_heads=2", "--model-arg", "img_size=16", "--model-arg", "patch_size=4"]  # MLP hidden 128


def test_a_ratio_that_would_clamp_to_one_unit_is_refused(capsys):
    assert main(["inspect", *TINY, "--reduction", "shallow:ratio=1e-9"]) == 2
    err = capsys.readouterr().err
    assert "keeps round(128 x 1e-09) = 0 of the 128 hidden units" in err and "ratio >= 0.00781" in err
    assert main(["inspect", *TINY, "--reduction", "thin:ratio=0.003"]) == 2  # 0.384 units
    capsys.readouterr()
    assert main(["inspect", *TINY, "--reduction", "shallow:ratio=0.0079"]) == 0  # one unit, as labelled
    assert "         1 " in capsys.readouterr().out


@pytest.mark.parametrize("text", ["grouped:scale=1e20", "grouped:scale=1e-20+shallow:ratio=0.25",
                                  "grouped:scale=123456789012345678901234.0"])
def test_a_spec_prints_as_it_parses(text):
    spec = ReductionSpec.parse(text)
    assert "+" not in str(spec.steps[0])  # '1e+20' would read as a second step
    assert ReductionSpec.parse(str(spec)) == spec


def test_swin_heads_must_match_its_stages(capsys):
    base = ["inspect", "swin_tiny_patch4_window7_224", "--model-arg", "depths=[2, 2]"]
    assert main([*base, "--model-arg", "num_heads=[3, 6, 12, 24]"]) == 2
    assert "num_heads lists 4 stage(s) but the model has 2" in capsys.readouterr().err
    assert main([*base, "--model-arg", "num_heads=[3, 6]"]) == 0


def test_inspect_img_size_zero_is_refused(capsys):
    assert main(["inspect", *TINY, "--img-size", "0"]) == 2
    assert "--img-size must be a positive number of pixels, got 0" in capsys.readouterr().err


def test_a_throughput_device_is_checked_with_the_spec(tiny_train_config):
    spec = {"name": "s", "base": tiny_train_config(), "seeds": [0], "variants": [{"name": "baseline"}]}
    with pytest.raises(VitreduceError, match="throughput.device: must be auto, cpu, cuda or cuda:N, got 'tpu'"):
        parse_spec({**spec, "throughput": {"device": "tpu"}})
    assert parse_spec({**spec, "throughput": {"device": "cuda:1"}}).throughput.device == "cuda:1"


def test_report_refuses_a_nan_spike_threshold(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--spike-threshold", "nan"]) == 2
    assert "--spike-threshold must be a finite number >= 0" in capsys.readouterr().err


def test_a_truncated_done_json_is_no_finished_run(tmp_path, tiny_train_config):
    spec = parse_spec({"name": "s", "base": tiny_train_config(), "variants": [{"name": "a"}], "seeds": [0]})
    prepare_study_dir(tmp_path, spec)
    run = tmp_path / "runs" / "a" / "seed0"
    run.mkdir(parents=True)
    (run / "done.json").write_text(json.dumps({"epochs": 3, "wall_s": 3.0, "final": {}}))
    assert study_status(tmp_path)[0].state is RunState.DONE
    (run / "done.json").write_text('{"epochs": 3, "wall_s": 3.0, "fin')  # cut short by a full disk
    line = study_status(tmp_path)[0]
    assert line.state is RunState.FAILED and "done.json is damaged" in line.tail[0]
    with pytest.raises(VitreduceError, match="done.json is damaged.*remove it and rerun"):
        rundir.read_done(run)


def linked_subset(source, dest, classes=2):
    """A subset of ``source`` made the usual way: class folders of links to its image files."""
    for split in ("train", "val"):
        for folder in sorted((source / split).iterdir())[:classes]:
            (dest / split / folder.name).mkdir(parents=True)
            for image in sorted(folder.iterdir()):
                os.symlink(image, dest / split / folder.name / image.name)
    return dest


def test_a_subset_of_links_is_refused_by_name_and_read_on_request(tiny_dataset, tmp_path):
    subset = linked_subset(tiny_dataset, tmp_path / "subset")
    with pytest.warns(UserWarning, match="data.follow_links: true, or --follow-links, reads links"), \
            pytest.raises(VitreduceError, match=r"hold links to files outside the dataset root .* -> .*"
                                                r"set data.follow_links: true \(--follow-links"):
        check_dataset(DataConfig(root=str(subset)), 2)
    assert check_dataset(DataConfig(root=str(subset), follow_links=True), 2) == 2
    names, samples = scan_split(subset / "val", subset, follow_links=True)
    assert len(names) == 2 and len(samples) == len(list((subset / "val").rglob("*.png")))


def test_eval_follows_links_when_asked(tiny_dataset, tmp_path, capsys):
    from conftest import tiny_model

    import vitreduce

    subset = linked_subset(tiny_dataset, tmp_path / "subset", classes=4)
    model = vitreduce.save(tiny_model(num_classes=4), tmp_path / "m.safetensors")
    argv = ["eval", str(model), "--data", str(subset), "--workers", "0", "--device", "cpu"]
    with pytest.warns(UserWarning, match="skipped 16 entries"):
        assert main(argv) == 2
    assert "--follow-links" in capsys.readouterr().err
    assert main([*argv, "--follow-links"]) == 0
    assert "(16 images)" in capsys.readouterr().out


def profile_row(reduction: str, low: float, high: float) -> VariantProfile:
    return VariantProfile(
        model="m", reduction=reduction, device="cpu", precision="fp32", batch_size=2, threads=1, compile=False,
        repeats=3, warmup=1, params=100, mlp_params=50, unique_mlps=2, macs_total=1_100_000_000,
        macs_linear=10**9, weights_bytes=400, grads_bytes=400, optimizer_bytes=800, infer_img_s=(low + high) / 2,
        infer_img_s_min=low, infer_img_s_max=high, train_img_s=None, train_img_s_min=None, train_img_s_max=None,
        peak_mem_infer_mb=None, peak_mem_train_mb=None, memory_method=None, params_ratio=1.0, macs_ratio=1.0,
        infer_ratio=(low + high) / 200, static_train_ratio=1.0)


def test_profile_prints_speed_ratios_only_for_ranges_apart():
    rows = [profile_row("none", 90, 110), profile_row("grouped", 105, 125), profile_row("shallow", 150, 170)]
    table = format_table(rows).splitlines()
    row = {line.split()[0]: line for line in table if line.split() and line.split()[0] in ("none", "grouped",
                                                                                            "shallow")}
    assert "(x1.00)" in row["none"]
    assert "115.0 [105.0-125.0] (overlaps)" in row["grouped"]
    assert "160.0 [150.0-170.0] (x1.60)" in row["shallow"]


def test_first_hour_options(capsys):
    for verb in (["inspect"], ["report"], ["data", "synth"]):
        with pytest.raises(SystemExit):
            main([*verb, "--help"])
        assert "--threads N" in capsys.readouterr().out, verb
    with pytest.raises(SystemExit):
        main(["profile", "--help"])
    assert "--weights" not in capsys.readouterr().out  # profile has no such option
    with pytest.raises(SystemExit):
        main(["reduce", "--help"])
    assert "(use --weights)" in capsys.readouterr().out


def test_the_demo_time_and_jobs_are_stated_one_way(capsys):
    import re
    from pathlib import Path

    from vitreduce.cli.main import build_parser

    repo = Path(__file__).resolve().parents[1]
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    texts = {"demo --help": capsys.readouterr().out, "studies/demo.yaml": (repo / "studies/demo.yaml").read_text(),
             "README.md": (repo / "README.md").read_text()}
    for where, text in texts.items():
        times = set(re.findall(r"(?:under|about|<) ?\d+ minutes?|\d+-\d+ minutes", " ".join(text.split())))
        assert times == {"under 5 minutes"}, (where, times)
    parser = build_parser()
    defaults = {verb: parser.parse_args([verb, *extra]).jobs for verb, extra in (("demo", []), ("study", ["s.yaml"]))}
    assert defaults == {"demo": 1, "study": 1}


def test_the_command_line_prints_its_own_warnings_as_one_line():
    """A skipped-files warning reads `warning: ...`, as the command's other notes, not Python's
    `file:line: UserWarning: ...` followed by the source line; other libraries' warnings keep their form."""
    import importlib

    from vitreduce.data import images

    cli_main = importlib.import_module("vitreduce.cli.main")  # the module (vitreduce.cli.main is also the function)

    ours = cli_main._as_a_line(UserWarning("ds/val: skipped 2 entries"), UserWarning, images.__file__, 265)
    assert ours == "warning: ds/val: skipped 2 entries\n"
    theirs = cli_main._as_a_line(UserWarning("x"), UserWarning, "/somewhere/else/lib.py", 3)
    assert "UserWarning: x" in theirs and theirs.startswith("/somewhere/else/lib.py:3")

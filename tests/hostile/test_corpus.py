"""The fixed hostile-input corpus (corpus.py): every case ends in a valid result or a clear error with
exit 2, with no traceback and no network call; the ones that could exhaust memory or time run in a
subprocess under a memory limit (marked slow)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_model
from corpus import CASES, TINY_ARGS, Case, edit_header
from harness import describe, problems, read_header, run_cli, run_isolated, write_checkpoint

import vitreduce
from vitreduce.config_tree import merge


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, Path]:
    """A tiny vitreduce checkpoint, and a truncated and an empty .pth of its weights."""
    folder = tmp_path_factory.mktemp("originals")
    model = tiny_model(num_classes=4)  # the classes of tiny_dataset
    checkpoint = vitreduce.save(model, folder / "tiny.safetensors")
    torch.save(model.state_dict(), folder / "full.pth")
    data = (folder / "full.pth").read_bytes()
    (folder / "truncated.pth").write_bytes(data[: len(data) // 2])
    (folder / "empty.pth").write_bytes(b"")
    return {"ckpt": checkpoint, "truncated_pth": folder / "truncated.pth", "empty_pth": folder / "empty.pth"}


@pytest.fixture
def workspace(tmp_path, originals, tiny_dataset, tiny_train_config, monkeypatch):
    """``build(case) -> argv``: the case's files written under tmp_path (also the working directory)."""
    monkeypatch.chdir(tmp_path)

    def build(case: Case) -> list[str]:
        paths = {"data": str(tiny_dataset), "out": str(tmp_path / "out"), "ckpt": str(tmp_path / "model.safetensors"),
                 "truncated_pth": str(originals["truncated_pth"]), "empty_pth": str(originals["empty_pth"]),
                 "config": str(tmp_path / "config.yaml"), "spec": str(tmp_path / "spec.yaml")}
        if case.header is None:
            shutil.copy(originals["ckpt"], paths["ckpt"])
        else:
            header = edit_header(read_header(originals["ckpt"]), case.header, paths["ckpt"])
            write_checkpoint(originals["ckpt"], Path(paths["ckpt"]), header)
        tree = _filled(merge(tiny_train_config(epochs=1), case.config or {}), paths)
        _write(Path(paths["config"]), tree, case.config_yaml)
        spec = {"name": "hostile", "base": tiny_train_config(epochs=1), "seeds": [0],
                "variants": [{"name": "baseline", "overrides": {"model.reduction": "none"}}]}
        _write(Path(paths["spec"]), merge(spec, case.spec or {}), case.spec_yaml)
        return _argv(case, paths)

    return build


def _filled(tree, paths: dict[str, str]):
    if isinstance(tree, dict):
        return {key: _filled(value, paths) for key, value in tree.items()}
    return tree.format(**paths) if isinstance(tree, str) and "{" in tree else tree


def _write(path: Path, tree: dict, make_bytes) -> None:
    path.write_bytes(make_bytes(tree) if make_bytes else yaml.safe_dump(tree, sort_keys=False).encode())


def _argv(case: Case, paths: dict[str, str]) -> list[str]:
    argv: list[str] = []
    for item in case.argv:
        if item == "{tiny_args}":
            argv += [word for arg in TINY_ARGS for word in ("--model-arg", arg)]
        else:
            argv.append(item.format(**paths))
    return argv


@pytest.mark.parametrize("case", [c for c in CASES if not c.isolated], ids=lambda c: c.id)
def test_hostile_input_ends_in_a_result_or_a_clear_error(case, workspace):
    outcome = run_cli(workspace(case))
    found = problems(outcome, case.expect_error, case.not_in)
    assert not found, describe(outcome, found)


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c.isolated], ids=lambda c: c.id)
def test_hostile_input_in_a_subprocess_stays_bounded(case, workspace, tmp_path):
    outcome = run_isolated(workspace(case), tmp_path)
    found = problems(outcome, case.expect_error, case.not_in)
    assert not found, describe(outcome, found)


CONTROLS = [
    Case("control-eval", ("eval", "{ckpt}", "--data", "{data}", "--workers", "0", "--device", "cpu")),
    Case("control-inspect", ("inspect", "{ckpt}")),
    Case("control-train", ("train", "{config}", "--out", "{out}")),
    Case("control-study", ("study", "{spec}", "--out", "{out}", "--dry-run")),
]


@pytest.mark.parametrize("case", CONTROLS, ids=lambda c: c.id)
def test_the_untouched_workspace_is_valid(case, workspace):
    """Without the hostile edit each kind of case succeeds, so a refusal above is about the edit."""
    outcome = run_cli(workspace(case))
    assert outcome.code == 0 and not problems(outcome), describe(outcome, problems(outcome) or ["exit 2"])

"""`vitreduce --version`, `--help`, the package itself and the entry of a SLURM job's tasks import no torch (20-30 s on
a busy node; signals must be caught before it): checked in a fresh interpreter, by what it has imported."""
from __future__ import annotations

import subprocess
import sys

import pytest

CLI = "import sys\nfrom vitreduce.cli.main import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"


def imports_torch(code: str, *args: str) -> bool:
    done = subprocess.run([sys.executable, "-c", code + "print('torch' in sys.modules)", *args],
                          capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.parametrize("args", [["--version"], ["--help"], []], ids=["--version", "--help", "no verb"])
def test_the_command_line_without_a_verb_imports_no_torch(args):
    assert not imports_torch(CLI, *args)


@pytest.mark.parametrize("module", ["vitreduce", "vitreduce.study.slurm_job", "vitreduce.train.preempt",
                                    "vitreduce.study", "vitreduce.train", "vitreduce.train.config",
                                    "vitreduce.study.spec", "vitreduce.study.status", "vitreduce.study.runner"])
def test_these_modules_import_no_torch(module):
    assert not imports_torch(f"import sys\nimport {module}\n")


def test_the_check_can_fail():
    assert imports_torch(CLI, "inspect", "--help")  # a verb's own arguments need its module, and torch


def test_the_package_names_still_work():
    import vitreduce

    model = vitreduce.create_model("vit_tiny_patch16_224", reduction="grouped", img_size=16, patch_size=8,
                                   embed_dim=16, depth=2, num_heads=2, num_classes=3)
    assert vitreduce.describe(model).unique_mlps == 1 and "create_model" in dir(vitreduce)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        vitreduce.nope  # noqa: B018


@pytest.mark.parametrize("order", ["import vitreduce\nimport timm\n", "import timm\nimport vitreduce\n"],
                         ids=["vitreduce first", "timm first"])
def test_import_vitreduce_registers_the_reduced_names_with_timm_in_either_order(order):
    code = order + ("m = timm.create_model('vit_tiny_patch16_224_grouped_mlp', img_size=16, patch_size=8, "
                    "num_classes=3)\nprint(m.blocks[0].mlp is m.blocks[1].mlp)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr[-500:]

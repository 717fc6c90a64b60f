"""The command line as a user meets it: help, version, clear errors with exit code 2."""
from __future__ import annotations

import json
import subprocess
import sys

from vitreduce.cli.main import main
from vitreduce.version import __version__


def test_python_dash_m_and_version():
    out = subprocess.run([sys.executable, "-m", "vitreduce", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"vitreduce {__version__}"


def test_help_lists_the_foundation_verbs(capsys):
    assert main([]) == 2
    text = capsys.readouterr().out
    assert "inspect" in text and "reduce" in text


def test_inspect_paper_table_json(capsys):
    args = ["inspect", "vit_base_patch16_224", "--reduction", "none", "--reduction", "grouped",
            "--reduction", "shallow", "--json"]
    assert main(args) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [set(r) for r in rows] == [{"model", "reduction", "params", "mlp_params", "unique_mlps", "mlp_hidden",
                                       "macs_linear", "macs_total", "macs_breakdown"}] * 3
    assert [r["params"] for r in rows] == [86_567_656, 58_233_064, 58_237_672]
    assert [r["reduction"] for r in rows] == ["none", "grouped", "shallow:ratio=0.5"]


def test_inspect_table_shows_ratios(capsys):
    assert main(["inspect", "vit_base_patch16_224"]) == 0
    text = capsys.readouterr().out
    assert "58,233,064" in text and "0.673" in text and "16.85" in text and "11.99" in text


def test_user_errors_exit_2_without_traceback(capsys):
    assert main(["inspect", "vit_base_patch16_224", "--reduction", "grouped:size=13"]) == 2
    err = capsys.readouterr().err
    assert "exceeds the model depth 12" in err and "Traceback" not in err
    assert main(["inspect", "vit_bsae_patch16_224"]) == 2
    assert "unknown timm model" in capsys.readouterr().err
    assert main(["inspect", "vit_tiny_patch16_224", "--model-arg", "depth"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err

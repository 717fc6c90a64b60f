"""benchmarks/gpu_check.py's dry run: every section runs its code path on the CPU and its checks pass, so the
GPU check cannot rot while no GPU is at hand; and torchrun at world size 1 joins a process group."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from vitreduce.train import distributed

pytestmark = pytest.mark.xdist_group("gpu_check")  # one dry run per worker, shared by its tests
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
SECTIONS = ["train_steps", "resume", "compile", "ddp", "hessian", "throughput_eager", "hvp_time", "data_loading",
            "throughput_compiled"]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("gpu_check")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--dry-run"], capture_output=True,
                          text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return out, proc


@pytest.mark.slow
def test_dry_run_writes_every_section(dry_run):
    out, proc = dry_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["schema"] == 1 and report["dry_run"] is True and report["device"] == "cpu"
    assert list(report["sections"]) == SECTIONS
    for name, section in report["sections"].items():
        assert section["status"] in ("ok", "skipped"), (name, section)
        assert section["status"] == "ok" or section["reason"], name
        assert all(check["passed"] for check in section.get("checks", {}).values()), (name, section)
    table = (out / "gpu_check.md").read_text()
    assert all(f"| {name} | ok |" in table for name in SECTIONS)
    assert "gpu_check: cpu (dry run)" in proc.stdout


@pytest.mark.slow
def test_dry_run_checks_are_the_real_ones(dry_run):
    report = json.loads((dry_run[0] / "gpu_check.json").read_text())
    sections = report["sections"]
    steps = {c: v["detail"] for c, v in sections["train_steps"]["checks"].items()}
    assert set(steps) == {f"{r}/{p}" for r in ("none", "grouped", "shallow") for p in ("fp32", "bf16")}
    grouped = steps["grouped/fp32"]
    assert grouped["shared_by"] == 2 and grouped["sharing_kept"]  # the EMA check ran on a shared tensor
    assert grouped["max_err_one_update"] <= 1e-6 < grouped["max_err_two_updates"]
    assert sections["resume"]["comparison"] == "bitwise" and sections["resume"]["max_abs_diff"] == 0
    assert sections["compile"]["graphs"] >= 1 and sections["compile"]["backend"] == "aot_eager"
    assert sections["ddp"]["backend"] == "gloo" and sections["ddp"]["max_abs_diff"] <= 1e-5
    rows = sections["throughput_eager"]["rows"]
    assert [r["variant"] for r in rows] == ["none", "grouped", "shallow:ratio=0.5"]
    assert all(r["train_img_s"] > 0 and r["infer_img_s"] > 0 for r in rows)
    assert sections["data_loading"]["rows"][0]["loader_img_s"] > 0
    assert sections["data_loading"]["rows"][0]["decode_jpeg_img_s"] > 0
    assert any("needs CUDA" in note for note in sections["data_loading"]["notes"])
    assert any("data loading" in line for line in report["conclusions"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_torchrun_at_world_size_one_joins_a_process_group(monkeypatch):
    """One process started by torchrun still runs the DDP path (over gloo on CPU; nccl on a GPU)."""
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(key, value)
    info = distributed.init("cpu")
    try:
        assert info.owns_group and info.distributed and dist.is_initialized()
        assert dist.get_backend() == "gloo" and info.agree(lambda: 7) == 7
    finally:
        distributed.shutdown(info)
    assert not dist.is_initialized()


def test_without_torchrun_world_size_one_is_a_plain_process(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = distributed.init("cpu")
    assert not info.owns_group and not info.distributed and not dist.is_initialized()

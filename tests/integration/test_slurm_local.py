"""The SLURM path of a study on submitit's LocalExecutor (real subprocesses, no cluster): a job stopped by
its timeout signal mid-run is requeued, resumes and ends bitwise identical to the same study trained locally."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_resume import metrics
from test_study import tiny_spec

from vitreduce.study.launch import OutcomeStatus
from vitreduce.study.runner import run_study
from vitreduce.study.status import RunState, study_status

pytestmark = pytest.mark.slow
SLURM = {"gpus_per_node": 0, "cpus_per_task": 1, "timeout_min": 10, "max_requeues": 2}


def timeout_once(step: int, marker: str):
    """An ``on_event`` hook that sends this process submitit's timeout signal (USR2, what the local executor and
    SLURM send ``signal_delay_s`` before the time limit) after the ``step``-th step of the first attempt only."""
    seen = 0

    def on_event(event: str) -> None:
        nonlocal seen
        if event == "step":
            seen += 1
            if seen == step and not os.path.exists(marker):
                open(marker, "w").close()  # noqa: SIM115
                os.kill(os.getpid(), signal.SIGUSR2)

    return on_event


def test_timeout_requeue_resume_equals_local_pool(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the job processes: the same thread count as the reference
    reference = run_study(tiny_spec(tmp_path, variants=("grouped",)), tmp_path / "pool", threads=1)
    assert not reference.failed

    spec = tiny_spec(tmp_path, variants=("grouped",), launcher="slurm", slurm=SLURM)
    marker = tmp_path / "signalled"
    result = run_study(spec, tmp_path / "slurm", threads=1, wait=True, cluster="local",
                       on_event=timeout_once(2, str(marker)))
    assert [o.status for o in result.outcomes] == [OutcomeStatus.TRAINED], [o.message for o in result.outcomes]
    assert marker.exists()

    run, ref = tmp_path / "slurm" / "runs" / "grouped" / "seed0", tmp_path / "pool" / "runs" / "grouped" / "seed0"
    job = json.loads((run / "job.json").read_text())
    assert job["requeues"] == 1 and [a["end"] for a in job["attempts"]] == ["requeued", "done"]
    assert "stopped on SIGUSR2 after step 3" in (run / "train.log").read_text()
    assert "recovery-00000003" in (run / "train.log").read_text()  # the requeued job resumed from it
    for name in ("model.safetensors", "model_ema.safetensors"):
        ours, theirs = load_file(str(run / name)), load_file(str(ref / name))
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name
    assert (run / "predictions.csv").read_text() == (ref / "predictions.csv").read_text()
    assert metrics(run) == metrics(ref)
    assert result.report is not None and result.report.summary_json.is_file()

    [line] = study_status(tmp_path / "slurm")
    assert line.state is RunState.DONE and line.epoch == line.epochs == 2
    assert line.job_id == job["attempts"][-1]["job_id"]

    again = run_study(spec, tmp_path / "slurm", threads=1, wait=True, cluster="local")
    assert [o.status for o in again.outcomes] == [OutcomeStatus.SKIPPED]
    assert json.loads((tmp_path / "slurm" / "slurm" / "jobs.json").read_text()).keys() == {"grouped/seed0"}


def test_too_many_requeues_fail_the_run(tmp_path, monkeypatch):
    """max_requeues 0: the first timeout fails the run (its job is not requeued) and status says so."""
    spec = tiny_spec(tmp_path, variants=("grouped",), launcher="slurm", slurm={**SLURM, "max_requeues": 0})
    result = run_study(spec, tmp_path / "s", threads=1, wait=True, cluster="local",
                       on_event=timeout_once(1, str(tmp_path / "m")))
    assert [o.status for o in result.outcomes] == [OutcomeStatus.FAILED]
    [line] = study_status(tmp_path / "s")
    assert line.state is RunState.FAILED and line.epoch == 0
    assert "slurm.max_requeues" in line.tail[0]
    assert Path(line.log) == tmp_path / "s" / "runs" / "grouped" / "seed0" / "train.log"

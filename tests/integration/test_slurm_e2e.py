"""The SLURM path end to end, through submitit's real SlurmExecutor against a one-node stand-in SLURM
(fake_slurm/: sbatch, srun, sacct, scontrol, scancel as scripts that run each job as local processes with
SLURM's environment, deliver signals and requeue): a two-rank run with --wait, a preemption and a time-limit
signal each requeued and resumed bitwise equal to the local run, requeues spent by preemptions, a start-up
error's traceback named by `vitreduce study status`."""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
import yaml
from fake_slurm.hooks import Interrupt
from safetensors.torch import load_file
from test_resume import metrics
from test_study import base_tree, tiny_spec

from vitreduce.cli.main import main
from vitreduce.study import slurm as slurm_module
from vitreduce.study.launch import OutcomeStatus
from vitreduce.study.runner import run_study
from vitreduce.study.status import RunState, study_status

pytestmark = pytest.mark.slow
FAKE = Path(__file__).resolve().parent / "fake_slurm"
ONE_CPU = {"gpus_per_node": 0, "cpus_per_task": 1, "timeout_min": 10, "signal_delay_s": 60}
_first_ids = itertools.count(1000, 1000)  # job ids differ between tests (submitit caches finished jobs' states)


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    """The stand-in SLURM on PATH; its state folder. Every process it started is ended afterwards."""
    state = tmp_path / "fake_slurm"
    state.mkdir()
    monkeypatch.setenv("PATH", f"{FAKE}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(state))
    monkeypatch.setenv("FAKE_SLURM_PYTHON", sys.executable)
    monkeypatch.setenv("FAKE_SLURM_FIRST_ID", str(next(_first_ids)))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(FAKE.parent), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # The study directory is under /tmp, which a real cluster's nodes do not share; this one node does.
    monkeypatch.setattr(slurm_module, "check_shared_filesystem", lambda study_dir, nodes: "nfs")
    yield state
    for line in (state / "pids").read_text().split() if (state / "pids").exists() else []:
        with contextlib.suppress(OSError):  # only a process still running with this state folder
            if f"FAKE_SLURM_DIR={state}".encode() in Path(f"/proc/{line}/environ").read_bytes().split(b"\0"):
                os.kill(int(line), signal.SIGKILL)


def job_record(state: Path, job_id: str) -> dict:
    return json.loads((state / "jobs" / f"{job_id}.json").read_text())


def assert_same_weights(run: Path, ref: Path) -> None:
    for name in ("model.safetensors", "model_ema.safetensors"):
        ours, theirs = load_file(str(run / name)), load_file(str(ref / name))
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name
    assert (run / "predictions.csv").read_text() == (ref / "predictions.csv").read_text()
    assert metrics(run) == metrics(ref)


def test_two_ranks_with_wait_end_with_the_report(cluster, tmp_path, capsys):
    """The default layout (gpus_per_node 2: two tasks, the ranks of one run; here on CPU with gloo), submitted
    with --wait as a user would: exit status 0, the report written."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "tiny", "base": base_tree(tmp_path / "synth"), "seeds": [0], "launcher": "slurm",
        "variants": [{"name": "grouped", "overrides": {"model.reduction": "grouped"}}],
        "slurm": {**ONE_CPU, "gpus_per_node": 2}}))
    out = tmp_path / "study"
    assert main(["study", str(spec), "--wait", "--out", str(out)]) == 0, capsys.readouterr().err
    run = out / "runs" / "grouped" / "seed0"
    assert (run / "done.json").is_file() and (out / "report.md").is_file()
    record = json.loads((run / "run.json").read_text())
    assert (record["world_size"], record["threads"]) == (2, 1)  # slurm.cpus_per_task threads in each task
    job_id = json.loads((out / "slurm" / "jobs.json").read_text())["grouped/seed0"]["job_id"]
    assert "--cpus-per-task=1" in job_record(cluster, job_id)["srun_args"]
    script = next((out / "slurm").rglob("*_submission.sh")).read_text()
    assert "#SBATCH --requeue" in script and "#SBATCH --ntasks-per-node=2" in script
    assert "report:" in capsys.readouterr().out


def test_preemption_and_time_limit_requeue_and_resume_bitwise(cluster, tmp_path):
    """Preempted (SIGTERM, requeued by SLURM) after step 2 of the first attempt, then the time-limit signal
    (USR2, requeued by the job) after step 2 of the second: the run ends bitwise equal to the local one, each
    requeue counted, and a rerun submits nothing."""
    reference = run_study(tiny_spec(tmp_path, variants=("grouped",)), tmp_path / "local", threads=1)
    assert not reference.failed
    spec = tiny_spec(tmp_path, variants=("grouped",), launcher="slurm", slurm={**ONE_CPU, "max_requeues": 2})
    result = run_study(spec, tmp_path / "slurm", threads=1, wait=True,
                       on_event=Interrupt({0: ("preempt", 2), 1: ("timeout", 2)}))
    assert [o.status for o in result.outcomes] == [OutcomeStatus.TRAINED], [o.message for o in result.outcomes]
    run = tmp_path / "slurm" / "runs" / "grouped" / "seed0"
    job = json.loads((run / "job.json").read_text())
    assert job["requeues"] == 2 and [a["end"] for a in job["attempts"]] == ["preempted", "requeued", "done"]
    assert [a.get("signal") for a in job["attempts"]] == ["SIGTERM", "SIGUSR2", None]
    assert_same_weights(run, tmp_path / "local" / "runs" / "grouped" / "seed0")
    assert result.report is not None and result.report.summary_json.is_file()
    [line] = study_status(tmp_path / "slurm")
    assert line.state is RunState.DONE and line.job_id == job["attempts"][-1]["job_id"]

    again = run_study(spec, tmp_path / "slurm", threads=1)  # without --wait: nothing to submit, the report
    assert [o.status for o in again.outcomes] == [OutcomeStatus.SKIPPED] and again.report is not None
    assert len(list((cluster / "jobs").glob("*.json"))) == 1


def test_requeues_spent_by_preemptions_fail_the_run_with_its_reason(cluster, tmp_path):
    """max_requeues 1 and a preemption in every attempt: the second stop fails the run instead of requeueing it;
    SLURM requeues the preempted job anyway, and it fails at its start. Status names the reason and the log."""
    spec = tiny_spec(tmp_path, variants=("grouped",), launcher="slurm", slurm={**ONE_CPU, "max_requeues": 1})
    result = run_study(spec, tmp_path / "s", threads=1, wait=True,
                       on_event=Interrupt({0: ("preempt", 1), 1: ("preempt", 1)}))
    assert [o.status for o in result.outcomes] == [OutcomeStatus.FAILED]
    assert "slurm.max_requeues (1)" in result.outcomes[0].message
    [line] = study_status(tmp_path / "s")
    job = json.loads((tmp_path / "s" / "runs" / "grouped" / "seed0" / "job.json").read_text())
    assert [a["end"] for a in job["attempts"]] == ["preempted", "failed", "failed"]
    assert "stopped by SIGTERM" in job["attempts"][1]["error"] and "slurm.max_requeues (1) reached" in job[
        "attempts"][1]["error"]
    assert line.state is RunState.FAILED and "more than slurm.max_requeues (1)" in line.tail[0]
    assert line.log.name.endswith("_0_log.err") and "RunFailed" in line.log.read_text()


def test_a_start_up_error_shows_its_traceback_log_and_queued_jobs_are_not_resubmitted(cluster, tmp_path, capsys):
    spec = tiny_spec(tmp_path, variants=("grouped",), launcher="slurm", slurm=ONE_CPU)
    (cluster / "hold").touch()  # the job waits in the queue
    submitted = run_study(spec, tmp_path / "s", threads=1)
    assert [o.status for o in submitted.outcomes] == [OutcomeStatus.SUBMITTED]
    again = run_study(spec, tmp_path / "s", threads=1)
    assert [o.status for o in again.outcomes] == [OutcomeStatus.LOCKED]  # queued: not submitted twice
    run = tmp_path / "s" / "runs" / "grouped" / "seed0"
    (run / "config.yaml").write_text("epochs: [2\n")  # damaged before the job starts
    (cluster / "hold").unlink()
    job_id = json.loads((tmp_path / "s" / "slurm" / "jobs.json").read_text())["grouped/seed0"]["job_id"]
    slurm_module.submitit.SlurmJob(tmp_path / "s" / "slurm" / "%j", job_id).wait()
    assert main(["study", "status", str(tmp_path / "s")]) == 1
    out = capsys.readouterr().out
    err_log = tmp_path / "s" / "slurm" / job_id / f"{job_id}_0_log.err"
    assert f"grouped/seed0 failed; log: {err_log}" in out and "Traceback" in err_log.read_text()
    assert "config.yaml" in out and not (run / "train.log").exists()

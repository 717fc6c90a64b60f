"""`vitreduce study status`: a study whose runs are in every state, from fabricated run directories."""
from __future__ import annotations

import json
import time

import pytest

from vitreduce.cli.main import main
from vitreduce.locks import RunLock
from vitreduce.study.plan import prepare_study_dir
from vitreduce.study.spec import parse_spec
from vitreduce.study.status import RunState, format_status, study_status

STATES = ["done", "running", "requeued", "failed", "pending", "queued"]


def epoch(n: int, top1: float) -> str:
    return json.dumps({"epoch": n, "epoch_time_s": 10.0, "raw": {"top1": top1 - 1}, "ema": {"top1": top1}}) + "\n"


@pytest.fixture
def study(tmp_path, tiny_train_config):
    """One variant per state, each run directory written as that state leaves it."""
    spec = parse_spec({"name": "s", "base": tiny_train_config(), "variants": [{"name": n} for n in STATES],
                       "seeds": [0], "launcher": "slurm"})
    prepare_study_dir(tmp_path, spec)
    runs = {name: tmp_path / "runs" / name / "seed0" for name in STATES}
    for run in runs.values():
        run.mkdir(parents=True)
    now = time.time()

    def attempts(*items):
        return json.dumps({"requeues": len(items) - 1, "attempts": list(items)})

    (runs["done"] / "metrics.jsonl").write_text(epoch(1, 40) + epoch(2, 50) + epoch(3, 60))
    (runs["done"] / "done.json").write_text(json.dumps({"epochs": 3, "wall_s": 3725.0, "final": {}}))
    (runs["running"] / "metrics.jsonl").write_text(epoch(1, 40))
    (runs["running"] / "job.json").write_text(attempts({"job_id": "7_1", "started": now - 65}))
    (runs["requeued"] / "metrics.jsonl").write_text(epoch(1, 41) + epoch(2, 42))
    (runs["requeued"] / "job.json").write_text(attempts({"job_id": "7_2", "started": now - 100, "ended": now - 40,
                                                         "end": "requeued"}))
    (runs["failed"] / "job.json").write_text(attempts({"job_id": "7_3", "started": now - 30, "ended": now - 20,
                                                       "end": "failed", "error": "ValueError: boom"}))
    (runs["failed"] / "train.log").write_text("".join(f"line {i}\n" for i in range(10)))
    (tmp_path / "slurm").mkdir()
    jobs = {f"{name}/seed0": {"job_id": f"7_{i}", "cluster": "local"}
            for i, name in enumerate(STATES) if name != "pending"}
    (tmp_path / "slurm" / "jobs.json").write_text(json.dumps(jobs))
    lock = RunLock(runs["running"])
    assert lock.acquire()
    yield tmp_path
    lock.release()


def test_every_state(study):
    lines = {line.label.split("/")[0]: line for line in study_status(study)}
    assert {name: line.state for name, line in lines.items()} == {
        "done": RunState.DONE, "running": RunState.RUNNING, "requeued": RunState.REQUEUED,
        "failed": RunState.FAILED, "pending": RunState.PENDING, "queued": RunState.PENDING}
    assert (lines["done"].epoch, lines["done"].metric, lines["done"].time_s) == (3, "ema top1 60.00", 3725.0)
    assert lines["running"].job_id == "7_1" and lines["running"].epoch == 1 and lines["running"].time_s >= 65
    assert lines["requeued"].time_s == pytest.approx(60) and lines["requeued"].metric == "ema top1 42.00"
    assert lines["failed"].tail == ["ValueError: boom", "line 5", "line 6", "line 7", "line 8", "line 9"]
    assert (lines["pending"].job_id, lines["queued"].job_id) == ("-", "7_5")
    text = format_status(list(lines.values()))
    assert "1:02:05" in text and "2 pending, 1 running, 1 requeued, 1 done, 1 failed" in text
    assert f"failed/seed0 failed; log: {study / 'runs' / 'failed' / 'seed0' / 'train.log'}" in text


def test_the_scheduler_state_wins_over_the_files(study):
    slurm = {"7_2": "RUNNING", "7_5": "CANCELLED by 1000", "7_3": "PENDING"}
    lines = {line.label.split("/")[0]: line for line in study_status(study, scheduler=slurm.get)}
    assert lines["requeued"].state is RunState.RUNNING
    assert lines["queued"].state is RunState.FAILED and lines["queued"].tail[0] == "SLURM job state CANCELLED by 1000"
    assert lines["failed"].state is RunState.PENDING  # requeued by hand (scontrol requeue), waiting again


def test_cli(study, tmp_path, capsys):
    assert main(["study", "status", str(study)]) == 1  # a run failed
    out = capsys.readouterr().out
    assert "requeued/seed0" in out and "| line 9" in out
    assert main(["study", "status", str(tmp_path / "nothing")]) == 2
    assert "not a study directory" in capsys.readouterr().err


LOCAL = ["done", "running", "error", "crash", "torchrun", "stopped", "rerun", "new"]


def test_a_local_study_has_its_states_from_the_files(tmp_path, tiny_train_config, capsys):
    """A study run with the local launcher (no slurm/ folder, no job.json): a log ending on an error is failed,
    one whose error a later session resumed past is not."""
    spec = parse_spec({"name": "s", "base": tiny_train_config(), "variants": [{"name": n} for n in LOCAL],
                       "seeds": [0]})
    prepare_study_dir(tmp_path, spec)
    runs = {name: tmp_path / "runs" / name / "seed0" for name in LOCAL}
    for name, run in runs.items():
        run.mkdir(parents=True)
        if name != "new":
            (run / "metrics.jsonl").write_text(epoch(1, 40))
    (runs["done"] / "done.json").write_text(json.dumps({"epochs": 3, "wall_s": 20.0, "final": {}}))
    (runs["error"] / "train.log").write_text("epoch 1/3 batch 1/4 loss 1.4\nerror: data.root: no such folder\n")
    (runs["crash"] / "train.log").write_text("epoch 1/3 batch 1/4\nTraceback (most recent call last):\n"
                                             '  File "x.py", line 1\nRuntimeError: out of memory\n')
    (runs["torchrun"] / "train.log").write_text("vitreduce train: error: precision: fp16 needs a CUDA GPU\n"
                                                "E1130 elastic: failed (exitcode: 2) local_rank: 0\n")
    (runs["stopped"] / "train.log").write_text("epoch 1/3 batch 1/4 loss 1.4\nepoch 2/3 batch 1/4 loss 1.3\n")
    (runs["rerun"] / "train.log").write_text("error: boom\nresuming runs/rerun/seed0 from ...\nepoch 2/3 batch 1\n")
    lock = RunLock(runs["running"])
    assert lock.acquire()
    try:
        lines = {line.label.split("/")[0]: line for line in study_status(tmp_path)}
        assert main(["study", "status", str(tmp_path)]) == 1
    finally:
        lock.release()
    assert not (tmp_path / "slurm").exists()
    assert {name: line.state.value for name, line in lines.items()} == {
        "done": "done", "running": "running", "error": "failed", "crash": "failed", "torchrun": "failed",
        "stopped": "pending", "rerun": "pending", "new": "pending"}
    assert lines["error"].tail[0] == "error: data.root: no such folder"
    assert lines["crash"].tail[0] == "RuntimeError: out of memory"
    assert lines["torchrun"].tail[0] == "vitreduce train: error: precision: fp16 needs a CUDA GPU"
    assert {line.job_id for line in lines.values()} == {"-"}
    assert (lines["stopped"].epoch, lines["stopped"].time_s, lines["done"].time_s) == (1, 10.0, 20.0)
    out = capsys.readouterr().out
    assert "3 failed" in out and f"error/seed0 failed; log: {runs['error'] / 'train.log'}" in out


def slurm_run(tmp_path, tiny_train_config, attempts: list[dict], job_id: str = "9_0"):
    """A one-run SLURM study whose job.json holds ``attempts`` and whose jobs.json names ``job_id``."""
    spec = parse_spec({"name": "s", "base": tiny_train_config(), "variants": [{"name": "a"}], "seeds": [0],
                       "launcher": "slurm"})
    prepare_study_dir(tmp_path, spec)
    run = tmp_path / "runs" / "a" / "seed0"
    run.mkdir(parents=True)
    (run / "job.json").write_text(json.dumps({"requeues": len(attempts) - 1, "attempts": attempts}))
    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm" / "jobs.json").write_text(json.dumps({"a/seed0": {"job_id": job_id, "cluster": "slurm"}}))
    return run


def test_a_failed_job_shows_its_reason_and_the_log_holding_its_traceback(tmp_path, tiny_train_config):
    """sacct says FAILED: the reason is the job's own (job.json), the log the job's stderr (no train.log)."""
    slurm_run(tmp_path, tiny_train_config, [{"job_id": "9_0", "started": 1.0, "ended": 2.0, "end": "failed",
                                             "error": "FileNotFoundError: config.yaml"}])
    stderr = tmp_path / "slurm" / "9_0" / "9_0_0_log.err"
    stderr.parent.mkdir()
    stderr.write_text("submitit INFO - Starting\nTraceback (most recent call last):\n  File \"x.py\", line 1\n"
                      "FileNotFoundError: config.yaml\nsrun: error: node1: task 0: Exited with exit code 1\n")
    [line] = study_status(tmp_path, scheduler={"9_0": "FAILED"}.get)
    assert line.state is RunState.FAILED and line.log == stderr
    assert line.tail[0] == "FileNotFoundError: config.yaml" and "Traceback (most recent call last):" in line.tail
    assert f"a/seed0 failed; log: {stderr}" in format_status([line])


def test_a_job_that_died_before_python_shows_its_stderr(tmp_path, tiny_train_config):
    """No attempt recorded (a setup line failed): the reason is the last line of the job's stderr."""
    slurm_run(tmp_path, tiny_train_config, [])
    stderr = tmp_path / "slurm" / "9_0" / "9_0_0_log.err"
    stderr.parent.mkdir()
    stderr.write_text("/var/spool/slurmd/job9/slurm_script: line 12: module: command not found\n")
    [line] = study_status(tmp_path, scheduler={"9_0": "FAILED"}.get)
    assert line.state is RunState.FAILED and line.log == stderr
    assert line.tail[0] == ("/var/spool/slurmd/job9/slurm_script: line 12: module: command not found; "
                            "SLURM job state FAILED")


def test_a_requeued_job_is_requeued_while_slurm_has_it_pending(tmp_path, tiny_train_config):
    """sacct says PENDING after a requeue: the run is requeued, not pending; spent requeues stay failed."""
    stop = {"job_id": "9_0", "started": 1.0, "ended": 2.0, "end": "requeued", "signal": "SIGUSR2"}
    slurm_run(tmp_path, tiny_train_config, [stop])
    [line] = study_status(tmp_path, scheduler={"9_0": "PENDING"}.get)
    assert line.state is RunState.REQUEUED
    spent = {**stop, "end": "failed", "error": "slurm.max_requeues (1) reached", "requeues_spent": True}
    (tmp_path / "runs" / "a" / "seed0" / "job.json").write_text(json.dumps({"attempts": [spent]}))
    [line] = study_status(tmp_path, scheduler={"9_0": "PENDING"}.get)
    assert line.state is RunState.FAILED and line.tail[0] == "slurm.max_requeues (1) reached"

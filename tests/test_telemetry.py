"""Per-step telemetry: the probe's norms, steps.jsonl's lines and fields, TensorBoard, step-level spikes.

The file's resume (cut back to the checkpoint, equal to an uninterrupted run's) is checked with the
other resume properties in tests/integration/test_resume.py.
"""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from conftest import tiny_model
from test_engine import batch, context

from vitreduce.errors import VitreduceError
from vitreduce.report.runs import find_step_spikes
from vitreduce.train.config import validate
from vitreduce.train.logs import read_steps
from vitreduce.train.loop import train
from vitreduce.train.step import StepProbe, train_step
from vitreduce.train.telemetry import STEPS, StepTelemetry, step_record

FIELDS = {"step", "epoch", "lr", "loss", "grad_norm", "update_norm", "skipped", "mlp_grad_norm"}


# ---- the probe ---------------------------------------------------------------------------------


def test_each_unique_mlp_is_probed_once_named_by_its_first_block():
    assert list(StepProbe.build(tiny_model()).mlps) == [f"blocks.{i}.mlp" for i in range(4)]
    model = tiny_model("grouped")
    grouped = StepProbe.build(model)  # 4 blocks, groups of 2: half the entries
    assert list(grouped.mlps) == ["blocks.0.mlp", "blocks.2.mlp"]
    assert grouped.mlps["blocks.2.mlp"] == list(model.blocks[3].mlp.parameters())  # the shared module, once


@pytest.mark.parametrize("reduction", ["none", "grouped"])
@pytest.mark.parametrize("clip", [None, 1e-3])
def test_mlp_norms_are_the_unclipped_gradient_norms_within_the_global_norm(reduction, clip):
    model = tiny_model(reduction).train()
    probe = StepProbe.build(model)
    result = train_step(context(model, clip_grad=clip), [batch()], probe)
    for name, params in probe.mlps.items():
        assert probe.mlp_grad_norms[name] > 0
        if clip is None:  # the gradients are left as measured: the norm of each MLP's own tensors, once each
            expected = math.sqrt(sum(p.grad.double().pow(2).sum().item() for p in params))
            assert probe.mlp_grad_norms[name] == pytest.approx(expected, rel=1e-5)
    squares = sum(v**2 for v in probe.mlp_grad_norms.values())
    assert squares <= result.grad_norm**2 * (1 + 1e-6)  # the MLPs are part of the unique parameters


def test_a_probed_step_is_bitwise_an_unprobed_step_and_measures_its_update():
    model = tiny_model("grouped").train()
    twin, before = copy.deepcopy(model), copy.deepcopy(model)
    probe = StepProbe.build(model)
    torch.manual_seed(5)  # drop-path draws: the same stream for both steps
    probed = train_step(context(model), [batch()], probe)
    torch.manual_seed(5)
    plain = train_step(context(twin), [batch()])
    assert (probed.loss, probed.grad_norm) == (plain.loss, plain.grad_norm)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters(), strict=True))
    change = [(p - q).double().pow(2).sum().item() for p, q in
              zip(StepProbe.build(model).params, StepProbe.build(before).params, strict=True)]
    assert probe.update_norm == pytest.approx(math.sqrt(sum(change)), rel=1e-5) and probe.update_norm > 0


def test_a_skipped_step_records_no_update_and_null_for_what_is_not_finite():
    model = tiny_model("grouped").train()
    handle = model.head.weight.register_hook(lambda grad: grad * float("inf"))
    probe = StepProbe.build(model)
    result = train_step(context(model, nonfinite="skip"), [batch()], probe)
    handle.remove()
    record = step_record(probe, epoch=1, step=3, lr=1e-3, result=result)
    assert set(record) == FIELDS and record["skipped"] and record["update_norm"] == 0.0
    assert record["grad_norm"] is None and math.isfinite(record["loss"])
    json.dumps(record, allow_nan=False)  # strict JSON


def test_steps_are_probed_every_n_and_not_at_all_with_zero(tmp_path):
    model = tiny_model()
    telemetry = StepTelemetry(tmp_path, model, every=3, steps_done=0)
    assert [s for s in range(1, 10) if telemetry.probe(s) is not None] == [3, 6, 9]
    assert StepTelemetry(tmp_path, model, every=0, steps_done=0).probe(3) is None
    assert StepTelemetry(tmp_path, model, every=3, steps_done=0, main=False).probe(3) is None  # rank > 0
    assert not (tmp_path / STEPS).exists()


def test_steps_file_is_cut_back_to_the_checkpoint_step(tmp_path):
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in (2, 4, 6, 8)]
    (tmp_path / STEPS).write_text("\n".join(lines) + "\n" + '{"step": 10, "lo')  # killed mid-write
    StepTelemetry(tmp_path, tiny_model(), every=0, steps_done=6)  # cut back even when logging is now off
    assert [r["step"] for r in read_steps(tmp_path / STEPS)] == [2, 4, 6]


# ---- a tiny run ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tiny_train_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("telemetry") / "run"
    config = validate(tiny_train_config(epochs=2, logging={"step_every": 3, "tensorboard": True}))
    train(config, out)
    return out


def test_steps_jsonl_lines_and_fields_on_a_tiny_run(tiny_run):
    lines = (tiny_run / STEPS).read_text().splitlines()
    records = [json.loads(line) for line in lines]  # one complete line per logged step
    assert [r["step"] for r in records] == [3, 6] and [r["epoch"] for r in records] == [1, 2]  # 4 steps an epoch
    epochs = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        assert set(r) == FIELDS and not r["skipped"]
        assert list(r["mlp_grad_norm"]) == ["blocks.0.mlp"]  # conftest's run: 2 blocks, one grouped MLP
        assert 0 < r["mlp_grad_norm"]["blocks.0.mlp"] <= r["grad_norm"] and r["update_norm"] > 0
        assert math.isfinite(r["loss"]) and r["lr"] == epochs[r["epoch"] - 1]["lr"]  # the schedule steps per epoch


def test_tensorboard_gets_the_logged_steps(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tiny_run / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"step/loss", "step/lr", "step/grad_norm", "step/update_norm", "grad_norm_mlp/blocks.0.mlp"} <= set(tags)
    records = read_steps(tiny_run / STEPS)
    points = events.Scalars("step/grad_norm")
    assert [p.step for p in points] == [3, 6]
    assert [p.value for p in points] == pytest.approx([r["grad_norm"] for r in records], rel=1e-6)


# ---- step-level spikes ----------------------------------------------------------------------------


def noisy(n: int, level: float = 2.0, seed: int = 0) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    return (level + 0.05 * torch.randn(n, generator=g, dtype=torch.float64)).tolist()


def test_step_spikes_on_fabricated_series():
    steps = list(range(10, 1010, 10))  # 100 logged steps; judged from the 51st (window 50)
    losses = noisy(100)
    assert find_step_spikes(steps, losses) == []  # batch noise alone is no spike
    spiky = list(losses)
    spiky[70] = 2.6  # +0.6: 12 noise sds above the median
    spiky[80] = None  # not finite: always a spike
    spiky[90] = 2.2  # +0.2: 4 noise sds, ordinary for a batch
    assert find_step_spikes(steps, spiky) == [710, 810]
    assert find_step_spikes(steps, spiky, z=3) == [710, 810, 910]
    early = list(losses)
    early[20] = 10.0  # before 50 finite losses precede it: not judged
    assert find_step_spikes(steps, early) == []
    assert find_step_spikes(steps, early, window=10) == [210]
    assert find_step_spikes(steps[:3], [None, math.inf, 1.0]) == [10, 20]


def test_step_spike_reference_is_robust_to_an_earlier_spike_and_to_a_falling_loss():
    steps = list(range(1, 121))
    falling = [3.0 * 0.999**i + x - 2.0 for i, x in enumerate(noisy(120, seed=1))]  # 5% down over a window
    assert find_step_spikes(steps, falling) == []
    two = list(falling)
    two[70], two[90] = two[70] + 1.0, two[90] + 1.0  # the first stays in the reference and hides nothing
    assert find_step_spikes(steps, two) == [71, 91]


def test_step_spike_settings_are_checked():
    with pytest.raises(VitreduceError, match="window"):
        find_step_spikes([1], [1.0], window=0)
    with pytest.raises(VitreduceError, match="z"):
        find_step_spikes([1], [1.0], z=-1)

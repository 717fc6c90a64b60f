"""Per-run and per-variant metrics on hand-written run directories with known answers."""
import json
import math

import pytest

from vitreduce.errors import VitreduceError
from vitreduce.report.records import Spread, Throughput
from vitreduce.report.runs import (
    find_loss_spikes,
    load_run,
    load_study,
    model_metrics,
    read_metrics,
    summarize_throughput,
    summarize_variant,
    throughput_ratio,
)
from vitreduce.statistics.sample import mean_std


def _record(epoch, raw_top1, ema_top1=None, loss=1.0):
    return {"epoch": epoch, "step": 10 * epoch, "lr": 1e-3, "train_loss": loss, "img_s": 100.0,
            "raw": {"top1": raw_top1, "top5": raw_top1 + 10, "loss": 1.0},
            "ema": None if ema_top1 is None else {"top1": ema_top1, "top5": ema_top1 + 5, "loss": 1.0}}


def write_run(run_dir, raw, ema=None, losses=None, *, finished=True, info=None, tail=""):
    """A run directory as the engine writes it; `tail` is appended to metrics.jsonl as is."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("model: vit_tiny_patch16_224\n")
    info = {"model": "vit_tiny_patch16_224", "reduction": "none", "params": 1000, "mlp_params": 400,
            "unique_mlps": 12, "mlp_hidden": 768, "embed_dim": 192, "macs_linear": 1_250_000_000,
            "macs_total": 1_300_000_000, "num_classes": 10, "epochs": len(raw), **(info or {})}
    (run_dir / "run.json").write_text(json.dumps(info))
    ema = ema or [None] * len(raw)
    losses = losses or [1.0] * len(raw)
    rows = zip(raw, ema, losses, strict=True)
    lines = [json.dumps(_record(i + 1, r, e, loss)) for i, (r, e, loss) in enumerate(rows)]
    (run_dir / "metrics.jsonl").write_text("".join(line + "\n" for line in lines) + tail)
    if finished:
        (run_dir / "done.json").write_text(json.dumps({"epochs": len(raw), "wall_s": 1.0, "final": {}}))
    return run_dir


def test_peak_final_and_peak_to_final(tmp_path):
    run = load_run(write_run(tmp_path / "r", raw=[10.0, 30.0, 50.0, 45.0, 48.0], ema=[5, 20, 40, 44, 46]))
    assert (run.raw.top1_peak, run.raw.peak_epoch, run.raw.top1_final, run.raw.final_epoch) == (50, 3, 48, 5)
    assert run.raw.p2f == pytest.approx(2.0)
    assert run.raw.top5_final == 58.0
    # EMA peaks at the last epoch: no degradation.
    assert (run.ema.peak_epoch, run.ema.p2f, run.ema.top5_final) == (5, 0.0, 51)
    assert run.finished and run.epochs_planned == 5 and run.epochs_logged == 5


def test_ties_go_to_the_earliest_epoch():
    records = [_record(e, t) for e, t in enumerate([10.0, 50.0, 40.0, 50.0, 45.0], start=1)]
    m = model_metrics(records, "raw")
    assert (m.peak_epoch, m.p2f) == (2, 5.0)
    m = model_metrics([_record(1, 10.0), _record(2, 50.0), _record(3, 50.0)], "raw")
    assert (m.peak_epoch, m.final_epoch, m.p2f) == (2, 3, 0.0)


def test_ema_null_gives_no_ema_metrics(tmp_path):
    run = load_run(write_run(tmp_path / "r", raw=[10.0, 20.0]))
    assert run.ema is None and run.raw.top1_final == 20.0
    s = summarize_variant("v", [run])
    assert s.ema.n == 0
    assert all(getattr(s.ema, k) == Spread(None, None) for k in ("top1_final", "top5_final", "top1_peak", "peak_epoch",
                                                                  "p2f"))


def test_trailing_partial_line_is_ignored(tmp_path):
    run_dir = write_run(tmp_path / "r", raw=[10.0, 20.0, 30.0], tail='{"epoch": 4, "raw": {"to')
    assert [r["epoch"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1, 2, 3]
    assert load_run(run_dir).raw.final_epoch == 3


def test_complete_last_line_without_newline_counts(tmp_path):
    run_dir = write_run(tmp_path / "r", raw=[10.0], tail=json.dumps(_record(2, 15.0)))
    assert [r["epoch"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1, 2]


def test_corrupt_middle_line_raises(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(_record(1, 1.0)) + "\n{oops\n" + json.dumps(_record(2, 2.0)) + "\n")
    with pytest.raises(VitreduceError, match="metrics.jsonl:2"):
        read_metrics(path)


def test_relogged_epoch_keeps_the_later_record(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [_record(1, 10.0), _record(2, 99.0), _record(3, 30.0), _record(2, 20.0), _record(3, 25.0)]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert [r["raw"]["top1"] for r in read_metrics(path)] == [10.0, 20.0, 25.0]


def test_loss_spikes_relative_to_running_minimum():
    epochs = list(range(1, 8))
    losses = [5.0, 4.0, 3.0, 3.5, 2.9, 2.8, 3.2]
    # 3.5 > 1.1 * 3.0 and 3.2 > 1.1 * 2.8; with a 20% threshold neither is a spike.
    assert find_loss_spikes(epochs, losses) == [4, 7]
    assert find_loss_spikes(epochs, losses, threshold=0.2) == []


def test_loss_spike_window():
    epochs, losses = [1, 2, 3, 4], [1.0, 2.0, 2.0, 2.0]
    assert find_loss_spikes(epochs, losses, window=1) == [2]
    assert find_loss_spikes(epochs, losses, window=2) == [2, 3]
    assert find_loss_spikes(epochs, losses, window=3) == [2, 3, 4]


def test_non_finite_loss_is_a_spike_and_no_reference():
    assert find_loss_spikes([1, 2, 3], [math.nan, 1.0, 1.05]) == [1]
    assert find_loss_spikes([1, 2, 3], [1.0, math.inf, 1.05]) == [2]
    with pytest.raises(VitreduceError, match="window"):
        find_loss_spikes([1], [1.0], window=0)


def test_spikes_counted_from_metrics_file(tmp_path):
    run = load_run(write_run(tmp_path / "r", raw=[1.0] * 4, losses=[2.0, 1.0, 1.5, math.nan]))
    assert run.loss_spike_epochs == (3, 4) and run.loss_spikes == 2


def test_mean_std_uses_sample_std():
    mean, std, n = mean_std([1.0, 2.0, 3.0, 4.0])
    assert (mean, n) == (2.5, 4) and std == pytest.approx(math.sqrt(5 / 3))
    assert mean_std([7.0]) == (7.0, None, 1)
    assert mean_std([None, math.nan]) == (None, None, 0)


def test_summarize_variant(tmp_path):
    runs = [load_run(write_run(tmp_path / "a" / "seed0", raw=[50.0, 60.0, 58.0], ema=[40, 50, 59])),
            load_run(write_run(tmp_path / "a" / "seed1", raw=[52.0, 61.0, 60.0], ema=[41, 51, 60]))]
    s = summarize_variant("a", runs)
    assert s.n == 2 and s.seeds == (0, 1) and s.params == 1000 and s.expansion == 4.0
    assert s.raw.top1_final.mean == 59.0 and s.raw.top1_final.std == pytest.approx(math.sqrt(2))
    assert s.raw.p2f.mean == pytest.approx(1.5) and s.raw.peak_epoch.mean == 2.0
    assert s.ema.p2f == Spread(0.0, 0.0)


def test_variant_seeds_must_agree_on_the_model(tmp_path):
    runs = [load_run(write_run(tmp_path / "seed0", raw=[1.0])),
            load_run(write_run(tmp_path / "seed1", raw=[1.0], info={"params": 999}))]
    with pytest.raises(VitreduceError, match="disagree on run.json 'params'"):
        summarize_variant("a", runs)


def test_missing_architecture_keys_are_none(tmp_path):
    run_dir = write_run(tmp_path / "seed0", raw=[1.0])
    (run_dir / "run.json").write_text(json.dumps({"params": 5}))
    s = summarize_variant("a", [load_run(run_dir)])
    assert s.params == 5 and s.embed_dim is None and s.expansion is None


def test_load_study_order_baseline_and_unfinished(tmp_path):
    for variant in ("b_shallow", "a_grouped", "z_base"):
        write_run(tmp_path / "runs" / variant / "seed0", raw=[1.0, 2.0])
    write_run(tmp_path / "runs" / "a_grouped" / "seed1", raw=[1.0], finished=False)
    (tmp_path / "study.yaml").write_text("name: demo\nvariants:\n  - name: z_base\n  - name: a_grouped\n")
    study = load_study(tmp_path)
    # the spec's variants in its order, the first the baseline; a folder it does not name is no variant
    assert list(study.variants) == ["z_base", "a_grouped"] and study.unlisted == ("b_shallow",)
    assert study.baseline == "z_base" and study.name == "demo"
    assert [(v, r.seed) for v, r in study.excluded] == [("a_grouped", 1)]
    assert [r.seed for r in study.variants["a_grouped"]] == [0]
    study = load_study(tmp_path, include_unfinished=True, baseline="a_grouped")
    assert [r.seed for r in study.variants["a_grouped"]] == [0, 1] and study.baseline == "a_grouped"
    (tmp_path / "study.yaml").write_text("baseline: a_grouped\n")  # no variants named: every folder, sorted
    study = load_study(tmp_path)
    assert study.baseline == "a_grouped" and list(study.variants) == ["a_grouped", "b_shallow", "z_base"]
    with pytest.raises(VitreduceError, match="baseline variant 'nope'"):
        load_study(tmp_path, baseline="nope")


def test_load_study_refuses_empty_or_unfinished(tmp_path):
    with pytest.raises(VitreduceError, match="does not exist"):
        load_study(tmp_path / "missing")
    with pytest.raises(VitreduceError, match="no runs found"):
        load_study(tmp_path)
    write_run(tmp_path / "runs" / "v" / "seed0", raw=[1.0], finished=False)
    with pytest.raises(VitreduceError, match="--include-unfinished"):
        load_study(tmp_path)
    assert not load_study(tmp_path, include_unfinished=True).variants["v"][0].finished


def test_a_throughput_json_without_its_spread_reports_the_median_and_no_ratio():
    old = summarize_throughput({"infer_img_s": 1020.0})  # written before the profiler recorded min and max
    assert old == Throughput(median=1020.0, min=None, max=None, device=None, batch_size=None, precision=None,
                             base_model=None)
    assert throughput_ratio(old, old) == (None, "no range")
    assert summarize_throughput({"infer_img_s": None}) is None and summarize_throughput(None) is None

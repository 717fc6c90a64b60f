"""The Pareto section: the front on a hand-made example, and on fabricated studies with a known
accuracy-vs-reduction curve the fit recovers it within its stated uncertainty, and the degree statement (a
fixed-sequence non-inferiority test on the swept degrees) names the right degree."""
import json

import numpy as np
import pytest

from vitreduce.report.pareto import Series, fit_series, front, polyfit
from vitreduce.report.summary_file import read_summary
from vitreduce.study.reporting import write_report

BASE_PARAMS, BASE_MLP = 5_000_000, 3_000_000
RATIOS = (1.0, 0.75, 0.5, 0.375, 0.25)
SEEDS = range(5)


def steep(kept):
    return 80.0 - 12.0 * (1.0 - kept) ** 2  # the known curve: quadratic in the fraction of MLP parameters removed


def flat(kept):
    return 80.0 + 0.0 * kept


def flat_then_drop(kept):
    return 80.0 - 12.0 * (np.asarray(kept) < 0.3)  # flat from 100% to 37.5% kept, 12 pp lower at 25%


def _write_run(run_dir, name, ratio, seed, top1):
    run_dir.mkdir(parents=True)
    mlp = round(BASE_MLP * ratio)
    (run_dir / "run.json").write_text(json.dumps({
        "model": "vit_tiny_patch16_224", "reduction": "none" if ratio == 1 else f"shallow:ratio={ratio}", "seed": seed,
        "params": BASE_PARAMS - BASE_MLP + mlp, "mlp_params": mlp, "unique_mlps": 12, "mlp_hidden": round(768 * ratio),
        "embed_dim": 192, "macs_linear": round(4e8 + 6e8 * ratio), "macs_total": round(5e8 + 6e8 * ratio),
        "num_classes": 10, "epochs": 2}))
    lines = [{"epoch": e, "step": e, "lr": 1e-3, "train_loss": 1.0 / e, "raw": {"top1": top1 - 3 + e, "top5": 99.0},
              "ema": {"top1": top1 - 2 + e, "top5": 99.0}} for e in (1, 2)]  # final: raw top1 - 1, EMA top1
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (run_dir / "done.json").write_text(json.dumps({"epochs": 2, "wall_s": 1.0, "final": {}}))


def _study(root, curve, noise=0.3):
    """A one-model shallow sweep with `curve` as its true mean EMA final top-1, seed noise drawn once."""
    rng = np.random.default_rng(7)
    names = {r: "ti.baseline" if r == 1 else f"ti.shallow-{r:g}" for r in RATIOS}
    for ratio, name in names.items():
        for seed in SEEDS:
            _write_run(root / "runs" / name / f"seed{seed}", name, ratio, seed, curve(ratio) + rng.normal(0, noise))
    (root / "study.yaml").write_text(json.dumps({
        "name": "deg", "variants": [{"name": n} for n in names.values()], "baseline": "ti.baseline",
        "sweep": {"models": [{"name": "vit_tiny_patch16_224", "label": "ti"}],
                  "reductions": [{"shallow": {"ratio": list(RATIOS)}}]}}))
    paths = write_report(root, n_resamples=500)
    return paths, read_summary(paths.summary_json).study.pareto


def test_front_on_a_hand_made_example():
    points = {"a": (1.0, 70.0), "b": (2.0, 75.0), "c": (3.0, 74.0), "d": (2.0, 75.0), "e": (4.0, 76.0),
              "f": (1.5, 69.0)}
    assert front(points) == ["a", "b", "d", "e"]  # c: b is cheaper and better; f: a is cheaper and better; b = d
    speed = {"fast": (900.0, 70.0), "slow": (300.0, 76.0), "worse": (800.0, 69.0)}
    assert front(speed, lower_is_cheaper=False) == ["fast", "slow"]  # throughput: higher is cheaper


def test_polyfit_is_exact_on_a_quadratic():
    kept = np.array(RATIOS)
    np.testing.assert_allclose(polyfit(kept, steep(kept)), [80.0, 0.0, -12.0], atol=1e-9)


def test_the_band_covers_the_true_curve_about_as_often_as_it_says():
    """Pointwise coverage of the 95% band at the swept degrees, over many noise draws of 4 seeds each."""
    rng = np.random.default_rng(0)
    names = [f"v{r}" for r in RATIOS]
    hits, draws = np.zeros(len(RATIOS)), 150
    for _ in range(draws):
        values = {n: {s: steep(r) + rng.normal(0, 0.3) for s in range(4)} for n, r in zip(names, RATIOS, strict=True)}
        fit = fit_series(Series("shallow", dict(zip(names, RATIOS, strict=True)), values), "v1.0",
                         n_resamples=200, seed=int(rng.integers(1 << 30)))
        grid = np.array(fit["grid"])
        at = [int(np.flatnonzero(grid == r)[0]) for r in RATIOS]
        truth = steep(grid[at])
        hits += (np.array(fit["low"])[at] <= truth) & (truth <= np.array(fit["high"])[at])
    assert np.all((hits / draws >= 0.88) & (hits / draws <= 0.995)), hits / draws  # stated: 95%


def test_fit_recovers_a_known_curve_within_its_interval_and_states_the_degree(tmp_path):
    paths, pareto = _study(tmp_path / "study", steep)
    group = pareto.groups["ti"]
    assert group.baseline == "ti.baseline" and group.variants["ti.shallow-0.5"].kept == pytest.approx(0.5)
    (fit,) = group.fits
    assert fit.strategy == "shallow" and fit.kind == "ema"
    grid, low, high = (np.array(x) for x in (fit.grid, fit.low, fit.high))
    at = [int(np.flatnonzero(grid == r)[0]) for r in RATIOS]  # the swept degrees are on the fit's grid
    assert np.all((low[at] <= steep(grid[at])) & (steep(grid[at]) <= high[at]))  # truth inside the 95% band
    assert np.all(high - low < 1.0)  # and the band is informative
    for true, lo, hi in zip((80.0, 0.0, -12.0), fit.coefficients_low, fit.coefficients_high, strict=True):
        assert lo <= true <= hi
    assert group.front["ema"]["params"][-1] == "ti.baseline"  # the most accurate is the most expensive
    # 0.5 kept is 3 pp below the baseline, far outside the 1 pp margin: the sequence stops there at the latest
    degree = fit.degree
    assert degree.most_reduced in (None, "ti.shallow-0.75") and degree.margin == 1.0 and degree.alpha == 0.05
    assert not degree.steps[1].shown and degree.steps[1].p > 0.99
    assert [s.note for s in degree.steps[2:]] == ["not tested: the sequence stopped at ti.shallow-0.5"] * 2
    assert fit.lack_of_fit.p > 0.05  # the quadratic is the truth: no lack of fit
    report = paths.markdown.read_text()
    assert "## Accuracy against cost (Pareto)" in report
    assert "ti, shallow: " in report and "ti.shallow-0.5 -2.92 pp" in report
    assert (tmp_path / "study" / "figures" / "pareto.svg").is_file()
    assert (tmp_path / "study" / "figures" / "degree.png").is_file()


def test_a_flat_then_drop_sweep_names_the_last_flat_degree(tmp_path):
    """Flat from 100% to 37.5% of MLP parameters kept, 12 pp lower at 25%: the old fitted-curve rule called 100%
    the degree; the non-inferiority sequence shows 75%, 50% and 37.5%, stops at 25%, and the quadratic's lack of
    fit is flagged."""
    paths, pareto = _study(tmp_path / "study", flat_then_drop)
    (fit,) = pareto.groups["ti"].fits
    degree = fit.degree
    assert degree.most_reduced == "ti.shallow-0.375" and degree.most_reduced_kept == pytest.approx(0.375)
    assert [s.shown for s in degree.steps] == [True, True, True, False]
    assert fit.lack_of_fit.p < 0.05
    report = paths.markdown.read_text()
    assert "is ti.shallow-0.375 (37.5% of MLP parameters kept)" in report and "read the measured points" in report


def test_a_curve_that_never_drops_is_non_inferior_down_to_the_least_kept(tmp_path):
    paths, pareto = _study(tmp_path / "study", flat)
    (fit,) = pareto.groups["ti"].fits
    assert fit.degree.most_reduced == "ti.shallow-0.25" and fit.degree.swept_min_kept == 0.25
    assert "is ti.shallow-0.25 (25.0% of MLP parameters kept)" in paths.markdown.read_text()


def test_no_section_for_a_study_without_a_sweep_and_fewer_than_three_costs(tmp_path):
    root = tmp_path / "study"
    for ratio, name in ((1.0, "base"), (0.5, "half")):
        for seed in (0, 1):
            _write_run(root / "runs" / name / f"seed{seed}", name, ratio, seed, 70.0 + seed)
    paths = write_report(root, n_resamples=50)
    assert read_summary(paths.summary_json).study.pareto is None
    assert "Pareto" not in paths.markdown.read_text()


@pytest.fixture
def pareto_figures(tmp_path, monkeypatch):
    """{file name: Figure} of the Pareto section's figures on the steep study, drawn, and its pareto entry."""
    from vitreduce.report import pareto_section as report_pareto

    saved, original = {}, report_pareto.save_figure

    def record(fig, path):
        fig.canvas.draw()  # ticks and offset texts are final only once drawn
        saved[path.name] = fig
        original(fig, path)

    monkeypatch.setattr(report_pareto, "save_figure", record)
    _, pareto = _study(tmp_path / "study", steep)
    return saved, pareto, tmp_path / "study"


def test_pareto_figure_colours_markers_legend_and_units(pareto_figures):
    from matplotlib.colors import to_hex

    from vitreduce.report.plots import variant_colors
    from vitreduce.report.runs import load_study

    saved, pareto, root = pareto_figures
    group = pareto.groups["ti"]
    colors = variant_colors(load_study(root))
    fig = saved["pareto.png"]
    names = set(group.variants)
    for ax in fig.axes:
        assert ax.xaxis.get_offset_text().get_text() == "" and ax.yaxis.get_offset_text().get_text() == ""
        assert ax.get_xlabel() in ("unique parameters (millions)", "MACs per image, linear (GMACs)"), ax.get_xlabel()
        drawn = {c.get_label().removesuffix(" (baseline)"): c for c in ax.containers}
        assert set(drawn) == names
        for name, container in drawn.items():  # each variant in its colour of every other figure
            assert to_hex(container.lines[0].get_color()) == colors[name], name
            assert container.lines[0].get_marker() == ("*" if name == group.baseline else "o"), name
        (front_line,) = [line for line in ax.get_lines() if line.get_label().startswith("front")]
        assert len(front_line.get_xdata()) >= 1
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "marker: composition" not in labels and "marker: shallow" in labels
    assert set(labels) <= {*(f"{n} (baseline)" if n == group.baseline else n for n in names),
                           "marker: shallow", "front, ti (ringed)"}
    legend_box = fig.legends[0].get_window_extent()
    assert not any(legend_box.overlaps(ax.get_window_extent()) for ax in fig.axes)
    (ax,) = saved["degree.png"].axes
    band = next(c for c in ax.collections if c.get_label().endswith("band"))
    ys = np.concatenate([p.vertices[:, 1] for p in band.get_paths()])
    assert ys.min() >= 0 and ys.max() <= 100  # top-1 is a percentage


def test_past_ten_variants_the_pareto_colours_are_per_base_model():
    from types import SimpleNamespace

    from vitreduce.report.pareto_section import _colors

    few = SimpleNamespace(baseline="a.base", variants={"a.base": [], "a.x": [], "b.base": []})
    groups = {"a": SimpleNamespace(baseline="a.base", variants={"a.base": {}, "a.x": {}}),
              "b": SimpleNamespace(baseline="b.base", variants={"b.base": {}})}
    by_variant, by_group = _colors(few, groups)
    assert len(set(by_variant.values())) == 3 and by_group["b"] == by_variant["b.base"]
    many = {f"a.{i}": {} for i in range(11)}
    study = SimpleNamespace(baseline="a.0", variants=dict.fromkeys(many, []))
    by_variant, by_group = _colors(study, {"a": SimpleNamespace(baseline="a.0", variants=many)})
    assert set(by_variant.values()) == {by_group["a"]}
    from vitreduce.report.pareto_section import _cost_axis

    assert _cost_axis("macs_linear", [900_000, 500_000]) == (1e-3, "MACs per image, linear (KMACs)")  # tiny models
    assert _cost_axis("params", [57_764.0]) == (1e-3, "unique parameters (thousands)")
    assert _cost_axis("macs_linear", [4_600_000_000, 1_100_000_000])[1] == "MACs per image, linear (GMACs)"


def test_the_section_table_has_one_number_format_per_column():
    from vitreduce.report.pareto_records import KindStats, ParetoGroup, ParetoPoint
    from vitreduce.report.pareto_section import _group_table

    def variant(mean: float, sd: float) -> ParetoPoint:
        stats = KindStats(2, mean, sd, (0, 1))
        return ParetoPoint("none", "baseline", 1.0, 10, 10**9, None, stats, stats)

    entry = ParetoGroup("a", {"a": variant(30.4, 8.77), "b": variant(37.6, 0.28)}, {}, ())
    _, rows = _group_table(entry)
    assert [row[-3:-1] for row in rows] == [["30.40 ± 8.77"] * 2, ["37.60 ± 0.28"] * 2]

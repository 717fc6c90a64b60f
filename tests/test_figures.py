"""Figure quality: every report figure is rendered on the v0_1 fixture study and checked from its matplotlib
objects and files: axis labels with units, integer epoch ticks, no negative extent for non-negative quantities,
legends outside the axes, one colour per variant across figures, an SVG beside each PNG."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from matplotlib.collections import PathCollection
from matplotlib.colors import to_hex

from vitreduce.report import figures, figures_landscape, figures_steps, sharpness_paired
from vitreduce.study.reporting import write_report

FIXTURES = Path(__file__).parent / "fixtures" / "v0_1"
UNITS = ("(%)", "(pp)", "(cross-entropy)", "(L2, log scale)", "(cross-entropy / weight^2)")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """{file name: Figure} of every figure a report of the fixture study saves, and the report's paths."""
    study = tmp_path_factory.mktemp("figs") / "out"
    shutil.copytree(FIXTURES / "study" / "out", study, symlinks=True)
    shutil.rmtree(study / "figures")
    _add_telemetry_and_landscapes(study)
    saved = {}
    original = figures.save_figure

    def record(fig, path):
        fig.canvas.draw()  # the SVG and PNG come from the same objects; draw once so ticks are final
        saved[path.name] = fig
        original(fig, path)

    with pytest.MonkeyPatch.context() as mp:
        for module in (figures, figures_steps, figures_landscape, sharpness_paired):
            mp.setattr(module, "save_figure", record)
        paths = write_report(study, n_resamples=50)
    return saved, paths


SPIKE_STEP, SPIKE_LOSS = 56, 50.0  # baseline/seed0's step spike
ALPHAS = [-1.0, -0.5, 0.0, 0.5, 1.0]


def _write_csv(path: Path, header: list[str], rows) -> None:
    path.write_text(",".join(header) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))


def _add_telemetry_and_landscapes(study: Path) -> None:
    """What newer runs write beside the v0_1 files: steps.jsonl (one spike), an interpolation per run
    (grouped/seed0's peak is its final checkpoint: a flat path) and a 1D surface over 3 directions for grouped
    (baseline keeps the one-direction file of older runs)."""
    for run in sorted((study / "runs").glob("*/seed*")):
        spike = run.parts[-2:] == ("baseline", "seed0")
        records = [{"step": s, "epoch": 1 + s // 20, "loss": SPIKE_LOSS if spike and s == SPIKE_STEP else
                    1.4 - 0.002 * s + 0.003 * (s % 3), "grad_norm": 1.0 + 0.01 * (s % 5)} for s in range(1, 61)]
        (run / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        flat = run.parts[-2:] == ("grouped", "seed0")
        seed = int(run.name[-1])
        _write_csv(run / "analysis" / "landscape" / "interpolation.csv", ["alpha", "loss", "acc"],
                   [(a, 1.3 if flat else 1.3 + 0.2 * a * (1 - a) + 0.01 * seed, 50.0) for a in ALPHAS])
        if run.parts[-2] == "grouped":
            _write_csv(run / "analysis" / "landscape" / "surface_1d.csv", ["alpha", "loss", "acc", "direction"],
                       [(a, 1.0 + (d + 1) * a * a + 0.1 * seed, 50.0, d) for d in range(3) for a in ALPHAS])


def _legend_colors(fig) -> dict[str, str]:
    colors = {}
    for handle, text in zip(fig.legends[0].legend_handles, fig.legends[0].get_texts(), strict=True):
        color = handle.get_color() if hasattr(handle, "get_color") and not hasattr(handle, "get_offsets") \
            else handle.get_facecolor()[0]
        colors[text.get_text().split(" ")[0]] = to_hex(color)
    return colors


def test_every_figure_is_rendered_with_an_svg_beside_its_png(rendered):
    saved, paths = rendered
    assert {"top1_vs_epoch.png", "top1_difference.png", "final_top1.png", "peak_to_final.png", "drawdown.png",
            "train_loss.png", "step_loss.png", "grad_norm.png", "landscape_1d.png", "interpolation.png",
            "sharpness_difference.png"} <= set(saved)
    assert {p.name for p in paths.figures} == set(saved)
    for png in paths.figures:
        assert png.is_file() and png.with_suffix(".svg").is_file(), png
        assert png.with_suffix(".svg").read_text().lstrip().startswith("<?xml")


def test_axes_have_units_and_integer_epoch_ticks(rendered):
    for name, fig in rendered[0].items():
        for ax in fig.axes:
            assert ax.get_xlabel(), name
            assert any(unit in ax.get_ylabel() for unit in UNITS), (name, ax.get_ylabel())
            if ax.get_xlabel() in ("epoch", "optimizer step"):
                assert all(float(t).is_integer() for t in ax.get_xticks()), (name, ax.get_xticks())


def test_legends_sit_outside_the_axes(rendered):
    for name, fig in rendered[0].items():
        assert all(ax.get_legend() is None for ax in fig.axes), name
        assert len(fig.legends) == 1, name
        legend_box = fig.legends[0].get_window_extent()
        for ax in fig.axes:
            assert not legend_box.overlaps(ax.get_window_extent()), name


def test_non_negative_quantities_never_extend_below_zero(rendered):
    saved = rendered[0]
    for name in ("peak_to_final.png", "drawdown.png"):
        for ax in saved[name].axes:
            assert ax.get_ylim()[0] >= 0, name
            for line in ax.get_lines():
                assert min(line.get_ydata()) >= 0, name
            for coll in ax.collections:
                if len(coll.get_offsets()):
                    assert coll.get_offsets()[:, 1].min() >= 0, name


def test_a_variant_keeps_its_colour_in_every_figure(rendered):
    seen: dict[str, set[str]] = {}
    for fig in rendered[0].values():
        for variant, color in _legend_colors(fig).items():
            seen.setdefault(variant, set()).add(color)
    assert {"baseline", "grouped"} <= set(seen)
    assert all(len(colors) == 1 for colors in seen.values()), seen
    assert seen["baseline"] != seen["grouped"]


def test_strip_plots_show_one_dot_per_seed_baseline_first(rendered):
    for name in ("final_top1.png", "peak_to_final.png"):
        ax = rendered[0][name].axes[0]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["baseline", "grouped"], name
        assert [len(c.get_offsets()) for c in ax.collections] == [2, 2], name


def test_per_step_figures_mark_the_step_spike_on_the_run_in_its_variant_colour(rendered):
    saved = rendered[0]
    baseline = _legend_colors(saved["step_loss.png"])["baseline"]
    for name, value in (("step_loss.png", SPIKE_LOSS), ("grad_norm.png", 1.0 + 0.01 * (SPIKE_STEP % 5))):
        ax = saved[name].axes[0]
        assert ax.get_xlabel() == "optimizer step" and "spike" in ax.get_title(), name
        marks = [c for c in ax.collections if isinstance(c, PathCollection) and len(c.get_offsets())]
        assert [tuple(c.get_offsets()[0]) for c in marks] == [(SPIKE_STEP, value)], name
        assert to_hex(marks[0].get_edgecolor()[0] if marks[0].get_facecolor().size == 0
                      else marks[0].get_facecolor()[0]) == baseline, name
        assert {line.get_label().split(" ")[0] for line in ax.get_lines()} == {"baseline", "grouped"}, name


def test_landscape_is_the_loss_change_over_directions_and_seeds(rendered):
    ax = rendered[0]["landscape_1d.png"].axes[0]
    assert "L(alpha) - L(0)" in ax.get_ylabel()
    labels = [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert labels == ["baseline (2 seeds x 1 directions)", "grouped (2 seeds x 3 directions)"]
    grouped = next(line for line in ax.get_lines() if line.get_label().startswith("grouped"))
    # mean over 2 seeds x 3 directions of (d + 1) a^2: the seed's offset cancels in L(a) - L(0)
    assert np.allclose(grouped.get_ydata(), 2.0 * np.square(ALPHAS))
    for line in ax.get_lines():
        if not line.get_label().startswith("_"):
            assert line.get_ydata()[list(line.get_xdata()).index(0.0)] == 0.0


def test_interpolation_leaves_out_a_seed_whose_peak_is_its_final_checkpoint(rendered):
    saved, paths = rendered
    ax = saved["interpolation.png"].axes[0]
    grouped = next(line for line in ax.get_lines() if line.get_label().startswith("grouped"))
    assert grouped.get_label() == "grouped (n=1; 1 left out: peak = final)"
    assert np.allclose(grouped.get_ydata(), [1.31 + 0.2 * a * (1 - a) for a in ALPHAS])  # seed1 only
    assert "1 of 4 seeds are left out" in paths.markdown.read_text()


def _table(markdown: str, first_header: str) -> list[list[str]]:
    lines = markdown[markdown.index(f"| {first_header} |"):].split("\n")
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("|")]
    end = next((i for i, line in enumerate(lines) if not line.startswith("|")), len(lines))
    return rows[:end][2:]


def test_sharpness_paired_differences_and_their_exploratory_tests(rendered):
    saved, paths = rendered
    text = paths.markdown.read_text()
    runs = paths.summary_json.parent / "runs"
    loss = {v: [json.loads((runs / v / f"seed{s}" / "analysis" / "sharpness_final.json").read_text())["loss"]
                for s in (0, 1)] for v in ("baseline", "grouped")}
    ax = next(a for a in saved["sharpness_difference.png"].axes if a.get_title() == "loss")
    dots = next(c for c in ax.collections if isinstance(c, PathCollection))
    assert np.allclose(sorted(dots.get_offsets()[:, 1]), sorted(np.subtract(loss["grouped"], loss["baseline"])))
    assert "one exploratory family of their own" in text
    rows = _table(text, "variant | checkpoint | measure")
    assert [r[2] for r in rows] == ["loss", "trace / parameter"]  # v0_1 measured no ASAM: no row, not n/a
    for row in rows:
        assert row[6] == "n/a" or float(row[6]) >= float(row[5]), row  # adjusted p >= raw p


def test_sharpness_table_has_one_number_format_per_column(rendered):
    rows = _table(rendered[1].markdown.read_text(), "variant | checkpoint | n")
    assert len(rows) == 2
    for column in range(3, 9):
        cells = [row[column] for row in rows if row[column] != "n/a"]  # ASAM: not measured by v0_1
        decimals = {len(m.group(1)) for cell in cells for m in re.finditer(r"-?\d+\.?(\d*)", cell)}
        assert len(decimals) <= 1 and "e" not in "".join(cells), cells


def test_no_axis_prints_an_offset_or_a_power_of_ten(rendered):
    for name, fig in rendered[0].items():
        for ax in fig.axes:
            for axis in (ax.xaxis, ax.yaxis):
                assert axis.get_offset_text().get_text() == "", (name, axis.get_offset_text().get_text())
                labels = [t.get_text() for t in axis.get_ticklabels() + axis.get_ticklabels(minor=True)]
                assert not any("10^" in t or "times" in t for t in labels), (name, labels)


def test_log_scale_gradient_norm_has_several_plain_ticks(rendered):
    ax = rendered[0]["grad_norm.png"].axes[0]
    low, high = ax.get_ylim()
    shown = [(t.get_loc(), t.label1.get_text()) for t in ax.yaxis.get_major_ticks() if low <= t.get_loc() <= high]
    assert len(shown) >= 3, shown
    for loc, text in shown:
        assert text and float(text) == pytest.approx(loc, rel=1e-6), (loc, text)


def test_every_data_point_lies_inside_its_panel(rendered):
    # panels sharing a y axis: a limit fixed after the first panel once hid the second panel's data
    for name in ("top1_vs_epoch.png", "drawdown.png", "peak_to_final.png", "final_top1.png", "top1_difference.png"):
        for ax in rendered[0][name].axes:
            low, high = ax.get_ylim()
            ys = [y for line in ax.get_lines() for y in line.get_ydata()]
            ys += [y for c in ax.collections for y in (c.get_offsets()[:, 1] if isinstance(c, PathCollection)  # dots
                                                      else [v for p in c.get_paths() for v in p.vertices[:, 1]])]
            finite = np.array([y for y in ys if np.isfinite(y)])
            assert finite.size and finite.min() >= low - 1e-9 and finite.max() <= high + 1e-9, (name, low, high)


def test_a_shared_non_negative_axis_keeps_the_second_panels_data(tmp_path, monkeypatch):
    """The EMA panel's drawdown and peak-to-final far above the raw panel's: still inside the shared y limits."""
    from types import SimpleNamespace

    models = {"raw": SimpleNamespace(epochs=[1, 2, 3], top1=[10.0, 10.2, 10.1], p2f=0.1),
              "ema": SimpleNamespace(epochs=[1, 2, 3], top1=[10.0, 14.0, 9.0], p2f=5.0)}
    run = SimpleNamespace(seed=0, model=models.get)
    study = SimpleNamespace(baseline="base", variants={"base": [run]})
    saved = {}
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: saved.setdefault(path.name, fig))
    figures._fig_drawdown(study, tmp_path / "drawdown.png")
    figures._fig_strip(study, tmp_path / "p2f.png", lambda m: m.p2f, "peak-to-final (pp)", "p2f", non_negative=True)
    raw, ema = saved["drawdown.png"].axes
    assert ema.get_lines()[0].get_ydata().max() == 5.0 and ema.get_ylim()[1] >= 5.0 and ema.get_ylim()[0] == 0
    raw, ema = saved["p2f.png"].axes
    assert ema.collections[0].get_offsets()[0, 1] == 5.0 and ema.get_ylim()[1] >= 5.0 and raw.get_ylim()[0] == 0

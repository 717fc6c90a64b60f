"""Figure quality: every report figure is rendered on the v0_1 fixture study and checked from its matplotlib
objects and files: axis labels with units, integer epoch ticks, no negative extent for non-negative quantities,
legends outside the axes, one colour per variant across figures, an SVG beside each PNG."""
import shutil
from pathlib import Path

import pytest
from matplotlib.colors import to_hex

from vitreduce.study import figures, report_sharpness
from vitreduce.study.report import write_report

FIXTURES = Path(__file__).parent / "fixtures" / "v0_1"
UNITS = ("(%)", "(pp)", "(cross-entropy)", "(L2, log scale)")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """{file name: Figure} of every figure a report of the fixture study saves, and the report's paths."""
    study = tmp_path_factory.mktemp("figs") / "out"
    shutil.copytree(FIXTURES / "study" / "out", study, symlinks=True)
    shutil.rmtree(study / "figures")
    saved = {}
    original = figures.save_figure

    def record(fig, path):
        fig.canvas.draw()  # the SVG and PNG come from the same objects; draw once so ticks are final
        saved[path.name] = fig
        original(fig, path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(figures, "save_figure", record)
        mp.setattr(report_sharpness, "save_figure", record)
        paths = write_report(study, n_resamples=50)
    return saved, paths


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
            "train_loss.png", "landscape_1d.png"} <= set(saved)
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

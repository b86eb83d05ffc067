"""mtilib.viz draws headless (Agg) and returns figures with the expected content."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.contour import ContourSet
from matplotlib.image import AxesImage

from mtilib.constants import CLASS_NAMES, DEFAULT_PHASE_TIMES_S
from mtilib.viz import (
    draw_phase_slice,
    plot_time_curves,
    plot_time_intensity,
    show_maps,
    show_phase_grid,
    show_phases,
)

pytestmark = pytest.mark.usefixtures("close_figures")


def _case(p=4, h=24, w=20, s=5):
    """A toy case: body of signal 100, a liver block and a lesion inside it that enhances over phases."""
    images = np.full((p, h, w, s), 100.0, np.float32)
    labels = np.zeros((h, w, s), np.uint8)
    labels[4:20, 4:16, :] = 1
    labels[8:14, 7:12, 1:4] = 2
    for k in range(p):
        images[k][labels == 2] += 50.0 * k
    return images, labels


def _contours(ax):
    return [c for c in ax.collections if isinstance(c, ContourSet)]


def test_draw_phase_slice_draws_image_and_both_contours():
    images, labels = _case()
    fig = draw_phase_slice(images, labels, phase=2, slice_index=2)
    (ax,) = fig.axes
    (shown,) = [a for a in ax.get_children() if isinstance(a, AxesImage)]
    # drawn transposed: the first array axis runs along x
    assert shown.get_array().shape == (images.shape[2], images.shape[1])
    assert len(_contours(ax)) == 2  # liver (green) and lesion (red)
    assert ax.get_title() == "venous, slice 2"


def test_draw_phase_slice_without_mask_or_lesion():
    images, labels = _case()
    assert not _contours(draw_phase_slice(images, labels, 1, 2, show_mask=False).axes[0])
    assert len(_contours(draw_phase_slice(images, labels, 1, 0).axes[0])) == 1  # slice 0: liver only
    assert not _contours(draw_phase_slice(images, None, 1, 0).axes[0])


def test_draw_phase_slice_into_given_axes_and_range_check():
    images, labels = _case()
    fig, axes = plt.subplots(1, 2)
    assert draw_phase_slice(images, labels, 0, 1, ax=axes[1], title="x") is fig
    assert axes[1].get_title() == "x" and not axes[0].images
    with pytest.raises(IndexError):
        draw_phase_slice(images, labels, 4, 0)
    with pytest.raises(IndexError):
        draw_phase_slice(images, labels, 0, 5)


def test_show_phases_one_panel_per_phase_on_a_shared_scale():
    images, labels = _case()
    fig = show_phases(images, labels, 2, DEFAULT_PHASE_TIMES_S, suptitle="toy")
    assert len(fig.axes) == 4
    limits = {ax.images[0].get_clim() for ax in fig.axes}
    assert len(limits) == 1
    assert fig.axes[1].get_title() == "arterial (35 s)"


def test_plot_time_curves_lines_phase_markers_and_peaks():
    t = np.linspace(0, 200, 401)
    curves = {"a": np.exp(-((t - 30) / 10) ** 2), "b": np.exp(-((t - 50) / 20) ** 2)}
    fig = plot_time_curves(t, curves, phase_times_s=DEFAULT_PHASE_TIMES_S, mark_peaks=True)
    (ax,) = fig.axes
    labelled = [line for line in ax.get_lines() if line.get_label() in curves]
    assert len(labelled) == 2
    vertical = [line for line in ax.get_lines() if np.ptp(line.get_xdata()) == 0 and len(line.get_xdata()) == 2]
    assert len(vertical) == len(DEFAULT_PHASE_TIMES_S)
    notes = [child.get_text() for child in ax.texts]
    assert "30.0 s" in notes and "50.0 s" in notes and " arterial" in notes


def _tidy(n_per_class=2, classes=("HCC", "cyst", "hemangioma")):
    rows = []
    for cname in classes:
        for i in range(n_per_class):
            for region, gain in (("lesion", 1.0), ("liver", 0.5), ("lesion_core", 1.2)):
                for p, t in enumerate(DEFAULT_PHASE_TIMES_S):
                    rows.append({"case": f"{cname}_{i}", "class_name": cname, "region": region, "time_s": t,
                                 "relative_enhancement": gain * p * (i + 1) / 3})
    return pd.DataFrame(rows)


def test_plot_time_intensity_one_facet_per_class_in_class_order():
    fig = plot_time_intensity(_tidy(), col_wrap=4)
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == [c for c in CLASS_NAMES if c in ("HCC", "cyst", "hemangioma")]
    # per facet: 2 cases x 2 regions thin lines + 2 mean lines (+ the zero line)
    for ax in axes:
        assert len(ax.get_lines()) >= 6


def test_plot_time_intensity_refuses_nan():
    table = _tidy()
    table.loc[0, "relative_enhancement"] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        plot_time_intensity(table)


def test_show_maps_panel_and_colour_bar_per_map():
    images, labels = _case()
    maps = {"ktrans_per_min": images[1], "ve": images[2] / 300}
    fig = show_maps(maps, 2, labels, units={"ve": "fraction"})
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == list(maps)
    assert len(fig.axes) == 2 * len(maps)  # each panel has its colour bar
    assert all(len(_contours(ax)) == 1 for ax in panels)


def test_show_phase_grid_rows_by_phases_with_row_scales():
    a, labels = _case()
    b = a * 3
    fig = show_phase_grid([a, b], [labels, labels], [2, 2], ["one", "three"], phases=(1, 2, 3))
    assert len(fig.axes) == 6
    assert fig.axes[0].images[0].get_clim() != fig.axes[3].images[0].get_clim()
    assert [ax.get_title() for ax in fig.axes] == ["arterial", "venous", "delayed", "", "", ""]
    assert [t.get_text() for ax in (fig.axes[0], fig.axes[3]) for t in ax.texts] == ["one", "three"]
    with pytest.raises(ValueError):
        show_phase_grid([a], [labels], [2, 2], ["one"])


def test_plot_results_leaves_out_networks_without_the_task():
    from mtilib.viz import plot_results

    rows = [
        {"network": "mtinet", "dice": [0.8, 0.01], "enhancement_mae": [0.2, 0.02], "accuracy": [0.8, 0.05]},
        {"network": "seg_only", "dice": [0.78, 0.02], "enhancement_mae": [None, None], "accuracy": [None, None]},
        {"network": "cls_only", "dice": [None, None], "enhancement_mae": [None, None], "accuracy": [0.6, 0.1]},
    ]
    fig = plot_results(rows)
    bars = [len(ax.patches) for ax in fig.axes]
    assert bars == [2, 1, 2]
    labels = [[t.get_text() for t in ax.get_yticklabels()] for ax in fig.axes]
    assert labels[0] == ["mtinet", "seg_only"] and labels[2] == ["mtinet", "cls_only"]
    plt.close(fig)


def test_plot_results_gives_a_failed_task_no_bar():
    from mtilib.viz import plot_results

    rows = [
        {"network": "mtinet", "dice": [0.8, 0.01], "enhancement_mae": [0.2, 0.02], "accuracy": [0.8, 0.05]},
        {"network": "no_tim", "dice": [0.82, 0.01], "enhancement_mae": [0.58, 0.0], "accuracy": [1 / 7, 0.0],
         "failed": {"reg": "constant", "cls": "one class"}},
    ]
    fig = plot_results(rows)
    assert [len(ax.patches) for ax in fig.axes] == [2, 1, 1]
    assert "no_tim" in fig.axes[1].get_xlabel() and "failed" in fig.axes[2].get_xlabel()
    assert fig.axes[0].get_xlabel() == ""
    plt.close(fig)


def test_plot_robustness_draws_each_change_with_its_interval():
    from mtilib.viz import plot_robustness

    def entry(network, shift, change):
        return {"network": network, "shift": shift,
                "dice": {"change": change, "low": change - 0.02, "high": change + 0.01},
                "accuracy": {"change": -change, "low": -change - 0.05, "high": -change + 0.05}}

    entries = [entry("mtinet", "SNR 15", -0.05), entry("mtinet", "misregistration", -0.08),
               entry("no_tim", "SNR 15", -0.03), entry("no_tim", "misregistration", -0.04)]
    rows = [{"network": "no_tim", "failed": {"cls": "one class"}}]
    fig = plot_robustness(entries, rows, keys=(("dice", "Dice"), ("accuracy", "accuracy")))
    dice_ax, acc_ax = fig.axes[:2]
    assert [t.get_text() for t in dice_ax.get_yticklabels()] == ["mtinet", "no_tim"]
    assert [t.get_text() for t in acc_ax.get_yticklabels()] == ["mtinet"]  # no_tim's accuracy failed
    # one marker per (network, shift), at the change
    markers = {round(float(x), 6) for line in dice_ax.lines for x in line.get_xdata()}
    assert {-0.05, -0.08, -0.03, -0.04} <= markers
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["SNR 15", "misregistration"]
    plt.close(fig)


def test_mtinet_diagram_highlights_a_notebooks_part():
    from mtilib.viz import MTINET_BLOCKS, NOTEBOOK_PARTS, draw_mtinet

    def lit(fig):
        return {p.get_gid().split(":")[1] for p in fig.axes[0].patches
                if (p.get_gid() or "").startswith("block:") and p.get_gid().endswith(":on")}

    full = draw_mtinet()
    assert lit(full) == set(MTINET_BLOCKS)
    texts = " ".join(t.get_text() for t in full.axes[0].texts)
    for word in ("MdIEF", "Transformer", "TIM", "TDD", "decoder", "encoder", "s0"):
        assert word in texts
    plt.close(full)
    for notebook, parts in NOTEBOOK_PARTS.items():
        fig = draw_mtinet(notebook)
        assert lit(fig) == set(parts), notebook
        plt.close(fig)
    with pytest.raises(ValueError, match="unknown block"):
        draw_mtinet("attention")


def test_the_diagram_opens_notebook_00_and_each_model_notebook():
    """The diagram is drawn in 00 and near the top of 04-10, with the notebook's own part."""
    import nbformat

    from mtilib.course import NOTEBOOK_DIR
    from mtilib.viz import NOTEBOOK_PARTS

    for path in sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb")):
        number = path.name[:2]
        if number != "00" and number not in NOTEBOOK_PARTS:
            continue
        cells = nbformat.read(path, as_version=4).cells
        calls = [i for i, c in enumerate(cells) if c.cell_type == "code" and "draw_mtinet(" in c.source]
        assert calls and calls[0] < 8, f"{path.name}: no diagram near the top"
        if number != "00":
            assert f'draw_mtinet("{number}"' in cells[calls[0]].source, path.name


def test_dice_against_size_marks_the_misses():
    import pandas as pd

    from mtilib.viz import plot_dice_vs_size

    table = pd.DataFrame({"lesion_diameter_mm": [12.0, 30.0, 45.0, 8.0], "dice": [0.7, 0.9, 0.95, 0.0],
                          "class_name": ["HCC", "HCC", "cyst", "cyst"]})
    fig = plot_dice_vs_size(table)
    ax = fig.axes[0]
    offsets = [c.get_offsets() for c in ax.collections]
    assert sum(len(o) for o in offsets) == 4
    assert [list(o[0]) for o in offsets if len(o) == 1 and o[0][1] == 0.0] == [[8.0, 0.0]]  # the miss
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["HCC", "cyst"]
    plt.close(fig)


def test_conditions_as_bars_one_panel_per_metric():
    import pandas as pd

    from mtilib.viz import plot_conditions

    frame = pd.DataFrame({"Dice": [0.9, 0.85], "enhancement MAE": [0.1, 0.2]}, index=["default", "other"])
    fig = plot_conditions(frame)
    assert [ax.get_title() for ax in fig.axes] == ["Dice ↑", "enhancement MAE ↓"]
    assert [round(p.get_width(), 3) for p in fig.axes[1].patches] == [0.1, 0.2]
    plt.close(fig)

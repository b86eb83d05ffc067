"""Plots of mtilib.viz for the head notebooks (04-06): overlay grids, slice votes, enhancement
scatter and curve panels, drawn headless (Agg) with the expected content."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.contour import ContourSet
from matplotlib.patches import Rectangle

from mtilib.constants import CLASS_NAMES
from mtilib.viz import overlay_grid, plot_curve_panels, plot_enhancement_scatter, plot_slice_votes

pytestmark = pytest.mark.usefixtures("close_figures")


def _contours(ax):
    return [c for c in ax.collections if isinstance(c, ContourSet)]


def test_overlay_grid_one_panel_per_image_with_both_contours():
    image = np.random.default_rng(0).random((16, 12))
    true = np.zeros((16, 12), bool)
    true[4:9, 3:7] = True
    pred = np.roll(true, 2, axis=0)
    fig = overlay_grid([image, torch.from_numpy(image), image], [true, true, None], [pred, None, None],
                       titles=["a", "b", "c"], ncols=2)
    axes = fig.axes
    assert len(axes) == 4  # 2 × 2 grid, the last cell blank
    assert [len(_contours(ax)) for ax in axes[:3]] == [2, 1, 0]
    assert [ax.get_title() for ax in axes[:3]] == ["a", "b", "c"]
    assert not axes[3].images and not axes[3].axison


def test_overlay_grid_crops_around_the_true_mask_then_the_prediction():
    image = np.arange(40 * 30, dtype=float).reshape(40, 30)
    true = np.zeros((40, 30), bool)
    true[30:35, 2:5] = True  # near a corner: the window is shifted to stay inside the image
    pred = np.zeros((40, 30), bool)
    pred[10:12, 10:12] = True
    fig = overlay_grid([image, image], [true, None], [pred, pred], crop=10)
    first, second = (ax.images[0].get_array() for ax in fig.axes[:2])
    assert first.shape == (10, 10) and second.shape == (10, 10)  # drawn transposed, still 10 × 10
    assert first.T[0, 0] == image[27, 0]  # rows 27..36 (centre 32), columns 0..9 (clipped at the edge)
    assert second.T[0, 0] == image[6, 6]  # no true mask: centred on the prediction (10.5, 10.5)
    assert len(_contours(fig.axes[0])) == 1  # the prediction lies outside the first window


def test_overlay_grid_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="2 images but 1 titles"):
        overlay_grid([np.zeros((4, 4))] * 2, titles=["x"])
    with pytest.raises(ValueError, match="at least one"):
        overlay_grid([])


def test_plot_slice_votes_hatches_slices_without_lesion_and_marks_the_truth():
    probs = np.full((5, 7), 1 / 7)
    probs[2] = np.eye(7)[6]
    area = np.array([0, 3, 10, 0, 0], float)
    fig = plot_slice_votes(probs, area, true_class=6, title="toy")
    top, bottom = fig.axes
    assert [p.get_height() for p in top.patches] == area.tolist()
    hatched = [p for p in bottom.patches if isinstance(p, Rectangle) and p.get_hatch()]
    assert sorted(round(p.get_x() + 0.5) for p in hatched) == [0, 3, 4]
    truth = [p for p in bottom.patches if isinstance(p, Rectangle) and not p.get_hatch()]
    assert len(truth) == 1 and truth[0].get_y() == pytest.approx(5.5)
    assert [t.get_text() for t in bottom.get_yticklabels()] == list(CLASS_NAMES)
    with pytest.raises(ValueError):
        plot_slice_votes(probs, area[:3])


def test_plot_enhancement_scatter_titles_carry_mae_and_r():
    true = np.array([[0.0, 0.1, 0.2], [1.0, 1.2, 1.1], [2.0, 1.5, 1.0]])
    pred = true + np.array([0.1, -0.1, 0.0])
    fig = plot_enhancement_scatter(pred, true, classes=np.array([4, 6, 6]))
    assert len(fig.axes) == 3
    assert fig.axes[0].get_title() == "arterial: MAE 0.10, r 1.00"
    assert fig.axes[2].get_title().startswith("delayed: MAE 0.00")
    assert len(fig.axes[0].collections) == 2  # one scatter per class
    with pytest.raises(ValueError):
        plot_enhancement_scatter(pred[:, :2], true[:, :2])


def test_plot_curve_panels_single_and_multiple_lines():
    x = [0, 1, 2, 3]
    fig = plot_curve_panels(x, {"first": [1, 2, 3, 4], "second": {"a": [1, 1, 1, 1], "b": torch.ones(4)}},
                            xlabel="shift (px)", logy=[False, True])
    left, right = fig.axes
    assert len(left.lines) == 1 and len(right.lines) == 2
    assert right.get_yscale() == "log" and left.get_yscale() == "linear"
    assert right.get_legend() is not None and left.get_legend() is None
    assert left.get_xlabel() == "shift (px)"
    with pytest.raises(ValueError, match="values for"):
        plot_curve_panels(x, {"bad": [1, 2]}, xlabel="x")

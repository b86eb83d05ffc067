"""The explorers of mtilib.widgets: the frames they draw are pure functions tested here without a
screen; the widgets themselves are built, driven through their controls, and fall back to a
static frame without ipywidgets."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mtilib import widgets as explorers  # noqa: E402
from mtilib.constants import LESION, LIVER  # noqa: E402
from mtilib.data.dataset import largest_lesion_slice  # noqa: E402
from mtilib.viz import (  # noqa: E402
    draw_highpass_frame,
    draw_temperature_weights,
    draw_tofts_curve,
    draw_viewer_frame,
    entropy_softmax,
    slice_curve,
)


def _case(seed=0, shape=(4, 16, 16, 5)):
    rng = np.random.default_rng(seed)
    images = rng.uniform(1.0, 2.0, size=shape).astype(np.float32)
    labels = np.zeros(shape[1:], np.uint8)
    labels[2:14, 2:14] = LIVER
    labels[5:9, 5:9, 1:4] = LESION
    labels[5:10, 5:10, 2] = LESION  # slice 2 has the most lesion
    images[1:, labels == LESION] += 1.0  # the lesion enhances
    return images, labels


def test_largest_lesion_slice_and_slice_curve():
    images, labels = _case()
    assert largest_lesion_slice(labels) == 2
    assert largest_lesion_slice(np.zeros((4, 4, 3))) == 0
    curve = slice_curve(images, labels == LESION, 2)
    region = labels[:, :, 2] == LESION
    assert curve.shape == (4,) and np.allclose(curve, [images[p, :, :, 2][region].mean() for p in range(4)])
    assert curve[1] > curve[0] + 0.5  # the enhancement shows in the curve
    assert slice_curve(images, labels == LESION, 0) is None  # no lesion on that slice
    assert slice_curve(images, None, 2) is None


def test_viewer_frame_draws_the_prediction_and_the_curves():
    images, labels = _case()
    predicted = np.zeros_like(labels, bool)
    predicted[6:11, 6:11, 2] = True
    fig = draw_viewer_frame(images, labels, 1, 2, prediction=predicted, times_s=[0, 35, 70, 180])
    image_ax, curve_ax = fig.axes[:2]
    assert [line.get_label() for line in curve_ax.lines if not line.get_label().startswith("_")] == [
        "lesion (truth)", "liver", "lesion (predicted)"]
    assert curve_ax.lines[-1].get_xdata()[0] == 35  # the current phase is marked
    assert len(image_ax.collections) == 3  # liver, lesion and predicted lesion contours
    plt.close(fig)
    fig = draw_viewer_frame(images, labels, 0, 0)  # a slice without lesion: liver curve only
    assert [line.get_label() for line in fig.axes[1].lines if not line.get_label().startswith("_")] == ["liver"]
    plt.close(fig)


def test_entropy_softmax_and_the_temperature_frame():
    weights = entropy_softmax([0.5, 0.6, 0.9], 0.1)
    assert np.isclose(weights.sum(), 1.0) and weights.argmax() == 0
    assert entropy_softmax([0.5, 0.6, 0.9], 1e-3)[0] > 0.999  # small τ: one view takes all
    assert np.allclose(entropy_softmax([0.5, 0.6, 0.9], 100.0), 1 / 3, atol=0.01)  # large τ: uniform
    fig = draw_temperature_weights({"spatial": 0.5, "frequency": 0.6, "wavelet": 0.9}, 0.1)
    assert [round(p.get_height(), 6) for p in fig.axes[0].patches] == [round(w, 6) for w in weights]
    plt.close(fig)


def test_tofts_and_highpass_frames():
    from mtilib.data import physics

    t = np.arange(0, 240, 1.0)
    cp_art = np.exp(-0.5 * ((t - 25) / 4) ** 2)
    cp_pv = np.exp(-0.5 * ((t - 40) / 8) ** 2)
    liver = {"ktrans_per_min": 2.2, "ve": 0.26, "vp": 0.11, "fa": 0.27}
    fig = draw_tofts_curve(t, cp_art, cp_pv, {**liver, "ve": 0.1}, liver, [0, 35, 70, 180])
    drawn = fig.axes[0].lines[0].get_ydata()
    assert np.allclose(drawn, physics.extended_tofts_dual_input(t, cp_art, cp_pv, **{**liver, "ve": 0.1}))
    assert fig.axes[0].lines[1].get_linestyle() == "--"
    plt.close(fig)
    image = np.outer(np.hanning(32), np.hanning(32))
    image[10:14, 10:14] += 1.0
    fig = draw_highpass_frame(image, 0.1)
    assert "keeps" in fig.axes[1].get_title()
    plt.close(fig)


def test_slice_viewer_follows_its_controls():
    pytest.importorskip("ipywidgets")
    a, b = _case(0), _case(1, shape=(4, 16, 16, 8))
    b[1][:, :, :] = 0
    b[1][4:12, 4:12, 6] = LESION
    viewer = explorers.slice_viewer({"a": a, "b": (*b, "HCC")}, predictions={"a": a[1] == LESION})
    case_w, mask_w = viewer.children[0].children
    slider = viewer.children[2]
    assert slider.value == 2 and slider.max == 4
    case_w.value = "b"  # another case: the slider takes its range and its lesion slice
    assert slider.max == 7 and slider.value == 6
    assert explorers.viewer_state(explorers._as_cases({"a": a}), "a", 99) == {"max": 4, "value": 4}


def test_explorers_fall_back_to_a_static_frame_without_ipywidgets(monkeypatch):
    monkeypatch.setattr(explorers, "_ipywidgets", lambda: None)
    images, labels = _case()
    plt.close("all")
    fig = explorers.slice_viewer({"a": (images, labels)})
    assert isinstance(fig, plt.Figure) and len(fig.axes) == 2
    fig = explorers.temperature_explorer({"spatial": 0.5, "frequency": 0.6, "wavelet": 0.9})
    assert isinstance(fig, plt.Figure)
    # closed: a notebook shows the returned frame once, as the cell's result, and the inline
    # backend does not draw it a second time when the cell ends
    assert plt.get_fignums() == []
    with pytest.raises(ValueError, match="no cases"):
        explorers.slice_viewer({})


def test_tofts_and_sigma_explorers_build_their_sliders():
    pytest.importorskip("ipywidgets")
    t = np.arange(0, 120, 1.0)
    curve = np.exp(-0.5 * ((t - 25) / 4) ** 2)
    box = explorers.tofts_explorer(t, curve, curve, {"ktrans_per_min": 1.0, "ve": 0.3, "vp": 0.1, "fa": 0.5})
    sliders = [w for row in box.children[:2] for w in row.children]
    assert [s.description for s in sliders] == ["ktrans", "ve", "vp", "fa"]
    assert sliders[0].value == 1.0
    box = explorers.highpass_explorer(np.ones((8, 8)), sigma=0.1)
    assert box.children[0].description == "σ" and box.children[0].value == 0.1


def test_the_course_runner_asks_for_static_frames(monkeypatch):
    """A headless run (the course runner sets MTILIB_STATIC_WIDGETS) gets figures, not live widgets."""
    monkeypatch.setenv(explorers.STATIC_ENV, "1")
    fig = explorers.highpass_explorer(np.ones((8, 8)), sigma=0.1)
    assert isinstance(fig, plt.Figure)
    plt.close(fig)
    course_source = (Path(explorers.__file__).parent / "course.py").read_text()
    assert f'os.environ["{explorers.STATIC_ENV}"] = "1"' in course_source

"""Interactive explorers for the notebooks: ipywidgets controls around drawing functions of
:mod:`mtilib.viz`.

Each explorer is a thin shell. What it shows is drawn by a pure function that the tests call
directly (:func:`~mtilib.viz.draw_viewer_frame`, :func:`~mtilib.viz.draw_tofts_curve`,
:func:`~mtilib.viz.draw_highpass_frame`, :func:`~mtilib.viz.draw_temperature_weights`), and the
only logic here is which control feeds which argument. Without ipywidgets (a bare install), or
when the environment sets ``MTILIB_STATIC_WIDGETS`` (the course runner does: a notebook executed
headless has no one to move a slider, and a live widget there only risks waiting on its comm
channel), each explorer draws its first frame as a plain figure instead.
"""

from __future__ import annotations

import os

import numpy as np

from mtilib.constants import PHASES
from mtilib.data.dataset import largest_lesion_slice
from mtilib.viz import draw_highpass_frame, draw_temperature_weights, draw_tofts_curve, draw_viewer_frame

#: Environment variable that makes every explorer draw a static frame (set by the course runner).
STATIC_ENV = "MTILIB_STATIC_WIDGETS"


def _ipywidgets():
    if os.environ.get(STATIC_ENV):
        return None
    try:
        import ipywidgets
    except ImportError:  # the notebook extra is not installed: static frames only
        return None
    return ipywidgets


def _static(fig):
    """The static frame an explorer returns without widgets: closed, so that a notebook shows it
    once, as the cell's result (an open figure would also be drawn by the inline backend when the
    cell ends: the same frame twice)."""
    import matplotlib.pyplot as plt

    plt.close(fig)
    return fig


def _as_cases(cases) -> dict:
    """``{case id: (images, labels, class name or "")}`` from a dict of cases or a list of case
    objects (``CaseData``/``CaseVolume``: ``.images``, ``.labels`` and a case id)."""
    if isinstance(cases, dict):
        items = cases.items()
    else:
        items = [(getattr(c, "case_id", None) or c.record["case"], c) for c in cases]
    out = {}
    for case_id, c in items:
        if isinstance(c, tuple):
            images, labels = c[0], c[1]
            name = c[2] if len(c) > 2 else ""
        else:
            images, labels = c.images, c.labels
            record = getattr(c, "record", None) or {}
            name = record.get("class_name", "") if isinstance(record, dict) else ""
            if not name and getattr(c, "class_id", None) is not None:
                from mtilib.constants import CLASS_NAMES

                name = CLASS_NAMES[c.class_id]
        out[str(case_id)] = (np.asarray(images), None if labels is None else np.asarray(labels), name)
    if not out:
        raise ValueError("no cases to show")
    return out


def viewer_state(cases: dict, case_id: str, slice_index: int | None = None) -> dict:
    """The slider settings for ``case_id``: its slice range and the slice to start on (the one
    with most lesion, or ``slice_index`` clipped to the range). Pure: the viewer's case callback."""
    images, labels, _ = cases[case_id]
    last = images.shape[-1] - 1
    if slice_index is None:
        slice_index = largest_lesion_slice(labels) if labels is not None else last // 2
    return {"max": last, "value": int(min(max(slice_index, 0), last))}


def slice_viewer(cases, predictions: dict | None = None, times_s=None, phase: int = 1):
    """Browse phases × slices of one or more cases, with the predicted lesion and the time–intensity
    curves of the slice. ``cases``: see :func:`_as_cases`; ``predictions``: ``{case id: label map,
    lesion mask or CasePrediction}``. Returns the widget (or, without ipywidgets, the first frame)."""
    items = _as_cases(cases)
    predictions = predictions or {}
    first = next(iter(items))
    vmax = {cid: float(np.percentile(v[0], 99.5)) for cid, v in items.items()}
    widgets = _ipywidgets()
    start = viewer_state(items, first)
    if widgets is None:
        images, labels, name = items[first]
        return _static(draw_viewer_frame(images, labels, phase, start["value"], predictions.get(first), times_s,
                                         vmax=vmax[first], title=f"{first} {name}".strip()))
    import matplotlib.pyplot as plt

    case_w = widgets.Dropdown(options=[(f"{cid} · {v[2]}" if v[2] else cid, cid) for cid, v in items.items()],
                              value=first, description="case")
    phase_w = widgets.ToggleButtons(options=[(p, k) for k, p in enumerate(PHASES[:items[first][0].shape[0]])],
                                    value=phase, description="phase")
    slice_w = widgets.IntSlider(min=0, max=start["max"], value=start["value"], description="slice")
    mask_w = widgets.Checkbox(value=True, description="contours")

    def on_case(change):
        state = viewer_state(items, change["new"])
        slice_w.max, slice_w.value = state["max"], state["value"]

    def show(case_id, phase_index, slice_index, show_mask):
        images, labels, name = items[case_id]
        slice_index = viewer_state(items, case_id, slice_index)["value"]
        draw_viewer_frame(images, labels, phase_index, slice_index, predictions.get(case_id), times_s, show_mask,
                          vmax=vmax[case_id], title=f"{case_id}: {PHASES[phase_index]}, slice {slice_index}")
        plt.show()

    case_w.observe(on_case, names="value")
    out = widgets.interactive_output(show, {"case_id": case_w, "phase_index": phase_w, "slice_index": slice_w,
                                            "show_mask": mask_w})
    return widgets.VBox([widgets.HBox([case_w, mask_w]), phase_w, slice_w, out])


#: Slider ranges of the Tofts explorer: (min, max, step) per parameter.
TOFTS_RANGES = {"ktrans_per_min": (0.05, 3.0, 0.05), "ve": (0.05, 0.8, 0.01), "vp": (0.0, 0.5, 0.01),
                "fa": (0.0, 1.0, 0.01)}


def tofts_explorer(t_s, cp_art, cp_pv, start: dict, phase_times_s=None, reference: dict | None = None):
    """Sliders for ``ktrans_per_min``, ``ve``, ``vp`` and ``fa`` of the dual-input extended Tofts
    model, starting at ``start``; the curve is drawn against ``reference`` (default: ``start``)."""
    reference = dict(start) if reference is None else reference
    widgets = _ipywidgets()
    if widgets is None:
        return _static(draw_tofts_curve(t_s, cp_art, cp_pv, dict(start), reference, phase_times_s))
    import matplotlib.pyplot as plt

    sliders = {name: widgets.FloatSlider(value=float(start[name]), min=low, max=high, step=step,
                                         description=name.replace("_per_min", ""), continuous_update=False)
               for name, (low, high, step) in TOFTS_RANGES.items()}

    def show(**params):
        draw_tofts_curve(t_s, cp_art, cp_pv, params, reference, phase_times_s)
        plt.show()

    out = widgets.interactive_output(show, sliders)
    return widgets.VBox([widgets.HBox(list(sliders.values())[:2]), widgets.HBox(list(sliders.values())[2:]), out])


def highpass_explorer(image, sigma: float = 0.1, sigmas=(0.02, 0.4, 0.01)):
    """A σ slider (cycles/pixel: ``(min, max, step)``) over the Gaussian high-pass of ``image``."""
    widgets = _ipywidgets()
    if widgets is None:
        return _static(draw_highpass_frame(image, sigma))
    import matplotlib.pyplot as plt

    low, high, step = sigmas
    slider = widgets.FloatSlider(value=sigma, min=low, max=high, step=step, description="σ",
                                 continuous_update=False, readout_format=".2f")

    def show(sigma):
        draw_highpass_frame(image, sigma)
        plt.show()

    return widgets.VBox([slider, widgets.interactive_output(show, {"sigma": slider})])


def temperature_explorer(entropies: dict, tau: float = 0.1):
    """A τ slider (log scale, 0.001 to 10) over MdIEF's weights for the entropies ``{branch: H}``."""
    widgets = _ipywidgets()
    if widgets is None:
        return _static(draw_temperature_weights(entropies, tau))
    import matplotlib.pyplot as plt

    slider = widgets.FloatLogSlider(value=tau, base=10, min=-3, max=1, step=0.1, description="τ",
                                    continuous_update=False)

    def show(tau):
        draw_temperature_weights(entropies, tau)
        plt.show()

    return widgets.VBox([slider, widgets.interactive_output(show, {"tau": slider})])

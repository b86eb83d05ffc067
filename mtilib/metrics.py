"""Per-case evaluation metrics for the three MTI-Net tasks (DESIGN §4).

Pure functions plus one small accumulator, the pairing MONAI uses (``compute_*`` functions and a
``*Metric`` class), but with every edge case decided here and written down:

* **Segmentation** (binary 2D or 3D masks, spacing in mm per axis): :func:`dice`, :func:`hd95`,
  :func:`assd`, :func:`hausdorff` and :func:`segmentation_metrics`. Surfaces and distances follow
  MONAI's definitions (``compute_hausdorff_distance(percentile=95, directed=False)`` and
  ``compute_average_surface_distance(symmetric=True)``) and agree with them to float32 precision
  whenever both masks are non-empty (``tests/test_metrics.py`` checks this).
* **Regression** of the enhancement vector: :func:`regression_metrics` (MAE per phase, Pearson r).
* **Classification**: :func:`classification_metrics` (accuracy, macro-F1, Cohen's kappa, macro
  one-vs-rest AUC, per-class recall, confusion matrix; scikit-learn underneath).
* :class:`CaseMetrics`: one row per case, a tidy :class:`pandas.DataFrame`, a summary and JSON.

Empty-mask policy (MONAI returns NaN or inf here, and its mean then silently drops the case):

==============  ==============  ======  =====================  ===============================
true mask       predicted mask  Dice    HD95 / ASSD / HD (mm)  flags
==============  ==============  ======  =====================  ===============================
non-empty       non-empty       usual   usual                  none
non-empty       empty           0.0     slab diagonal          ``pred_empty``, ``missed_lesion``
empty           non-empty       0.0     slab diagonal          ``true_empty``, ``false_lesion``
empty           empty           1.0     0.0                    ``pred_empty``, ``true_empty``
==============  ==============  ======  =====================  ===============================

The *slab diagonal* ``sqrt(sum((shape * spacing) ** 2))`` is the largest distance two points of
the volume can have, so a missed or invented lesion scores worse than any real prediction. Every
case is counted in the summaries; no value is ever NaN.

"Not defined" values (a Pearson r from fewer than two cases or from a constant series, an AUC
with fewer than two classes present, an undefined kappa) are ``None``, never ``float('nan')``, so
that the JSON written by :meth:`CaseMetrics.to_json` is strictly valid.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

# scipy.stats and sklearn.metrics are imported where they are used: together they cost 1.2 s at
# import on a 2-core laptop, paid by every notebook and training run that imports this module.
from scipy import ndimage

from mtilib.constants import CLASS_NAMES, PHASES
from mtilib.jsonable import json_ready

__all__ = [
    "COURSE_TARGETS",
    "POST_CONTRAST_PHASES",
    "CaseMetrics",
    "assd",
    "classification_metrics",
    "dice",
    "hausdorff",
    "hd95",
    "regression_metrics",
    "segmentation_metrics",
    "slab_diagonal_mm",
    "surface_distances",
    "surface_voxels",
]

#: Names of the regressed phases (the enhancement vector has one value per post-contrast phase).
POST_CONTRAST_PHASES: tuple[str, ...] = PHASES[1:]

#: The task each headline metric measures (a task whose outputs collapsed fails all of its metrics).
METRIC_TASK = {"dice": "seg", "hd95_mm": "seg", "enhancement_mae": "reg", "accuracy": "cls",
               "macro_f1": "cls", "auc": "cls"}

#: What "trained to a useful result" means for the ``course`` preset: ``{headline key: (op, value)}``
#: with ``op`` ``">="`` or ``"<="``, keys as in :func:`headline_metrics` (validation history: ``val_`` + key).
COURSE_TARGETS: dict[str, tuple[str, float]] = {
    "dice": (">=", 0.90), "accuracy": (">=", 0.90), "enhancement_mae": ("<=", 0.08),
}

_PROB_SUM_TOL = 1e-2


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _as_mask(mask: Any, name: str) -> np.ndarray:
    """Return ``mask`` as a boolean array; it must hold only 0/1 (or be boolean)."""
    arr = np.asarray(mask)
    if arr.ndim < 1:
        raise ValueError(f"{name} must be an array with at least one axis, got a scalar")
    if arr.dtype == bool:
        return arr
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be a numeric or boolean mask, got dtype {arr.dtype}")
    if not ((arr == 0) | (arr == 1)).all():
        values = np.unique(arr)[:6]
        raise ValueError(
            f"{name} must be binary (0/1 or bool), found values {values.tolist()}...; "
            "for a label map pass e.g. `labels == mtilib.constants.LESION`"
        )
    return arr.astype(bool)


def _mask_pair(pred: Any, true: Any) -> tuple[np.ndarray, np.ndarray]:
    p, t = _as_mask(pred, "pred"), _as_mask(true, "true")
    if p.shape != t.shape:
        raise ValueError(f"pred and true masks must have the same shape, got {p.shape} and {t.shape}")
    return p, t


def _as_spacing(spacing: Any, ndim: int) -> np.ndarray:
    """Spacing in mm: a positive scalar (isotropic) or one value per axis."""
    if spacing is None:
        raise ValueError("spacing (mm per axis) is required; pass (1.0,) * ndim for voxel units")
    sp = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if sp.size == 1:
        sp = np.repeat(sp, ndim)
    if sp.size != ndim:
        raise ValueError(f"spacing must have one value per axis ({ndim}), got {sp.size}")
    if not (np.isfinite(sp).all() and (sp > 0).all()):
        raise ValueError(f"spacing must be finite and positive, got {sp.tolist()}")
    return sp


def _float_or_none(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None




# --------------------------------------------------------------------------------------------
# Segmentation
# --------------------------------------------------------------------------------------------


def dice(pred: Any, true: Any) -> float:
    """Dice overlap ``2|P ∩ T| / (|P| + |T|)`` of two binary masks of the same shape (any ndim).

    Edge cases: both masks empty → 1.0 (nothing to find, nothing found); exactly one empty → 0.0.
    This equals MONAI ``compute_dice(..., ignore_empty=False)``.
    """
    p, t = _mask_pair(pred, true)
    denom = int(p.sum()) + int(t.sum())
    if denom == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, t).sum()) / denom


def surface_voxels(mask: Any) -> np.ndarray:
    """Boolean surface of a binary mask: ``mask XOR binary_erosion(mask)``.

    Uses scipy's default (cross, connectivity-1) structuring element and treats everything outside
    the array as background (``border_value=0``), so a mask touching the array edge still has a
    surface there. This is the edge definition of MONAI's ``get_mask_edges`` (non-subvoxel mode).
    An empty mask has an empty surface; a single voxel is its own surface.
    """
    m = _as_mask(mask, "mask")
    return m ^ ndimage.binary_erosion(m, border_value=0)


def surface_distances(pred: Any, true: Any, spacing: Any) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm between two NON-EMPTY binary masks.

    Returns ``(d_pred_to_true, d_true_to_pred)``: for every surface voxel of ``pred`` the Euclidean
    distance (with ``spacing``, mm per axis, or one number for isotropic voxels) to the nearest
    surface voxel of ``true``, and the reverse; 1-D float64 arrays. Distances come from
    ``scipy.ndimage.distance_transform_edt(~surface_other, sampling=spacing)``, evaluated on the
    bounding box of both surfaces (exact: every point involved lies inside it).

    Raises ``ValueError`` if either mask is empty; the callers (:func:`hd95`, :func:`assd`,
    :func:`hausdorff`) apply the documented empty-mask policy instead.
    """
    p, t = _mask_pair(pred, true)
    sp = _as_spacing(spacing, p.ndim)
    if not p.any() or not t.any():
        raise ValueError("surface distances need two non-empty masks; see the empty-mask policy of hd95/assd")
    sp_surf, st_surf = surface_voxels(p), surface_voxels(t)
    idx = np.nonzero(sp_surf | st_surf)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    sp_surf, st_surf = sp_surf[box], st_surf[box]
    d_to_true = ndimage.distance_transform_edt(~st_surf, sampling=sp)
    d_to_pred = ndimage.distance_transform_edt(~sp_surf, sampling=sp)
    return d_to_true[sp_surf].astype(np.float64), d_to_pred[st_surf].astype(np.float64)


def slab_diagonal_mm(shape: Sequence[int], spacing: Any) -> float:
    """Diagonal of the imaged slab in mm, ``sqrt(sum((shape * spacing) ** 2))``.

    The largest distance two points of the volume can have: the score given to HD95/ASSD/HD when
    exactly one mask is empty.
    """
    shape_arr = np.asarray(shape, dtype=np.float64)
    sp = _as_spacing(spacing, shape_arr.size)
    return float(np.sqrt(np.sum((shape_arr * sp) ** 2)))


#: How each surface-distance metric reduces the two directed distance sets (pred -> true, true -> pred).
_SURFACE_REDUCTIONS = {
    "hd95": lambda a, b: max(np.percentile(a, 95), np.percentile(b, 95)),
    "assd": lambda a, b: np.concatenate([a, b]).mean(),
    "hausdorff": lambda a, b: max(a.max(), b.max()),
}


def _surface_metrics(pred: Any, true: Any, spacing: Any, names=tuple(_SURFACE_REDUCTIONS)) -> dict[str, float]:
    """Surface-distance metrics in mm with the empty-mask policy, stated once: both masks empty ->
    0.0; exactly one empty -> :func:`slab_diagonal_mm`; else the reductions of one distance
    computation."""
    p, t = _mask_pair(pred, true)
    sp = _as_spacing(spacing, p.ndim)
    p_any, t_any = bool(p.any()), bool(t.any())
    if not p_any and not t_any:
        return dict.fromkeys(names, 0.0)
    if p_any != t_any:
        return dict.fromkeys(names, slab_diagonal_mm(p.shape, sp))
    a, b = surface_distances(p, t, sp)
    return {name: float(_SURFACE_REDUCTIONS[name](a, b)) for name in names}


def hd95(pred: Any, true: Any, spacing: Any) -> float:
    """Symmetric 95th-percentile Hausdorff distance in mm.

    ``max(P95(d_pred_to_true), P95(d_true_to_pred))`` with linear percentile interpolation: MONAI's
    ``compute_hausdorff_distance(percentile=95, directed=False)``. Masks: binary, same shape, 2D or
    3D; ``spacing``: mm per axis (or one number).

    Empty masks: both empty → 0.0; exactly one empty → :func:`slab_diagonal_mm` (MONAI: NaN / inf).
    """
    return _surface_metrics(pred, true, spacing, ("hd95",))["hd95"]


def assd(pred: Any, true: Any, spacing: Any) -> float:
    """Average symmetric surface distance in mm.

    Mean over the concatenation of both directed distance sets (each surface voxel of either mask
    counts once): MONAI's ``compute_average_surface_distance(symmetric=True)``. Note this weights
    the larger surface more; it is not the mean of the two directed means.

    Empty masks: both empty → 0.0; exactly one empty → :func:`slab_diagonal_mm` (MONAI: NaN / inf).
    """
    return _surface_metrics(pred, true, spacing, ("assd",))["assd"]


def hausdorff(pred: Any, true: Any, spacing: Any) -> float:
    """Symmetric (maximum) Hausdorff distance in mm, same empty-mask policy as :func:`hd95`."""
    return _surface_metrics(pred, true, spacing, ("hausdorff",))["hausdorff"]


def segmentation_metrics(pred: Any, true: Any, spacing: Any) -> dict[str, Any]:
    """All per-case segmentation metrics of two binary masks (2D or 3D), as plain Python values.

    Keys: ``dice``, ``hd95_mm``, ``assd_mm``, ``hausdorff_mm`` (floats, never NaN; empty-mask
    policy in the module docstring), ``pred_voxels``, ``true_voxels`` (ints), ``pred_volume_ml``,
    ``true_volume_ml`` (voxels × prod(spacing) / 1000 for 3D masks; ``None`` for 2D masks, which
    have no volume), and the flags ``pred_empty``, ``true_empty``, ``missed_lesion`` (true
    non-empty, prediction empty) and ``false_lesion`` (true empty, prediction non-empty).
    """
    p, t = _mask_pair(pred, true)
    sp = _as_spacing(spacing, p.ndim)
    n_p, n_t = int(p.sum()), int(t.sum())
    pred_empty, true_empty = n_p == 0, n_t == 0
    distances = _surface_metrics(p, t, sp)
    voxel_ml = float(np.prod(sp)) / 1000.0 if p.ndim == 3 else None
    return {
        "dice": dice(p, t),
        "hd95_mm": distances["hd95"],
        "assd_mm": distances["assd"],
        "hausdorff_mm": distances["hausdorff"],
        "pred_voxels": n_p,
        "true_voxels": n_t,
        "pred_volume_ml": None if voxel_ml is None else n_p * voxel_ml,
        "true_volume_ml": None if voxel_ml is None else n_t * voxel_ml,
        "pred_empty": pred_empty,
        "true_empty": true_empty,
        "missed_lesion": (not true_empty) and pred_empty,
        "false_lesion": true_empty and (not pred_empty),
    }


# --------------------------------------------------------------------------------------------
# Regression
# --------------------------------------------------------------------------------------------


def _pearson_or_none(x: np.ndarray, y: np.ndarray) -> float | None:
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    from scipy import stats

    return _float_or_none(stats.pearsonr(x, y).statistic)


def regression_metrics(
    pred: Any, true: Any, phase_names: Sequence[str] = POST_CONTRAST_PHASES
) -> dict[str, Any]:
    """Enhancement-regression metrics over N cases.

    ``pred`` and ``true``: arrays ``(N, P-1)`` of relative enhancement (dimensionless, one column
    per post-contrast phase, in the order of ``phase_names``). Returns plain Python values:

    * ``n_cases``;
    * ``mae_<phase>`` per phase and ``mae_mean`` (mean of the per-phase MAEs);
    * ``pearson_r_<phase>`` per phase and ``pearson_r_pooled`` (all phases' values pooled into one
      series of N·(P-1) pairs; rewards getting the phase pattern right as well as the case order).

    Policy: a Pearson r is ``None`` (not NaN) when fewer than two pairs exist or either series is
    constant (r undefined). Non-finite inputs and N = 0 raise ``ValueError``.
    """
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(true, dtype=np.float64)
    names = tuple(phase_names)
    if p.ndim != 2 or p.shape != t.shape or p.shape[1] != len(names):
        raise ValueError(
            f"pred and true must both be (N, {len(names)}) for phases {names}, got {p.shape} and {t.shape}"
        )
    if p.shape[0] == 0:
        raise ValueError("regression_metrics needs at least one case")
    if not (np.isfinite(p).all() and np.isfinite(t).all()):
        raise ValueError("pred and true enhancement must be finite")
    err = np.abs(p - t)
    out: dict[str, Any] = {"n_cases": int(p.shape[0])}
    for j, name in enumerate(names):
        out[f"mae_{name}"] = float(err[:, j].mean())
    out["mae_mean"] = float(err.mean(axis=0).mean())
    for j, name in enumerate(names):
        out[f"pearson_r_{name}"] = _pearson_or_none(p[:, j], t[:, j])
    out["pearson_r_pooled"] = _pearson_or_none(p.reshape(-1), t.reshape(-1))
    return out


# --------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------


def _default_class_names(n: int) -> tuple[str, ...]:
    return tuple(CLASS_NAMES) if n == len(CLASS_NAMES) else tuple(f"class_{i}" for i in range(n))


def classification_metrics(
    y_true: Any, probs: Any, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Classification metrics over N cases, as plain Python values.

    ``y_true``: integer class ids ``(N,)`` in ``0..C-1``; ``probs``: class probabilities ``(N, C)``
    (softmax outputs: in [0, 1], rows summing to 1 within 1e-2, so that passing logits fails loudly);
    ``class_names``: C names (default: the 7 LLD-MMRI names when C = 7, else ``class_<i>``).
    The prediction is ``argmax(probs)``.

    Returned keys and policies:

    * ``n_cases``, ``class_names``, ``classes_present`` (ids in ``y_true``);
    * ``accuracy``;
    * ``macro_f1``: unweighted mean F1 over the classes in ``y_true ∪ y_pred`` (scikit-learn's
      default label set): a class absent from both neither helps nor hurts, a class only predicted
      scores F1 = 0. Averaging over all C would punish small test sets for classes they lack;
    * ``cohen_kappa`` (unweighted); ``None`` when undefined (truth and prediction the same single class);
    * ``auc_macro_ovr``: macro one-vs-rest ROC AUC over the classes present in ``y_true``, each
      class scored by its own raw probability column (the same per-class decomposition as
      ``roc_auc_score(multi_class="ovr", average="macro")``, to which it is identical when all C
      classes are present). No renormalisation is needed because each one-vs-rest AUC uses only
      its own column; ``None`` when fewer than two classes are present;
    * ``per_class_recall``: ``{name: recall}`` (per-class accuracy), ``None`` for a class absent
      from ``y_true``;
    * ``confusion_matrix``: C×C nested list of ints, rows = true, columns = predicted,
      ``labels=range(C)``.
    """
    y = np.asarray(y_true)
    pr = np.asarray(probs, dtype=np.float64)
    if pr.ndim != 2:
        raise ValueError(f"probs must be (N, C), got shape {pr.shape}")
    n, c = pr.shape
    names = tuple(class_names) if class_names is not None else _default_class_names(c)
    if len(names) != c:
        raise ValueError(f"{len(names)} class names for {c} probability columns")
    if y.shape != (n,):
        raise ValueError(f"y_true must be ({n},) to match probs {pr.shape}, got {y.shape}")
    if n == 0:
        raise ValueError("classification_metrics needs at least one case")
    if not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.number) and np.all(y == np.round(y))):
            raise ValueError(f"y_true must hold integer class ids, got dtype {y.dtype}")
        y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= c:
        raise ValueError(f"y_true holds ids outside 0..{c - 1}: {np.unique(y).tolist()}")
    if not np.isfinite(pr).all() or pr.min() < 0 or pr.max() > 1:
        raise ValueError("probs must be finite probabilities in [0, 1] (apply softmax to logits)")
    if np.abs(pr.sum(axis=1) - 1).max() > _PROB_SUM_TOL:
        raise ValueError("each row of probs must sum to 1 (apply softmax to logits)")

    from sklearn import metrics as skm

    y_pred = pr.argmax(axis=1)
    labels = list(range(c))
    present = sorted(int(k) for k in np.unique(y))

    kappa = None
    if np.unique(np.concatenate([y, y_pred])).size > 1:
        kappa = _float_or_none(skm.cohen_kappa_score(y, y_pred))

    auc = None
    if len(present) >= 2:
        auc = float(np.mean([skm.roc_auc_score(y == k, pr[:, k]) for k in present]))

    cm = skm.confusion_matrix(y, y_pred, labels=labels)
    recall = {names[k]: (float(cm[k, k] / cm[k].sum()) if cm[k].sum() > 0 else None) for k in labels}
    return {
        "n_cases": int(n),
        "class_names": list(names),
        "classes_present": present,
        "accuracy": float(skm.accuracy_score(y, y_pred)),
        "macro_f1": float(skm.f1_score(y, y_pred, average="macro", zero_division=0)),
        "cohen_kappa": kappa,
        "auc_macro_ovr": auc,
        "per_class_recall": recall,
        "confusion_matrix": cm.astype(int).tolist(),
    }


# --------------------------------------------------------------------------------------------
# Accumulator
# --------------------------------------------------------------------------------------------


class CaseMetrics:
    """Collects per-case results for any subset of the three tasks; one row per case.

    >>> cm = CaseMetrics()
    >>> cm.add("case_000", pred_mask=p, true_mask=t, spacing=(2.8, 2.8, 5.0),
    ...        pred_enhancement=e_hat, true_enhancement=e, class_probs=probs, true_class=6,
    ...        split="test")                                                  # doctest: +SKIP
    >>> cm.table()     # pandas DataFrame, one row per case              # doctest: +SKIP
    >>> cm.summary()   # dict of plain Python values                     # doctest: +SKIP
    >>> cm.to_json("metrics.json")                                       # doctest: +SKIP

    Per-case columns: ``case_id``; with masks, the keys of :func:`segmentation_metrics`; with
    enhancement vectors, ``enh_pred_<phase>``, ``enh_true_<phase>``, ``enh_abs_err_<phase>``; with
    a class, ``true_class``, ``pred_class``, ``true_class_name``, ``pred_class_name``, ``correct``
    and ``prob_<name>``; then any ``**extra`` scalars (e.g. ``split``, ``lesion_diameter_mm``).
    Tasks not given for a case are missing (NaN in the table, ``None`` in JSON).
    """

    def __init__(
        self,
        class_names: Sequence[str] | None = None,
        phase_names: Sequence[str] = POST_CONTRAST_PHASES,
    ) -> None:
        self.class_names = tuple(class_names) if class_names is not None else None
        self.phase_names = tuple(phase_names)
        self._rows: list[dict[str, Any]] = []
        self._ids: set[str] = set()
        self._enh: list[tuple[np.ndarray, np.ndarray]] = []
        self._cls: list[tuple[int, np.ndarray]] = []

    def __len__(self) -> int:
        return len(self._rows)

    def reset(self) -> None:
        """Forget all cases."""
        self._rows.clear()
        self._ids.clear()
        self._enh.clear()
        self._cls.clear()

    def add(
        self,
        case_id: str,
        *,
        pred_mask: Any = None,
        true_mask: Any = None,
        spacing: Any = None,
        pred_enhancement: Any = None,
        true_enhancement: Any = None,
        class_probs: Any = None,
        true_class: int | str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Add one case and return its row (a dict of plain Python values).

        Each task's inputs come in pairs (``pred_mask`` + ``true_mask`` + ``spacing`` in mm;
        ``pred_enhancement`` + ``true_enhancement``, each ``(P-1,)``; ``class_probs`` ``(C,)`` +
        ``true_class`` as id or name); giving only half of a pair raises ``ValueError``, as does a
        repeated ``case_id`` or an ``extra`` key that clashes with a metric column.
        """
        case_id = str(case_id)
        if case_id in self._ids:
            raise ValueError(f"case {case_id!r} was already added")
        row: dict[str, Any] = {"case_id": case_id}

        if (pred_mask is None) != (true_mask is None):
            raise ValueError(f"case {case_id!r}: give both pred_mask and true_mask, or neither")
        if pred_mask is not None:
            if spacing is None:
                raise ValueError(f"case {case_id!r}: spacing (mm per axis) is required with masks")
            row.update(segmentation_metrics(pred_mask, true_mask, spacing))

        enh = None
        if (pred_enhancement is None) != (true_enhancement is None):
            raise ValueError(f"case {case_id!r}: give both pred_ and true_enhancement, or neither")
        if pred_enhancement is not None:
            pe = np.asarray(pred_enhancement, dtype=np.float64).reshape(-1)
            te = np.asarray(true_enhancement, dtype=np.float64).reshape(-1)
            k = len(self.phase_names)
            if pe.shape != (k,) or te.shape != (k,):
                raise ValueError(f"case {case_id!r}: enhancement vectors must have {k} values")
            if not (np.isfinite(pe).all() and np.isfinite(te).all()):
                raise ValueError(f"case {case_id!r}: enhancement values must be finite")
            for j, name in enumerate(self.phase_names):
                row[f"enh_pred_{name}"] = float(pe[j])
                row[f"enh_true_{name}"] = float(te[j])
                row[f"enh_abs_err_{name}"] = float(abs(pe[j] - te[j]))
            enh = (pe, te)

        cls = None
        if (class_probs is None) != (true_class is None):
            raise ValueError(f"case {case_id!r}: give both class_probs and true_class, or neither")
        if class_probs is not None:
            pr = np.asarray(class_probs, dtype=np.float64).reshape(-1)
            names = self.class_names if self.class_names is not None else _default_class_names(pr.size)
            if pr.size != len(names):
                raise ValueError(f"case {case_id!r}: {pr.size} class probabilities for {len(names)} classes")
            if isinstance(true_class, str):
                lowered = [n.lower() for n in names]
                if true_class.lower() not in lowered:
                    raise ValueError(f"case {case_id!r}: unknown class {true_class!r}; expected {names}")
                tc = lowered.index(true_class.lower())
            else:
                tc = int(true_class)
                if not 0 <= tc < len(names):
                    raise ValueError(f"case {case_id!r}: class id {tc} outside 0..{len(names) - 1}")
            pc = int(pr.argmax())
            row.update(
                true_class=tc,
                pred_class=pc,
                true_class_name=names[tc],
                pred_class_name=names[pc],
                correct=tc == pc,
            )
            for j, name in enumerate(names):
                row[f"prob_{name}"] = float(pr[j])
            cls = (tc, pr)

        clash = set(extra) & set(row)
        if clash:
            raise ValueError(f"case {case_id!r}: extra keys {sorted(clash)} clash with metric columns")
        extra = json_ready(extra)
        for key, value in extra.items():
            if not (value is None or isinstance(value, (str, int, float, bool))):
                kind = type(value).__name__
                raise ValueError(f"case {case_id!r}: extra {key!r} must be a scalar, not {kind}")
        row.update(extra)

        self._rows.append(row)
        self._ids.add(case_id)
        if enh is not None:
            self._enh.append(enh)
        if cls is not None:
            self._cls.append(cls)
            self.class_names = names
        return dict(row)

    def table(self) -> pd.DataFrame:
        """Tidy table: one row per case (in insertion order), one column per per-case value."""
        columns: list[str] = []
        for row in self._rows:
            columns.extend(k for k in row if k not in columns)
        return pd.DataFrame(self._rows, columns=columns or ["case_id"])

    def summary(self) -> dict[str, Any]:
        """Summary over all cases, plain Python values only (``None`` where undefined).

        ``segmentation`` (``None`` if no case had masks): ``n_cases``; ``<m>_mean`` and
        ``<m>_median`` for ``dice``, ``hd95_mm``, ``assd_mm``, ``hausdorff_mm`` over ALL cases with
        masks (empty-mask cases enter with their policy values, never dropped); counts
        ``n_missed_lesions``, ``n_false_lesions``, ``n_pred_empty``, ``n_true_empty``,
        ``n_both_empty``. ``regression``: :func:`regression_metrics` over the cases with
        enhancement (``None`` if none). ``classification``: :func:`classification_metrics` over the
        cases with a class (``None`` if none).
        """
        seg_rows = [r for r in self._rows if "dice" in r]
        seg = None
        if seg_rows:
            seg = {"n_cases": len(seg_rows)}
            for key in ("dice", "hd95_mm", "assd_mm", "hausdorff_mm"):
                vals = np.array([r[key] for r in seg_rows], dtype=np.float64)
                seg[f"{key}_mean"] = float(vals.mean())
                seg[f"{key}_median"] = float(np.median(vals))
            seg["n_missed_lesions"] = sum(bool(r["missed_lesion"]) for r in seg_rows)
            seg["n_false_lesions"] = sum(bool(r["false_lesion"]) for r in seg_rows)
            seg["n_pred_empty"] = sum(bool(r["pred_empty"]) for r in seg_rows)
            seg["n_true_empty"] = sum(bool(r["true_empty"]) for r in seg_rows)
            seg["n_both_empty"] = sum(bool(r["pred_empty"] and r["true_empty"]) for r in seg_rows)

        reg = None
        if self._enh:
            reg = regression_metrics(
                np.stack([p for p, _ in self._enh]), np.stack([t for _, t in self._enh]), self.phase_names
            )

        cls = None
        if self._cls:
            cls = classification_metrics(
                np.array([t for t, _ in self._cls]), np.stack([p for _, p in self._cls]), self.class_names
            )
        return json_ready(
            {"n_cases": len(self._rows), "segmentation": seg, "regression": reg, "classification": cls}
        )

    def to_dict(self) -> dict[str, Any]:
        """``{"cases": [row, ...], "summary": summary()}`` with plain Python values, no NaN."""
        columns = list(self.table().columns)
        cases = [{k: json_ready(row.get(k)) for k in columns} for row in self._rows]
        return {"cases": cases, "summary": self.summary()}

    def to_json(self, path: str | os.PathLike) -> str:
        """Write :meth:`to_dict` as strictly valid JSON (``allow_nan=False``); return the path."""
        path = os.fspath(path)
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=2, allow_nan=False)
            fh.write("\n")
        return path


def headline_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """Flatten :meth:`CaseMetrics.summary` into the few numbers a table or a log line shows.

    Keys: ``dice``, ``hd95_mm``, ``assd_mm`` (means over all cases), ``missed_lesions``,
    ``enhancement_mae``, ``pearson_r``, ``accuracy``, ``macro_f1``, ``kappa``, ``auc``; a key is
    absent when the task was not evaluated.
    """
    out: dict[str, Any] = {"n_cases": summary.get("n_cases")}
    seg, reg, cls = summary.get("segmentation"), summary.get("regression"), summary.get("classification")
    if seg:
        out.update(dice=seg["dice_mean"], hd95_mm=seg["hd95_mm_mean"], assd_mm=seg["assd_mm_mean"],
                   missed_lesions=seg["n_missed_lesions"])
    if reg:
        out.update(enhancement_mae=reg["mae_mean"], pearson_r=reg["pearson_r_pooled"])
    if cls:
        out.update(accuracy=cls["accuracy"], macro_f1=cls["macro_f1"], kappa=cls["cohen_kappa"],
                   auc=cls["auc_macro_ovr"])
    return out

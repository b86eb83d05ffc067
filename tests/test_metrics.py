"""Tests for mtilib.metrics against independent implementations.

References: MONAI (Dice, HD95, ASSD, edges), scikit-learn (classification), numpy/scipy
(MAE, Pearson r). Our empty-mask policy is asserted separately where MONAI returns NaN/inf.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from sklearn import metrics as skm

from mtilib import metrics as M

monai_metrics = pytest.importorskip("monai.metrics")
torch = pytest.importorskip("torch")
from monai.metrics.utils import get_mask_edges  # noqa: E402

SPACING_3D = (0.7, 1.3, 3.1)
SPACING_2D = (0.8, 2.1)


# ---------------------------------------------------------------------------------- helpers


def _batch(mask: np.ndarray):
    """Binary mask -> MONAI batch-first, channel-first float tensor (1, 1, *spatial)."""
    return torch.as_tensor(np.asarray(mask, dtype=np.float32)[None, None])


def monai_seg(pred, true, spacing):
    """(dice, hd95, assd, hd) from MONAI for one binary mask pair (foreground channel only)."""
    p, t = _batch(pred), _batch(true)
    sp = [float(s) for s in spacing]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns on empty masks; the tests look at the values
        d = monai_metrics.compute_dice(p, t, include_background=True, ignore_empty=False).item()
        h95 = monai_metrics.compute_hausdorff_distance(
            p, t, include_background=True, percentile=95, directed=False, spacing=sp
        ).item()
        asd = monai_metrics.compute_average_surface_distance(
            p, t, include_background=True, symmetric=True, spacing=sp
        ).item()
        hd = monai_metrics.compute_hausdorff_distance(p, t, include_background=True, spacing=sp).item()
    return d, h95, asd, hd


def random_blob(rng, shape, threshold):
    """Smooth random blob mask (gaussian-filtered noise, thresholded)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=2.0)
    return field > threshold * field.std()


def assert_matches_monai(pred, true, spacing):
    ours = M.segmentation_metrics(pred, true, spacing)
    d, h95, asd, hd = monai_seg(pred, true, spacing)
    # MONAI computes in float32: compare with a float32-sized tolerance.
    assert ours["dice"] == pytest.approx(d, rel=1e-6, abs=1e-6)
    assert ours["hd95_mm"] == pytest.approx(h95, rel=1e-5, abs=1e-4)
    assert ours["assd_mm"] == pytest.approx(asd, rel=1e-5, abs=1e-4)
    assert ours["hausdorff_mm"] == pytest.approx(hd, rel=1e-5, abs=1e-4)
    assert M.dice(pred, true) == ours["dice"]
    assert M.hd95(pred, true, spacing) == ours["hd95_mm"]
    assert M.assd(pred, true, spacing) == ours["assd_mm"]
    assert M.hausdorff(pred, true, spacing) == ours["hausdorff_mm"]
    return ours


# ------------------------------------------------------------------ segmentation vs MONAI


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "shape, spacing", [((48, 40), SPACING_2D), ((32, 28, 12), SPACING_3D)], ids=["2d", "3d"]
)
def test_random_blobs_match_monai(seed, shape, spacing):
    rng = np.random.default_rng(seed)
    pred = random_blob(rng, shape, 0.5)
    true = random_blob(rng, shape, 0.5)
    assert pred.any() and true.any()
    ours = assert_matches_monai(pred, true, spacing)
    assert 0 < ours["dice"] < 1 and ours["hd95_mm"] > 0


@pytest.mark.parametrize("seed", [3, 4])
@pytest.mark.parametrize(
    "shape, spacing", [((30, 26), SPACING_2D), ((20, 18, 8), SPACING_3D)], ids=["2d", "3d"]
)
def test_random_noise_masks_match_monai(seed, shape, spacing):
    """Salt-and-pepper masks: many tiny components, most voxels on the surface, touching borders."""
    rng = np.random.default_rng(seed)
    pred = rng.random(shape) < 0.3
    true = rng.random(shape) < 0.2
    assert_matches_monai(pred, true, spacing)


def _edge_cases_3d():
    shape = (16, 14, 10)
    blob = np.zeros(shape, bool)
    blob[4:10, 3:9, 2:7] = True
    single = np.zeros(shape, bool)
    single[7, 6, 4] = True
    single_far = np.zeros(shape, bool)
    single_far[1, 12, 8] = True
    border = np.zeros(shape, bool)
    border[0:5, :, 0:4] = True  # touches four faces of the volume
    full = np.ones(shape, bool)  # the whole volume: its surface is the volume boundary
    disjoint = np.zeros(shape, bool)
    disjoint[12:15, 10:13, 7:10] = True
    return {
        "single_voxel_in_blob": (single, blob),
        "single_voxel_vs_single_voxel": (single, single_far),
        "same_single_voxel": (single, single),
        "identical_blobs": (blob, blob),
        "border_vs_blob": (border, blob),
        "full_volume_vs_blob": (full, blob),
        "disjoint": (blob, disjoint),
        "disjoint_swapped": (disjoint, blob),
    }


@pytest.mark.parametrize("name", list(_edge_cases_3d()))
def test_edge_case_masks_match_monai(name):
    pred, true = _edge_cases_3d()[name]
    ours = assert_matches_monai(pred, true, SPACING_3D)
    if name.startswith(("identical", "same")):
        assert ours["dice"] == 1.0 and ours["hd95_mm"] == 0.0 and ours["assd_mm"] == 0.0
    if name.startswith("disjoint"):
        assert ours["dice"] == 0.0 and ours["assd_mm"] > 0


def test_border_mask_2d_matches_monai():
    pred = np.zeros((12, 9), bool)
    pred[:, :3] = True  # a band along three edges
    true = np.zeros((12, 9), bool)
    true[0, 0] = True  # a corner voxel
    assert_matches_monai(pred, true, SPACING_2D)


def test_surface_voxels_match_monai_edges():
    rng = np.random.default_rng(7)
    mask = random_blob(rng, (20, 18, 8), 0.3)
    mask[0] = True  # touching the border: the border face must be surface
    other = random_blob(rng, (20, 18, 8), 0.3)
    edges, _ = get_mask_edges(mask, other, crop=False)
    np.testing.assert_array_equal(M.surface_voxels(mask), np.asarray(edges))
    assert M.surface_voxels(mask)[0].all()
    single = np.zeros((5, 5), bool)
    single[2, 2] = True
    np.testing.assert_array_equal(M.surface_voxels(single), single)


def test_hand_computed_anisotropic_distances():
    a = np.zeros((3, 3, 5), bool)
    b = np.zeros((3, 3, 5), bool)
    a[1, 1, 0] = True
    b[1, 1, 2] = True
    spacing = (1.0, 1.0, 2.5)  # two slices apart -> 5 mm
    for fn in (M.hd95, M.assd, M.hausdorff):
        assert fn(a, b, spacing) == pytest.approx(5.0)
    da, db = M.surface_distances(a, b, spacing)
    np.testing.assert_allclose(da, [5.0])
    np.testing.assert_allclose(db, [5.0])
    # isotropic scalar spacing is accepted
    assert M.hd95(a, b, 2.0) == pytest.approx(4.0)


def test_hd95_is_max_of_directed_percentiles_and_assd_pools_both_sets():
    rng = np.random.default_rng(11)
    pred = random_blob(rng, (40, 36), 0.8)
    true = random_blob(rng, (40, 36), 0.2)  # bigger surface -> the two definitions differ
    d_pt, d_tp = M.surface_distances(pred, true, SPACING_2D)
    assert M.hd95(pred, true, SPACING_2D) == pytest.approx(
        max(np.percentile(d_pt, 95), np.percentile(d_tp, 95))
    )
    pooled = np.concatenate([d_pt, d_tp]).mean()
    assert M.assd(pred, true, SPACING_2D) == pytest.approx(pooled)
    assert pooled != pytest.approx((d_pt.mean() + d_tp.mean()) / 2)
    # symmetric in its arguments
    assert M.hd95(true, pred, SPACING_2D) == pytest.approx(M.hd95(pred, true, SPACING_2D))
    assert M.assd(true, pred, SPACING_2D) == pytest.approx(M.assd(pred, true, SPACING_2D))


# ------------------------------------------------------------------------ empty-mask policy


def _empty_and_lesion(shape=(10, 12, 6)):
    empty = np.zeros(shape, bool)
    lesion = np.zeros(shape, bool)
    lesion[3:6, 4:8, 2:4] = True
    return empty, lesion


@pytest.mark.parametrize("case", ["both_nonempty", "pred_empty", "true_empty", "both_empty"])
def test_empty_mask_policy_four_combinations(case):
    empty, lesion = _empty_and_lesion()
    shifted = np.roll(lesion, 1, axis=0)
    pred, true = {
        "both_nonempty": (shifted, lesion),
        "pred_empty": (empty, lesion),
        "true_empty": (lesion, empty),
        "both_empty": (empty, empty),
    }[case]
    diag = math.sqrt(sum((n * s) ** 2 for n, s in zip(empty.shape, SPACING_3D)))
    assert M.slab_diagonal_mm(empty.shape, SPACING_3D) == pytest.approx(diag)

    out = M.segmentation_metrics(pred, true, SPACING_3D)
    values = [out[k] for k in ("dice", "hd95_mm", "assd_mm", "hausdorff_mm")]
    assert all(isinstance(v, float) and math.isfinite(v) for v in values)
    d, h95, asd, hd = monai_seg(pred, true, SPACING_3D)
    expected_flags = {
        "both_nonempty": (False, False, False, False),
        "pred_empty": (True, False, True, False),
        "true_empty": (False, True, False, True),
        "both_empty": (True, True, False, False),
    }[case]
    flags = tuple(out[k] for k in ("pred_empty", "true_empty", "missed_lesion", "false_lesion"))
    assert flags == expected_flags

    if case == "both_nonempty":
        assert out["hd95_mm"] == pytest.approx(h95, rel=1e-5)
        assert out["assd_mm"] == pytest.approx(asd, rel=1e-5)
    elif case == "both_empty":
        assert values == [1.0, 0.0, 0.0, 0.0]
        # MONAI: Dice 1 only with ignore_empty=False; the distances are NaN (dropped by its mean).
        assert d == 1.0
        assert math.isnan(h95) and math.isnan(asd) and math.isnan(hd)
    else:
        assert out["dice"] == 0.0 and d == 0.0
        assert out["hd95_mm"] == out["assd_mm"] == out["hausdorff_mm"] == pytest.approx(diag)
        # MONAI (1.6): HD95 is NaN (quantile of infs), ASSD and HD are inf.
        assert not math.isfinite(h95) and not math.isfinite(asd) and not math.isfinite(hd)
        for fn in (M.hd95, M.assd, M.hausdorff):
            assert fn(pred, true, SPACING_3D) == pytest.approx(diag)


def test_monai_default_dice_drops_empty_truth_ours_does_not():
    empty, lesion = _empty_and_lesion()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        default = monai_metrics.compute_dice(_batch(empty), _batch(empty), include_background=True).item()
    assert math.isnan(default)  # ignore_empty=True by default in MONAI
    assert M.dice(empty, empty) == 1.0
    assert M.dice(lesion, empty) == 0.0 and M.dice(empty, lesion) == 0.0


def test_volumes_in_ml_and_2d_has_none():
    _, lesion = _empty_and_lesion()
    out = M.segmentation_metrics(lesion, lesion, (2.0, 2.0, 5.0))
    assert out["true_voxels"] == lesion.sum() == 24
    assert out["true_volume_ml"] == pytest.approx(24 * 20.0 / 1000.0)
    assert out["pred_volume_ml"] == out["true_volume_ml"]
    out2 = M.segmentation_metrics(lesion[:, :, 2], lesion[:, :, 2], (2.0, 2.0))
    assert out2["true_volume_ml"] is None and out2["true_voxels"] == 12


def test_segmentation_input_validation():
    _, lesion = _empty_and_lesion()
    with pytest.raises(ValueError, match="binary"):
        M.dice(lesion.astype(np.uint8) * 2, lesion)
    with pytest.raises(ValueError, match="same shape"):
        M.hd95(lesion, lesion[:-1], SPACING_3D)
    with pytest.raises(ValueError, match="one value per axis"):
        M.hd95(lesion, lesion, (1.0, 1.0))
    with pytest.raises(ValueError, match="positive"):
        M.assd(lesion, lesion, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        M.hd95(lesion, lesion, None)
    with pytest.raises(ValueError, match="non-empty"):
        M.surface_distances(np.zeros_like(lesion), lesion, SPACING_3D)
    # 0/1 integer and float masks are fine
    assert M.dice(lesion.astype(np.uint8), lesion.astype(np.float32)) == 1.0


# ------------------------------------------------------------------------------ regression


def test_regression_matches_numpy_scipy():
    rng = np.random.default_rng(5)
    true = rng.normal(1.0, 0.5, size=(25, 3))
    pred = true + rng.normal(0, 0.2, size=(25, 3))
    out = M.regression_metrics(pred, true)
    assert out["n_cases"] == 25
    mae = np.mean(np.abs(pred - true), axis=0)
    for j, name in enumerate(M.POST_CONTRAST_PHASES):
        assert out[f"mae_{name}"] == pytest.approx(mae[j])
        assert out[f"pearson_r_{name}"] == pytest.approx(np.corrcoef(pred[:, j], true[:, j])[0, 1])
    assert out["mae_mean"] == pytest.approx(mae.mean())
    assert out["pearson_r_pooled"] == pytest.approx(np.corrcoef(pred.ravel(), true.ravel())[0, 1])
    assert all(isinstance(v, (int, float)) for v in out.values())


def test_regression_undefined_pearson_is_none():
    one = M.regression_metrics([[0.1, 0.2, 0.3]], [[0.2, 0.2, 0.1]])
    assert one["mae_arterial"] == pytest.approx(0.1)
    assert one["pearson_r_arterial"] is None
    assert one["pearson_r_pooled"] is not None  # 3 pooled pairs, both non-constant
    const = M.regression_metrics(np.ones((4, 3)), np.arange(12.0).reshape(4, 3))
    assert const["pearson_r_arterial"] is None and const["pearson_r_pooled"] is None
    json.dumps(const, allow_nan=False)
    custom = M.regression_metrics(np.zeros((3, 2)), np.ones((3, 2)), phase_names=("a", "b"))
    assert custom["mae_a"] == 1.0 and "mae_venous" not in custom


def test_regression_validation():
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        M.regression_metrics(np.zeros((4, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="finite"):
        M.regression_metrics([[np.nan, 0, 0]], [[0, 0, 0]])
    with pytest.raises(ValueError, match="at least one"):
        M.regression_metrics(np.zeros((0, 3)), np.zeros((0, 3)))


# -------------------------------------------------------------------------- classification


def _random_probs(rng, n, c, y=None, signal=1.5):
    logits = rng.normal(size=(n, c))
    if y is not None:
        logits[np.arange(n), y] += signal
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("seed", [0, 1])
def test_classification_matches_sklearn_all_classes_present(seed):
    rng = np.random.default_rng(seed)
    c = 7
    y = np.concatenate([np.arange(c), rng.integers(0, c, size=53)])
    probs = _random_probs(rng, y.size, c, y)
    y_pred = probs.argmax(axis=1)
    out = M.classification_metrics(y, probs)
    assert out["class_names"] == list(M.CLASS_NAMES)
    assert out["n_cases"] == 60 and out["classes_present"] == list(range(c))
    assert out["accuracy"] == pytest.approx(skm.accuracy_score(y, y_pred))
    assert out["macro_f1"] == pytest.approx(skm.f1_score(y, y_pred, average="macro"))
    assert out["cohen_kappa"] == pytest.approx(skm.cohen_kappa_score(y, y_pred))
    ref_auc = skm.roc_auc_score(y, probs, multi_class="ovr", average="macro")
    assert out["auc_macro_ovr"] == pytest.approx(ref_auc)
    assert out["confusion_matrix"] == skm.confusion_matrix(y, y_pred, labels=range(c)).tolist()
    recall = skm.recall_score(y, y_pred, average=None, labels=range(c), zero_division=0)
    assert list(out["per_class_recall"].values()) == pytest.approx(recall.tolist())
    json.dumps(out, allow_nan=False)


def test_classification_subset_of_classes_present():
    rng = np.random.default_rng(3)
    c = 7
    y = rng.choice([0, 4, 6], size=40)  # hemangioma, cyst, HCC only
    probs = _random_probs(rng, y.size, c, y, signal=3.0)
    probs[0] = np.eye(c)[2]  # one case predicted as abscess, a class absent from y_true
    y_pred = probs.argmax(axis=1)
    out = M.classification_metrics(y, probs)
    assert out["classes_present"] == [0, 4, 6]
    # macro-F1 over y_true ∪ y_pred (scikit-learn's default), not over all 7 classes
    union = sorted(set(y) | set(y_pred))
    assert 2 in union and len(union) < c
    assert out["macro_f1"] == pytest.approx(skm.f1_score(y, y_pred, average="macro"))
    assert out["macro_f1"] == pytest.approx(skm.f1_score(y, y_pred, labels=union, average="macro"))
    all_c = skm.f1_score(y, y_pred, labels=range(c), average="macro", zero_division=0)
    assert out["macro_f1"] > all_c
    # AUC: mean of one-vs-rest AUCs of the present classes on their raw columns
    per_class = [skm.roc_auc_score(y == k, probs[:, k]) for k in (0, 4, 6)]
    assert out["auc_macro_ovr"] == pytest.approx(np.mean(per_class))
    # absent classes have no recall
    assert out["per_class_recall"]["abscess"] is None
    assert out["per_class_recall"]["cyst"] == pytest.approx(skm.recall_score(y == 4, y_pred == 4))
    assert np.sum(out["confusion_matrix"]) == 40
    json.dumps(out, allow_nan=False)


def test_classification_auc_equals_sklearn_when_absent_columns_are_zero():
    rng = np.random.default_rng(4)
    present = [1, 5]
    y = rng.choice(present, size=30)
    sub = _random_probs(rng, 30, 2, np.searchsorted(present, y))
    probs = np.zeros((30, 7))
    probs[:, present] = sub
    out = M.classification_metrics(y, probs)
    ref = skm.roc_auc_score(y, probs[:, present][:, 1])  # binary case in scikit-learn
    assert out["auc_macro_ovr"] == pytest.approx(ref)


def test_classification_degenerate_cases_are_none():
    probs = np.tile(np.eye(3)[1], (5, 1))
    out = M.classification_metrics(np.ones(5, int), probs, class_names=("a", "b", "c"))
    assert out["accuracy"] == 1.0
    assert out["auc_macro_ovr"] is None  # one class present
    assert out["cohen_kappa"] is None  # truth and prediction the same single class
    assert out["per_class_recall"] == {"a": None, "b": 1.0, "c": None}
    json.dumps(out, allow_nan=False)
    # constant but wrong prediction: kappa is defined (0)
    wrong = M.classification_metrics(np.zeros(5, int), probs, class_names=("a", "b", "c"))
    assert wrong["cohen_kappa"] == pytest.approx(0.0) and wrong["accuracy"] == 0.0


def test_classification_validation():
    rng = np.random.default_rng(0)
    probs = _random_probs(rng, 4, 3)
    with pytest.raises(ValueError, match="softmax"):
        M.classification_metrics([0, 1, 2, 0], np.log(probs))  # logits are rejected
    with pytest.raises(ValueError, match="outside"):
        M.classification_metrics([0, 1, 3, 0], probs)
    with pytest.raises(ValueError, match="class names"):
        M.classification_metrics([0, 1, 2, 0], probs, class_names=("a", "b"))
    assert M.classification_metrics([0, 1, 2, 0], probs)["class_names"] == ["class_0", "class_1", "class_2"]


# ------------------------------------------------------------------------------ CaseMetrics


def _strict_loads(text):
    def reject(token):
        raise AssertionError(f"non-standard JSON constant {token}")

    return json.loads(text, parse_constant=reject)


def _assert_plain(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert isinstance(k, str)
            _assert_plain(v)
    elif isinstance(obj, list):
        for v in obj:
            _assert_plain(v)
    else:
        assert obj is None or type(obj) in (bool, int, float, str), type(obj)
        if isinstance(obj, float):
            assert math.isfinite(obj)


def _filled_case_metrics():
    rng = np.random.default_rng(21)
    shape, spacing = (24, 20, 8), (1.5, 1.5, 4.0)
    empty = np.zeros(shape, bool)
    cm = M.CaseMetrics()
    truths, seg_pairs = [], []
    for i in range(6):
        true = random_blob(rng, shape, 0.6)
        pred = true if i == 0 else random_blob(rng, shape, 0.6)
        if i == 1:
            pred = empty  # missed lesion
        if i == 2:
            true = empty  # false lesion
        if i == 3:
            pred = true = empty  # both empty
        y = [0, 6, 6, 4, 0, 6][i]
        probs = _random_probs(rng, 1, 7, np.array([y]))[0]
        e_true = rng.normal(1.0, 0.4, size=3)
        e_pred = e_true + rng.normal(0, 0.1, size=3)
        cm.add(
            f"case_{i:03d}",
            pred_mask=pred,
            true_mask=true,
            spacing=spacing,
            pred_enhancement=e_pred,
            true_enhancement=e_true,
            class_probs=probs,
            true_class=y if i % 2 else M.CLASS_NAMES[y],
            split="test",
            lesion_diameter_mm=np.float32(10.0 + i),
        )
        truths.append((y, probs, e_pred, e_true))
        seg_pairs.append((pred, true))
    cm.add("class_only", class_probs=np.eye(7)[6], true_class=6)  # a case with one task only
    return cm, truths, seg_pairs, spacing


def test_case_metrics_table_and_summary():
    cm, truths, seg_pairs, spacing = _filled_case_metrics()
    assert len(cm) == 7
    table = cm.table()
    assert isinstance(table, pd.DataFrame) and table.shape[0] == 7
    assert list(table["case_id"])[:2] == ["case_000", "case_001"]
    for col in (
        "dice",
        "hd95_mm",
        "assd_mm",
        "missed_lesion",
        "false_lesion",
        "pred_volume_ml",
        "enh_abs_err_arterial",
        "prob_HCC",
        "pred_class_name",
        "correct",
        "split",
        "lesion_diameter_mm",
    ):
        assert col in table.columns, col
    assert table.loc[1, "missed_lesion"] and table.loc[2, "false_lesion"]
    assert pd.isna(table.loc[6, "dice"])  # the class-only case has no segmentation

    s = cm.summary()
    _assert_plain(s)
    seg = s["segmentation"]
    per_case = [M.segmentation_metrics(p, t, spacing) for p, t in seg_pairs]
    assert seg["n_cases"] == 6
    assert seg["n_missed_lesions"] == 1 and seg["n_false_lesions"] == 1
    assert seg["n_both_empty"] == 1 and seg["n_pred_empty"] == 2 and seg["n_true_empty"] == 2
    for key in ("dice", "hd95_mm", "assd_mm"):
        vals = [r[key] for r in per_case]
        assert seg[f"{key}_mean"] == pytest.approx(np.mean(vals))  # all six cases, none dropped
        assert seg[f"{key}_median"] == pytest.approx(np.median(vals))

    reg = s["regression"]
    ref_reg = M.regression_metrics(np.stack([t[2] for t in truths]), np.stack([t[3] for t in truths]))
    assert reg == pytest.approx(ref_reg)

    cls = s["classification"]
    ys = [t[0] for t in truths] + [6]
    probs = np.stack([t[1] for t in truths] + [np.eye(7)[6]])
    assert cls["n_cases"] == 7
    assert cls["accuracy"] == pytest.approx(skm.accuracy_score(ys, probs.argmax(1)))
    assert cls["confusion_matrix"] == skm.confusion_matrix(ys, probs.argmax(1), labels=range(7)).tolist()


def test_case_metrics_json_round_trip(tmp_path):
    cm, *_ = _filled_case_metrics()
    path = cm.to_json(tmp_path / "metrics.json")
    text = (tmp_path / "metrics.json").read_text()
    assert path.endswith("metrics.json")
    assert "NaN" not in text and "Infinity" not in text
    data = _strict_loads(text)
    _assert_plain(data)
    assert set(data) == {"cases", "summary"}
    assert len(data["cases"]) == 7
    assert data["summary"] == _strict_loads(json.dumps(cm.summary()))
    first, last = data["cases"][0], data["cases"][-1]
    assert first["case_id"] == "case_000" and first["dice"] == 1.0 and first["true_class"] == 0
    assert isinstance(first["true_class"], int) and first["lesion_diameter_mm"] == 10.0
    assert set(first) == set(last)  # every record has every column
    assert last["dice"] is None and last["pred_class_name"] == "HCC"
    # the table rebuilt from JSON matches the live one
    rebuilt = pd.DataFrame(data["cases"])
    pd.testing.assert_series_equal(rebuilt["hd95_mm"], cm.table()["hd95_mm"], check_dtype=False)


def test_case_metrics_empty_and_partial_summaries():
    cm = M.CaseMetrics(class_names=("HCC", "hemangioma"))
    assert cm.summary() == {"n_cases": 0, "segmentation": None, "regression": None, "classification": None}
    assert list(cm.table().columns) == ["case_id"]
    cm.add("a", pred_enhancement=[0.1, 0.2, 0.3], true_enhancement=[0.2, 0.2, 0.2])
    cm.add("b", class_probs=[0.3, 0.7], true_class="hemangioma")
    s = cm.summary()
    assert s["segmentation"] is None
    assert s["regression"]["n_cases"] == 1 and s["regression"]["pearson_r_arterial"] is None
    assert s["classification"]["accuracy"] == 1.0 and s["classification"]["auc_macro_ovr"] is None
    json.dumps(cm.to_dict(), allow_nan=False)
    cm.reset()
    assert len(cm) == 0


def test_case_metrics_rejects_bad_input():
    _, lesion = _empty_and_lesion()
    cm = M.CaseMetrics()
    cm.add("x", pred_mask=lesion, true_mask=lesion, spacing=SPACING_3D)
    with pytest.raises(ValueError, match="already"):
        cm.add("x", pred_mask=lesion, true_mask=lesion, spacing=SPACING_3D)
    with pytest.raises(ValueError, match="both pred_mask and true_mask"):
        cm.add("y", pred_mask=lesion)
    with pytest.raises(ValueError, match="spacing"):
        cm.add("y", pred_mask=lesion, true_mask=lesion)
    with pytest.raises(ValueError, match="enhancement"):
        cm.add("y", pred_enhancement=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="3 values"):
        cm.add("y", pred_enhancement=[0.1, 0.2], true_enhancement=[0.1, 0.2])
    with pytest.raises(ValueError, match="unknown class"):
        cm.add("y", class_probs=np.eye(7)[0], true_class="adenoma")
    with pytest.raises(ValueError, match="clash"):
        cm.add("y", pred_mask=lesion, true_mask=lesion, spacing=SPACING_3D, dice=0.5)
    with pytest.raises(ValueError, match="scalar"):
        cm.add("y", note=[1, 2])
    assert len(cm) == 1  # failed adds leave no trace


def test_import_leaves_sklearn_and_scipy_stats_for_later():
    """Importing the metrics (every notebook and training run does) must not pay for sklearn and
    scipy.stats (1.2 s together on a 2-core laptop); they are imported by the functions that use them."""
    code = ("import sys, mtilib.metrics; "
            "print(sorted(m for m in ('sklearn', 'scipy.stats') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

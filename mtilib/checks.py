"""Checks of the course's exercises: the reference answers live here, not in the notebooks.

Each ``check_*`` function takes a student's answer (a value or a function) and what the exercise
works on, compares the answer with a reference computed here, and either returns a one-line
"Correct: ..." for the notebook to print or raises:

* :class:`ExerciseNotDone` while an answer is still the ``...`` of the exercise cell (or a
  function still returns nothing), naming what is left to fill in;
* :class:`WrongAnswer` with a hint that says what is wrong ("your Dice counts the background")
  without giving the expected value away.

Both are ``AssertionError``: a blank student copy stops at its first check with a message of
that check, never with a ``NameError``. Where an exercise asks for a function, the check calls it
on cases of its own (other folders, other counts, ties, lesion-free cases), so that a hard-coded
answer fails; where the package holds the function being re-derived, the check hides it from the
student's function while calling it (:func:`_hidden`), so that calling it is not an answer.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mtilib.constants import LESION, LIVER, PHASES


class ExerciseNotDone(AssertionError):
    """An answer is still the ``...`` of the exercise cell."""


class WrongAnswer(AssertionError):
    """An answer is there but wrong; the message says what to look at."""


# --- helpers -----------------------------------------------------------------------------------------

def answered(**answers: Any) -> None:
    """Raise :class:`ExerciseNotDone` naming every answer that is still ``...`` (or None)."""
    blank = [name for name, value in answers.items() if value is ... or value is None]
    if blank:
        quoted = [f"`{n}`" for n in blank]
        names = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]
        raise ExerciseNotDone(f"{names} {'is' if len(blank) == 1 else 'are'} still `...`: "
                              "replace the `...` with your answer and run the cell again")


def _number(value: Any, name: str) -> float:
    """``value`` as a float: Python, numpy and 0-d torch numbers are all fine."""
    try:
        array = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value, dtype=float)
    except (TypeError, ValueError):
        raise WrongAnswer(f"`{name}` should be one number, not a {type(value).__name__}") from None
    if array.ndim != 0:
        raise WrongAnswer(f"`{name}` should be one number, not an array of shape {array.shape}")
    if not math.isfinite(float(array)):
        raise WrongAnswer(f"`{name}` is {float(array)}: it should be a finite number")
    return float(array)


def _array(value: Any, name: str, shape: tuple | None = None) -> np.ndarray:
    """``value`` as a float numpy array (lists, tuples and tensors are fine) of ``shape``."""
    try:
        array = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value, dtype=float)
    except (TypeError, ValueError):
        raise WrongAnswer(f"`{name}` should be an array of numbers, not a {type(value).__name__}") from None
    if shape is not None and array.shape != tuple(shape):
        raise WrongAnswer(f"`{name}` has shape {array.shape}; it should have shape {tuple(shape)}")
    return array


def _called(function, name: str, *args, **kwargs):
    """``function(*args)``; a function that still returns nothing is an exercise not done."""
    if not callable(function):
        raise WrongAnswer(f"`{name}` should be a function (def {name}(...): ...)")
    try:
        result = function(*args, **kwargs)
    except AssertionError:
        raise
    except Exception as exc:  # the student's code failed: say where, as a hint, not as a traceback
        shown = ", ".join(_short(a) for a in args)
        raise WrongAnswer(f"`{name}({shown})` raised {type(exc).__name__}: {exc}") from exc
    if result is None or result is ...:
        raise ExerciseNotDone(f"`{name}` returns nothing yet: write its body (it still holds the `...` of "
                              "the exercise) and return the result")
    return result


def _short(value) -> str:
    """A short text for an argument in a message: numbers as they are, anything else by its type."""
    if isinstance(value, (int, float, str, Path)):
        return repr(value) if not isinstance(value, Path) else f"'{value.name}'"
    return type(value).__name__


@contextlib.contextmanager
def _hidden(function, names: tuple[str, ...], reason: str):
    """While the block runs, the names ``names`` in ``function``'s module (the notebook) raise
    :class:`WrongAnswer` with ``reason`` when used: the exercise is to compute what they compute."""
    space = getattr(function, "__globals__", None)
    if space is None:
        yield
        return
    saved = {n: space[n] for n in names if n in space}

    def refuse(*_args, **_kwargs):
        raise WrongAnswer(reason)

    for n in saved:
        space[n] = refuse
    try:
        yield
    finally:
        space.update(saved)


# --- 00 welcome ---------------------------------------------------------------------------------------

def lesion_to_liver_ratio(case, slice_index: int) -> dict[str, float]:
    """Mean lesion signal over mean liver signal in each phase of one slice of a case."""
    lesion = case.labels[..., slice_index] == LESION
    liver = case.labels[..., slice_index] == LIVER
    images = case.images[..., slice_index]
    return {phase: float(images[p][lesion].mean() / images[p][liver].mean()) for p, phase in enumerate(PHASES)}


def check_brightest_phase(brightest_phase, case, slice_index: int) -> str:
    answered(brightest_phase=brightest_phase)
    if brightest_phase not in PHASES:
        raise WrongAnswer(f"`brightest_phase` should be one of {PHASES}")
    ratio = lesion_to_liver_ratio(case, slice_index)
    if brightest_phase != max(ratio, key=ratio.get):
        raise WrongAnswer("in that phase the lesion is not at its brightest *relative to the liver around it*: "
                          "the liver brightens too; compare the two in each phase")
    return "Correct: lesion / liver signal ratio per phase " + ", ".join(f"{k} {v:.2f}" for k, v in ratio.items())


def check_test_counts(test_counts, records: list[dict]) -> str:
    answered(test_counts=test_counts)
    if not isinstance(test_counts, dict):
        raise WrongAnswer(f"`test_counts` should be a dict {{class name: count}}, not a {type(test_counts).__name__}")
    expected: dict[str, int] = {}
    for r in records:
        if r["split"] == "test":
            expected[r["class_name"]] = expected.get(r["class_name"], 0) + 1
    foreign = [k for k in test_counts if k not in {r["class_name"] for r in records}]
    if foreign:
        raise WrongAnswer(f"the keys should be class names as in the records' `class_name`; {foreign} is not one")
    if sum(test_counts.values()) == len(records) and len(records) != sum(expected.values()):
        raise WrongAnswer("you counted the cases of every split: keep only those whose `split` is 'test'")
    wrong = sorted(k for k in set(expected) | set(test_counts) if test_counts.get(k) != expected.get(k))
    if wrong:
        raise WrongAnswer(f"the counts of {wrong} differ from the test split's")
    return f"Correct: {test_counts}"


# --- 01 DCE-MRI physics ------------------------------------------------------------------------------

def full_width_half_max(t, y) -> float:
    """Span of the samples ``t`` where ``y`` is at least half its peak (same unit as ``t``)."""
    t, y = np.asarray(t, dtype=float), np.asarray(y, dtype=float)
    above = t[y >= y.max() / 2]
    return float(above.max() - above.min())


def check_first_pass_fwhm(first_pass_fwhm_s, t_s, cp_art) -> str:
    answered(first_pass_fwhm_s=first_pass_fwhm_s)
    value = _number(first_pass_fwhm_s, "first_pass_fwhm_s")
    measured = full_width_half_max(t_s, cp_art)
    step = float(np.median(np.diff(np.asarray(t_s, dtype=float))))
    if abs(value - measured) <= step:
        return f"Correct: the first pass lasts about {value:.0f} s; a mistimed arterial phase misses it."
    if abs(value * 60 - measured) <= step:
        raise WrongAnswer("that looks like minutes: the answer is in seconds")
    if abs(value - 2 * measured) <= 2 * step or abs(2 * value - measured) <= step:
        raise WrongAnswer("the full width spans from the first to the last time at or above half the peak, "
                          "on both sides of the peak")
    raise WrongAnswer("measure on the grid `t`: the span of the times where `cp_art` is at least half its peak")


# --- 02 NIfTI, viewer and curves ---------------------------------------------------------------------

def check_voxel_to_world(centroid_world, origin_voxel, affine, lesion_ijk) -> str:
    from nibabel.affines import apply_affine

    answered(centroid_world=centroid_world, origin_voxel=origin_voxel)
    centroid = _array(centroid_world, "centroid_world", (3,))
    origin = _array(origin_voxel, "origin_voxel", (3,))
    affine = np.asarray(affine, dtype=float)
    if not np.allclose(centroid, apply_affine(affine, lesion_ijk)):
        if np.allclose(centroid, affine[:3, :3] @ np.asarray(lesion_ijk, dtype=float)):
            raise WrongAnswer("`centroid_world` misses the translation: the last column of the affine")
        raise WrongAnswer("`centroid_world` is not where the affine sends the voxel index: "
                          "use the 3×3 part and the translation")
    if not np.allclose(origin, apply_affine(np.linalg.inv(affine), [0.0, 0.0, 0.0])):
        raise WrongAnswer("`origin_voxel`: going from world to voxel needs the inverse of the affine")
    return f"Correct: lesion centroid at {np.round(centroid, 1)} mm; world origin at voxel {np.round(origin, 2)}"


def check_relative_enhancement(my_re, closer_to, case) -> str:
    from mtilib.data.enhancement import relative_enhancement

    answered(my_re=my_re, closer_to=closer_to)
    mine = _array(my_re, "my_re", (len(PHASES) - 1,))
    lesion = case.labels == LESION
    reference = relative_enhancement(case.images, lesion)
    if not np.allclose(mine, reference, rtol=1e-4):
        means = np.array([case.images[p][lesion].mean() for p in range(len(PHASES))])
        if np.allclose(mine, (means[1:] - means[0]) / means[1:], rtol=1e-4):
            raise WrongAnswer("`my_re` divides by the post-contrast signal: relative enhancement divides by "
                              "the pre-contrast one")
        raise WrongAnswer("`my_re`: mean over the lesion voxels in each phase, then (S_p − S_pre) / S_pre")
    if closer_to not in ("enhancement", "enhancement_measured"):
        raise WrongAnswer("`closer_to` should be 'enhancement' or 'enhancement_measured'")
    error = {k: float(np.abs(mine - np.asarray(case.record[k])).max()) for k in ("enhancement", "enhancement_measured")}
    if closer_to != min(error, key=error.get):
        raise WrongAnswer("`closer_to`: compare your values with both record entries; which one was measured "
                          "over the same voxels as yours?")
    return (f"Correct: {np.round(mine, 3)} | truth {np.round(case.record['enhancement'], 3)} "
            f"| measured {np.round(case.record['enhancement_measured'], 3)}")


# --- 03 phantom and dataset -----------------------------------------------------------------------------

def check_sample_count(count_samples, volumes, seed: int = 0) -> str:
    """``count_samples(volumes, negative_ratio) -> int``, checked against ``SliceDataset`` at three ratios."""
    from mtilib.data.dataset import SliceDataset

    for ratio in (0.5, 1.0, 3.0):
        with _hidden(count_samples, ("SliceDataset",), "count from the label maps alone: building a "
                                                       "SliceDataset is what this exercise replaces"):
            got = _called(count_samples, "count_samples", volumes, ratio)
        if isinstance(got, bool) or not isinstance(got, (int, np.integer)):
            raise WrongAnswer(f"`count_samples` should return a whole number of samples, not a {type(got).__name__}")
        expected = len(SliceDataset(volumes, negative_ratio=ratio, seed=seed))
        if int(got) == expected:
            continue
        per_case = [((v.labels == LESION).sum(axis=(0, 1)) > 0, (v.labels >= LIVER).sum(axis=(0, 1)) > 0)
                    for v in volumes]
        capped_without_liver = sum(int(les.sum()) + min(int((~les).sum()), math.ceil(ratio * int(les.sum())))
                                   for les, _ in per_case)
        uncapped = sum(int(les.sum()) + int((~les & liver).sum()) for les, liver in per_case)
        if int(got) == capped_without_liver:
            raise WrongAnswer(f"at negative_ratio={ratio}: a lesion-free slice counts only if it shows liver")
        if int(got) == uncapped:
            raise WrongAnswer(f"at negative_ratio={ratio}: lesion-free slices are capped at "
                              "ceil(negative_ratio × lesion slices) per case")
        raise WrongAnswer(f"at negative_ratio={ratio} your count differs from SliceDataset's: count per case, "
                          "then add up")
    return "Correct: your count matches SliceDataset at negative_ratio 0.5, 1 and 3"


def check_area_weighting(my_probs, my_enh, area, slice_probs, slice_enh) -> str:
    answered(my_probs=my_probs, my_enh=my_enh)
    area, slice_probs, slice_enh = (np.asarray(a, dtype=float) for a in (area, slice_probs, slice_enh))
    probs = _array(my_probs, "my_probs", slice_probs.shape[1:])
    enh = _array(my_enh, "my_enh", slice_enh.shape[1:])
    weights = area / area.sum()
    for mine, per_slice, name in ((probs, slice_probs, "my_probs"), (enh, slice_enh, "my_enh")):
        if np.allclose(mine, weights @ per_slice, atol=1e-6):
            continue
        if np.allclose(mine, per_slice.mean(0), atol=1e-6):
            raise WrongAnswer(f"`{name}` is the plain mean over slices: weight each slice by its share of the "
                              "lesion area")
        if np.allclose(mine, area @ per_slice, atol=1e-6):
            raise WrongAnswer(f"`{name}`: the weights should add up to 1 (a share of the total area)")
        raise WrongAnswer(f"`{name}` is not the area-weighted mean of the slices")
    return f"Correct: a probability vector (sum {probs.sum():.3f}) and an enhancement vector {np.round(enh, 2)}"


def check_label_volume(label_volume_ml, case) -> str:
    answered(label_volume_ml=label_volume_ml)
    value = _number(label_volume_ml, "label_volume_ml")
    voxel_mm3 = float(np.prod(case.spacing))
    expected = float((case.labels == LESION).sum() * voxel_mm3 / 1000.0)
    if math.isclose(value, expected, rel_tol=1e-6):
        gap = abs(value - case.lesion_volume_ml) / case.lesion_volume_ml
        return (f"Correct: {value:.2f} ml from the label, {case.lesion_volume_ml:.2f} ml true ({gap:.0%} apart)")
    if math.isclose(value, expected * 1000.0, rel_tol=1e-6):
        raise WrongAnswer("that is in mm³: 1 ml = 1000 mm³")
    if math.isclose(value, float((case.labels == LESION).sum()), rel_tol=1e-6):
        raise WrongAnswer("that is a number of voxels: multiply by the volume of one voxel")
    raise WrongAnswer("count the lesion voxels (label 2) and multiply by the voxel volume from `.spacing`")


# --- 04 MdIEF spectra -------------------------------------------------------------------------------

def check_highpass(highpass_numpy, image, sigmas, seed: int = 0) -> str:
    import torch

    from mtilib.models.blocks import gaussian_highpass

    rng = np.random.default_rng(seed)
    largest = 0.0
    for probe in (np.asarray(image, dtype=float), rng.normal(size=(20, 36))):
        for sigma in sigmas:
            ours = _called(highpass_numpy, "highpass_numpy", probe, sigma)
            ours = _array(ours, "highpass_numpy(...)", probe.shape)
            reference = gaussian_highpass(torch.from_numpy(probe).float(), sigma).double().numpy()
            largest = max(largest, float(np.abs(ours - reference).max()))
    if largest >= 1e-4:
        raise WrongAnswer(f"differs from mtilib by {largest:.2g}; the non-square test is where swapped axes "
                          "show: which frequency grid belongs to the rows?")
    return f"Correct: largest difference to mtilib {largest:.1e} (float32 rounding)"


def check_spatial_entropy(spatial_entropy_numpy, maps: dict) -> str:
    from mtilib.models.blocks import spatial_entropy

    largest = 0.0
    for name, m in maps.items():
        ours = _called(spatial_entropy_numpy, "spatial_entropy_numpy", m.double().cpu().numpy())
        value = _number(ours, f"spatial_entropy_numpy({name})")
        if not 0.0 <= value <= 1.0 + 1e-9:
            raise WrongAnswer(f"{name}: {value:.3f} is outside [0, 1]: divide by the log of the number of positions")
        largest = max(largest, abs(value - float(spatial_entropy(m))))
    if largest >= 1e-5:
        raise WrongAnswer(f"differs from mtilib by {largest:.2g}: is p the energy (x²) share of each position?")
    return f"Correct: largest difference to mtilib {largest:.1e}"


def branch_winners(toys: dict, device="cpu") -> tuple[dict, dict]:
    """Which MdIEF branch a neutral one-channel MdIEF weighs most for each toy image, and per toy
    the entropies and weights of the three views."""
    import torch

    from mtilib.models.blocks import spatial_entropy
    from mtilib.models.mdief import BRANCHES, MdIEF, neutral_projections_

    probe = neutral_projections_(MdIEF(channels=1, phases=1)).to(device)
    winners, table = {}, {}
    with torch.no_grad():
        for name, toy in toys.items():
            feats = torch.as_tensor(np.asarray(toy, dtype=np.float32))[None, None, None].to(device)
            entropy = spatial_entropy(probe.branches(feats))[0, :, 0]
            weights = probe(feats)[1][0, :, 0]
            winners[name] = BRANCHES[int(weights.argmax())]
            table[name] = {**{f"H {b}": float(entropy[k]) for k, b in enumerate(BRANCHES)},
                           **{f"w {b}": float(weights[k]) for k, b in enumerate(BRANCHES)}}
    return winners, table


def check_branch_prediction(prediction, toys: dict, device="cpu") -> str:
    import pandas as pd

    from mtilib.models.mdief import BRANCHES

    answered(prediction=prediction)
    if not isinstance(prediction, dict) or set(prediction) != set(toys):
        raise WrongAnswer(f"`prediction` should give one branch for each of {list(toys)}")
    blank = [k for k, v in prediction.items() if v is ...]
    if blank:
        raise ExerciseNotDone(f"`prediction` still has `...` for {blank}")
    if any(v not in BRANCHES for v in prediction.values()):
        raise WrongAnswer(f"each prediction should be one of {BRANCHES}")
    winners, table = branch_winners(toys, device)
    wrong = [k for k in toys if prediction[k] != winners[k]]
    if wrong:
        raise WrongAnswer(f"the module weighs another view most for {wrong}: think about where each view puts "
                          "the image's energy")
    return "Correct:\n" + pd.DataFrame(table).T.round(3).to_string()


# --- 05 segmentation -------------------------------------------------------------------------------

def check_dice_by_hand(my_dice, pred, true) -> str:
    from mtilib.metrics import dice

    answered(my_dice=my_dice)
    value = _number(my_dice, "my_dice")
    pred, true = np.asarray(pred, dtype=bool), np.asarray(true, dtype=bool)
    expected = dice(pred, true)
    if abs(value - expected) < 1e-9:
        return f"Correct: Dice = {value:.4f}"
    with_background = 2 * (pred == true).sum() / (2 * pred.size)
    if abs(value - with_background) < 1e-6 or abs(value - float((pred == true).mean())) < 1e-6:
        raise WrongAnswer("your Dice counts the background: only lesion voxels (True in both) overlap")
    if abs(value - (pred & true).sum() / (pred | true).sum()) < 1e-9:
        raise WrongAnswer("that is the Jaccard index (intersection over union), not Dice")
    if abs(value - expected / 2) < 1e-9:
        raise WrongAnswer("the intersection counts twice in Dice's numerator")
    raise WrongAnswer("Dice compares twice the overlap with the sizes of the two masks")


def worst_hd95_case(table, masks: dict, volumes) -> tuple[str, str]:
    """The case with the largest HD95 in a per-case table and why: ``"pred_to_true"`` (prediction
    voxels far from the lesion), ``"true_to_pred"`` (lesion not covered) or ``"missed"``."""
    from mtilib.metrics import surface_distances

    worst = table.loc[table["hd95_mm"].idxmax(), "case_id"]
    volume = next(v for v in volumes if v.case_id == worst)
    if not np.asarray(masks[worst]).any():
        return worst, "missed"
    d_pt, d_tp = surface_distances(masks[worst], volume.labels == LESION, tuple(volume.spacing))
    return worst, ("pred_to_true" if np.percentile(d_pt, 95) >= np.percentile(d_tp, 95) else "true_to_pred")


def check_worst_hd95(worst_case, worst_direction, table, masks: dict, volumes) -> str:
    answered(worst_case=worst_case, worst_direction=worst_direction)
    expected_case, expected_direction = worst_hd95_case(table, masks, volumes)
    if worst_case != expected_case:
        raise WrongAnswer("`worst_case` is not the case with the largest value in the hd95_mm column")
    if worst_direction not in ("pred_to_true", "true_to_pred", "missed"):
        raise WrongAnswer("`worst_direction` should be 'pred_to_true', 'true_to_pred' or 'missed'")
    if worst_direction != expected_direction:
        raise WrongAnswer("`worst_direction`: compare the 95th percentiles of the two directed distance sets "
                          "(or check whether the prediction is empty)")
    return f"Correct: {worst_case}, {worst_direction}"


def check_dropped_or_counted(dropped, counted, dice_with_nan, dice_counted) -> str:
    answered(dropped=dropped, counted=counted)
    dropped, counted = _number(dropped, "dropped"), _number(counted, "counted")
    if abs(dropped - float(np.nanmean(dice_with_nan))) >= 1e-9:
        raise WrongAnswer("`dropped`: the mean of the values that are not NaN")
    if abs(counted - float(np.mean(dice_counted))) >= 1e-9:
        raise WrongAnswer("`counted`: the mean over every case, the miss included as 0")
    return (f"Correct: dropped {dropped:.3f} vs counted {counted:.3f}: the miss is worth {dropped - counted:.3f} "
            "of mean Dice, and NaN-skipping hides it.")


# --- 06 enhancement and TIM -------------------------------------------------------------------------

def check_mask_pool(pooled_by_hand, feats, mask) -> str:
    import torch

    from mtilib.models.tim import mask_pool

    answered(pooled_by_hand=pooled_by_hand)
    if not isinstance(pooled_by_hand, torch.Tensor):
        raise WrongAnswer("`pooled_by_hand` should be a tensor")
    reference = mask_pool(feats, mask)
    if pooled_by_hand.shape != reference.shape:
        raise WrongAnswer(f"`pooled_by_hand` has shape {tuple(pooled_by_hand.shape)}: one value per (batch, phase, "
                          "channel), the spatial axes summed away")
    diff = float((pooled_by_hand - reference).abs().max())
    if diff >= 1e-4:
        raise WrongAnswer(f"differs from mask_pool by {diff:.2e}: is the mask averaged down to the features' grid, "
                          "and is it a weighted mean (divided by the sum of the weights)?")
    return f"Correct: largest difference {diff:.1e} (mask_pool adds 1e-6 to the denominator)"


def check_first_order(measured_by_hand, first_by_hand, images, soft_mask, model_first: float) -> str:
    import torch

    from mtilib.data.enhancement import relative_enhancement

    answered(measured_by_hand=measured_by_hand, first_by_hand=first_by_hand)
    if not isinstance(measured_by_hand, torch.Tensor) or measured_by_hand.shape != (len(images), len(PHASES) - 1):
        raise WrongAnswer(f"`measured_by_hand` should be a tensor of shape ({len(images)}, {len(PHASES) - 1})")
    reference = relative_enhancement(images, soft_mask, phase_axis=1)
    if not torch.allclose(measured_by_hand, reference, atol=1e-4):
        raise WrongAnswer("step 1 (`measured_by_hand`) differs from relative_enhancement: weighted means under q "
                          "per phase, then relative to the pre-contrast mean")
    value = _number(first_by_hand, "first_by_hand")
    if abs(value - model_first) >= 1e-4:
        raise WrongAnswer("step 2 (`first_by_hand`) differs from tim_consistency_loss: SmoothL1 with β = 0.1, "
                          "averaged over every value")
    return f"Correct: first-order term {value:.4f}"


def check_mask_confidence(first_changes, second_changes, images, true_lesion, enhancement, lesion_rows) -> str:
    from mtilib.losses import tim_consistency_loss

    answered(first_changes=first_changes, second_changes=second_changes)
    if not isinstance(first_changes, bool) or not isinstance(second_changes, bool):
        raise WrongAnswer("answer `first_changes` and `second_changes` with True or False")
    f_full, s_full = tim_consistency_loss(images, true_lesion, true_lesion, enhancement, lesion_rows)
    f_half, s_half = tim_consistency_loss(images, 0.5 * true_lesion, true_lesion, enhancement, lesion_rows)
    measured_first, measured_second = abs(float(f_half - f_full)) > 1e-4, float(s_half) > 1e-6
    wrong = [n for n, mine, real in (("first_changes", first_changes, measured_first),
                                     ("second_changes", second_changes, measured_second)) if mine != real]
    if wrong:
        raise WrongAnswer(f"{wrong}: what does a weighted mean do when every weight is multiplied by the same number?")
    return (f"Correct. q = m: first {float(f_full):.5f}, second {float(s_full):.2e}; q = 0.5·m: first "
            f"{float(f_half):.5f}, second {float(s_half):.2e}")


# --- 07 classification ------------------------------------------------------------------------------

def check_class_weights(inverse_frequency_weights, num_classes: int) -> str:
    """``inverse_frequency_weights(counts) -> (C,) array`` against the training loop's weights on
    count vectors with and without absent classes."""
    import torch

    from mtilib.train.loop import class_weight_tensor

    class _Case:  # class_weight_tensor needs only each case's class id
        def __init__(self, class_id):
            self.class_id = class_id

    probes = [np.full(num_classes, 3), np.r_[5, 1, 0, 2, 0, 9, 1][:num_classes],
              np.r_[0, 0, 4, 0, 0, 0, 1][:num_classes]]
    for counts in probes:
        cases = [_Case(c) for c, n in enumerate(counts) for _ in range(int(n))]
        reference = class_weight_tensor(cases, num_classes).numpy()
        with _hidden(inverse_frequency_weights, ("class_weight_tensor",),
                     "compute the weights from the counts: class_weight_tensor is what this exercise re-derives"):
            got = _called(inverse_frequency_weights, "inverse_frequency_weights", counts.copy())
        got = _array(got if not isinstance(got, torch.Tensor) else got.numpy(), "inverse_frequency_weights(...)",
                     (num_classes,))
        if np.allclose(got, reference, atol=1e-6):
            continue
        if (counts == 0).any() and not np.allclose(got[counts == 0], 0):
            raise WrongAnswer("a class without cases should get weight 0 (and not count in K)")
        present = counts > 0
        wrong_k = np.where(present, counts.sum() / (num_classes * np.maximum(counts, 1)), 0.0)
        if np.allclose(got, wrong_k, atol=1e-6):
            raise WrongAnswer("K is the number of classes *present*, not of all classes")
        raise WrongAnswer("w_c = N / (K · n_c): N cases in all, K classes present, n_c cases of class c")
    return "Correct: your weights match the training loop's, absent classes included"


def majority_of_lesion_slices(prediction, num_classes: int) -> int:
    """Class id of a case by a majority vote of its slices with predicted lesion (ties: the lowest
    class id); a case without predicted lesion falls back to the mean of all slices."""
    voting = np.asarray(prediction.slice_lesion_area) > 0
    probs = np.asarray(prediction.slice_class_probs)
    if not voting.any():
        return int(np.argmax(probs.mean(0)))
    return int(np.bincount(probs[voting].argmax(1), minlength=num_classes).argmax())


def _vote_probes(num_classes: int) -> list:
    """Cases that tell the majority-vote rule apart from its near misses: a lesion-free case, a tie,
    a soft vote that disagrees with the hard one, lesion-free slices that would outvote the lesion."""
    from mtilib.train.inference import CasePrediction

    def case(probs, area):
        probs = np.asarray(probs, dtype=float)
        full = np.full((len(probs), num_classes), 0.0)
        full[:, :probs.shape[1]] = probs
        full = full / full.sum(1, keepdims=True)
        return CasePrediction("probe", None, None, full.mean(0), None, np.asarray(area, dtype=float), full, None)

    return [
        case([[0.0, 1.0], [0.9, 0.1], [0.9, 0.1], [0.9, 0.1]], [4, 0, 0, 0]),         # lesion-free slices do not vote
        case([[0.51, 0.49], [0.51, 0.49], [0.0, 1.0]], [5, 5, 5]),                    # hard and soft votes differ
        case([[0.1, 0.9], [0.9, 0.1], [0.5, 0.4]], [3, 3, 0]),                        # a tie: the lowest id
        case([[0.1, 0.9], [0.55, 0.45], [0.55, 0.45]], [0, 0, 0]),                    # no lesion: mean of all
    ]


def check_majority_vote(majority_function, predictions: dict, num_classes: int) -> str:
    answers = {}
    for case_id, p in predictions.items():
        answers[case_id] = _called(majority_function, "majority_of_lesion_slices", p)
    for probe in _vote_probes(num_classes):
        answer = _called(majority_function, "majority_of_lesion_slices", probe)
        expected = majority_of_lesion_slices(probe, num_classes)
        if int(answer) != expected:
            voting = probe.slice_lesion_area > 0
            if not voting.any():
                raise WrongAnswer("a case without predicted lesion should fall back to the mean of all its slices")
            if (~voting).any():
                raise WrongAnswer("only slices with predicted lesion area > 0 vote")
            raise WrongAnswer("each voting slice gives one vote to its top class; ties go to the lowest class id")
    wrong = [c for c, a in answers.items() if int(a) != majority_of_lesion_slices(predictions[c], num_classes)]
    if wrong:
        raise WrongAnswer(f"your rule disagrees with the majority vote on {len(wrong)} test case(s)")
    return "Correct: your rule votes like the reference on the test cases and on four tricky ones"


def check_macro_f1(macro_f1_by_hand, confusion) -> str:
    answered(macro_f1_by_hand=macro_f1_by_hand)
    value = _number(macro_f1_by_hand, "macro_f1_by_hand")
    cm = np.asarray(confusion, dtype=float)
    tp, predicted, truly = np.diag(cm), cm.sum(0), cm.sum(1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, truly, out=np.zeros_like(tp), where=truly > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=precision + recall > 0)
    appears = (predicted + truly) > 0
    if abs(value - float(f1[appears].mean())) < 1e-9:
        return f"Correct: macro-F1 = {value:.4f}"
    if not appears.all() and abs(value - float(f1.mean())) < 1e-9:
        raise WrongAnswer("average only over the classes that appear in the truth or the predictions")
    if abs(value - float(tp.sum() / cm.sum())) < 1e-9:
        raise WrongAnswer("that is the accuracy: macro-F1 averages the per-class F1")
    raise WrongAnswer("per class: precision = TP / predicted as it, recall = TP / truly it, F1 = 2PR / (P + R)")


# --- 08 phase Transformer ----------------------------------------------------------------------------

def check_time_encoding(time_features, code_by_hand, encoding, periods_s, device="cpu") -> str:
    import torch

    answered(code_by_hand=code_by_hand)
    periods = np.asarray(periods_s, dtype=float)
    for t in (0.0, 35.0, 123.4):
        features = _array(_called(time_features, "time_features", t, periods), f"time_features({t}, ...)",
                          (2 * len(periods),))
        angle = 2 * np.pi * t / periods
        if not np.allclose(features, np.r_[np.sin(angle), np.cos(angle)], atol=1e-9):
            if np.allclose(features, np.r_[np.cos(angle), np.sin(angle)], atol=1e-9):
                raise WrongAnswer("`time_features`: sines first, then cosines")
            raise WrongAnswer(f"`time_features` at t = {t} s: the angle is 2π·t / T_k for each period T_k")
    with torch.no_grad():
        reference = encoding(torch.tensor([35.0], device=device))[0].cpu().numpy()
    code = _array(code_by_hand, "code_by_hand", reference.shape)
    diff = float(np.abs(code - reference).max())
    if diff >= 1e-4:
        raise WrongAnswer(f"`code_by_hand` differs from the module by {diff:.2g}: W times the features, plus b")
    return f"Correct: largest difference to TimeEncoding {diff:.1e}"


def phase_order_effects(mixer, model, feats, times, images, order=(3, 2, 1, 0)) -> dict[str, float]:
    """Largest change of four quantities when the phases and their times are reordered together."""
    import torch

    order = list(order)
    with torch.no_grad():
        per_phase, summary, _ = mixer(feats, times)
        per_phase_rev, summary_rev, _ = mixer(feats[:, order], times[:, order])
        probs = torch.softmax(model(images, times).class_logits, dim=1)
        probs_rev = torch.softmax(model(images[:, order], times[:, order]).class_logits, dim=1)
    return {
        "pooled summary": float((summary_rev - summary).abs().max()),
        "per-phase outputs, compared position by position": float((per_phase_rev - per_phase).abs().max()),
        "per-phase outputs, after reversing them back": float((per_phase_rev[:, order] - per_phase).abs().max()),
        "the full network's class probabilities": float((probs_rev - probs).abs().max()),
    }


def check_order_prediction(prediction, mixer, model, feats, times, images) -> str:
    import pandas as pd

    answered(prediction=prediction)
    blank = [k for k, v in prediction.items() if v is ...]
    if blank:
        raise ExerciseNotDone(f"`prediction` still has `...` for {blank}")
    if not all(isinstance(v, bool) for v in prediction.values()):
        raise WrongAnswer("answer True or False for each quantity")
    differences = phase_order_effects(mixer, model, feats, times, images)
    wrong = [k for k, v in differences.items() if prediction.get(k) != (v < 1e-4)]
    if wrong:
        raise WrongAnswer(f"look again at: {wrong}")
    return "Correct. Largest differences:\n" + pd.Series(differences).map("{:.1e}".format).to_string()


# --- 09 adversarial training ---------------------------------------------------------------------------

def check_lsgan_losses(d_loss_equilibrium, g_loss_equilibrium, d_loss_d_wins, g_loss_d_wins) -> str:
    import torch

    from mtilib.losses import discriminator_loss, generator_adversarial_loss

    answers = {"d_loss_equilibrium": d_loss_equilibrium, "g_loss_equilibrium": g_loss_equilibrium,
               "d_loss_d_wins": d_loss_d_wins, "g_loss_d_wins": g_loss_d_wins}
    answered(**answers)
    half, one, zero = torch.tensor([0.5]), torch.tensor([1.0]), torch.tensor([0.0])
    library = {"d_loss_equilibrium": float(discriminator_loss(half, half)),
               "g_loss_equilibrium": float(generator_adversarial_loss(half)),
               "d_loss_d_wins": float(discriminator_loss(one, zero)),
               "g_loss_d_wins": float(generator_adversarial_loss(zero))}
    wrong = [k for k, v in answers.items() if not math.isclose(_number(v, k), library[k], abs_tol=1e-9)]
    if wrong:
        raise WrongAnswer(f"the library disagrees on {wrong}: each loss is ½ (score − target)², and D's is the "
                          "sum of its real and fake terms")
    return "Correct: " + ", ".join(f"{k} = {v:g}" for k, v in library.items())


def check_adversarial_schedule(my_adversarial_weight, cfg) -> str:
    import copy

    from mtilib.train.gan import adversarial_weight

    for final, warmup, ramp in [(0.01, 2.0, 3.0), (0.05, 0.0, 5.0), (1.0, 1.5, 0.0), (0.01, 20.0, 20.0)]:
        probe = copy.deepcopy(cfg)
        probe.loss.adv, probe.adversarial.warmup_epochs, probe.adversarial.ramp_epochs = final, warmup, ramp
        for epoch in np.linspace(0, 50, 201):
            mine = _number(_called(my_adversarial_weight, "my_adversarial_weight", final, warmup, ramp, float(epoch)),
                           "my_adversarial_weight(...)")
            expected = adversarial_weight(probe, float(epoch))
            if abs(mine - expected) > 1e-12:
                where = ("before the warm-up ends" if epoch < warmup else
                         "with a ramp of 0 epochs" if ramp <= 0 else
                         "during the ramp" if epoch < warmup + ramp else "after the ramp")
                raise WrongAnswer(f"differs from adversarial_weight {where} (final={final}, warmup={warmup}, "
                                  f"ramp={ramp}, epoch={epoch:g})")
    return "Correct: identical to mtilib.train.gan.adversarial_weight"


# --- 10 full MTI-Net -------------------------------------------------------------------------------------

def check_validation_score(my_validation_score, headline: dict) -> str:
    """``my_validation_score(headline) -> float`` against the loop's score on the checkpoint's
    headline and on headlines with a large MAE or a missing task."""
    from mtilib.train.inference import validation_score

    probes = [dict(headline), {**headline, "enhancement_mae": 0.8},
              {k: v for k, v in headline.items() if k != "dice"}, {"accuracy": 0.5, "enhancement_mae": 0.1}]
    for probe in probes:
        with _hidden(my_validation_score, ("validation_score",),
                     "compute the score from the headline: validation_score is what this exercise re-derives"):
            got = _number(_called(my_validation_score, "my_validation_score", dict(probe)), "my_validation_score(...)")
        expected = validation_score(probe)
        if abs(got - expected) < 1e-9:
            continue
        if probe.get("enhancement_mae", 0) > 0.5:
            raise WrongAnswer("with an MAE above 0.5 the enhancement score is clipped at 0, not negative")
        if "dice" not in probe:
            raise WrongAnswer("a network without a task (here: no Dice) averages only the scores that exist")
        raise WrongAnswer("the score is the mean of Dice, accuracy and max(0, 1 − MAE / 0.5)")
    return f"Correct: the checkpoint's validation score on the test cases is {validation_score(headline):.3f}"


def check_tim_parameters(tim_parameters, base_config) -> str:
    from mtilib.models import baseline_config, build_model

    answered(tim_parameters=tim_parameters)
    value = _number(tim_parameters, "tim_parameters")

    def count(name):
        return sum(p.numel() for p in build_model(baseline_config(name, base_config)).parameters())

    full, without = count("mtinet"), count("no_tim")
    if abs(value - (full - without)) <= 1:
        return f"Correct: TIM adds {int(value)} parameters ({value / full:.1%} of MTI-Net)"
    if abs(value + (full - without)) <= 1:
        raise WrongAnswer("the sign: MTI-Net minus MTI-Net without TIM")
    if abs(value - full) <= 1 or abs(value - without) <= 1:
        raise WrongAnswer("that is a whole network's count: subtract the two")
    raise WrongAnswer("count every parameter of both networks (p.numel() over model.parameters()) and subtract")


# --- 11 your own data --------------------------------------------------------------------------------

_PHASE_SUFFIXES = ("pre", "art", "pv", "delay")


def check_phase_files(phase_files, seed: int = 0) -> str:
    """``phase_files(folder) -> [pre, art, pv, delay]`` on patient folders of its own: other
    prefixes, the files listed in another order, and files that are not phases."""
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="mtilib_check_") as tmp:
        for k, prefix in enumerate(("p07_t1_vibe", "ANON-2044", "study 3 dyn")):
            folder = Path(tmp) / f"patient_{k}"
            folder.mkdir()
            expected = [folder / f"{prefix}_{suffix}.nii.gz" for suffix in _PHASE_SUFFIXES]
            distractors = [folder / f"{prefix}_t2.nii.gz", folder / f"{prefix}_art_sub.nii.gz",
                           folder / f"{prefix}_pre.json", folder / "notes.txt"]
            for path in [expected[i] for i in rng.permutation(4)] + distractors:
                path.write_bytes(b"")
            got = _called(phase_files, "phase_files", folder)
            try:
                got = [Path(p).resolve() for p in got]
            except TypeError:
                raise WrongAnswer("`phase_files` should return a list of paths") from None
            if got != [p.resolve() for p in expected]:
                if sorted(got) == sorted(p.resolve() for p in expected):
                    raise WrongAnswer("the right files, in the wrong order: pre, art, pv, delay")
                raise WrongAnswer(f"in a folder named '{folder.name}' with other file names your function found "
                                  "other files: match the suffix at the end of the name, whatever comes before")
    return "Correct: the four phases found in phase order, in three folders named differently"


def check_exported_volume(volume_ml, exported_path) -> str:
    import nibabel as nib

    answered(volume_ml=volume_ml)
    value = _number(volume_ml, "volume_ml")
    image = nib.load(str(exported_path))
    voxels = int((np.asarray(image.dataobj) == LESION).sum())
    voxel_mm3 = float(np.prod(image.header.get_zooms()[:3]))
    expected = voxels * voxel_mm3 / 1000.0
    if math.isclose(value, expected, rel_tol=1e-6):
        return f"Correct: {value:.2f} ml"
    if math.isclose(value, expected * 1000, rel_tol=1e-6):
        raise WrongAnswer("that is in mm³: 1 ml = 1000 mm³")
    if math.isclose(value, voxels, rel_tol=1e-6):
        raise WrongAnswer("that is a number of voxels: multiply by the voxel volume from the header's zooms")
    raise WrongAnswer("count the voxels labelled as lesion in the exported file and multiply by its voxel volume")


#: The switches of MTI-Net a change-and-observe exercise may turn off.
SWITCHES = ("mdief", "transformer", "tim", "tdd")


def check_change_and_observe(changed, runs: dict, seeds=(0, 1)) -> str:
    """``runs``: ``{("as is", seed): RunResult, ("changed", seed): RunResult}`` for ``seeds``; the
    "changed" runs must differ from the "as is" ones by the switch ``changed`` only (read back from
    each run's ``config.yaml``). Returns the comparison of the best validation scores."""
    from mtilib.train import TrainConfig

    answered(changed=changed, runs=runs)
    if changed not in SWITCHES:
        raise WrongAnswer(f"`changed` should name one switch of cfg.model: one of {SWITCHES}")
    expected = {(label, seed) for label in ("as is", "changed") for seed in seeds}
    if not isinstance(runs, dict) or set(runs) != expected:
        raise WrongAnswer(f"`runs` should hold one run per (configuration, seed): keys {sorted(expected)}")
    configs = {}
    for key, run in runs.items():
        path = getattr(run, "out_dir", None)
        if path is None or not (Path(path) / "config.yaml").exists():
            raise WrongAnswer(f"runs[{key}] should be what train() returned (its folder holds config.yaml)")
        configs[key] = TrainConfig.from_yaml(Path(path) / "config.yaml")
    for (label, seed), cfg in configs.items():
        if cfg.seed != seed:
            raise WrongAnswer(f"runs[{(label, seed)!r}] was trained with seed {cfg.seed}")
        if getattr(cfg.model, changed) != (label == "as is"):
            raise WrongAnswer(f"in runs[{(label, seed)!r}] `{changed}` is {getattr(cfg.model, changed)}: on as is, "
                              "off in the changed configuration")
    for seed in seeds:
        base, other = configs[("as is", seed)].to_dict(), configs[("changed", seed)].to_dict()
        base["model"].pop(changed)
        other["model"].pop(changed)
        base.pop("name", None)
        other.pop("name", None)
        if base != other:
            differ = sorted(k for k in base if base[k] != other.get(k))
            raise WrongAnswer(f"seed {seed}: the two configurations differ in more than `{changed}` ({differ}): "
                              "change one thing at a time")
    score = {label: [runs[(label, s)].best_score for s in seeds] for label in ("as is", "changed")}
    mean = {k: float(np.mean(v)) for k, v in score.items()}
    spread = max(float(np.ptp(v)) for v in score.values())
    return (f"Correct: best validation score as is {mean['as is']:.3f} {np.round(score['as is'], 3).tolist()}, "
            f"without {changed} {mean['changed']:.3f} {np.round(score['changed'], 3).tolist()}; difference "
            f"{mean['changed'] - mean['as is']:+.3f} against a seed spread of up to {spread:.3f}")

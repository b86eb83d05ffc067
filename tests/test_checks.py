"""mtilib.checks: every check accepts a right answer, refuses a blank one as not done, and refuses
the wrong answers students actually give with a hint that does not contain the expected value.
(The notebook rehearsals in tests/test_notebooks.py run each check on the real exercise, blank and
solved; here the near misses are tried on small inputs of our own.)"""

import math

import nibabel as nib
import numpy as np
import pytest

from mtilib import checks
from mtilib.checks import ExerciseNotDone, WrongAnswer
from mtilib.train import TrainConfig
from mtilib.train.inference import CasePrediction, validation_score
from mtilib.train.loop import class_weight_tensor


def refused(kind, call, *words):
    with pytest.raises(kind) as info:
        call()
    message = str(info.value)
    for w in words:
        assert w in message, message
    return message


def test_answered_names_every_blank():
    checks.answered(a=1, b="x")
    message = refused(ExerciseNotDone, lambda: checks.answered(a=..., b=2, c=None), "`a`", "`c`", "are still")
    assert "`b`" not in message


def test_numbers_accept_numpy_and_torch_scalars():
    import torch

    assert checks._number(np.float32(0.5), "x") == 0.5
    assert checks._number(torch.tensor(2.0), "x") == 2.0
    refused(WrongAnswer, lambda: checks._number([1.0, 2.0], "x"), "one number")
    refused(WrongAnswer, lambda: checks._number("abc", "x"), "one number")


def test_first_pass_fwhm_units_and_grid():
    t = np.arange(0, 120, 0.5)
    cp = np.exp(-0.5 * ((t - 30) / 3.4) ** 2)
    fwhm = checks.full_width_half_max(t, cp)
    assert 7.5 <= fwhm <= 8.5
    assert checks.check_first_pass_fwhm(fwhm, t, cp).startswith("Correct")
    refused(WrongAnswer, lambda: checks.check_first_pass_fwhm(fwhm / 60, t, cp), "minutes")
    refused(ExerciseNotDone, lambda: checks.check_first_pass_fwhm(..., t, cp), "first_pass_fwhm_s")


def test_voxel_to_world_finds_a_missing_translation():
    affine = np.diag([2.0, 3.0, 5.0, 1.0])
    affine[:3, 3] = [-10.0, 4.0, 7.0]
    ijk = np.array([1.0, 2.0, 3.0])
    world = affine[:3, :3] @ ijk + affine[:3, 3]
    origin = np.linalg.solve(affine, [0, 0, 0, 1.0])[:3]
    assert checks.check_voxel_to_world(world, origin, affine, ijk).startswith("Correct")
    assert checks.check_voxel_to_world(list(world), tuple(origin), affine, ijk).startswith("Correct")
    refused(WrongAnswer, lambda: checks.check_voxel_to_world(affine[:3, :3] @ ijk, origin, affine, ijk), "translation")
    refused(WrongAnswer, lambda: checks.check_voxel_to_world(world, -origin, affine, ijk), "inverse")


def test_area_weighting_tells_the_plain_mean_apart():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(7), size=5)
    enh = rng.normal(size=(5, 3))
    area = np.array([1.0, 10.0, 3.0, 0.0, 6.0])
    w = area / area.sum()
    assert checks.check_area_weighting(list(w @ probs), w @ enh, area, probs, enh).startswith("Correct")
    refused(WrongAnswer, lambda: checks.check_area_weighting(probs.mean(0), w @ enh, area, probs, enh), "plain mean")
    refused(WrongAnswer, lambda: checks.check_area_weighting(w @ probs, area @ enh, area, probs, enh), "add up to 1")


def test_dice_check_names_the_background_mistake():
    true = np.zeros((8, 8, 2), bool)
    true[2:5, 2:5] = True
    pred = np.zeros_like(true)
    pred[3:6, 3:6] = True
    right = 2 * (pred & true).sum() / (pred.sum() + true.sum())
    assert checks.check_dice_by_hand(right, pred, true) == f"Correct: Dice = {right:.4f}"
    refused(WrongAnswer, lambda: checks.check_dice_by_hand(float((pred == true).mean()), pred, true), "background")
    refused(WrongAnswer, lambda: checks.check_dice_by_hand((pred & true).sum() / (pred | true).sum(), pred, true),
            "Jaccard")
    message = refused(WrongAnswer, lambda: checks.check_dice_by_hand(0.123, pred, true))
    assert f"{right:.4f}" not in message and f"{right:.3f}" not in message  # no answer given away


def test_dropped_or_counted():
    nan_dice = np.array([0.8, np.nan, 0.6])
    ours = np.array([0.8, 0.0, 0.6])
    assert checks.check_dropped_or_counted(0.7, ours.mean(), nan_dice, ours).startswith("Correct")
    refused(WrongAnswer, lambda: checks.check_dropped_or_counted(ours.mean(), 0.7, nan_dice, ours), "`dropped`")


def test_class_weights_are_tried_on_absent_classes():
    def right(counts):
        counts = np.asarray(counts, float)
        return np.where(counts > 0, counts.sum() / ((counts > 0).sum() * np.maximum(counts, 1)), 0.0)

    def all_classes(counts):  # K = C: the mistake the old check let through
        counts = np.asarray(counts, float)
        return np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)), 0.0)

    assert checks.check_class_weights(right, 7).startswith("Correct")
    refused(WrongAnswer, lambda: checks.check_class_weights(all_classes, 7), "present")
    refused(ExerciseNotDone, lambda: checks.check_class_weights(lambda counts: None, 7), "returns nothing")


def test_class_weights_may_not_call_the_function_it_re_derives():
    def cheat(counts):
        return class_weight_tensor([], len(counts)).numpy()

    refused(WrongAnswer, lambda: checks.check_class_weights(cheat, 7), "re-derives")
    assert cheat.__globals__["class_weight_tensor"] is class_weight_tensor  # put back afterwards


def _prediction(probs, area):
    probs = np.asarray(probs, float)
    return CasePrediction("c", None, None, probs.mean(0), None, np.asarray(area, float), probs, None)


def test_majority_vote_probes_catch_the_near_misses():
    def right(p):
        return checks.majority_of_lesion_slices(p, 3)

    def soft(p):
        voting = p.slice_lesion_area > 0
        rows = p.slice_class_probs[voting] if voting.any() else p.slice_class_probs
        return int(rows.mean(0).argmax())

    def no_fallback(p):
        voting = p.slice_lesion_area > 0
        return int(np.bincount(p.slice_class_probs[voting].argmax(1), minlength=3).argmax()) if voting.any() else 0

    def everyone_votes(p):
        return int(np.bincount(p.slice_class_probs.argmax(1), minlength=3).argmax())

    cases = {"a": _prediction([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]], [5, 9])}
    assert checks.check_majority_vote(right, cases, 3).startswith("Correct")
    refused(WrongAnswer, lambda: checks.check_majority_vote(soft, cases, 3), "vote")
    refused(WrongAnswer, lambda: checks.check_majority_vote(no_fallback, cases, 3), "fall back")
    refused(WrongAnswer, lambda: checks.check_majority_vote(everyone_votes, cases, 3), "lesion area > 0")


def test_macro_f1_over_the_classes_that_appear():
    cm = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])
    f1 = np.array([2 * 1 * 0.75 / 1.75, 2 * (2 / 3) * 1 / (5 / 3)])
    assert checks.check_macro_f1(f1.mean(), cm).startswith("Correct")
    refused(WrongAnswer, lambda: checks.check_macro_f1(np.r_[f1, 0].mean(), cm), "appear")
    refused(WrongAnswer, lambda: checks.check_macro_f1(5 / 6, cm), "accuracy")


def test_lsgan_losses_and_schedule():
    assert checks.check_lsgan_losses(0.25, 0.125, 0.0, 0.5).startswith("Correct")
    message = refused(WrongAnswer, lambda: checks.check_lsgan_losses(0.5, 0.125, 0.0, 0.5), "d_loss_equilibrium")
    assert "0.25" not in message
    cfg = TrainConfig.preset("quick")

    def schedule(final, warmup, ramp, epoch):
        if epoch < warmup:
            return 0.0
        return final if ramp <= 0 else final * min(1.0, (epoch - warmup) / ramp)

    assert checks.check_adversarial_schedule(schedule, cfg).startswith("Correct")
    refused(WrongAnswer, lambda: checks.check_adversarial_schedule(
        lambda f, w, r, e: 0.0 if e < w else f * min(1.0, (e - w) / r), cfg), "ZeroDivisionError")
    refused(WrongAnswer, lambda: checks.check_adversarial_schedule(
        lambda f, w, r, e: 0.0 if e < w or r <= 0 else f * min(1.0, (e - w) / r), cfg), "ramp of 0")


def test_validation_score_is_tried_on_missing_tasks():
    headline = {"dice": 0.9, "accuracy": 0.8, "enhancement_mae": 0.1, "auc": 0.95}

    def right(h):
        parts = [h[k] for k in ("dice", "accuracy") if h.get(k) is not None]
        if h.get("enhancement_mae") is not None:
            parts.append(max(0.0, 1 - h["enhancement_mae"] / 0.5))
        return float(np.mean(parts))

    def unclipped(h):
        return float(np.mean([h.get("dice", 0), h["accuracy"], 1 - h["enhancement_mae"] / 0.5]))

    assert checks.check_validation_score(right, headline).startswith("Correct")
    refused(WrongAnswer, lambda: checks.check_validation_score(unclipped, headline), "clipped")
    refused(WrongAnswer, lambda: checks.check_validation_score(lambda h: validation_score(h), headline), "re-derives")


def test_phase_files_in_folders_of_the_checks_own(tmp_path):
    def by_suffix(folder):
        found = {}
        for path in folder.glob("*.nii.gz"):
            for suffix in ("pre", "art", "pv", "delay"):
                if path.name.removesuffix(".nii.gz").endswith("_" + suffix):
                    found[suffix] = str(path)  # strings are fine
        return tuple(found[s] for s in ("pre", "art", "pv", "delay"))

    def hard_coded(folder):
        return [folder / f"patient_01_{s}.nii.gz" for s in ("pre", "art", "pv", "delay")]

    def sorted_names(folder):
        return sorted(folder.glob("*.nii.gz"))[:4]

    assert checks.check_phase_files(by_suffix).startswith("Correct")
    refused(WrongAnswer, lambda: checks.check_phase_files(hard_coded), "other files")
    refused(WrongAnswer, lambda: checks.check_phase_files(sorted_names))


def test_exported_volume_in_millilitres(tmp_path):
    labels = np.zeros((10, 10, 4), np.uint8)
    labels[2:5, 2:5, 1:3] = 2
    path = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.diag([2.0, 2.0, 5.0, 1.0])), path)
    ml = 18 * 20 / 1000
    assert checks.check_exported_volume(ml, path) == f"Correct: {ml:.2f} ml"
    refused(WrongAnswer, lambda: checks.check_exported_volume(ml * 1000, path), "mm³")
    refused(WrongAnswer, lambda: checks.check_exported_volume(18, path), "voxels")
    assert math.isclose(ml, 0.36)


def test_change_and_observe_reads_the_runs_configs(tmp_path):
    from mtilib.train.loop import RunResult

    def run(label, seed, switch="tim", also=None):
        cfg = TrainConfig.preset("quick")
        cfg.seed = seed
        setattr(cfg.model, switch, label == "as is")
        if also:
            setattr(cfg.optim, also, 99)
        folder = tmp_path / f"{label}_{seed}_{switch}_{also}"
        folder.mkdir()
        cfg.to_yaml(folder / "config.yaml")
        return RunResult(folder, 0.5 + 0.1 * seed + (0.05 if label == "changed" else 0), 1, [], {})

    runs = {(label, seed): run(label, seed) for label in ("as is", "changed") for seed in (0, 1)}
    message = checks.check_change_and_observe("tim", runs)
    assert "without tim" in message and "+0.050" in message
    refused(ExerciseNotDone, lambda: checks.check_change_and_observe(..., ...), "`changed`", "`runs`")
    refused(WrongAnswer, lambda: checks.check_change_and_observe("mdief", runs), "`mdief` is True")
    two_changes = {**runs, ("changed", 1): run("changed", 1, also="epochs")}
    refused(WrongAnswer, lambda: checks.check_change_and_observe("tim", two_changes), "more than `tim`", "optim")
    refused(WrongAnswer, lambda: checks.check_change_and_observe("tim", {("as is", 0): runs[("as is", 0)]}), "keys")

"""Every course notebook runs in QUICK mode through the course runner, and its metrics.json holds
meaningful values. Ranges are the *teaching* claims of each notebook, not exact numbers.

What runs is the notebook's rehearsal (:func:`mtilib.student.rehearsal_notebook`): its student copy
worked through with every exercise first left blank (the check must refuse it with a message of
its own) and then with the solution pasted back (the check must pass), plus the metrics cell."""

import json
import math

import nbformat
import pytest

from mtilib.course import NOTEBOOK_DIR, discover, run_notebook
from mtilib.models import BASELINES
from mtilib.results import SHIFTS
from mtilib.student import REHEARSAL_RECORD, exercises, rehearsal_notebook

# notebook number -> {metric: (low, high)} or {metric: exact value}; every notebook must appear here
EXPECTED: dict[str, dict] = {
    "00": {"n_cases": (35, 200), "n_classes_in_samples": 7, "hcc_brightest_phase": "arterial"},
    "04": {
        # the Gaussian high-pass keeps a small share of a phase image's energy, more on the lesion rim
        "highpass_energy_fraction_sigma_0_1": (0.003, 0.08), "highpass_energy_decreases_with_sigma": True,
        "lesion_highpass_enrichment": (2.0, 100.0),
        # one Haar level is orthonormal: exact reconstruction (float32), energy kept, LL holds most of it
        "haar_reconstruction_max_error": (0.0, 1e-5), "haar_energy_ratio": (0.9999, 1.0001),
        "haar_ll_energy_fraction": (0.9, 1.0),
        # spectral entropy: 1 uniform, 0 spike, ~0.91 noise; edges (high-pass, Haar details) concentrate energy
        "entropy_uniform": (0.9999, 1.0001), "entropy_spike": (0.0, 1e-6), "entropy_noise": (0.88, 0.95),
        "entropy_image_arterial": (0.75, 0.95), "entropy_highpass_arterial": (0.6, 0.87),
        "entropy_details_arterial": (0.45, 0.8), "highpass_more_concentrated": True,
        # branch weights are a distribution; aux["entropy_weights"] is what the module computes
        "mdief_weight_spatial": (0.0, 1.0), "mdief_weight_frequency": (0.0, 1.0), "mdief_weight_wavelet": (0.0, 1.0),
        "mdief_weight_sum": (0.9999, 1.0001), "aux_weights_max_diff": (0.0, 1e-5), "temperature": (1e-3, 10.0),
        # τ → 0: the lowest-entropy branch takes (almost) all; τ → ∞: 1/3 each
        "winning_weight_small_tau": (0.8, 1.0), "winning_weight_large_tau": (1 / 3 - 1e-6, 0.34),
        "survey_slices": (7, 1000), "survey_weight_std": (1e-5, 0.5),
        # exercise 3: each domain concentrates a different structure
        "winner_disc": "wavelet", "winner_thin_ring": "spatial", "winner_smooth_blob": "frequency",
    },
    "01": {
        # Parker AIF with a 21.5 s arrival: peak ~6.1 mM whole blood about 10 s after arrival
        "aif_peak_time_s": (28, 36), "aif_peak_blood_mM": (5.5, 6.7), "first_pass_fwhm_s": (6, 10),
        "pv_peak_lag_s": (5, 30),  # the portal input peaks later
        # SPGR: saturating, and a long native T1 gives a much larger relative enhancement
        "spgr_re_liver_1mM": (0.8, 1.4), "spgr_re_cyst_1mM": (4, 9), "spgr_linearity": (0.5, 0.9),
    },
    "02": {
        "fov_x_mm": (358, 359), "fov_z_mm": (119, 121), "axcodes": "RAS",
        "n_cases_curves": (35, 200), "n_classes_curves": 7,
        "hcc_washout": (0.4, 2.0), "hcc_delayed_lesion_to_liver": (0.5, 0.99),  # HCC washes out
        "fnh_delayed_lesion_to_liver": (0.9, 1.1),  # FNH iso to liver late
        "hemangioma_fill": (0.8, 3.5),  # progressive fill-in: delayed RE far above arterial
        "cyst_re_label": (0.1, 0.6), "cyst_re_core": (-0.1, 0.1),  # partial volume fakes cyst enhancement
    },
    "03": {
        "same_seed_identical": True,
        "re_error_ideal": (0, 1e-6), "re_error_partial_volume": (0.02, 0.5),  # PV biases masked RE
        "bias_re_change": (0, 0.01),  # a bias field cancels in S_p / S_pre
        "measured_snr": (25, 35),
        "n_dataset_cases": (14, 200), "n_classes_written": 7, "roundtrip_rel_error": (0, 1e-4),
        # one scale keeps RE exactly; per-phase scaling or z-scoring destroys it
        "re_error_one_scale": (0, 1e-5), "re_error_per_phase": (0.3, 5), "re_error_zscore": (0.3, 5),
        "lesion_sample_fraction": (0.5, 0.8), "split_overlap": 0, "n_val_cases": (7, 100),
        "loader_batches": (1, 1000), "stitch_dice": (0.4, 1.0),
        "weighted_class": "HCC", "plain_mean_class": "cyst",  # area weighting outvotes partial-volume tips
    },
    "05": {
        # the shared encoder keeps the phases apart (folded into the batch); the traced path is the network
        "fold_max_diff": (0.0, 1e-5), "trace_max_diff": (0.0, 1e-5), "s0_vs_final_dice": (0.7, 1.0),
        # the lesion is rare; CE pushes every pixel alike, soft Dice pushes a lesion pixel far harder
        "lesion_pixel_fraction": (0.001, 0.01), "push_ratio_ce": (0.99, 1.01), "push_ratio_dice": (5.0, 1000.0),
        "push_ratio_dice_ce": (1.2, 1000.0),
        # a missed lesion barely moves CE but costs about 0.5 of soft Dice loss (the mean of two class Dices)
        "ce_increase_missed": (0.0, 0.02), "dice_increase_missed": (0.4, 0.55),
        # per-image soft Dice punishes correct lesion-free slices (about 0.5 each unless the network is very
        # sure; 0.2 on average measured on the example case); pooled over the batch it does not
        "dice_loss_lesion_free": (0.1, 1.0),
        # the checkpoint on the 14 test cases (mtinet_course_evaluation.json: Dice 0.933, median 0.96, ASSD
        # 0.5 mm, no miss, no lesion lost to a larger false island)
        "n_test_cases": 14, "test_dice_mean": (0.78, 0.97), "dice_vs_shipped_evaluation": (0.0, 0.01),
        "test_hd95_median_mm": (0.0, 12.0), "test_assd_mean_mm": (0.0, 8.0), "test_missed_lesions": (0, 1),
        "n_lesions_lost_to_island": (0, 2),
        # voxel distances × in-plane spacing are wrong across 10 mm slices: the checkpoint errs mostly in-plane
        # (few or none of its cases), a mask one slice off is 10 mm away and the shortcut says 5.6
        "voxel_shortcut_wrong_cases": (0, 14), "shortcut_error_one_slice_off_mm": (3.0, 5.0),
        # empty masks: MONAI returns NaN/inf, mtilib its policy; NaN-skipping hides a missed lesion
        "monai_dice_invented_is_nan": True, "monai_hd95_missed_is_finite": False,
        "mtilib_hd95_missed_mm": (506.0, 508.0), "mtilib_dice_both_empty": 1.0,
        "miss_counted_worse": True, "hd95_mean_miss_counted_mm": (25.0, 100.0), "dropping_hides_the_miss": True,
        # early-fusion U-Net: same decoder, one encoder pass instead of one per phase
        "encoder_mac_ratio": (3.5, 4.1), "param_ratio_mtinet_unet": (1.5, 3.0), "mac_ratio_mtinet_unet": (2.0, 3.5),
    },
    "06": {
        # one function, three routes: numpy and torch agree; the label route is biased by partial volume
        "route_numpy_torch_max_diff": (0.0, 1e-5), "label_route_mae": (0.05, 0.5),
        "cyst_label_route_enhancement": (0.1, 0.6), "mask_gradient_nonzero": True,
        # lesion-free slices have no target: the network outputs something there, the masked loss ignores it
        "lesion_free_abs_prediction": (0.1, 10.0), "smooth_l1_masked": (0.0, 0.5),
        # pooling under s0 measures the lesion, global pooling the whole slice
        "s0_pooling_closer": True, "pooling_error_s0": (0.0, 0.2),
        # FiLM is the identity at initialisation and has moved away from it in the trained network
        "film_identity_max_diff": 0.0, "film_gamma_abs_mean": (0.01, 5.0), "dice_with_film": (0.85, 1.0),
        # consistency: second order exactly 0 for the true mask, both terms grow as the mask moves off the
        # lesion, and both ignore a common scale of the soft mask (weighted means)
        "second_order_at_shift0": (0.0, 1e-8), "first_order_grows": True, "second_order_at_max_shift": (0.01, 10.0),
        "scale_first_order_change": (0.0, 1e-4),
        "scale_second_order": (0.0, 1e-8),
        # the checkpoint on the test cases (mtinet_course_evaluation.json: MAE 0.064, Pearson r 0.993):
        # a flat cyst, HCC washes out, the haemangioma fills in
        "test_mae_mean": (0.03, 0.15), "test_mae_vs_shipped": (0.0, 0.01), "test_pearson_r_pooled": (0.95, 1.0),
        "cyst_predicted_enhancement": (-0.15, 0.15), "hcc_predicted_washout": (0.3, 3.0),
        "hemangioma_predicted_fill_in": (1.0, 5.0),
    },
    "07": {
        "head_inputs": 259, "importance_descriptors": (0.3, 1.0),  # the lesion's descriptors carry the class
        # what the text says of the class mean curves: abscess and metastasis closest, ICC rising into
        # the venous phase and holding, the cyst flat
        "closest_mean_curve_pair": "abscess / metastasis", "icc_mean_curve_rises_and_holds": True,
        "cyst_mean_curve_max_abs": (0.0, 0.05),
        "slice_imbalance": (1.2, 10.0),  # balanced cases, unbalanced slices
        "weight_case_mean": (0.999, 1.001), "subset_weight_rare": (1.5, 3.0), "exercise_weights_max_diff": (0.0, 1e-5),
        # a bias-only classifier learns the class frequencies; inverse-frequency weights flatten that prior
        "prior_error_unweighted": (0.0, 0.005), "prior_error_weighted": (0.0, 0.005), "weights_raise_rare_prior": True,
        # label smoothing has a finite optimal margin, log((1 - ε + ε/C) / (ε/C)) ≈ 4.16 for ε = 0.1, C = 7
        "smoothing_best_margin": (4.0, 4.3), "smoothing_closed_form_margin": (4.15, 4.17),
        # the checkpoint on the 14 test cases (mtinet_course_evaluation.json: accuracy 1.000)
        "n_test_cases": 14, "test_accuracy": (0.85, 1.0), "test_accuracy_vs_shipped": (0.0, 0.08),
        "test_macro_f1": (0.8, 1.0), "test_kappa": (0.8, 1.0), "test_auc": (0.95, 1.0),
        "slice_accuracy": (0.85, 1.0), "macro_f1_by_hand_diff": (0.0, 1e-9),
        # lesion-free slices must not vote: counting them equally ruins the per-case answer
        "accuracy_area_weighted": (0.85, 1.0), "accuracy_plain_mean": (0.0, 0.7),
        "area_weighted_at_least_plain_mean": True, "accuracy_majority_lesion_slices": (0.85, 1.0),
        # soft confusions stay small (the checkpoint makes no hard error on these cases); which pair
        # tops them depends on the checkpoint, so the notebook asks, it does not assert
        "slice_hard_confusions": (0, 3), "top_confused_pair_soft": (0.0, 0.2),
    },
    "08": {
        # the diagnosis is the curve: 1-NN on the whole enhancement curve beats any single phase
        "curve_accuracy": (0.7, 1.0), "best_single_phase_accuracy": (0.3, 0.7), "curve_beats_single_phase": True,
        "tokens_per_slice": 16, "token_channels": 128,  # 4×4 bottleneck positions of 8w = 128 channels
        # sinusoidal time features with periods 20-2000 s; nearby times get more similar codes
        "period_min_s": (19.9, 20.1), "period_max_s": (1999.0, 2001.0), "nearby_times_more_similar": True,
        "attention_row_sum_error": (0.0, 1e-5), "pool_weight_sum": (0.9999, 1.0001),
        # the shipped Transformer attends the same way for every phase and class: a fixed mix of the
        # phases (its pooling weights differ between phases: 0.16 to 0.41 measured, between classes
        # by a few hundredths: 0.034 at most, QUICK)
        "attention_class_spread": (0.0, 0.02), "attention_query_spread": (0.0, 0.02), "pool_class_spread": (0.0, 0.05),
        "pool_phases_differ_more_than_classes": True,
        "pool_weight_max": (0.25, 0.45), "pool_weight_min": (0.05, 0.25), "code_to_token_norm": (0.05, 1.0),
        # phases moved with their times: summary unchanged; images alone: it changes; the mean sees neither
        "permutation_with_times_rel_diff": (0.0, 1e-5), "permutation_images_only_rel_diff": (1e-3, 1.0),
        "mean_images_only_diff": (0.0, 1e-5), "full_network_order_sensitive": True,
        # another protocol (0/25/55/240 s): segmentation and class suffer; the arterial RE follows the
        # images (the regression head corrects TIM's measurement), so the enhancement barely suffers
        "protocol_cases": (7, 100), "dice_default": (0.7, 1.0), "dice_other": (0.6, 1.0),
        "accuracy_default": (0.7, 1.0), "accuracy_other": (0.4, 1.0),
        "mae_default": (0.0, 0.3), "mae_increase_other": (-0.1, 0.5),
        "arterial_true_other": (0.1, 0.5), "arterial_overestimate_other": (-0.3, 0.3),
        # ... and the times given make no difference to this checkpoint
        "default_times_change_enhancement": (0.0, 0.01), "swapped_times_change_enhancement": (0.0, 0.01),
        "swapped_times_change_probs": (0.0, 0.01),
    },
    "09": {
        "n_tokens": 6, "token_dim": 64,  # [CLS], arterial, venous, delayed, class, context
        # least squares at equilibrium (exercise 1; the exercises' own checks are in mtilib.checks)
        "d_loss_equilibrium": (0.2499, 0.2501), "g_loss_equilibrium": (0.1249, 0.1251),
        "final_lambda_adv": (0.0099, 0.0101),
        # the checkpoint's own training was a balanced game
        "history_loss_d_last": (0.15, 0.3), "history_loss_adv_last": (0.1, 0.2),
        # heads game with the defaults: balanced, and the tasks as good as without an adversary
        "defaults_loss_d": (0.2, 0.3), "defaults_loss_adv": (0.1, 0.16), "defaults_eval_mae": (0.0, 0.3),
        "defaults_eval_accuracy": (0.6, 1.0), "defaults_vs_no_adversary_mae_diff": (-0.02, 0.02),
        "no_defence_loss_d": (0.18, 0.3),  # a G that keeps up is not beaten even by a defenceless D
        # λ_adv far too large from step 0 wrecks the regression
        "large_weight_early_reg_ratio": (2.0, 100.0), "large_weight_final_mae_ratio": (1.5, 100.0),
        # against a G that stands still D pulls ahead, faster without noise/smoothing (QUICK's 200 steps
        # only begin it; the full 400 steps give 0.243 / 0.148 over their last third)
        "frozen_no_defence_loss_d": (0.05, 0.26), "frozen_no_defence_loss_adv": (0.125, 0.5),
        "frozen_no_defence_g_loss_higher": True,
        # the shipped TDD: better than chance on real vs fake, far from always (0.72 measured), reads the
        # class token above all (score gaps 0.068 for the class token, 0.003 for the curve), and does not
        # penalise impossible (curve, class) pairs (0.26 measured: it scores them no lower than real ones)
        "auc_real_fake": (0.55, 0.9), "auc_real_impossible": (0.0, 0.7),
        "score_gap_curve": (-0.02, 1.0), "score_gap_class_token": (0.02, 1.0), "class_token_gap_larger": True,
        "cls_attention_sum": (0.9999, 1.0001),
    },
    "10": {
        # the loop of mtilib.train: the loss falls over the QUICK epochs, and a resumed run is bit-identical
        "epochs": (1, 100), "loss_first": (0.5, 20.0), "loss_last": (0.1, 20.0), "resume_identical": True,
        # the shipped checkpoint reproduces mtinet_course_evaluation.json (Dice 0.933, MAE 0.064, accuracy 1.000)
        "checkpoint_dice": (0.78, 0.97), "checkpoint_enhancement_mae": (0.03, 0.12),
        "checkpoint_accuracy": (0.85, 1.0), "checkpoint_macro_f1": (0.9, 1.0), "matches_recorded": True,
        # every row of the results table can be built: MTI-Net, 5 ablations, plain MTL, 3 single-task, U-Net
        "n_networks": len(BASELINES), "tim_parameters": (500, 50_000),
        # docs/results.json (make results): every network, 3 seeds each, all of MTI-Net's metrics, every
        # other network paired against MTI-Net, every shift evaluated, collapsed tasks shown as failed,
        # and the whole experiment within the 90 minutes it promises
        "results_networks": len(BASELINES), "results_min_seeds": 3, "results_complete": True,
        "results_mtinet_dice": (0.5, 1.0), "results_paired_networks": len(BASELINES) - 1,
        "results_shifts": len(SHIFTS), "results_failed_shown_as_failed": True, "results_minutes": (1.0, 90.0),
    },
    "11": {
        # three NIfTI folders in a foreign layout, converted, predicted and exported
        "n_cases": 3, "n_exports": 3, "predict_same_space": True, "broken_label_named": True,
        "dice": (0.4, 1.0), "accuracy": (0.6, 1.0), "enhancement_mae": (0.0, 0.5),
        # an LLD-MMRI-style study: one patient without a venous series skipped, three of the four
        # series of each other patient resampled, boxes and classes as in the truth; fine-tuning on
        # box cases runs and reports no Dice (there is no mask to score)
        "lld_cases": (3, 13), "lld_skipped_patients": 1, "lld_resampled_phases": (9, 39),
        "lld_boxes_match_truth": True, "finetune_epochs": (1, 10), "finetune_dice_available": False,
        "finetune_accuracy": (0.0, 1.0), "finetune_enhancement_mae": (0.0, 1.0),
    },
}


def check_metrics(name: str, metrics: dict, expected: dict) -> list[str]:
    problems = []
    for key, want in expected.items():
        if key not in metrics:
            problems.append(f"{name}: metrics.json has no {key!r}")
            continue
        got = metrics[key]
        if isinstance(want, tuple):
            low, high = want
            if not (isinstance(got, (int, float)) and math.isfinite(got) and low <= got <= high):
                problems.append(f"{name}: {key}={got!r} outside [{low}, {high}]")
        elif got != want:
            problems.append(f"{name}: {key}={got!r}, expected {want!r}")
    return problems


NOTEBOOKS = discover(NOTEBOOK_DIR)


def test_every_notebook_has_expectations():
    missing = [p.name for p in NOTEBOOKS if p.name[:2] not in EXPECTED]
    assert not missing, f"add metric expectations for {missing} in tests/test_notebooks.py"


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_quick_mode(path, tmp_path_factory):
    out = tmp_path_factory.mktemp("course")
    nb = nbformat.read(path, as_version=4)
    rehearsal = out / "rehearsal" / path.name
    rehearsal.parent.mkdir()
    nbformat.write(rehearsal_notebook(nb), rehearsal)
    result = run_notebook(rehearsal, out, quick=True, cwd=NOTEBOOK_DIR)
    assert result.status == "ok", result.error
    problems = check_metrics(path.name, result.metrics, EXPECTED.get(path.name[:2], {}))
    assert not problems, "\n".join(problems)
    # every exercise's check refused the blank answer with a message of its own
    refused = json.loads((out / path.stem / REHEARSAL_RECORD).read_text())
    assert [r["exercise"] for r in refused] == [e["title"] for e in exercises(nb)]
    messages = [r["message"] for r in refused]
    assert len(set(messages)) == len(messages), f"two checks refuse a blank answer alike: {messages}"

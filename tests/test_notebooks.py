"""Every course notebook runs in QUICK mode through the course runner, and its metrics.json holds
meaningful values. Ranges are the *teaching* claims of each notebook, not exact numbers."""

import math

import pytest

from mtilib.course import NOTEBOOK_DIR, discover, run_notebook

# notebook number -> {metric: (low, high)} or {metric: exact value}; every notebook must appear here
EXPECTED: dict[str, dict] = {
    "00": {"n_cases": (35, 200), "n_classes_in_samples": 7, "hcc_brightest_phase": "arterial"},
    "03": {
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
        # the exercises' numpy versions agree with mtilib
        "highpass_numpy_max_diff": (0.0, 1e-4), "entropy_numpy_max_diff": (0.0, 1e-5),
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
        "fov_x_mm": (358, 359), "fov_z_mm": (119, 121), "axcodes": "RAS",
        "n_cases_curves": (35, 200), "n_classes_curves": 7,
        "hcc_washout": (0.4, 2.0), "hcc_delayed_lesion_to_liver": (0.5, 0.99),  # HCC washes out
        "fnh_delayed_lesion_to_liver": (0.9, 1.1),  # FNH iso to liver late
        "hemangioma_fill": (0.8, 3.5),  # progressive fill-in: delayed RE far above arterial
        "cyst_re_label": (0.1, 0.6), "cyst_re_core": (-0.1, 0.1),  # partial volume fakes cyst enhancement
    },
    "02": {
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
    result = run_notebook(path, out, quick=True)
    assert result.status == "ok", result.error
    problems = check_metrics(path.name, result.metrics, EXPECTED.get(path.name[:2], {}))
    assert not problems, "\n".join(problems)

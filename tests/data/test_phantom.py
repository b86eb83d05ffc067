"""The phantom: configuration, determinism, geometry, acquisition effects and each class's signature."""

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from mtilib.constants import CLASS_NAMES, DEFAULT_PHASE_TIMES_S
from mtilib.data.enhancement import relative_enhancement
from mtilib.data.phantom import (
    PRESETS,
    PhantomConfig,
    derive_seed,
    generate_case,
    generate_cases,
)

SAMPLES = PhantomConfig.preset("samples")
QUICK = PhantomConfig.preset("quick")


# ---------------------------------------------------------------- configuration


def test_presets_share_the_field_of_view():
    fovs = {name: PhantomConfig.preset(name).fov_mm for name in PRESETS}
    for fov in fovs.values():
        np.testing.assert_allclose(fov, fovs["default"], rtol=1e-9)
    assert PhantomConfig.preset("default").shape == (128, 128, 24)
    assert SAMPLES.shape == (64, 64, 12) and SAMPLES.preset_name == "samples"
    assert PhantomConfig().to_dict() == PhantomConfig.preset("default").to_dict()
    # small presets raise the minimum lesion diameter so that lesions stay visible
    assert QUICK.lesion_diameter_mm[0] > SAMPLES.lesion_diameter_mm[0] > PhantomConfig().lesion_diameter_mm[0]


def test_config_round_trip_and_validation():
    cfg = PhantomConfig.preset("samples", snr=20.0, classes=("HCC", "hemangioma"))
    assert cfg.classes == (6, 0)
    assert PhantomConfig.from_dict(cfg.to_dict()) == cfg
    resized = cfg.with_shape((32, 32, 6))
    np.testing.assert_allclose(resized.fov_mm, cfg.fov_mm)
    assert PhantomConfig(snr=0).snr is None  # 0 means "no noise"
    for bad in ({"shape": (1, 64, 12)}, {"atypical_rate": 1.5}, {"partial_volume": 0}, {"bias": -0.1},
                {"classes": ("nonsense",)}, {"phase_times_s": (10, 35, 70, 180)},
                {"lesion_diameter_mm": (30, 10)}):
        with pytest.raises(ValueError):
            PhantomConfig(**bad)
    with pytest.raises(ValueError, match="unknown phantom preset"):
        PhantomConfig.preset("huge")


# ---------------------------------------------------------------- one case


@pytest.fixture(scope="module")
def case():
    return generate_case(11, "HCC", SAMPLES)


def test_case_contents(case):
    p, (h, w, s) = len(DEFAULT_PHASE_TIMES_S), SAMPLES.shape
    assert case.images.shape == case.clean_images.shape == (p, h, w, s)
    assert case.images.dtype == case.clean_images.dtype == np.float32
    assert case.labels.shape == (h, w, s) and case.labels.dtype == np.uint8
    assert set(np.unique(case.labels)) == {0, 1, 2}
    assert case.class_id == 6 and case.class_name == "HCC"
    assert case.enhancement.shape == (p - 1,) and np.all(np.isfinite(case.enhancement))
    np.testing.assert_array_equal(case.phase_times_s, DEFAULT_PHASE_TIMES_S)
    assert set(case.maps) == {"ktrans_per_min", "ve", "vp", "fa", "delay_s", "t10_s"}
    assert all(m.shape == (h, w, s) and np.all(np.isfinite(m)) for m in case.maps.values())
    assert case.seed == 11 and case.config["preset_name"] == "samples"
    assert np.all(case.images >= 0) and np.all(np.isfinite(case.images))


def test_affine_is_centred_with_spacing_on_the_diagonal(case):
    np.testing.assert_allclose(np.diag(case.affine)[:3], SAMPLES.spacing_mm)
    centre_index = (np.array(SAMPLES.shape) - 1) / 2
    np.testing.assert_allclose(case.affine @ np.r_[centre_index, 1.0], [0, 0, 0, 1], atol=1e-9)
    np.testing.assert_allclose(case.spacing, SAMPLES.spacing_mm)


def test_lesion_lies_in_the_liver_and_matches_its_size(case):
    lesion = case.labels == 2
    shell = ndimage.binary_dilation(lesion) & ~lesion
    assert np.mean(case.labels[shell] == 1) > 0.9  # surrounded by liver
    lo, hi = SAMPLES.lesion_diameter_mm
    assert lo * 0.7 <= case.lesion_diameter_mm <= hi
    nominal_ml = np.pi / 6 * case.lesion_diameter_mm**3 / 1000
    assert 0.6 < case.lesion_volume_ml / nominal_ml < 1.6  # ellipsoid with a perturbed boundary
    label_ml = lesion.sum() * np.prod(SAMPLES.spacing_mm) / 1000
    assert 0.6 < label_ml / case.lesion_volume_ml < 1.5  # label = voxels at least half lesion


def test_measured_enhancement_uses_the_label_route(case):
    np.testing.assert_allclose(case.enhancement_measured,
                               relative_enhancement(case.clean_images, case.labels == 2), rtol=1e-12)


def test_enhancement_by_slice_is_the_truth_within_each_slice(case):
    by_slice = case.enhancement_by_slice
    assert by_slice.shape == (case.shape[2], case.images.shape[0] - 1)
    reached = np.all(np.isfinite(by_slice), axis=1)
    label_slices = (case.labels == 2).any(axis=(0, 1))
    # a voxel is labelled lesion when at least half of it is lesion tissue, so every labelled slice
    # holds lesion tissue; the tissue may reach a slice the label does not (a thin cap)
    assert np.all(reached[label_slices]) and np.all(np.isnan(by_slice[~reached]))
    # the case's truth is a positively weighted mean of the slices' truths
    assert np.all(case.enhancement >= by_slice[reached].min(0) - 1e-9)
    assert np.all(case.enhancement <= by_slice[reached].max(0) + 1e-9)
    weights = (case.labels == 2).sum(axis=(0, 1))[reached].astype(float)
    by_area = (weights[:, None] * by_slice[reached]).sum(0) / weights.sum()
    np.testing.assert_allclose(by_area, case.enhancement, atol=0.1)


def test_enhancement_by_slice_of_a_cyst_is_zero_on_every_slice():
    cyst = generate_case(5, "cyst", QUICK)
    reached = np.all(np.isfinite(cyst.enhancement_by_slice), axis=1)
    assert reached.sum() >= 2
    np.testing.assert_allclose(cyst.enhancement_by_slice[reached], 0.0, atol=1e-12)


def test_same_seed_is_bit_identical_and_another_seed_differs(case):
    again = generate_case(11, "HCC", SAMPLES)
    for name in ("images", "clean_images", "labels", "enhancement", "affine"):
        np.testing.assert_array_equal(getattr(again, name), getattr(case, name))
    for key in case.maps:
        np.testing.assert_array_equal(again.maps[key], case.maps[key])
    other = generate_case(12, "HCC", SAMPLES)
    assert not np.array_equal(other.labels, case.labels)
    assert not np.array_equal(other.images, case.images)
    assert not np.array_equal(other.enhancement, case.enhancement)


def test_unspecified_class_is_drawn_from_the_configured_classes():
    cfg = dataclasses.replace(QUICK, classes=(1, 4))
    drawn = {generate_case(seed, config=cfg).class_id for seed in range(8)}
    assert drawn == {1, 4}


def test_noise_is_rician_at_the_requested_snr():
    base = PhantomConfig.preset("samples", bias=0.0)
    noisy = generate_case(3, "cyst", base)
    clean = generate_case(3, "cyst", dataclasses.replace(base, snr=None))
    np.testing.assert_array_equal(clean.images, clean.clean_images)
    # the noise streams are separate: anatomy and clean signal do not change with the SNR
    np.testing.assert_array_equal(noisy.clean_images, clean.clean_images)
    np.testing.assert_array_equal(noisy.labels, clean.labels)
    sigma = noisy.clean_images[0][noisy.labels == 1].mean() / base.snr
    air = noisy.clean_images == 0
    assert air.sum() > 10000
    # In air the magnitude of complex Gaussian noise is Rayleigh: mean sigma sqrt(pi/2).
    assert noisy.images[air].mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.03)
    bright = noisy.clean_images > 20 * sigma
    assert (noisy.images - noisy.clean_images)[bright].std() == pytest.approx(sigma, rel=0.05)


def test_bias_field_is_smooth_multiplicative_and_shared_by_phases():
    base = PhantomConfig.preset("samples", snr=None, bias=0.0)
    flat = generate_case(5, "FNH", base)
    biased = generate_case(5, "FNH", dataclasses.replace(base, bias=0.2))
    body = flat.clean_images[0] > 0
    ratio = biased.clean_images[:, body] / flat.clean_images[:, body]
    np.testing.assert_allclose(ratio, np.broadcast_to(ratio[0], ratio.shape), rtol=1e-5)  # all phases
    assert 1 / 1.2 - 1e-6 <= ratio.min() < 0.97 and 1.03 < ratio.max() <= 1.2 + 1e-6


def test_partial_volume_mixes_tissues_at_edges():
    base = PhantomConfig.preset("samples", snr=None, bias=0.0)
    sharp = generate_case(5, "cyst", dataclasses.replace(base, partial_volume=1))
    mixed = generate_case(5, "cyst", dataclasses.replace(base, partial_volume=3))
    outside_lesion = sharp.labels != 2
    # without supersampling every voxel holds one tissue: only a handful of distinct values
    assert np.unique(sharp.clean_images[0][outside_lesion]).size <= 13
    assert np.unique(mixed.clean_images[0]).size > 500


def test_misregistration_moves_post_contrast_phases_only():
    base = PhantomConfig.preset("samples", snr=None, bias=0.0)
    still = generate_case(5, "HCC", base)
    motion = dataclasses.replace(base, misregistration_mm=4.0, misregistration_deg=2.0)
    moved = generate_case(5, "HCC", motion)
    np.testing.assert_array_equal(moved.clean_images[0], still.clean_images[0])
    np.testing.assert_array_equal(moved.labels, still.labels)  # labels follow the pre-contrast phase
    for p in range(1, 4):
        assert not np.allclose(moved.clean_images[p], still.clean_images[p])
        assert np.abs(moved.clean_images[p].mean() / still.clean_images[p].mean() - 1) < 0.05


def test_atypical_rate_switches_presentations():
    always = dataclasses.replace(QUICK, atypical_rate=1.0)
    never = dataclasses.replace(QUICK, atypical_rate=0.0)
    for cls in range(len(CLASS_NAMES)):
        odd = generate_case(cls, cls, always)
        assert odd.atypical and odd.presentation not in ("typical", "typical (no scar)", "flash-filling")
        assert not generate_case(cls, cls, never).atypical


def test_generate_cases_balances_classes_and_derives_seeds():
    cases = generate_cases(9, seed=4, config=QUICK)
    assert [c.class_id for c in cases] == [0, 1, 2, 3, 4, 5, 6, 0, 1]
    assert [c.seed for c in cases] == [derive_seed(4, i) for i in range(9)]
    assert len({c.seed for c in cases}) == 9
    pair = generate_cases(4, seed=4, config=QUICK, classes=("HCC", "hemangioma"), start=9)
    assert [c.class_id for c in pair] == [6, 0, 6, 0]
    assert pair[0].seed == derive_seed(4, 9)
    np.testing.assert_array_equal(generate_cases(2, seed=4, config=QUICK)[1].images, cases[1].images)


# ---------------------------------------------------------------- class signatures, measured on images

SIGNATURE_CONFIG = PhantomConfig.preset("default", lesion_diameter_mm=(30.0, 55.0), atypical_rate=0.0,
                                        snr=None, bias=0.0).with_shape((96, 96, 16))


@pytest.fixture(scope="module")
def signatures():
    """Per class, two typical cases measured on their noise-free images (means over regions):
    whole lesion, core (deeper than 0.6 of the maximal depth), rim (outer voxel layer), remote
    liver (> 15 mm from the lesion) and perilesional liver (3-8 mm outside)."""
    out = {}
    for cls, name in enumerate(CLASS_NAMES):
        out[name] = []
        for seed in (1000, 1001):
            c = generate_case(seed, cls, SIGNATURE_CONFIG)
            lesion = c.labels == 2
            depth = ndimage.distance_transform_edt(lesion, sampling=c.spacing)
            away = ndimage.distance_transform_edt(~lesion, sampling=c.spacing)
            regions = {
                "lesion": lesion,
                "core": lesion & (depth >= 0.6 * depth.max()),
                "rim": lesion & (depth <= c.spacing[:2].max() * 1.01),
                "liver": (c.labels == 1) & (away > 15),
                "halo": (c.labels == 1) & (away > 3) & (away <= 8),
            }
            mean = {k: c.clean_images[:, m].mean(axis=1) for k, m in regions.items()}
            for k in ("liver", "halo"):  # medians: robust to the portal vessels inside the liver
                mean[k] = np.median(c.clean_images[:, regions[k]], axis=1)
            out[name].append({"case": c, "mean": mean, "regions": regions,
                              "re": {k: v[1:] / v[0] - 1 for k, v in mean.items()}})
    return out


A, V, D = 1, 2, 3  # phase indices


def test_cyst_does_not_enhance(signatures):
    for s in signatures["cyst"]:
        np.testing.assert_allclose(s["case"].enhancement, 0.0, atol=1e-9)
        np.testing.assert_allclose(s["re"]["core"], 0.0, atol=0.08)  # measured inside (little PV)


def test_hcc_arterial_hyperenhancement_then_washout_with_capsule(signatures):
    for s in signatures["HCC"]:
        m = s["mean"]
        assert m["lesion"][A] > 1.1 * m["liver"][A]
        assert m["core"][V] < 0.95 * m["liver"][V] and m["core"][D] < 0.97 * m["liver"][D]  # tumour washout
        assert s["re"]["rim"][D - 1] > s["re"]["core"][D - 1]  # the capsule enhances late


def test_hemangioma_fills_in_centripetally(signatures):
    for s in signatures["hemangioma"]:
        e = s["case"].enhancement
        assert e[0] < e[1] and e[0] < e[2]  # rising from the arterial phase
        core = s["re"]["core"]
        assert core[0] < 0.1 < core[2] and core[1] < core[2]  # centre dark in A, filling through V to D
        assert s["re"]["rim"][0] > core[0]  # periphery first


def test_fnh_bright_arterially_and_iso_later(signatures):
    for s in signatures["FNH"]:
        m = s["mean"]
        assert m["lesion"][A] > 1.2 * m["liver"][A]
        for p in (V, D):
            assert abs(m["lesion"][p] / m["liver"][p] - 1) < 0.1


def test_icc_rim_then_progressive_central_enhancement(signatures):
    for s in signatures["ICC"]:
        core = s["mean"]["core"]
        assert core[D] > core[A] > core[0]
        assert s["mean"]["rim"][A] > core[A]


def test_abscess_non_enhancing_centre_wall_and_transient_halo(signatures):
    for s in signatures["abscess"]:
        np.testing.assert_allclose(s["re"]["core"], 0.0, atol=0.08)  # fluid (a little PV with the wall)
        assert s["re"]["rim"][0] > 0.5  # the wall enhances
        re = s["re"]
        arterial_excess = re["halo"][0] - re["liver"][0]
        assert arterial_excess > 0.1  # perilesional arterial hyperaemia ...
        assert abs(re["halo"][1] - re["liver"][1]) < min(0.08, 0.25 * arterial_excess)  # ... gone in V


def test_metastasis_rim_washout_and_hypoenhancing_core(signatures):
    for s in signatures["metastasis"]:
        m, re = s["mean"], s["re"]
        assert all(m["core"][p] < m["liver"][p] for p in (A, V, D))
        assert m["rim"][A] > m["core"][A]
        assert re["rim"][2] < re["rim"][0]  # peripheral washout ...
        assert re["core"][2] > re["core"][0]  # ... while the core slowly fills


# ---------------------------------------------------------------- class patterns: draw order pinned

#: (class id, presentation, low 32 bits of the PCG64 state after the class pattern drew its
#: parameters) for ``generate_case(1000 + k, k % 7, quick preset, atypical_rate 0.5)``, k = 0..27.
#: Recorded when the seven-way if/elif became one function per class (cases were bit-identical
#: before and after); re-recorded when the hemangioma's nodules and the ICC's rim and core changed
#: (only the rows of classes 0 and 1 changed). The generator's state depends only on which draws
#: were made, in which order, not on floating-point details, so this holds on every CPU: a
#: reordered draw changes every case that follows and shows up here.
PINNED_DRAWS = [
    (0, "typical", 2403326948), (1, "typical", 2660008231), (2, "phlegmonous", 2489035092),
    (3, "hypervascular", 2896279197), (4, "proteinaceous", 1569174698),
    (5, "pseudo-washout", 1211413076), (6, "hypovascular", 307431787), (0, "typical", 1494428780),
    (1, "hypervascular", 2461874244), (2, "phlegmonous", 3254052977), (3, "hypervascular", 3268596851),
    (4, "typical", 790789037), (5, "pseudo-washout", 626716777), (6, "typical", 3607796490),
    (0, "sclerosed", 3055167090), (1, "hypervascular", 98447414), (2, "typical", 1393142801),
    (3, "typical", 2253214612), (4, "proteinaceous", 3185944855), (5, "pseudo-washout", 989155656),
    (6, "typical", 105334910), (0, "typical", 3819136393), (1, "typical", 3141257298),
    (2, "typical", 129866433), (3, "typical", 93004319), (4, "proteinaceous", 4184954161),
    (5, "pseudo-washout", 2396373025), (6, "typical", 3206118525),
]


def test_class_patterns_draw_in_the_pinned_order(monkeypatch):
    from mtilib.data import phantom

    records = []
    real = phantom._lesion_parameters

    def spy(cls, atypical, lesion, physio, rng):
        out = real(cls, atypical, lesion, physio, rng)
        records.append((cls, out[1], rng.bit_generator.state["state"]["state"] % 2**32))
        return out

    monkeypatch.setattr(phantom, "_lesion_parameters", spy)
    config = PhantomConfig.preset("quick", atypical_rate=0.5)
    for k in range(28):
        generate_case(1000 + k, k % 7, config)
    assert records == PINNED_DRAWS


def test_every_class_has_its_own_pattern_function_in_class_order():
    from mtilib.data import phantom

    assert list(phantom._CLASS_PATTERNS) == list(CLASS_NAMES)
    assert len({f.__name__ for f in phantom._CLASS_PATTERNS.values()}) == len(CLASS_NAMES)


# ---------------------------------------------------------------- patterns at every preset's resolution


def _typical_cases(name: str, preset: str, n: int, first_seed: int = 7100):
    """The first ``n`` typical cases of a class (noise-free, no bias field) from consecutive seeds."""
    config = PhantomConfig.preset(preset, snr=None, bias=0.0)
    cases, seed = [], first_seed
    while len(cases) < n:
        c = generate_case(seed, name, config)
        seed += 1
        if c.presentation == "typical":
            cases.append(c)
    return cases


@pytest.mark.parametrize("preset", ["quick", "samples", "default"])
def test_hemangioma_nodules_are_visible_at_every_preset(preset):
    """Peripheral nodular arterial enhancement survives the preset's voxels: some lesion voxel is
    brighter than the liver in the arterial phase (relative enhancement), in every typical case."""
    for c in _typical_cases("hemangioma", preset, 6 if preset == "default" else 10):
        img = c.clean_images.astype(np.float64)
        liver_arterial = relative_enhancement(img, c.labels == 1)[0]
        lesion = c.labels == 2
        voxel_arterial = (img[1][lesion] - img[0][lesion]) / img[0][lesion]
        assert voxel_arterial.max() > liver_arterial, (c.seed, c.lesion_diameter_mm)
        assert c.enhancement[0] < c.enhancement[1] < c.enhancement[2]  # then the centripetal fill-in


def test_icc_lesion_curve_rises_or_plateaus_into_the_delayed_phase():
    """Mass-forming ICC: the lesion's mean enhancement (the regression target) rises from the
    arterial to the venous phase and holds into the delayed one, unlike a metastasis's washout."""
    for c in _typical_cases("ICC", "samples", 20):
        arterial, venous, delayed = c.enhancement
        assert venous > arterial, c.seed
        assert delayed >= 0.9 * venous, c.seed

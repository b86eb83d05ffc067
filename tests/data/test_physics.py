"""DCE physics against independent references: published AIF values, closed forms, quad, solve_ivp."""

import math

import numpy as np
import pytest
from scipy.integrate import quad, solve_ivp

from mtilib.data import physics
from mtilib.data.physics import (
    KineticTable,
    arterial_plasma_input,
    exp_convolve,
    extended_tofts_dual_input,
    parker_aif_blood,
    plasma_from_blood,
    portal_venous_input,
    relaxation_rate,
    spgr_signal,
)

# ---------------------------------------------------------------- Parker AIF


def test_parker_first_pass_peak_matches_publication():
    # Parker et al., MRM 2006;56:993 (Fig. 2 / Table 1): the population-average blood curve peaks at
    # about 6 mM at t = 0.17 min after its time origin (the first Gaussian is centred at 0.17046 min).
    t = np.arange(0.0, 60.0, 0.01)
    cb = parker_aif_blood(t)
    i = int(np.argmax(cb))
    assert 5.8 < cb[i] < 6.3
    assert t[i] / 60.0 == pytest.approx(0.17, abs=0.01)


def test_parker_tail_is_the_published_exponential():
    # At 5 min the Gaussians vanish and the sigmoid is 1: Cb = alpha exp(-beta t) = 1.050 e^-0.8425.
    assert parker_aif_blood(300.0) == pytest.approx(1.050 * math.exp(-0.1685 * 5.0), rel=1e-6)
    assert parker_aif_blood(300.0) == pytest.approx(0.452164, rel=1e-5)


def test_parker_matches_hand_evaluation_of_the_formula():
    def by_hand(t_min):  # Table 1 of Parker 2006, typed again independently
        g1 = 0.809 / (0.0563 * math.sqrt(2 * math.pi)) * math.exp(-((t_min - 0.17046) ** 2) / (2 * 0.0563**2))
        g2 = 0.330 / (0.132 * math.sqrt(2 * math.pi)) * math.exp(-((t_min - 0.365) ** 2) / (2 * 0.132**2))
        return g1 + g2 + 1.050 * math.exp(-0.1685 * t_min) / (1 + math.exp(-38.078 * (t_min - 0.483)))

    for t_min in (0.05, 0.17046, 0.3, 0.483, 1.0, 2.5):
        assert parker_aif_blood(t_min * 60.0) == pytest.approx(by_hand(t_min), rel=1e-9)


def test_parker_delay_shifts_and_is_zero_before_arrival():
    t = np.arange(0.0, 200.0, 0.5)
    shifted = parker_aif_blood(t, delay_s=15.0)
    assert np.all(shifted[t < 15.0] == 0.0)
    np.testing.assert_allclose(shifted[t >= 15.0], parker_aif_blood(t[t >= 15.0] - 15.0))


def test_plasma_from_blood():
    assert plasma_from_blood(2.9, hct=0.42) == pytest.approx(2.9 / 0.58)
    np.testing.assert_allclose(arterial_plasma_input([30.0], 10.0, 0.45), parker_aif_blood([20.0]) / 0.55)
    with pytest.raises(ValueError):
        plasma_from_blood(1.0, hct=1.0)


# ---------------------------------------------------------------- exponential convolution


@pytest.mark.parametrize("k", [0.0, 1e-7, 1e-3, 0.05, 0.5, 4.0])
def test_exp_convolve_is_exact_for_constant_and_linear_inputs(k):
    t = np.linspace(0.0, 100.0, 201)
    ones = exp_convolve(t, np.ones_like(t), k)
    ramp = exp_convolve(t, t, k)
    if k == 0.0:
        expected_ones, expected_ramp = t, t**2 / 2
    else:  # closed forms of int_0^t f(tau) exp(-k (t - tau)) dtau for f = 1 and f = tau
        expected_ones = -np.expm1(-k * t) / k
        expected_ramp = t / k + np.expm1(-k * t) / k**2
    np.testing.assert_allclose(ones, expected_ones, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ramp, expected_ramp, rtol=1e-8, atol=1e-9)


def test_exp_convolve_matches_quad_on_the_parker_curve_and_a_nonuniform_grid():
    rng = np.random.default_rng(0)
    t = np.sort(np.concatenate([[0.0, 150.0], rng.uniform(0.0, 150.0, 1500)]))
    f = parker_aif_blood(t, delay_s=10.0)
    rates = np.array([0.0, 0.01, 0.1, 1.0])
    out = exp_convolve(t, f, rates)  # (4, T): one curve per rate
    for j, k in enumerate(rates):
        for t_eval in (25.0, 40.0, 90.0, 150.0):
            n = int(np.searchsorted(t, t_eval))
            ref, _ = quad(lambda s, k=k, te=t[n]: parker_aif_blood(s, delay_s=10.0) * math.exp(-k * (te - s)),
                          0.0, t[n], points=[10.0, 20.0, 32.0], limit=200)
            assert out[j, n] == pytest.approx(ref, rel=2e-3, abs=1e-4)


# ---------------------------------------------------------------- inputs and the kinetic model (solve_ivp)

DT = 0.25
T_GRID = np.arange(0.0, 200.0 + DT, DT)
AIF_DELAY, HCT, PV_DELAY, PV_TRANSIT = 20.0, 0.42, 8.0, 13.0


def _ode_reference(ktrans_per_min, ve, vp, fa, t_eval):
    """Independent reference: integrate dCpv/dt = (Cpa(t - d) - Cpv)/Tg and
    dCe/dt = Ktrans Cin - kep Ce with the analytic Parker input; C = vp Cin + Ce."""
    ktrans = ktrans_per_min / 60.0
    kep = ktrans / ve if ktrans > 0 else 0.0

    def cpa(t):
        return parker_aif_blood(t, delay_s=AIF_DELAY) / (1 - HCT)

    def rhs(t, y):
        cpv, ce = y
        cin = fa * cpa(t) + (1 - fa) * cpv
        return [(cpa(t - PV_DELAY) - cpv) / PV_TRANSIT, ktrans * cin - kep * ce]

    sol = solve_ivp(rhs, (0.0, max(t_eval)), [0.0, 0.0], t_eval=t_eval, rtol=1e-9, atol=1e-11, max_step=0.2)
    cpv, ce = sol.y
    return vp * (fa * cpa(np.asarray(t_eval)) + (1 - fa) * cpv) + ce, cpv


@pytest.fixture(scope="module")
def inputs():
    cpa = arterial_plasma_input(T_GRID, AIF_DELAY, HCT)
    cpv = portal_venous_input(T_GRID, cpa, PV_DELAY, PV_TRANSIT)
    return cpa, cpv


PARAMS = {  # Ktrans (1/min), ve, vp, fa
    "liver": (2.2, 0.26, 0.11, 0.27),
    "HCC": (1.5, 0.11, 0.18, 0.9),
    "fibrous core": (0.1, 0.5, 0.02, 0.5),
    "cyst": (0.0, 0.0, 0.0, 0.0),
}


@pytest.mark.parametrize("name", list(PARAMS))
def test_dual_input_extended_tofts_matches_solve_ivp(inputs, name):
    cpa, cpv = inputs
    t_eval = [20.0, 35.0, 50.0, 70.0, 120.0, 180.0]
    ref, ref_cpv = _ode_reference(*PARAMS[name], t_eval)
    idx = [int(round(t / DT)) for t in t_eval]
    ours = extended_tofts_dual_input(T_GRID, cpa, cpv, *PARAMS[name])[idx]
    np.testing.assert_allclose(cpv[idx], ref_cpv, atol=2e-3 * ref_cpv.max())
    np.testing.assert_allclose(ours, ref, atol=2e-3 * max(ref.max(), 1e-3))


def test_portal_input_conserves_the_arterial_dose():
    t = np.arange(0.0, 3000.0, 0.5)
    cpa = arterial_plasma_input(t, 20.0)
    cpv = portal_venous_input(t, cpa, 8.0, 13.0)
    # Area under the curve is conserved up to the part still in transit at the end (tiny here).
    assert np.trapezoid(cpv, t) == pytest.approx(np.trapezoid(cpa, t), rel=5e-3)
    assert t[np.argmax(cpv)] > t[np.argmax(cpa)] + 8.0  # delayed and dispersed


def test_extended_tofts_vectorises_over_voxels(inputs):
    cpa, cpv = inputs
    kt, ve, vp, fa = (np.array(v) for v in zip(*PARAMS.values()))
    batch = extended_tofts_dual_input(T_GRID, cpa, cpv, kt, ve, vp, fa)
    assert batch.shape == (4, T_GRID.size)
    for i, p in enumerate(PARAMS.values()):
        np.testing.assert_allclose(batch[i], extended_tofts_dual_input(T_GRID, cpa, cpv, *p), rtol=1e-12)
    with pytest.raises(ValueError, match="ve must be positive"):
        extended_tofts_dual_input(T_GRID, cpa, cpv, 1.0, 0.0, 0.1, 0.5)


def test_kinetic_table_matches_the_direct_model_with_delays(inputs):
    cpa, cpv = inputs
    table = KineticTable(T_GRID, cpa, cpv)
    rng = np.random.default_rng(1)
    n = 40
    kt, ve = rng.uniform(0.0, 3.0, n), rng.uniform(0.05, 0.7, n)
    vp, fa, delay = rng.uniform(0.0, 0.3, n), rng.uniform(0.0, 1.0, n), rng.uniform(0.0, 120.0, n)
    times = np.array([0.0, 35.0, 70.0, 180.0])
    fast = table.concentration(times, kt, ve, vp, fa, delay)
    assert fast.shape == (4, n)
    for i in range(n):  # reference: the direct model on inputs delayed by this voxel's delay
        a = np.interp(T_GRID - delay[i], T_GRID, cpa, left=0.0)
        v = np.interp(T_GRID - delay[i], T_GRID, cpv, left=0.0)
        curve = extended_tofts_dual_input(T_GRID, a, v, kt[i], ve[i], vp[i], fa[i])
        ref = np.interp(times, T_GRID, curve)
        np.testing.assert_allclose(fast[:, i], ref, atol=2e-3 * max(curve.max(), 1e-3))
    assert np.all(fast[0] == 0.0)  # nothing before injection


# ---------------------------------------------------------------- relaxation and SPGR


def test_spgr_against_hand_computed_value():
    # M0 = 1, T1 = 1 s (R1 = 1/s), TR = 5 ms, flip 15 deg:
    # E1 = exp(-0.005) = 0.9950124792; sin 15 = 0.2588190451; cos 15 = 0.9659258263
    # S = 0.2588190451 * 0.0049875208 / (1 - 0.9659258263 * 0.9950124792)
    #   = 0.0012908654 / 0.0388917489 = 0.03319124
    assert spgr_signal(1.0, 1.0, 5.0, 15.0) == pytest.approx(0.03319124, rel=1e-6)
    assert spgr_signal(2.0, 1.0, 5.0, 15.0) == pytest.approx(2 * 0.03319124, rel=1e-6)  # linear in M0


def test_spgr_peaks_at_the_ernst_angle():
    r1, tr_ms = 1 / 0.586, 4.5
    flips = np.linspace(1.0, 40.0, 3901)
    best = flips[np.argmax(spgr_signal(1.0, r1, tr_ms, flips))]
    assert best == pytest.approx(np.degrees(np.arccos(np.exp(-tr_ms / 1000 * r1))), abs=0.02)


def test_relaxation_rate_and_contrast_brightens():
    assert relaxation_rate(0.5, 2.0, 4.0) == pytest.approx(2.0 + 8.0)
    pre = spgr_signal(0.7, relaxation_rate(0.586, 0.0), 4.5, 12.0)
    post = spgr_signal(0.7, relaxation_rate(0.586, 1.0), 4.5, 12.0)
    assert post > pre


def test_tissue_table_follows_the_literature_order_at_1p5T():
    t = {k: v.t10_s for k, v in physics.TISSUES.items()}
    # de Bazelaire 2004 (1.5 T): fat 343 < marrow 549 < liver 586 < muscle 856 < cortex 966 <
    # spleen 1057 < medulla 1412 ms; Stanisz 2005: blood 1441 ms.
    order = ["fat", "marrow", "liver", "muscle", "kidney_cortex", "spleen", "kidney_medulla", "blood"]
    assert [t[k] for k in order] == sorted(t[k] for k in order)
    assert t["liver"] == pytest.approx(0.586) and t["blood"] == pytest.approx(1.441)
    assert t["cyst"] > 2.0  # "very long T1"
    assert all(0 < v.m0 <= 1 and v.source for v in physics.TISSUES.values())

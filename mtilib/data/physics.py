"""DCE-MRI physics: vascular inputs, the dual-input extended Tofts model and the SPGR signal.

Pure numpy. Every public function takes times in **seconds** after injection; concentrations are in
mM; ``Ktrans`` is in the clinical unit 1/min (converted inside); relaxation rates are in 1/s.

Chain used by the phantom, voxel by voxel::

    Parker blood AIF (delayed) -> arterial plasma Cp_art = Cb / (1 - Hct)
    Cp_art --(delay, exponential gut transit)--> portal venous plasma Cp_pv
    C_in = fa * Cp_art + (1 - fa) * Cp_pv                     (dual input, arterial fraction fa)
    C_t  = vp * C_in + Ktrans * int_0^t C_in(tau) exp(-kep (t - tau)) dtau,  kep = Ktrans / ve
    R1   = 1 / T10 + r1 * C_t
    S    = M0 sin(a) (1 - E1) / (1 - cos(a) E1),  E1 = exp(-TR R1)         (spoiled gradient echo)

The convolutions use the exact recursive update of an exponential kernel for an input that is linear
between grid points (:func:`exp_convolve`): no quadrature error beyond that interpolation, and it
vectorises over any number of voxels or rate constants.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# --------------------------------------------------------------------------------------------
# Arterial input: Parker population AIF
# --------------------------------------------------------------------------------------------

#: Parker et al., "Experimentally-derived functional form for a population-averaged high-temporal-
#: resolution arterial input function for dynamic contrast-enhanced MRI", Magn Reson Med 2006;
#: 56:993-1000, Table 1. Units as published: A in mM*min, T and sigma in min, alpha in mM,
#: beta and s in 1/min, tau in min. The model gives WHOLE-BLOOD concentration (0.1 mmol/kg dose).
PARKER_2006: dict[str, float] = {
    "A1": 0.809, "A2": 0.330,
    "T1": 0.17046, "T2": 0.365,
    "sigma1": 0.0563, "sigma2": 0.132,
    "alpha": 1.050, "beta": 0.1685,
    "s": 38.078, "tau": 0.483,
}

#: Typical haematocrit (large vessels); Parker et al. 2006 also convert with 0.42.
DEFAULT_HCT = 0.42


def parker_aif_blood(t_s, delay_s: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """Parker population AIF: whole-blood gadolinium concentration (mM) at times ``t_s`` (s).

    ``delay_s`` shifts the curve (bolus arrival delay); the curve is zero before its own time
    origin (the published form is only defined for t >= 0, where it starts at 0.080 mM: the
    tails of its two Gaussians, 0.059 + 0.022; the sigmoid-modulated exponential adds 1e-8).
    ``scale`` multiplies it (dose / cardiac-output variation between patients). The first-pass
    peak is about 6.1 mM at 0.17 min (10.2 s) after the time origin.
    """
    p = PARKER_2006
    t_min = (np.asarray(t_s, dtype=float) - delay_s) / 60.0  # the published constants are in minutes
    root_2pi = np.sqrt(2.0 * np.pi)

    def gaussian(area, centre, width):
        return area / (width * root_2pi) * np.exp(-((t_min - centre) ** 2) / (2 * width**2))

    first_pass = gaussian(p["A1"], p["T1"], p["sigma1"])
    recirculation = gaussian(p["A2"], p["T2"], p["sigma2"])
    # exp(-s (t - tau)) overflows harmlessly to inf for very negative t; those times are masked below.
    with np.errstate(over="ignore"):
        washout = p["alpha"] * np.exp(-p["beta"] * t_min) / (1.0 + np.exp(-p["s"] * (t_min - p["tau"])))
    blood = scale * (first_pass + recirculation + washout)
    return np.where(t_min >= 0.0, blood, 0.0)


def plasma_from_blood(c_blood, hct: float = DEFAULT_HCT) -> np.ndarray:
    """Plasma concentration from whole-blood concentration: ``Cp = Cb / (1 - Hct)`` (mM).

    The agent stays outside red cells, so the same amount is dissolved in the plasma fraction only.
    """
    if not 0.0 <= hct < 1.0:
        raise ValueError(f"haematocrit must be in [0, 1), got {hct}")
    return np.asarray(c_blood, dtype=float) / (1.0 - hct)


def arterial_plasma_input(t_s, delay_s: float = 0.0, hct: float = DEFAULT_HCT,
                          scale: float = 1.0) -> np.ndarray:
    """Arterial plasma input ``Cp_art(t)`` (mM): the Parker blood AIF, delayed, divided by ``1 - Hct``."""
    return plasma_from_blood(parker_aif_blood(t_s, delay_s=delay_s, scale=scale), hct)


# --------------------------------------------------------------------------------------------
# Convolution with an exponential kernel (exact for piecewise-linear input)
# --------------------------------------------------------------------------------------------

_SERIES_BELOW = 1e-3  # below this x = rate*dt the closed-form weights lose digits; use their series


def _step_weights(x: np.ndarray, dt) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decay ``E = exp(-x)`` and the weights of f(t_n), f(t_n+1) over one step of length ``dt``.

    For f linear on [t_n, t_n + dt] and x = k dt:
    ``int_0^dt f(t_n + u) exp(-k (dt - u)) du = w0 f_n + w1 f_n+1`` with
    ``w0 = dt ((1 - E)/x^2 - E/x)`` and ``w1 = dt (1/x - (1 - E)/x^2)``.
    """
    x = np.asarray(x, dtype=float)
    decay = np.exp(-x)
    small = x < _SERIES_BELOW
    xs = np.where(small, 1.0, x)  # avoid 0-division in the branch that is not used
    one_minus = -np.expm1(-xs)
    w0 = np.where(small, 0.5 - x / 3.0 + x * x / 8.0, one_minus / xs**2 - np.exp(-xs) / xs)
    w1 = np.where(small, 0.5 - x / 6.0 + x * x / 24.0, 1.0 / xs - one_minus / xs**2)
    return decay, w0 * dt, w1 * dt


def exp_convolve(t_s, f, rate_per_s) -> np.ndarray:
    """``I(t) = int_{t0}^{t} f(tau) exp(-k (t - tau)) dtau`` on the grid ``t_s``, for every rate ``k``.

    ``t_s``: (T,) increasing times (s), uniform or not. ``f``: (..., T) samples of the input, taken
    as linear between grid points. ``rate_per_s``: array of rates k >= 0 (1/s). The batch shapes of
    ``f`` (without its last axis) and ``rate_per_s`` broadcast; the result has shape (batch..., T) in
    the unit of f times seconds. The recursion ``I_n+1 = E I_n + w0 f_n + w1 f_n+1`` is exact for
    piecewise-linear f, so the accuracy is set by how well the grid resolves f, not by k.
    """
    t = np.asarray(t_s, dtype=float)
    f = np.asarray(f, dtype=float)
    rate = np.asarray(rate_per_s, dtype=float)
    if t.ndim != 1 or f.shape[-1] != t.shape[0]:
        raise ValueError(f"f must end with the time axis of length {t.shape[0]}, got shape {f.shape}")
    if np.any(np.diff(t) <= 0):
        raise ValueError("t_s must be strictly increasing")
    if np.any(rate < 0):
        raise ValueError("rates must be non-negative")
    batch = np.broadcast_shapes(f.shape[:-1], rate.shape)
    out = np.zeros(batch + t.shape, dtype=float)
    dts = np.diff(t)
    uniform = np.allclose(dts, dts[0], rtol=1e-9, atol=0.0)
    if uniform:
        decay, w0, w1 = _step_weights(rate * dts[0], dts[0])
    acc = np.zeros(batch, dtype=float)
    for n in range(t.shape[0] - 1):
        if not uniform:
            decay, w0, w1 = _step_weights(rate * dts[n], dts[n])
        acc = decay * acc + w0 * f[..., n] + w1 * f[..., n + 1]
        out[..., n + 1] = acc
    return out


# --------------------------------------------------------------------------------------------
# Portal venous input and the dual-input extended Tofts model
# --------------------------------------------------------------------------------------------


def portal_venous_input(t_s, cp_art, delay_s: float = 8.0, transit_s: float = 13.0) -> np.ndarray:
    """Portal venous plasma input (mM): the arterial input delayed and dispersed through the gut.

    ``Cp_pv(t) = (1/Tg) int Cp_art(tau - delay) exp(-(t - tau)/Tg) dtau``: a normalised exponential
    transit kernel with mean transit ``Tg = transit_s``, so the area under the curve is conserved.
    ``t_s``: (T,) grid starting at or before injection (fine enough to resolve the first pass;
    0.25-0.5 s). ``cp_art``: (..., T) on that grid.
    """
    t = np.asarray(t_s, dtype=float)
    cp_art = np.asarray(cp_art, dtype=float)
    if transit_s <= 0:
        raise ValueError(f"transit_s must be positive, got {transit_s}")
    # Delay: read the arterial curve delay_s earlier (zero before the grid starts).
    delayed = np.apply_along_axis(lambda c: np.interp(t - delay_s, t, c, left=0.0), -1, cp_art)
    return exp_convolve(t, delayed, 1.0 / transit_s) / transit_s


def _kep_per_s(ktrans_per_min, ve) -> tuple[np.ndarray, np.ndarray]:
    """Ktrans in 1/s and kep = Ktrans/ve in 1/s; kep = 0 where there is no exchange (Ktrans = 0)."""
    ktrans = np.asarray(ktrans_per_min, dtype=float) / 60.0
    ve = np.asarray(ve, dtype=float)
    if np.any((ktrans > 0) & (ve <= 0)):
        raise ValueError("ve must be positive wherever Ktrans > 0")
    shape = np.broadcast_shapes(ktrans.shape, ve.shape)
    kep = np.divide(ktrans, ve, out=np.zeros(shape), where=ktrans > 0)
    return ktrans, kep


def extended_tofts_dual_input(t_s, cp_art, cp_pv, ktrans_per_min, ve, vp, fa) -> np.ndarray:
    """Tissue concentration (mM) of the dual-input extended Tofts model on the grid ``t_s`` (s).

    ``C_in = fa Cp_art + (1 - fa) Cp_pv``;
    ``C_t(t) = vp C_in(t) + Ktrans int_0^t C_in(tau) exp(-kep (t - tau)) dtau`` with ``kep = Ktrans/ve``.

    ``cp_art``, ``cp_pv``: (T,) plasma inputs on ``t_s``. ``ktrans_per_min`` (1/min), ``ve``, ``vp``,
    ``fa`` (fractions): arrays that broadcast to one batch shape (e.g. one entry per voxel). Returns
    (batch..., T). Exact for inputs linear between grid points (see :func:`exp_convolve`).
    """
    t = np.asarray(t_s, dtype=float)
    ktrans, kep = _kep_per_s(ktrans_per_min, ve)
    vp = np.asarray(vp, dtype=float)
    fa = np.asarray(fa, dtype=float)
    batch = np.broadcast_shapes(ktrans.shape, kep.shape, vp.shape, fa.shape)
    fa_b = np.broadcast_to(fa, batch)[..., None]
    c_in = fa_b * np.asarray(cp_art, dtype=float) + (1.0 - fa_b) * np.asarray(cp_pv, dtype=float)
    conv = exp_convolve(t, c_in, np.broadcast_to(kep, batch))
    return np.broadcast_to(vp, batch)[..., None] * c_in + np.broadcast_to(ktrans, batch)[..., None] * conv


class KineticTable:
    """Fast evaluation of the dual-input extended Tofts model for many voxels at a few times.

    The model is linear in its inputs, so ``int C_in(tau - d) exp(-kep (t - tau)) dtau`` splits into
    ``fa G_art(kep, t - d) + (1 - fa) G_pv(kep, t - d)`` with
    ``G_x(kep, t) = int_0^t Cp_x(tau) exp(-kep (t - tau)) dtau``. ``G`` is tabulated once per case on
    the fine time grid (exact recursion) and on a log-spaced kep grid, then read by bilinear
    interpolation (linear in t, linear in log kep) for each voxel's own kep and delay. Relative error
    against :func:`extended_tofts_dual_input` is below ~1e-3 for the default grids (tested).

    ``t_s``: uniform grid from 0 (injection), (T,); ``cp_art``, ``cp_pv``: (T,) plasma inputs.
    """

    def __init__(self, t_s, cp_art, cp_pv, kep_range_per_s=(1e-5, 5.0), n_kep: int = 192):
        t = np.asarray(t_s, dtype=float)
        dts = np.diff(t)
        if t[0] != 0.0 or not np.allclose(dts, dts[0], rtol=1e-9, atol=0.0):
            raise ValueError("KineticTable needs a uniform time grid starting at 0 s")
        self.t_s = t
        self.dt_s = float(dts[0])
        self.cp = np.stack([np.asarray(cp_art, float), np.asarray(cp_pv, float)])  # (2, T)
        self.log_kep = np.linspace(np.log(kep_range_per_s[0]), np.log(kep_range_per_s[1]), n_kep)
        self.kep_range_per_s = (float(kep_range_per_s[0]), float(kep_range_per_s[1]))
        kep = np.exp(self.log_kep)
        self.g = exp_convolve(t, self.cp[None, :, :], kep[:, None])  # (n_kep, 2, T)

    def _time_index(self, tt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if np.any(tt > self.t_s[-1] + 1e-9):
            raise ValueError(f"time {tt.max():.1f} s is beyond the table's grid ({self.t_s[-1]:.1f} s)")
        u = np.clip(tt, 0.0, None) / self.dt_s
        i0 = np.minimum(np.floor(u).astype(np.int64), self.t_s.size - 2)
        return i0, u - i0, tt >= 0.0  # before the voxel's own time origin nothing has arrived

    def inputs(self, tt) -> np.ndarray:
        """Plasma inputs (2, ...) = (Cp_art, Cp_pv) at times ``tt`` (s; zero before 0)."""
        i0, w, valid = self._time_index(np.asarray(tt, dtype=float))
        vals = (1.0 - w) * self.cp[:, i0] + w * self.cp[:, i0 + 1]
        return np.where(valid, vals, 0.0)

    def concentration(self, times_s, ktrans_per_min, ve, vp, fa, delay_s=0.0) -> np.ndarray:
        """Tissue concentration (mM), shape (P, N), at ``times_s`` (P,) for N voxels.

        Parameters are (N,) arrays or scalars: ``ktrans_per_min`` (1/min), ``ve``, ``vp``, ``fa``,
        and ``delay_s``, an extra arrival delay of both inputs at that voxel (s).
        """
        times = np.asarray(times_s, dtype=float)
        ktrans, kep = _kep_per_s(ktrans_per_min, ve)
        vp, fa, delay = (np.asarray(a, dtype=float) for a in (vp, fa, delay_s))
        n = np.broadcast_shapes(ktrans.shape, kep.shape, vp.shape, fa.shape, delay.shape)
        ktrans, kep, vp, fa, delay = (np.broadcast_to(a, n) for a in (ktrans, kep, vp, fa, delay))
        if np.any(kep > self.kep_range_per_s[1] * (1 + 1e-9)):
            raise ValueError(f"kep {kep.max():.3g}/s is above the table's range "
                             f"({self.kep_range_per_s[1]}/s)")

        tt = times.reshape(times.shape + (1,) * len(n)) - delay  # (P, N): each voxel's own clock
        i0, wt, valid = self._time_index(tt)
        # kep below the grid: the kernel is flat over our time span, G(kmin) is exact to < 1e-3.
        step = self.log_kep[1] - self.log_kep[0]
        v = (np.log(np.maximum(kep, self.kep_range_per_s[0])) - self.log_kep[0]) / step
        j0 = np.minimum(np.floor(v).astype(np.int64), self.log_kep.size - 2)
        wk = np.clip(v - j0, 0.0, 1.0)

        c_in = fa * ((1 - wt) * self.cp[0, i0] + wt * self.cp[0, i0 + 1]) + (1 - fa) * (
            (1 - wt) * self.cp[1, i0] + wt * self.cp[1, i0 + 1]
        )
        conv = np.zeros(tt.shape)
        for src, weight in ((0, fa), (1, 1.0 - fa)):
            g = self.g[:, src, :]
            g_t0 = (1 - wk) * g[j0, i0] + wk * g[j0 + 1, i0]
            g_t1 = (1 - wk) * g[j0, i0 + 1] + wk * g[j0 + 1, i0 + 1]
            conv += weight * ((1 - wt) * g_t0 + wt * g_t1)
        return np.where(valid, vp * c_in + ktrans * conv, 0.0)


# --------------------------------------------------------------------------------------------
# Relaxation and signal
# --------------------------------------------------------------------------------------------

#: Longitudinal relaxivity of Gd-DTPA in plasma at 1.5 T, 1/(mM s) (Rohrer et al., Invest Radiol
#: 2005; 40:715-724: 4.1 at 1.5 T, 37 C).
DEFAULT_R1_PER_MM_S = 4.1


def relaxation_rate(t10_s, conc_mM, r1_per_mM_s: float = DEFAULT_R1_PER_MM_S) -> np.ndarray:
    """Longitudinal relaxation rate ``R1 = 1/T10 + r1 C`` (1/s); fast water exchange assumed."""
    t10 = np.asarray(t10_s, dtype=float)
    return 1.0 / t10 + r1_per_mM_s * np.asarray(conc_mM, dtype=float)


def spgr_signal(m0, r1_per_s, tr_ms: float, flip_deg: float) -> np.ndarray:
    """Steady-state spoiled gradient-echo signal ``M0 sin a (1 - E1) / (1 - cos a E1)``.

    ``E1 = exp(-TR R1)``; ``tr_ms`` in milliseconds (as on the scanner console), ``r1_per_s`` in 1/s,
    flip angle in degrees. T2* decay is ignored (TE << T2* for the short-TE 3D GRE of liver DCE).
    """
    e1 = np.exp(-(tr_ms / 1000.0) * np.asarray(r1_per_s, dtype=float))
    a = np.deg2rad(flip_deg)
    return np.asarray(m0, dtype=float) * np.sin(a) * (1.0 - e1) / (1.0 - np.cos(a) * e1)


# --------------------------------------------------------------------------------------------
# Native tissue properties at 1.5 T
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tissue:
    """Native (pre-contrast) properties of a tissue at 1.5 T.

    ``t10_s``: T1 in seconds; ``m0``: relative proton density (water = 1); ``source``: where the
    T1 comes from.
    """

    t10_s: float
    m0: float
    source: str


_DEBAZ = "de Bazelaire et al., Radiology 2004;230:652-659 (1.5 T)"
_STANISZ = "Stanisz et al., Magn Reson Med 2005;54:507-512 (1.5 T)"
_CHOICE = "plausible value chosen for the phantom (longer than liver, as lesions are T1-hypointense)"
_BLOODLIKE = "close to blood: hemangiomas are slow-flow vascular spaces; "

#: Native T1 and relative M0. Normal-tissue T1s are literature means at 1.5 T; M0 values are
#: approximate tissue water contents (relative to water); lesion T1s are stated choices where no
#: single reference value exists (lesion T1 varies widely between reports).
TISSUES: dict[str, Tissue] = {
    "liver": Tissue(0.586, 0.71, _DEBAZ),
    "spleen": Tissue(1.057, 0.78, _DEBAZ),
    "kidney_cortex": Tissue(0.966, 0.80, _DEBAZ),
    "kidney_medulla": Tissue(1.412, 0.85, _DEBAZ),
    "muscle": Tissue(0.856, 0.75, _DEBAZ + ", paravertebral muscle"),
    "fat": Tissue(0.343, 0.90, _DEBAZ + ", subcutaneous fat"),
    "marrow": Tissue(0.549, 0.75, _DEBAZ + ", L4 vertebral bone marrow"),
    "blood": Tissue(1.441, 0.85, _STANISZ),
    "viscera": Tissue(0.900, 0.75, "plausible value for bowel / mesentery (mixed soft tissue)"),
    # Lesions (LLD-MMRI classes)
    "hemangioma": Tissue(1.300, 0.85, _BLOODLIKE + _CHOICE),
    "ICC": Tissue(1.150, 0.78, _CHOICE),
    "abscess_wall": Tissue(1.000, 0.78, _CHOICE),
    "abscess_fluid": Tissue(2.000, 0.92, "proteinaceous fluid (pus): shorter than free water; " + _CHOICE),
    "metastasis": Tissue(1.100, 0.78, _CHOICE),
    "cyst": Tissue(3.000, 0.97, "simple serous fluid, near free water (CSF ~4 s at 1.5 T); " + _CHOICE),
    "FNH": Tissue(0.650, 0.72, "near liver (FNH is iso- to slightly hypointense on T1w); " + _CHOICE),
    "FNH_scar": Tissue(1.200, 0.80, "fibrous / myxoid scar; " + _CHOICE),
    "HCC": Tissue(0.950, 0.76, _CHOICE),
    "HCC_capsule": Tissue(1.100, 0.76, "fibrous capsule; " + _CHOICE),
}

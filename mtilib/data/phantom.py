"""The seeded DCE-MRI liver phantom (DESIGN §2.1): four-phase images whose truth is known.

A case is built in physical units (millimetres, seconds, mM) on a grid ``partial_volume`` times finer
than the output in each axis, then averaged down:

1. **Anatomy** (axial slab, RAS+: x to the patient's right, y anterior, z superior; the array axes
   (H, W, S) are (x, y, z)): body outline with a subcutaneous fat rim, abdominal-wall and paraspinal
   muscle, viscera, a liver built from a template (two soft-united ellipsoids) under a smooth random
   deformation, portal vein branches inside it, aorta, IVC, spleen, kidneys (cortex / medulla) and a
   vertebral body.
2. **One lesion** inside the liver: a randomly oriented ellipsoid with a smooth random boundary
   perturbation, nominal diameter drawn from ``lesion_diameter_mm``.
3. **Kinetics**: Parker arterial input with a per-case arrival delay, dose scale and haematocrit; a
   portal input (gut delay and exponential transit); dual-input extended Tofts per tissue; per-voxel
   parameter maps in the lesion (and the abscess halo) that draw the class-specific patterns.
4. **Signal**: SPGR at TR / flip / r1 of the config, native T1 and M0 from
   :data:`mtilib.data.physics.TISSUES` (optional fat suppression).
5. **Acquisition**: partial volume (average of the fine grid), optional rigid misregistration of the
   post-contrast phases, smooth multiplicative bias field, Rician noise.

Everything random comes from ``numpy.random.Generator`` objects seeded from the case seed only, so
the same seed and config give bit-identical arrays.

Class patterns (maps of Ktrans, ve, vp, fa and an extra arrival delay; ``presentation`` names the
variant drawn):

- hemangioma: slow-flow vascular spaces (high vp + ve, follows the blood pool). Peripheral nodules
  arrive first; the arrival delay grows toward the centre (centripetal fill-in over V and D). Small
  lesions (< 20 mm) flash-fill with probability 0.5 (``flash-filling``, a typical variant).
- ICC: irregular arterial rim, fibrous core with low Ktrans and large ve (progressive enhancement).
- abscess: enhancing wall (and sometimes septa), non-enhancing fluid centre with long T1, and a
  transient arterial halo in the surrounding liver (higher fa; iso again in V/D). The halo is liver
  (label 1), not lesion.
- metastasis: thin irregular rim with fast exchange (arterial rim, peripheral washout in D),
  hypo-enhancing core.
- cyst: no enhancement at all, very long T1, nearly unperturbed (sharp) margin.
- FNH: intense homogeneous arterial enhancement (high fa), total distribution volume matched to the
  liver (iso in V/D), central stellate scar (lesions >= 20 mm) with delayed enhancement.
- HCC: non-rim arterial hyper-enhancement (high fa and vp), small ve (washout in V/D), mild mosaic
  texture, thin capsule with delayed enhancement.

Atypical presentations (rate ``atypical_rate``, flagged ``atypical=True`` with their name in
``presentation``): sclerosed hemangioma, hypervascular ICC, phlegmonous abscess (no liquefied centre),
hypervascular metastasis, proteinaceous cyst (short T1, still non-enhancing), FNH with pseudo-washout,
hypovascular HCC without capsule. They are the look-alikes that keep classification non-trivial.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from mtilib.constants import CLASS_NAMES, DEFAULT_PHASE_TIMES_S, LESION, LIVER
from mtilib.constants import class_id as _class_id
from mtilib.data import physics
from mtilib.data.enhancement import relative_enhancement
from mtilib.data.physics import TISSUES

# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------

#: Presets share one field of view (358.4 x 358.4 x 120 mm); smaller presets have coarser voxels.
#: Their minimum lesion diameter is raised so that the lesion still covers a few voxels in-plane.
PRESETS: dict[str, dict] = {
    "default": {"shape": (128, 128, 24), "spacing_mm": (2.8, 2.8, 5.0), "lesion_diameter_mm": (8.0, 60.0)},
    "samples": {"shape": (64, 64, 12), "spacing_mm": (5.6, 5.6, 10.0), "lesion_diameter_mm": (15.0, 60.0)},
    "quick": {"shape": (48, 48, 8), "spacing_mm": (358.4 / 48, 358.4 / 48, 15.0),
              "lesion_diameter_mm": (24.0, 60.0)},
}


@dataclass
class PhantomConfig:
    """Everything that shapes a phantom case. Units are in the names; defaults are the ``default`` preset.

    Acquisition effects and their defaults: ``snr`` 30 (Rician noise; ``None`` = off), ``bias`` 0.15
    (peak fractional gain error of the smooth bias field; 0 = off), ``partial_volume`` 2 (supersampling
    factor per axis; 1 = off), ``misregistration_mm`` / ``misregistration_deg`` 0 (off: maximal
    translation per axis and in-plane rotation of each post-contrast phase relative to the
    pre-contrast phase, which the labels follow).

    ``snr`` is the mean pre-contrast liver signal divided by the noise standard deviation of each of
    the two Gaussian channels before the magnitude is taken.
    """

    shape: tuple[int, int, int] = (128, 128, 24)
    spacing_mm: tuple[float, float, float] = (2.8, 2.8, 5.0)
    phase_times_s: tuple[float, ...] = DEFAULT_PHASE_TIMES_S
    classes: tuple[int, ...] = tuple(range(len(CLASS_NAMES)))
    lesion_diameter_mm: tuple[float, float] = (8.0, 60.0)
    atypical_rate: float = 0.1
    # acquisition effects
    snr: float | None = 30.0
    bias: float = 0.15
    partial_volume: int = 2
    misregistration_mm: float = 0.0
    misregistration_deg: float = 0.0
    # physiology and sequence
    physiological_variation: bool = True  # per-case draws of vascular inputs and normal-tissue values
    hct: float = physics.DEFAULT_HCT  # population mean; per case x U(0.9, 1.1) with variation on
    tr_ms: float = 4.5
    flip_deg: float = 12.0
    r1_per_mM_s: float = physics.DEFAULT_R1_PER_MM_S
    fat_suppression: bool = True  # clinical liver DCE uses fat-saturated 3D GRE (VIBE / LAVA / THRIVE)
    signal_scale: float = 1.0e4  # M0 of water; gives a pre-contrast liver signal of about 400
    time_step_s: float = 0.25  # kinetics grid
    preset_name: str = "default"  # which preset these settings started from (informational)

    def __post_init__(self):
        self.shape = tuple(int(n) for n in self.shape)
        self.spacing_mm = tuple(float(s) for s in self.spacing_mm)
        self.phase_times_s = tuple(float(t) for t in self.phase_times_s)
        self.classes = tuple(_class_id(c) for c in self.classes)
        self.lesion_diameter_mm = tuple(float(d) for d in self.lesion_diameter_mm)
        if len(self.shape) != 3 or min(self.shape) < 2:
            raise ValueError(f"shape must be three sizes >= 2, got {self.shape}")
        if len(self.spacing_mm) != 3 or min(self.spacing_mm) <= 0:
            raise ValueError(f"spacing_mm must be three positive sizes, got {self.spacing_mm}")
        times = self.phase_times_s
        if len(times) < 2 or times[0] != 0.0 or np.any(np.diff(times) <= 0):
            raise ValueError(f"phase_times_s must start at 0 (pre-contrast) and increase, got {times}")
        if not self.classes:
            raise ValueError("classes must not be empty")
        lo, hi = self.lesion_diameter_mm
        if not 0 < lo <= hi:
            raise ValueError(f"lesion_diameter_mm must be (min, max), 0 < min <= max, got {(lo, hi)}")
        if not 0.0 <= self.atypical_rate <= 1.0:
            raise ValueError(f"atypical_rate must be in [0, 1], got {self.atypical_rate}")
        if self.snr is not None and self.snr <= 0:
            self.snr = None  # 0 or negative means "no noise"
        if not 0.0 <= self.bias < 1.0:
            raise ValueError(f"bias must be in [0, 1), got {self.bias}")
        if int(self.partial_volume) != self.partial_volume or self.partial_volume < 1:
            raise ValueError(f"partial_volume must be an integer >= 1, got {self.partial_volume}")
        self.partial_volume = int(self.partial_volume)
        if self.misregistration_mm < 0 or self.misregistration_deg < 0:
            raise ValueError("misregistration sizes must be >= 0")
        if not 0.0 <= self.hct < 0.9:
            raise ValueError(f"hct must be in [0, 0.9), got {self.hct}")

    @classmethod
    def preset(cls, name: str = "default", **overrides) -> PhantomConfig:
        """A named preset (``default``, ``samples``, ``quick``) with optional field overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown phantom preset {name!r}; expected one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], "preset_name": name, **overrides})

    @property
    def fov_mm(self) -> tuple[float, float, float]:
        """Field of view (mm) = shape x spacing."""
        return tuple(n * s for n, s in zip(self.shape, self.spacing_mm))

    def with_shape(self, shape) -> PhantomConfig:
        """Same field of view at another matrix size (spacing rescaled)."""
        shape = tuple(int(n) for n in shape)
        spacing = tuple(f / n for f, n in zip(self.fov_mm, shape))
        return dataclasses.replace(self, shape=shape, spacing_mm=spacing)

    def to_dict(self) -> dict:
        """JSON-ready settings (tuples as lists)."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: dict) -> PhantomConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown PhantomConfig fields: {sorted(unknown)}")
        return cls(**data)


# --------------------------------------------------------------------------------------------
# The case
# --------------------------------------------------------------------------------------------


@dataclass
class PhantomCase:
    """One generated case with its truth.

    images, clean_images: float32 (P, H, W, S), with and without noise (both carry partial volume,
    bias field and misregistration when on). labels: uint8 (H, W, S), 0 background, 1 liver (with
    its intrahepatic vessels and the abscess halo), 2 lesion; a voxel is lesion when at least half of
    it is lesion tissue. enhancement: (P-1,) float, the regression target: ``relative_enhancement``
    of the noise-free signal under the true lesion mask, both on the fine (partial-volume-free) grid
    before bias field and motion, i.e. the lesion tissue's own enhancement (a cyst gives 0).
    enhancement_measured: the same function on ``clean_images`` under ``labels == 2`` (what the
    label route measures; boundary voxels mix in liver signal). enhancement_by_slice: (S, P-1), the
    truth restricted to the lesion tissue inside each output slice, NaN where it does not reach (a
    lesion is not uniform from slice to slice; the training target of a lesion slice).
    maps: float32 (H, W, S) each, averaged over
    the fine grid: ``ktrans_per_min``, ``ve``, ``vp``, ``fa``, ``delay_s`` (extra arrival delay
    relative to the case's vascular inputs), ``t10_s`` (0 in air). vascular_inputs: the case's
    plasma inputs on the kinetics grid (``t_s``, ``cp_art``, ``cp_pv`` in mM) and their parameters.
    lesion_diameter_mm: nominal diameter (geometric mean of the ellipsoid's axes before boundary
    perturbation); lesion_volume_ml: true volume (fine grid, before partial volume).
    """

    images: np.ndarray
    clean_images: np.ndarray
    labels: np.ndarray
    class_id: int
    class_name: str
    enhancement: np.ndarray
    phase_times_s: np.ndarray
    spacing: np.ndarray
    affine: np.ndarray
    maps: dict[str, np.ndarray]
    lesion_diameter_mm: float
    lesion_volume_ml: float
    atypical: bool
    presentation: str
    seed: int
    config: dict
    enhancement_measured: np.ndarray | None = None
    enhancement_by_slice: np.ndarray | None = None
    vascular_inputs: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.labels.shape)


def centred_affine(shape, spacing) -> np.ndarray:
    """NIfTI affine ``diag(dx, dy, dz, 1)`` whose origin is the centre of the volume."""
    affine = np.diag([*map(float, spacing), 1.0])
    affine[:3, 3] = -(np.asarray(shape, float) - 1.0) / 2.0 * np.asarray(spacing, float)
    return affine


# --------------------------------------------------------------------------------------------
# Grid helpers (fine grid, physical coordinates in mm)
# --------------------------------------------------------------------------------------------


class _Grid:
    """Fine sampling grid: ``factor`` sub-voxels per output voxel and axis, centred at the origin."""

    def __init__(self, shape, spacing_mm, factor: int):
        self.factor = factor
        self.coarse_shape = tuple(shape)
        self.shape = tuple(n * factor for n in shape)
        self.spacing = np.asarray(spacing_mm, float) / factor
        # Sub-voxel centres: output voxel i covers fine voxels i*f .. i*f+f-1.
        self.axes = [((np.arange(n) + 0.5) / factor - n0 / 2.0) * sp * factor
                     for n, n0, sp in zip(self.shape, shape, self.spacing)]
        self.voxel_ml = float(np.prod(self.spacing)) / 1000.0

    def box(self, lo, hi) -> tuple[slice, slice, slice]:
        """Index slices of the fine voxels whose centres lie in [lo, hi] (mm), per axis."""
        out = []
        for ax, a, b in zip(self.axes, lo, hi):
            i0 = int(np.searchsorted(ax, a, side="left"))
            i1 = int(np.searchsorted(ax, b, side="right"))
            out.append(slice(i0, max(i0, i1)))
        return tuple(out)

    def coords(self, box):
        """Broadcastable x (n,1,1), y (1,n,1), z (1,1,n) coordinates (mm) of a box."""
        x, y, z = (ax[s] for ax, s in zip(self.axes, box))
        return x[:, None, None], y[None, :, None], z[None, None, :]

    def block_mean(self, arr: np.ndarray) -> np.ndarray:
        """Average fine voxels into output voxels (the partial-volume step); leading axes kept."""
        f = self.factor
        if f == 1:
            return arr.astype(np.float32)
        # Sum of the f^3 strided sub-grids: much faster than a mean over a 6D reshape's odd axes.
        out = np.zeros(arr.shape[:-3] + self.coarse_shape, np.float32)
        for a in range(f):
            for b in range(f):
                for c in range(f):
                    out += arr[..., a::f, b::f, c::f]
        out /= f**3
        return out


def _ellipsoid_radius(x, y, z, centre, radii, angle_rad=0.0):
    """Normalised ellipsoidal radius (1 on the surface), rotated by ``angle_rad`` about z."""
    dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    u = (c * dx + s * dy) / radii[0]
    v = (-s * dx + c * dy) / radii[1]
    w = dz / radii[2]
    return np.sqrt(u * u + v * v + w * w)


def _paint_ellipsoid(grid: _Grid, tissue: np.ndarray, value: int, centre, radii, angle=0.0, where=None):
    """Set ``tissue`` to ``value`` inside an ellipsoid (computed on its bounding box only).

    ``where``: optional callable (box) -> bool mask restricting the painting inside the box.
    Returns (box, inside-mask) for callers that need the region.
    """
    # In-plane reach covers any rotation about z; radii of 1e3 along z make an infinite cylinder.
    reach = np.array([max(radii[0], radii[1])] * 2 + [radii[2]])
    box = grid.box(np.subtract(centre, reach), np.add(centre, reach))
    x, y, z = grid.coords(box)
    inside = _ellipsoid_radius(x, y, z, centre, radii, angle) <= 1.0
    if where is not None:
        inside &= where(box)
    tissue[box][inside] = value
    return box, inside


def _segment_distance(x, y, z, p0, p1):
    """Distance (mm) from points to the segment p0-p1."""
    p0 = np.asarray(p0, float)
    d = np.asarray(p1, float) - p0
    length2 = float(d @ d)
    rx, ry, rz = x - p0[0], y - p0[1], z - p0[2]
    t = np.clip((rx * d[0] + ry * d[1] + rz * d[2]) / length2, 0.0, 1.0)
    return np.sqrt((rx - t * d[0]) ** 2 + (ry - t * d[1]) ** 2 + (rz - t * d[2]) ** 2)


def _paint_tube(grid: _Grid, tissue: np.ndarray, value: int, p0, p1, radius: float, where=None):
    lo = np.minimum(p0, p1) - radius
    hi = np.maximum(p0, p1) + radius
    box = grid.box(lo, hi)
    x, y, z = grid.coords(box)
    inside = _segment_distance(x, y, z, p0, p1) <= radius
    if where is not None:
        inside &= where(box)
    tissue[box][inside] = value


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniformly random 3D rotation matrix (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _angular_field(rng: np.random.Generator, n_modes: int, freq: tuple[float, float]):
    """A smooth random function of a unit direction u (N, 3), roughly in [-1, 1]."""
    dirs = rng.normal(size=(n_modes, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    omegas = dirs * rng.uniform(*freq, size=(n_modes, 1))
    phases = rng.uniform(0, 2 * np.pi, n_modes)
    weights = rng.uniform(0.5, 1.0, n_modes)
    weights /= weights.sum()

    def evaluate(u: np.ndarray) -> np.ndarray:
        return np.cos(u @ omegas.T + phases) @ weights

    return evaluate


def _logistic(x, x0, width):
    """Smooth step from 0 (x << x0) to 1 (x >> x0) over about ``width``."""
    return 0.5 * (1.0 + np.tanh((np.asarray(x, float) - x0) / (2.0 * width)))


# --------------------------------------------------------------------------------------------
# Tissues: indices in the tissue map, native properties, background kinetics
# --------------------------------------------------------------------------------------------

AIR, FAT, MUSCLE, VISCERA, LIVER_T, SPLEEN, CORTEX, MEDULLA, MARROW, AORTA, IVC, PORTAL, LESION_T = range(13)
_TISSUE_NAMES = ("air", "fat", "muscle", "viscera", "liver", "spleen", "kidney_cortex", "kidney_medulla",
                 "marrow", "aorta", "ivc", "portal_vein", "lesion")

#: Background-tissue kinetics (Ktrans 1/min, ve, vp, fa, extra delay s): plausible orders of magnitude
#: for extended-Tofts fits of these tissues (muscle and fat barely enhance; spleen and renal cortex
#: are perfused from the artery with large vp; the medulla enhances later than the cortex). Per case
#: Ktrans and vp are scaled by U(0.85, 1.15). Blood vessels: vp = 1 - Hct (plasma share of blood).
_BACKGROUND_KINETICS = {
    FAT: (0.02, 0.05, 0.01, 1.0, 0.0),
    MUSCLE: (0.06, 0.12, 0.03, 1.0, 0.0),
    VISCERA: (0.30, 0.20, 0.06, 1.0, 0.0),
    SPLEEN: (1.20, 0.25, 0.25, 1.0, 0.0),
    CORTEX: (1.50, 0.25, 0.35, 1.0, 0.0),
    MEDULLA: (0.50, 0.30, 0.10, 1.0, 8.0),
    MARROW: (0.15, 0.15, 0.05, 1.0, 0.0),
}


@dataclass
class _Params:
    """Per-voxel (or per-tissue) kinetic and native parameters, all 1D arrays of one length."""

    ktrans: np.ndarray
    ve: np.ndarray
    vp: np.ndarray
    fa: np.ndarray
    delay: np.ndarray
    t10: np.ndarray
    m0: np.ndarray

    @classmethod
    def full(cls, n, **values):
        return cls(**{k: np.full(n, float(values.get(k, 0.0))) for k in
                      ("ktrans", "ve", "vp", "fa", "delay", "t10", "m0")})

    def set(self, where, **values):
        for k, v in values.items():
            getattr(self, k)[where] = np.broadcast_to(v, self.ktrans.shape)[where] if np.ndim(v) else v

    def blend(self, other: _Params, weight: np.ndarray) -> _Params:
        """Voxel-wise ``(1 - w) self + w other`` (smooth transitions between compartments)."""
        w = np.asarray(weight, float)
        return _Params(**{k: (1 - w) * getattr(self, k) + w * getattr(other, k)
                          for k in ("ktrans", "ve", "vp", "fa", "delay", "t10", "m0")})


def _u(rng, lo, hi):
    return float(rng.uniform(lo, hi))


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


def generate_case(seed: int, class_id: int | str | None = None,
                  config: PhantomConfig | None = None) -> PhantomCase:
    """Generate one phantom case from ``seed`` (int >= 0); same seed and config -> identical arrays.

    ``class_id``: lesion class (id or name); ``None`` draws one from ``config.classes``.
    """
    cfg = config if config is not None else PhantomConfig()
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    # Independent streams, so that e.g. changing the SNR does not change the anatomy.
    streams = np.random.SeedSequence(seed).spawn(6)
    rngs = [np.random.default_rng(s) for s in streams]
    class_rng, anatomy_rng, physio_rng, lesion_rng, acq_rng, noise_rng = rngs
    cls = _class_id(class_id) if class_id is not None else int(class_rng.choice(cfg.classes))
    atypical = bool(class_rng.random() < cfg.atypical_rate)

    grid = _Grid(cfg.shape, cfg.spacing_mm, cfg.partial_volume)
    tissue, hull = _build_anatomy(grid, anatomy_rng)
    physio = _draw_physiology(physio_rng, cfg)
    lesion = _place_lesion(grid, tissue, hull, cls, cfg, lesion_rng)
    params, presentation = _lesion_parameters(cls, atypical, lesion, physio, lesion_rng)
    tissue[lesion["box"]][lesion["inside"]] = LESION_T

    # Vascular inputs and the kinetics table on a grid that covers the last phase.
    t_grid = np.arange(0.0, max(cfg.phase_times_s) + 2 * cfg.time_step_s, cfg.time_step_s)
    cp_art = physics.arterial_plasma_input(t_grid, physio["aif_delay_s"], physio["hct"], physio["aif_scale"])
    cp_pv = physics.portal_venous_input(t_grid, cp_art, physio["pv_delay_s"], physio["pv_transit_s"])
    table = physics.KineticTable(t_grid, cp_art, cp_pv)
    times = np.asarray(cfg.phase_times_s, float)

    # Uniform tissues: one signal per tissue and phase, looked up; varying voxels computed one by one.
    tissue_params = _tissue_parameters(physio, cfg)
    tissue_signal = _signal(table, times, tissue_params, cfg)  # (P, n_tissues)
    voxel_signal = _signal(table, times, params, cfg)  # (P, n_varying)
    box, varying = lesion["box"], lesion["varying"]

    # Truth of the regression target: the lesion tissue's own relative enhancement, from the
    # noise-free signal on the fine grid under the fine lesion mask (no partial volume with the
    # liver, no bias field, no motion). The same function measured on the output grid is kept as
    # `enhancement_measured` (it carries the partial-volume contamination of the label route).
    lesion_rows = lesion["inside"][varying]
    enhancement = relative_enhancement(voxel_signal, lesion_rows, phase_axis=0)
    enhancement_by_slice = _enhancement_by_slice(voxel_signal, lesion, grid)

    fine_phase = np.empty(grid.shape, np.float32)
    clean = np.empty((len(times), *cfg.shape), np.float32)
    for p in range(len(times)):
        fine_phase[...] = tissue_signal[p][tissue]
        fine_phase[box][varying] = voxel_signal[p]
        clean[p] = grid.block_mean(fine_phase)

    # Truth at the output resolution.
    lesion_fine = tissue == LESION_T
    lesion_frac = grid.block_mean(lesion_fine)
    hull_frac = grid.block_mean(hull)
    labels = np.zeros(cfg.shape, np.uint8)
    labels[hull_frac >= 0.5] = LIVER
    labels[lesion_frac >= 0.5] = LESION
    if not np.any(labels == LESION):  # a lesion smaller than half a voxel: keep its strongest voxel
        labels[np.unravel_index(np.argmax(lesion_frac), cfg.shape)] = LESION

    maps = {}
    for key, attr in (("ktrans_per_min", "ktrans"), ("ve", "ve"), ("vp", "vp"), ("fa", "fa"),
                      ("delay_s", "delay"), ("t10_s", "t10")):
        fine = getattr(tissue_params, attr).astype(np.float32)[tissue]
        fine[box][varying] = getattr(params, attr)
        maps[key] = grid.block_mean(fine)

    # Acquisition effects, in the order they happen: motion, coil sensitivity, noise.
    if cfg.misregistration_mm > 0 or cfg.misregistration_deg > 0:
        for p in range(1, len(times)):
            clean[p] = _rigid_motion(clean[p], cfg, acq_rng)
    if cfg.bias > 0:
        clean *= _bias_field(cfg, acq_rng)[None]
    if cfg.snr is not None:
        liver_pre = float(clean[0][labels == LIVER].mean())
        sigma = liver_pre / cfg.snr
        real = clean + noise_rng.normal(0.0, sigma, clean.shape).astype(np.float32)
        imag = noise_rng.normal(0.0, sigma, clean.shape).astype(np.float32)
        images = np.sqrt(real * real + imag * imag)  # Rician magnitude
    else:
        images = clean.copy()

    enhancement_measured = relative_enhancement(clean, labels == LESION, phase_axis=0)
    spacing = np.asarray(cfg.spacing_mm, float)
    return PhantomCase(
        images=images.astype(np.float32, copy=False),
        clean_images=clean,
        labels=labels,
        class_id=cls,
        class_name=CLASS_NAMES[cls],
        enhancement=np.asarray(enhancement, float),
        enhancement_measured=np.asarray(enhancement_measured, float),
        enhancement_by_slice=enhancement_by_slice,
        phase_times_s=times,
        spacing=spacing,
        affine=centred_affine(cfg.shape, spacing),
        maps=maps,
        lesion_diameter_mm=float(lesion["diameter_mm"]),
        lesion_volume_ml=float(lesion_fine.sum() * grid.voxel_ml),
        atypical=atypical,
        presentation=presentation,
        seed=seed,
        config=cfg.to_dict(),
        vascular_inputs={"t_s": t_grid, "cp_art": cp_art, "cp_pv": cp_pv,
                         **{k: float(v) for k, v in physio.items() if k in
                            ("aif_delay_s", "aif_scale", "hct", "pv_delay_s", "pv_transit_s")}},
    )


def _enhancement_by_slice(voxel_signal: np.ndarray, lesion: dict, grid: _Grid) -> np.ndarray:
    """``(S, P-1)``: the truth of ``enhancement`` restricted to the lesion tissue inside each output
    slice (NaN on slices the lesion tissue does not reach)."""
    box, varying, inside = lesion["box"], lesion["varying"], lesion["inside"]
    n_slices = grid.coarse_shape[2]
    fine_z = np.broadcast_to(np.arange(box[2].start, box[2].stop)[None, None, :], varying.shape)
    slice_of_row = fine_z[varying] // grid.factor  # output slice of every varying voxel
    lesion_rows = inside[varying]
    out = np.full((n_slices, voxel_signal.shape[0] - 1), np.nan)
    for z in np.unique(slice_of_row[lesion_rows]):
        out[z] = relative_enhancement(voxel_signal, lesion_rows & (slice_of_row == z), phase_axis=0)
    return out


def derive_seed(seed: int, index: int) -> int:
    """Deterministic per-case seed (uint32) for case ``index`` of a data set with base ``seed``."""
    return int(np.random.SeedSequence(entropy=int(seed), spawn_key=(int(index),)).generate_state(1)[0])


def iter_cases(n: int, seed: int = 0, config: PhantomConfig | None = None, classes=None,
               start: int = 0) -> Iterator[PhantomCase]:
    """Lazily yield the cases of :func:`generate_cases` (one in memory at a time)."""
    cfg = config if config is not None else PhantomConfig()
    pool = tuple(_class_id(c) for c in (classes if classes is not None else cfg.classes))
    if not pool:
        raise ValueError("classes must not be empty")
    for i in range(int(n)):
        yield generate_case(derive_seed(seed, start + i), pool[i % len(pool)], cfg)


def generate_cases(n: int, seed: int = 0, config: PhantomConfig | None = None, classes=None,
                   start: int = 0) -> list[PhantomCase]:
    """``n`` cases with classes assigned round-robin (balanced) and per-case seeds derived from ``seed``.

    Case i (0-based) gets class ``classes[i % len(classes)]`` and seed ``derive_seed(seed, start + i)``;
    use disjoint ``start`` ranges for splits of one data set (the CLI puts the test cases after the
    training cases). ``classes`` (ids or names) defaults to ``config.classes``.
    """
    return list(iter_cases(n, seed, config, classes, start))


# --------------------------------------------------------------------------------------------
# Anatomy
# --------------------------------------------------------------------------------------------


def _build_anatomy(grid: _Grid, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Tissue-index map (uint8, fine grid) and the liver hull (liver with its intrahepatic vessels)."""
    tissue = np.zeros(grid.shape, np.uint8)
    x, y, z = grid.coords((slice(None),) * 3)

    # Body: a rounded-rectangular (superellipse) abdomen, slightly wider at the top of the slab.
    a, b = _u(rng, 148, 168), _u(rng, 108, 128)
    body_y = _u(rng, -6, 6)
    fat_thickness = _u(rng, 10, 26)
    wall = _u(rng, 6, 10)
    taper = 1.0 + 0.0008 * z  # (1,1,S)
    n_exp = 2.4

    def inside_superellipse(ax, by):  # powers on the 2D factors, one 3D sum
        return np.abs(x / ax) ** n_exp + np.abs((y - body_y) / by) ** n_exp <= 1.0

    outer = inside_superellipse(a * taper, b * taper)
    inner_fat = inside_superellipse((a - fat_thickness) * taper, (b - fat_thickness) * taper)
    inner_wall = inside_superellipse((a - fat_thickness - wall) * taper, (b - fat_thickness - wall) * taper)
    tissue[outer] = FAT
    tissue[inner_fat] = MUSCLE
    tissue[inner_wall] = VISCERA

    # Spine and its neighbours, posterior in the midline.
    inner_b = b - fat_thickness - wall
    spine_y = body_y - inner_b + _u(rng, 42, 50)
    spine_r = _u(rng, 16, 20)

    def inside_body(box):
        return inner_wall[box]

    # Liver: two soft-united ellipsoids (right lobe, left lobe) under a smooth random deformation.
    _paint_liver(grid, tissue, rng, inside_body)

    # Organs painted after the liver carve it where they overlap.
    spleen_c = (-_u(rng, 92, 108), spine_y + _u(rng, 25, 40), _u(rng, -5, 20))
    _paint_ellipsoid(grid, tissue, SPLEEN, spleen_c, (_u(rng, 26, 34), _u(rng, 48, 62), _u(rng, 45, 60)),
                     np.deg2rad(_u(rng, 20, 40)), where=inside_body)
    for side, z0 in ((1.0, _u(rng, -78, -62)), (-1.0, _u(rng, -68, -52))):  # right kidney sits lower
        centre = (side * _u(rng, 62, 76), spine_y + _u(rng, 0, 10), z0)
        radii = (_u(rng, 26, 32), _u(rng, 22, 27), _u(rng, 50, 58))
        angle = side * np.deg2rad(_u(rng, 15, 35))
        _paint_ellipsoid(grid, tissue, CORTEX, centre, radii, angle, where=inside_body)
        inner_scale = _u(rng, 0.55, 0.68)
        _paint_ellipsoid(grid, tissue, MEDULLA, centre, tuple(r * inner_scale for r in radii), angle)
    _paint_ellipsoid(grid, tissue, MARROW, (0.0, spine_y, 0.0), (spine_r, spine_r * 0.85, 1e3))
    for side in (1.0, -1.0):
        _paint_ellipsoid(grid, tissue, MUSCLE, (side * _u(rng, 34, 42), spine_y - _u(rng, 28, 34), 0.0),
                         (_u(rng, 22, 28), _u(rng, 17, 22), 1e3), where=inside_body)
    aorta_c = (-_u(rng, 14, 22), spine_y + spine_r + _u(rng, 10, 16), 0.0)
    _paint_ellipsoid(grid, tissue, AORTA, aorta_c, (_u(rng, 9, 12),) * 2 + (1e3,))
    ivc_c = (_u(rng, 20, 30), spine_y + spine_r + _u(rng, 10, 18), 0.0)
    _paint_ellipsoid(grid, tissue, IVC, ivc_c, (_u(rng, 11, 15), _u(rng, 7, 10), 1e3))

    hull = tissue == LIVER_T

    # Portal vein: trunk to the hilum, right and left branches, a few random twigs; only the parts
    # inside the liver hull count as liver in the labels.
    hilum = np.array([_u(rng, 15, 35), spine_y + _u(rng, 45, 60), _u(rng, -20, -5)])
    trunk_start = hilum + np.array([-_u(rng, 15, 25), -_u(rng, 5, 15), -_u(rng, 35, 50)])

    def in_hull(box):
        return hull[box]

    _paint_tube(grid, tissue, PORTAL, trunk_start, hilum, _u(rng, 6, 8),
                where=lambda box: np.isin(tissue[box], (VISCERA, LIVER_T)))
    right_end = hilum + np.array([_u(rng, 50, 70), _u(rng, -10, 10), _u(rng, 10, 25)])
    left_end = hilum + np.array([-_u(rng, 45, 60), _u(rng, 25, 40), _u(rng, 15, 30)])
    for end, radius in ((right_end, _u(rng, 5, 6.5)), (left_end, _u(rng, 4, 5.5))):
        _paint_tube(grid, tissue, PORTAL, hilum, end, radius, where=in_hull)
        for _ in range(2):
            start = hilum + (end - hilum) * _u(rng, 0.4, 0.9)
            twig = start + rng.normal(0, 25, 3) * np.array([1.0, 1.0, 0.8])
            _paint_tube(grid, tissue, PORTAL, start, twig, _u(rng, 2.5, 3.5), where=in_hull)
    return tissue, hull


def _paint_liver(grid: _Grid, tissue: np.ndarray, rng: np.random.Generator, inside_body):
    scale = _u(rng, 0.9, 1.08)
    shift = np.array([_u(rng, -6, 6), _u(rng, -6, 6), _u(rng, -8, 8)])
    lobes = [  # (centre, radii) of the template, mm
        (np.array([62.0, 0.0, 5.0]) + shift, np.array([80.0, 82.0, 85.0]) * scale),
        (np.array([-22.0, 38.0, 18.0]) + shift, np.array([72.0, 36.0, 48.0]) * scale
         * np.array([_u(rng, 0.85, 1.15), _u(rng, 0.85, 1.15), 1.0])),
    ]
    lo = np.min([c - r for c, r in lobes], axis=0) - 12
    hi = np.max([c + r for c, r in lobes], axis=0) + 12
    box = grid.box(lo, hi)
    x, y, z = grid.coords(box)

    # Smooth deformation: each displacement component varies with the other two coordinates only, so
    # the fields are cheap 2D arrays; amplitudes of 5-10 mm over wavelengths of 80-200 mm.
    def wave(a_coord, b_coord):
        amp = _u(rng, 5, 10)
        ka, kb = 2 * np.pi / _u(rng, 80, 200), 2 * np.pi / _u(rng, 80, 200)
        pa, pb = _u(rng, 0, 2 * np.pi), _u(rng, 0, 2 * np.pi)
        return amp * np.sin(ka * a_coord + pa) * np.cos(kb * b_coord + pb)

    xd = x + wave(y, z)
    yd = y + wave(x, z)
    zd = z + wave(x, y)
    # Soft union (smooth minimum) of the lobes' normalised radii minus 1: a single smooth surface.
    k = 10.0
    levels = [_ellipsoid_radius(xd, yd, zd, c, r) - 1.0 for c, r in lobes]
    soft_min = -np.log(sum(np.exp(-k * lev) for lev in levels)) / k
    inside = (soft_min <= 0.0) & inside_body(box)
    tissue[box][inside] = LIVER_T


def _place_lesion(grid: _Grid, tissue: np.ndarray, hull: np.ndarray, cls: int, cfg: PhantomConfig,
                  rng: np.random.Generator) -> dict:
    """Draw the lesion's shape and position inside the liver; return its geometry on a fine box."""
    lo, hi = cfg.lesion_diameter_mm
    diameter = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))  # log-uniform: small lesions common
    ratios = rng.uniform(0.8, 1.25, 3)
    ratios /= np.prod(ratios) ** (1 / 3)  # the nominal diameter is the geometric-mean diameter
    rotation = _random_rotation(rng)
    # Boundary perturbation: ~8% for most lesions, nearly none for the sharply marginated cyst.
    amplitude = 0.02 if CLASS_NAMES[cls] == "cyst" else _u(rng, 0.05, 0.12)
    shape_field = _angular_field(rng, 6, (1.5, 3.5))

    # Where can it go? Distance to the liver surface (and the slab edges) on the output grid.
    hull_coarse = grid.block_mean(hull) >= 0.5
    coarse_spacing = tuple(grid.spacing * grid.factor)
    # Zero padding: the slab's top and bottom count as edges, so the lesion stays inside the slab.
    depth = ndimage.distance_transform_edt(np.pad(hull_coarse, 1), sampling=coarse_spacing)[1:-1, 1:-1, 1:-1]
    margin = 2.0
    need = diameter / 2 * ratios.max() * (1 + amplitude) + margin
    candidates = np.flatnonzero(depth.ravel() >= need)
    if candidates.size == 0:  # too big for this liver: shrink to the deepest point
        best = float(depth.max())
        diameter *= max(best - margin, 1.0) / (need - margin)
        candidates = np.flatnonzero(depth.ravel() >= best - 1e-6)
    index = np.unravel_index(int(rng.choice(candidates)), hull_coarse.shape)
    centre = np.array([(i + 0.5 - n / 2) * s for i, n, s in zip(index, cfg.shape, cfg.spacing_mm)])
    centre += rng.uniform(-0.5, 0.5, 3) * np.asarray(cfg.spacing_mm)  # sub-voxel position
    radii = diameter / 2 * ratios

    # Geometry on a box that also holds a perilesional shell (abscess halo) of up to 12 mm.
    reach = radii.max() * (1 + amplitude) + 14.0
    box = grid.box(centre - reach, centre + reach)
    x, y, z = grid.coords(box)
    d = [x - centre[0], y - centre[1], z - centre[2]]
    q = [(rotation[0, k] * d[0] + rotation[1, k] * d[1] + rotation[2, k] * d[2]) / radii[k] for k in range(3)]
    qn = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2)
    safe = np.maximum(qn, 1e-9)
    u = np.stack([qk / safe for qk in q], axis=-1)  # direction in the lesion's own frame
    rho = qn / (1.0 + amplitude * shape_field(u))  # 1 on the perturbed surface
    hull_box = hull[box]
    inside = (rho <= 1.0) & hull_box
    if not inside.any():  # cannot happen with the depth check, but never return an empty lesion
        inside = (rho == rho.min()) & hull_box
    radius_mm = diameter / 2
    halo_zone = (rho > 1.0) & (rho <= 1.0 + 12.0 / radius_mm) & (tissue[box] == LIVER_T)
    return {
        "box": box, "inside": inside, "halo_zone": halo_zone, "rho": rho, "u": u,
        "radius_mm": radius_mm, "diameter_mm": diameter, "centre_mm": centre,
    }


# --------------------------------------------------------------------------------------------
# Physiology and class patterns
# --------------------------------------------------------------------------------------------


def _draw_physiology(rng: np.random.Generator, cfg: PhantomConfig) -> dict:
    """Per-case vascular inputs and liver parameters (fixed mid-range values without variation)."""
    v = cfg.physiological_variation

    def draw(lo, hi):
        return _u(rng, lo, hi) if v else (lo + hi) / 2

    return {
        # Arrival in the aorta 19-24 s after injection (arm vein, 2 ml/s, saline flush): the aortic
        # peak falls 29-34 s after injection and the 35 s phase is late arterial.
        "aif_delay_s": draw(19.0, 24.0),
        "aif_scale": draw(0.85, 1.15),  # dose per kg and cardiac output differ between patients
        "hct": cfg.hct * draw(0.9, 1.1),
        # Portal venous input: splanchnic transit (e.g. Materne et al., Clin Sci 2000; 99:517-525).
        "pv_delay_s": draw(7.0, 11.0),
        "pv_transit_s": draw(10.0, 16.0),
        # Liver, dual input: arterial fraction 0.2-0.35 (Materne 2000); large exchange (fenestrated
        # sinusoids); extracellular volume 0.22-0.30; plasma volume 0.08-0.14.
        "liver_ktrans": draw(1.5, 3.0),
        "liver_ve": draw(0.22, 0.30),
        "liver_vp": draw(0.08, 0.14),
        "liver_fa": draw(0.20, 0.35),
        "t10_scale": {t: draw(0.95, 1.05) for t in TISSUES},
        "background_scale": draw(0.85, 1.15),
    }


def _m0(name: str, cfg: PhantomConfig) -> float:
    m0 = TISSUES[name].m0
    if cfg.fat_suppression and name == "fat":
        m0 *= 0.1  # residual fat signal after spectral fat saturation
    if cfg.fat_suppression and name == "marrow":
        m0 *= 0.55  # adult vertebral marrow is roughly half fat
    return m0


def _tissue_parameters(physio: dict, cfg: PhantomConfig) -> _Params:
    """Parameters per tissue index (air .. lesion); the lesion row is a placeholder (per-voxel)."""
    n = len(_TISSUE_NAMES)
    p = _Params.full(n, t10=1.0)
    t10 = {name: TISSUES[name].t10_s * physio["t10_scale"][name] for name in TISSUES}
    s = physio["background_scale"]
    for idx, (kt, ve, vp, fa, delay) in _BACKGROUND_KINETICS.items():
        name = _TISSUE_NAMES[idx]
        p.set(idx, ktrans=kt * s, ve=ve, vp=vp * s, fa=fa, delay=delay, t10=t10[name], m0=_m0(name, cfg))
    p.set(LIVER_T, ktrans=physio["liver_ktrans"], ve=physio["liver_ve"], vp=physio["liver_vp"],
          fa=physio["liver_fa"], t10=t10["liver"], m0=_m0("liver", cfg))
    plasma = 1.0 - physio["hct"]
    p.set(AORTA, vp=plasma, fa=1.0, t10=t10["blood"], m0=_m0("blood", cfg))
    p.set(PORTAL, vp=plasma, fa=0.0, t10=t10["blood"], m0=_m0("blood", cfg))
    # IVC at liver level: systemic venous return, approximated by a mix of the two inputs, 8 s later.
    p.set(IVC, vp=plasma, fa=0.5, delay=8.0, t10=t10["blood"], m0=_m0("blood", cfg))
    p.set(AIR, t10=0.0)
    p.set(LESION_T, t10=t10["liver"], m0=_m0("liver", cfg))
    return p


def _signal(table: physics.KineticTable, times: np.ndarray, p: _Params, cfg: PhantomConfig) -> np.ndarray:
    """SPGR signal (P, N) for parameter rows ``p``; rows with m0 = 0 (air) give 0."""
    conc = table.concentration(times, p.ktrans, p.ve, p.vp, p.fa, p.delay)
    t10 = np.where(p.t10 > 0, p.t10, 1.0)
    r1 = physics.relaxation_rate(t10, conc, cfg.r1_per_mM_s)
    return (cfg.signal_scale * physics.spgr_signal(p.m0, r1, cfg.tr_ms, cfg.flip_deg)).astype(np.float32)


@dataclass
class _LesionContext:
    """What every class pattern draws from: the generator (draw order matters: cases are seeded),
    the lesion's voxel geometry (``rho`` 0 centre .. 1 boundary, ``depth`` mm below the boundary,
    ``u`` unit direction), and the liver's parameters around it."""

    rng: np.random.Generator
    atypical: bool
    radius: float
    rho: np.ndarray
    u: np.ndarray
    in_lesion: np.ndarray
    depth: np.ndarray
    n: int
    t10: Callable[[str], float]
    liver: _Params
    physio: dict

    def tissue(self, **kw) -> _Params:
        """Parameters of ``n`` voxels, all alike (scalars broadcast)."""
        return _Params.full(self.n, **kw)


def _hemangioma(*, rng, atypical, radius, rho, u, tissue, t10, **_) -> tuple[_Params, str]:
    """Hemangioma: peripheral nodular enhancement filling in centripetally (flash-filling when small);
    atypical: sclerosed."""
    presentation = "typical"
    base = dict(ktrans=_u(rng, 1.2, 2.0), ve=_u(rng, 0.40, 0.55), vp=_u(rng, 0.15, 0.28),
                fa=_u(rng, 0.6, 0.8), t10=t10("hemangioma"), m0=TISSUES["hemangioma"].m0)
    if atypical:
        # Sclerosed (hyalinised) hemangioma: little vascular space left, slow weak enhancement.
        presentation = "sclerosed"
        out = tissue(**{**base, "ktrans": _u(rng, 0.10, 0.25), "vp": _u(rng, 0.01, 0.03),
                        "ve": _u(rng, 0.3, 0.45), "fa": 0.5})
        out.delay = _u(rng, 10, 30) * (1 - rho)
    elif 2 * radius < 20.0 and rng.random() < 0.5:
        presentation = "flash-filling"
        out = tissue(**base, delay=_u(rng, 0.0, 3.0))
    else:
        out = tissue(**base)
        # Peripheral nodular discontinuous enhancement: a few puddles of blood just inside the
        # margin fill with the arterial blood pool (high plasma volume, arterial input, no delay);
        # the rest of the lesion fills in centripetally (arrival delay growing toward the centre).
        # Nodules are 4-7 mm in radius (radiology describes puddles of several millimetres up to
        # about a centimetre), sized in millimetres, not as a fraction of the lesion, so that they
        # cover at least part of a voxel on every preset's grid (5.6-7.5 mm voxels), and at most
        # 0.35 of the radius, so that a small lesion keeps an unenhanced centre.
        n_nodules = int(rng.integers(3, 8))
        nod_dirs = rng.normal(size=(n_nodules, 3))
        nod_dirs /= np.linalg.norm(nod_dirs, axis=1, keepdims=True)
        nod_size = min(_u(rng, 4.0, 7.0), 0.35 * radius) / radius  # in units of the radius
        nod_centres = nod_dirs * (1.0 - nod_size * rng.uniform(0.7, 1.0, (n_nodules, 1)))  # touching the margin
        position = u * rho[:, None]
        gap = np.min(np.linalg.norm(position[:, None, :] - nod_centres[None], axis=2), axis=1)
        # peripheral: flattened against the margin, never reaching deeper than 1.5 nodule radii
        nodule = (1.0 - _logistic(gap, nod_size, 0.1 * nod_size)) * _logistic(rho, 1.0 - 1.5 * nod_size, 0.05)
        d_max = _u(rng, 110.0, 190.0)
        gamma = _u(rng, 0.8, 1.2)
        rim_wait = _u(rng, 15, 30)
        out.delay = (d_max * (1.0 - np.clip(rho, 0, 1)) ** gamma + rim_wait) * (1.0 - nodule)
        out.vp = out.vp + nodule * (_u(rng, 0.6, 0.8) - out.vp)  # a nodule is mostly blood
        out.fa = out.fa + nodule * (0.95 - out.fa)  # fed by the hepatic artery
    return out, presentation


def _icc(*, rng, atypical, radius, u, depth, tissue, t10, **_) -> tuple[_Params, str]:
    """Intrahepatic cholangiocarcinoma (mass-forming): a thin irregular arterial rim around a fibrous
    core whose large interstitium fills slowly and holds the contrast, so the lesion's mean
    enhancement rises or plateaus into the delayed phase; atypical: hypervascular throughout."""
    presentation = "typical"
    rim = tissue(ktrans=_u(rng, 0.7, 1.0), ve=_u(rng, 0.3, 0.4), vp=_u(rng, 0.05, 0.09),
                 fa=_u(rng, 0.7, 0.85), t10=t10("ICC"), m0=TISSUES["ICC"].m0)
    if atypical:
        presentation = "hypervascular"
        out = rim
        out.ktrans = _u(rng, 1.3, 1.9) * np.ones_like(out.ktrans)
        out.vp[:] = _u(rng, 0.08, 0.12)
        out.fa[:] = _u(rng, 0.8, 0.9)
    else:
        core = tissue(ktrans=_u(rng, 0.08, 0.16), ve=_u(rng, 0.55, 0.7), vp=_u(rng, 0.01, 0.03),
                      fa=0.5, delay=_u(rng, 5.0, 15.0), t10=t10("ICC"), m0=TISSUES["ICC"].m0)
        irregular = _angular_field(rng, 5, (2.0, 4.0))(u)
        rim_mm = min(_u(rng, 1.5, 3.5), 0.2 * radius) * (1 + 0.35 * irregular)
        out = rim.blend(core, _logistic(depth, rim_mm, 0.6))
    return out, presentation


def _abscess(*, rng, atypical, radius, rho, u, depth, tissue, t10, liver, in_lesion, **_) -> tuple[_Params, str]:
    """Abscess: an enhancing wall (sometimes a septum) around non-enhancing fluid, with a transient
    perilesional hyperaemia halo; atypical: phlegmonous (not yet liquefied)."""
    presentation = "typical"
    wall = tissue(ktrans=_u(rng, 0.5, 0.9), ve=_u(rng, 0.25, 0.35), vp=_u(rng, 0.05, 0.09),
                  fa=_u(rng, 0.5, 0.7), t10=t10("abscess_wall"), m0=TISSUES["abscess_wall"].m0)
    if atypical:
        # Phlegmonous (early) abscess: not yet liquefied, heterogeneous enhancement throughout.
        presentation = "phlegmonous"
        texture = _angular_field(rng, 6, (2.0, 5.0))(u) * np.cos(rho * _u(rng, 4, 7))
        out = wall
        out.ktrans = out.ktrans * (0.7 + 0.3 * texture)
    else:
        fluid = tissue(ktrans=0.0, ve=0.0, vp=0.0, fa=0.0, t10=t10("abscess_fluid"),
                       m0=TISSUES["abscess_fluid"].m0)
        wall_mm = min(_u(rng, 2.5, 5.0), 0.25 * radius)
        wall_weight = 1.0 - _logistic(depth, wall_mm, 0.5)
        if rng.random() < 0.5:  # a septum of a multiloculated ("cluster") abscess, off-centre
            normal = rng.normal(size=3)
            normal /= np.linalg.norm(normal)
            offset = _u(rng, 0.55, 0.75) * radius
            distance = np.abs((u * rho[:, None]) @ normal * radius - offset)  # mm from the septum plane
            wall_weight = np.maximum(wall_weight, 1.0 - _logistic(distance, 1.2, 0.4))
        out = fluid.blend(wall, wall_weight)
    # Transient perilesional hyperaemia: more arterial supply (fa) in the liver around it.
    halo_mm = _u(rng, 5.0, 12.0)
    halo_weight = (~in_lesion) * (1.0 - _logistic((rho - 1.0) * radius, halo_mm * 0.6, halo_mm * 0.15))
    halo = liver.blend(tissue(ktrans=liver.ktrans[0], ve=liver.ve[0], vp=liver.vp[0] * 1.3,
                              fa=_u(rng, 0.6, 0.8), t10=liver.t10[0], m0=liver.m0[0]), halo_weight)
    out = halo.blend(out, in_lesion.astype(float))
    return out, presentation


def _metastasis(*, rng, atypical, radius, u, depth, tissue, t10, **_) -> tuple[_Params, str]:
    """Metastasis: an irregular enhancing rim around a hypovascular core; atypical: hypervascular."""
    presentation = "typical"
    rim = tissue(ktrans=_u(rng, 1.2, 1.8), ve=_u(rng, 0.10, 0.16), vp=_u(rng, 0.06, 0.10),
                 fa=_u(rng, 0.7, 0.85), t10=t10("metastasis"), m0=TISSUES["metastasis"].m0)
    if atypical:
        # Hypervascular metastasis (neuroendocrine, renal): homogeneous arterial, washout.
        presentation = "hypervascular"
        out = tissue(ktrans=_u(rng, 1.2, 1.6), ve=_u(rng, 0.10, 0.14), vp=_u(rng, 0.12, 0.18),
                     fa=_u(rng, 0.8, 0.9), t10=t10("metastasis"), m0=TISSUES["metastasis"].m0)
    else:
        core = tissue(ktrans=_u(rng, 0.06, 0.15), ve=_u(rng, 0.30, 0.45), vp=_u(rng, 0.01, 0.03),
                      fa=_u(rng, 0.3, 0.5), t10=t10("metastasis") * 1.1, m0=TISSUES["metastasis"].m0)
        irregular = _angular_field(rng, 7, (2.5, 5.0))(u)
        rim_mm = min(_u(rng, 2.0, 4.0), 0.3 * radius) * (1 + 0.5 * irregular)
        out = rim.blend(core, _logistic(depth, rim_mm, 0.5))
    return out, presentation


def _cyst(*, rng, atypical, tissue, t10, **_) -> tuple[_Params, str]:
    """Cyst: no enhancement, long T1; atypical: proteinaceous or haemorrhagic content (short T1)."""
    presentation = "typical"
    if atypical:
        presentation = "proteinaceous"  # haemorrhagic / proteinaceous content: short T1
        out = tissue(t10=_u(rng, 0.5, 0.9), m0=0.85)
    else:
        out = tissue(t10=t10("cyst"), m0=TISSUES["cyst"].m0)
    return out, presentation


def _fnh(*, rng, atypical, radius, rho, u, tissue, t10, liver, physio, **_) -> tuple[_Params, str]:
    """Focal nodular hyperplasia: strong arterial enhancement, iso in the venous and delayed phases,
    a central scar with radiating spokes when large; atypical: pseudo-washout."""
    presentation = "typical"
    vp = _u(rng, 0.15, 0.22)
    # Total distribution volume a little above the liver's so that, fed mostly by the artery
    # (whose plasma level is below the portal one in V), it stays iso in V and D.
    ve = physio["liver_ve"] + physio["liver_vp"] - vp + _u(rng, 0.03, 0.07)
    body = tissue(ktrans=_u(rng, 1.6, 2.4), ve=ve, vp=vp, fa=_u(rng, 0.8, 0.92),
                  t10=liver.t10[0] * _u(rng, 1.02, 1.10), m0=TISSUES["FNH"].m0)
    if atypical:
        presentation = "pseudo-washout"  # smaller distribution volume: slightly hypo in V/D
        body.ve = body.ve * 0.6
        out = body
    elif 2 * radius >= 20.0:
        scar = tissue(ktrans=_u(rng, 0.25, 0.35), ve=_u(rng, 0.6, 0.75), vp=0.01, fa=0.5,
                      t10=t10("FNH_scar"), m0=TISSUES["FNH_scar"].m0)
        centre = 1.0 - _logistic(rho, _u(rng, 0.2, 0.3), 0.03)
        n_spokes = int(rng.integers(3, 6))
        spokes = rng.normal(size=(n_spokes, 3))
        spokes /= np.linalg.norm(spokes, axis=1, keepdims=True)
        along = _logistic((u @ spokes.T).max(axis=1), np.cos(np.deg2rad(9)), 0.01) * (
            1.0 - _logistic(rho, 0.65, 0.05))
        out = body.blend(scar, np.maximum(centre, along))
    else:
        presentation = "typical (no scar)"
        out = body
    return out, presentation


def _hcc(*, rng, atypical, radius, rho, u, depth, tissue, t10, **_) -> tuple[_Params, str]:
    """Hepatocellular carcinoma: arterial hyperenhancement with a mosaic, washout, and a capsule that
    enhances late; atypical: hypovascular (well differentiated, no capsule)."""
    presentation = "typical"
    body = tissue(ktrans=_u(rng, 1.4, 2.0), ve=_u(rng, 0.06, 0.12), vp=_u(rng, 0.16, 0.24),
                  fa=_u(rng, 0.88, 0.97), t10=t10("HCC"), m0=TISSUES["HCC"].m0)
    if atypical:
        presentation = "hypovascular"  # well-differentiated / early HCC, no capsule
        out = tissue(ktrans=_u(rng, 0.3, 0.5), ve=_u(rng, 0.12, 0.18), vp=_u(rng, 0.03, 0.05),
                     fa=_u(rng, 0.3, 0.5), t10=t10("HCC"), m0=TISSUES["HCC"].m0)
    else:
        mosaic = _angular_field(rng, 6, (2.0, 5.0))(u) * np.cos(rho * _u(rng, 3, 6))
        body.ktrans = body.ktrans * (1 + 0.15 * mosaic)
        body.vp = body.vp * (1 + 0.15 * mosaic)
        capsule = tissue(ktrans=_u(rng, 0.25, 0.40), ve=_u(rng, 0.5, 0.6), vp=0.01, fa=0.4,
                         t10=t10("HCC_capsule"), m0=TISSUES["HCC_capsule"].m0)
        capsule_mm = min(_u(rng, 1.5, 2.5), 0.15 * radius)
        out = body.blend(capsule, 1.0 - _logistic(depth, capsule_mm, 0.3))
    return out, presentation


#: One pattern per class, in the order of the class list (and of the design document).
_CLASS_PATTERNS: dict[str, Callable[..., tuple[_Params, str]]] = {
    "hemangioma": _hemangioma, "ICC": _icc, "abscess": _abscess, "metastasis": _metastasis,
    "cyst": _cyst, "FNH": _fnh, "HCC": _hcc,
}


def _lesion_parameters(cls: int, atypical: bool, lesion: dict, physio: dict,
                       rng: np.random.Generator) -> tuple[_Params, str]:
    """Per-voxel parameters for the lesion and its (abscess) halo: the class-specific patterns.

    Returns the parameters of the voxels ``lesion["varying"]`` (set here) and the presentation name.
    Geometry per voxel: ``rho`` (0 centre, 1 boundary), ``depth`` (mm below the boundary, approx.
    ``(1 - rho) R``), ``u`` (unit direction in the lesion frame, for angular patterns).
    """
    name = CLASS_NAMES[cls]
    inside, halo_zone = lesion["inside"], lesion["halo_zone"]
    radius = lesion["radius_mm"]
    # Halo only for the abscess; otherwise only lesion voxels vary.
    want_halo = name == "abscess"
    varying = inside | halo_zone if want_halo else inside
    lesion["varying"] = varying
    rho = lesion["rho"][varying]
    u = lesion["u"][varying]
    depth = (1.0 - rho) * radius
    n = rho.size
    t10 = lambda key: TISSUES[key].t10_s * physio["t10_scale"][key]  # noqa: E731
    liver = _Params.full(n, ktrans=physio["liver_ktrans"], ve=physio["liver_ve"], vp=physio["liver_vp"],
                         fa=physio["liver_fa"], t10=t10("liver"), m0=TISSUES["liver"].m0)

    ctx = _LesionContext(rng, atypical, radius, rho, u, inside[varying], depth, n, t10, liver, physio)
    out, presentation = _CLASS_PATTERNS[name](**vars(ctx), tissue=ctx.tissue)
    out.delay = np.broadcast_to(out.delay, (n,)).astype(float)
    return out, presentation


# --------------------------------------------------------------------------------------------
# Acquisition effects
# --------------------------------------------------------------------------------------------


def _bias_field(cfg: PhantomConfig, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative field in [1/(1+b), 1+b] (low-order polynomial in normalised coords)."""
    axes = [np.linspace(-1, 1, n) for n in cfg.shape]
    x, y, z = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    terms = [x, y, 0.5 * z, x * y, x * x - 0.33, y * y - 0.33, x * z]
    coef = rng.normal(size=len(terms))
    g = sum(c * t for c, t in zip(coef, terms))
    g = g / max(float(np.abs(g).max()), 1e-12)
    return np.exp(np.log1p(cfg.bias) * g).astype(np.float32)


def _rigid_motion(volume: np.ndarray, cfg: PhantomConfig, rng: np.random.Generator) -> np.ndarray:
    """Resample a phase after a small rigid motion (translation per axis, rotation about z)."""
    shift_mm = rng.uniform(-cfg.misregistration_mm, cfg.misregistration_mm, 3)
    angle = np.deg2rad(rng.uniform(-cfg.misregistration_deg, cfg.misregistration_deg))
    spacing = np.asarray(cfg.spacing_mm, float)
    cos, sin = np.cos(angle), np.sin(angle)
    rot = np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
    # output voxel o -> mm p = S (o - c); source mm = R^T (p - t); source voxel = S^-1 (.) + c
    centre = (np.asarray(cfg.shape, float) - 1) / 2
    matrix = np.diag(1 / spacing) @ rot.T @ np.diag(spacing)
    offset = centre - matrix @ centre - np.diag(1 / spacing) @ rot.T @ shift_mm
    return ndimage.affine_transform(volume, matrix, offset=offset, order=1, mode="nearest").astype(np.float32)

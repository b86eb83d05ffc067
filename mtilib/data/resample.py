"""Phases on different grids: resampling every phase onto one reference grid through the affines
(DESIGN, "Phases on different grids").

Scanners acquire each DCE phase as its own series; exported, the phases may differ in matrix,
voxel spacing, orientation or field of view. The network needs one grid. Every phase is mapped
onto the reference phase's grid (the pre-contrast phase by default) through the affines, never by
assuming an axis order: a reference voxel centre ``v`` is looked up at ``inv(A_phase) · A_ref · v``
in the phase's own voxels, with trilinear interpolation (``order=1``; labels ``order=0``). A phase
already on the reference grid (shape equal, affines within the tolerance) is copied, not
interpolated. Reference voxels outside a phase's field of view would have no value: a phase must
cover at least ``min_overlap`` of the reference grid, and the voxels it misses take the phase's
nearest edge value (``mode="nearest"``), counted in the report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

#: Default share of the reference grid's voxels that every phase must cover.
MIN_OVERLAP = 0.9


@dataclass
class PhaseGrid:
    """How one phase was brought onto the reference grid (one row of the report).

    ``shape``/``spacing_mm``/``axcodes``: the phase's own grid; ``resampled``: False when it was
    already on the reference grid; ``coverage``: share of the reference voxels inside the phase's
    field of view; ``max_shift_mm``: the largest distance, over the reference grid's corners, between
    a corner and the point of the phase's grid with the same voxel index (how far apart the two
    grids are: 0 for the reference itself)."""

    name: str
    shape: tuple[int, ...]
    spacing_mm: tuple[float, ...]
    axcodes: str
    resampled: bool
    coverage: float
    max_shift_mm: float

    def to_dict(self) -> dict:
        out = asdict(self)
        out["shape"], out["spacing_mm"] = list(self.shape), [round(s, 4) for s in self.spacing_mm]
        out["coverage"], out["max_shift_mm"] = round(self.coverage, 4), round(self.max_shift_mm, 3)
        return out

    def line(self) -> str:
        size = "x".join(map(str, self.shape))
        spacing = "x".join(f"{s:.3g}" for s in self.spacing_mm)
        if not self.resampled:
            return f"{self.name}: {size} voxels of {spacing} mm ({self.axcodes}), on the reference grid"
        return (f"{self.name}: {size} voxels of {spacing} mm ({self.axcodes}) resampled onto the reference "
                f"grid; covers {100 * self.coverage:.1f} % of it; grids up to {self.max_shift_mm:.1f} mm apart")


def grid_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel spacing (mm) along each array axis: the lengths of the affine's first three columns."""
    return np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(axis=0))


def same_grid(shape, affine, ref_shape, ref_affine, tol_mm: float) -> bool:
    """Equal shapes and affines within ``tol_mm`` (per matrix entry)."""
    if tuple(shape) != tuple(ref_shape):
        return False
    return float(np.abs(np.asarray(affine) - np.asarray(ref_affine)).max()) <= tol_mm


def _ref_to_src(src_affine, ref_affine) -> np.ndarray:
    """4×4 map from reference voxel indices to source voxel indices."""
    return np.linalg.inv(np.asarray(src_affine, float)) @ np.asarray(ref_affine, float)


def coverage(src_shape, src_affine, ref_shape, ref_affine, max_points: int = 200_000) -> float:
    """Share of the reference grid's voxel centres that fall inside the source's field of view
    (within half a voxel of its outermost centres). Evaluated on a regular subset of at most
    ``max_points`` reference voxels."""
    ref_shape = tuple(int(n) for n in ref_shape[:3])
    step = max(1, int(np.ceil((np.prod(ref_shape) / max_points) ** (1 / 3))))
    axes = [np.arange(0, n, step, dtype=float) for n in ref_shape]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    mapping = _ref_to_src(src_affine, ref_affine)
    src = grid @ mapping[:3, :3].T + mapping[:3, 3]
    upper = np.asarray(src_shape[:3], float) - 0.5
    inside = np.all((src >= -0.5) & (src <= upper), axis=1)
    return float(inside.mean())


def max_corner_shift_mm(src_affine, ref_shape, ref_affine) -> float:
    """Largest distance (mm) between a reference grid corner and the same voxel index on the source grid."""
    corners = np.array([[i, j, k, 1.0] for i in (0, ref_shape[0] - 1) for j in (0, ref_shape[1] - 1)
                        for k in (0, ref_shape[2] - 1)])
    ref_mm = corners @ np.asarray(ref_affine, float).T
    src_mm = corners @ np.asarray(src_affine, float).T
    return float(np.linalg.norm((ref_mm - src_mm)[:, :3], axis=1).max())


def resample_volume(data: np.ndarray, affine: np.ndarray, ref_shape, ref_affine, order: int = 1) -> np.ndarray:
    """``data`` (3D, on ``affine``'s grid) resampled onto the reference grid -> array of ``ref_shape``.

    ``order`` 1: trilinear (images), 0: nearest (label maps: values are kept, never blended).
    Outside the source's field of view the nearest edge value is used."""
    mapping = _ref_to_src(affine, ref_affine)
    source = np.asarray(data, np.float32 if order else data.dtype)
    out = ndimage.affine_transform(source, mapping[:3, :3], offset=mapping[:3, 3], output_shape=tuple(ref_shape[:3]),
                                   order=order, mode="nearest", prefilter=False)
    return out.astype(data.dtype if order == 0 else np.float32, copy=False)


def align_phases(volumes: list[tuple[np.ndarray, np.ndarray]], names: list[str], reference: int = 0,
                 tol_mm: float = 1e-3, min_overlap: float = MIN_OVERLAP
                 ) -> tuple[np.ndarray, np.ndarray, list[PhaseGrid]]:
    """Bring every phase onto the grid of ``volumes[reference]``.

    ``volumes``: ``(data (X, Y, Z), affine 4×4)`` per phase, in phase order; ``names``: a name per
    phase for messages (the file). Returns ``(images float32 (P, X, Y, Z) on the reference grid,
    reference affine, report)``. Raises ``ValueError`` naming the phase when it covers less than
    ``min_overlap`` of the reference grid (no overlap at all: another patient, or a wrong affine).
    """
    if not 0 <= reference < len(volumes):
        raise ValueError(f"reference phase {reference} out of range for {len(volumes)} phases")
    ref_data, ref_affine = volumes[reference]
    ref_shape = ref_data.shape[:3]
    images, report = [], []
    for (data, affine), name in zip(volumes, names):
        on_grid = same_grid(data.shape[:3], affine, ref_shape, ref_affine, tol_mm)
        covered = 1.0 if on_grid else coverage(data.shape, affine, ref_shape, ref_affine)
        if covered < min_overlap:
            what = "does not overlap" if covered == 0 else f"covers only {100 * covered:.1f} % of"
            raise ValueError(f"{name}: its field of view {what} the reference phase "
                             f"{names[reference]} (at least {100 * min_overlap:.0f} % needed): "
                             "is it the same patient and study, and is its affine right?")
        images.append(np.asarray(data, np.float32) if on_grid
                      else resample_volume(data, affine, ref_shape, ref_affine))
        report.append(PhaseGrid(
            name, tuple(int(n) for n in data.shape[:3]), tuple(float(s) for s in grid_spacing(affine)),
            "".join(nib.aff2axcodes(affine)), not on_grid, covered,
            0.0 if on_grid else max_corner_shift_mm(affine, ref_shape, ref_affine)))
    return np.stack(images), np.asarray(ref_affine, float), report

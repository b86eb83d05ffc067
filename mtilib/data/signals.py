"""Time-intensity curves measured from a data set on disk: the mean signal per case, region and
phase (notebook 02). Analysis of data that :mod:`mtilib.data.io` reads, kept out of the I/O module."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mtilib.data.enhancement import relative_enhancement
from mtilib.data.io import DatasetIndex, load_case

#: Regions of :func:`signal_table`, in the order of its rows.
SIGNAL_REGIONS = ("lesion", "lesion_core", "liver")


def region_masks(labels: np.ndarray, core_erosion: int = 1) -> dict[str, np.ndarray]:
    """Boolean masks (H, W, S) of the regions :func:`signal_table` measures.

    ``lesion``: label 2. ``lesion_core``: the lesion eroded in-plane, slice by slice, by
    ``core_erosion`` voxels (4-connectivity), i.e. without the boundary voxels whose signal mixes
    lesion and liver (partial volume). The erosion is in-plane only because slices are much thicker
    than pixels: a 3D erosion would remove most small lesions. A small lesion may have no core (an
    empty mask). ``liver``: label 1 (the liver without the lesion).
    """
    from scipy import ndimage

    lesion = np.asarray(labels) == 2
    if core_erosion > 0:
        in_plane = ndimage.generate_binary_structure(2, 1)[:, :, None]
        core = ndimage.binary_erosion(lesion, structure=in_plane, iterations=int(core_erosion))
    else:
        core = lesion.copy()
    return {"lesion": lesion, "lesion_core": core, "liver": np.asarray(labels) == 1}


def signal_table(index: DatasetIndex, case_ids: Sequence[str] | None = None, core_erosion: int = 1):
    """Tidy table (pandas) of the mean image signal per case, region and phase: time-intensity curves.

    One row per (case, region, phase), regions as in :func:`region_masks`. Columns: ``case``,
    ``split``, ``class``, ``class_name``, ``atypical``, ``region``, ``n_voxels``, ``phase_index``,
    ``phase``, ``time_s``, ``signal`` (mean intensity in the region, image units) and
    ``relative_enhancement`` (``(S_p - S_pre) / S_pre`` from :func:`relative_enhancement`, the same
    function as the regression target; 0 for the pre-contrast phase).

    The means are measured on the stored (noisy) images under the label map, so boundary voxels
    mix in liver signal; ``lesion_core`` shows how much. A region with no voxels (a small lesion
    has no core) keeps its rows with ``n_voxels`` 0 and NaN signal: never dropped, never replaced;
    filter on ``n_voxels > 0`` explicitly. ``case_ids``: a subset (default: every case, in
    dataset.json order).
    """
    import pandas as pd

    rows = []
    for case_id in index.cases() if case_ids is None else case_ids:
        case = load_case(index, case_id)
        record = case.record
        times = case.phase_times_s
        phases = index.phase_names
        for region, mask in region_masks(case.labels, core_erosion).items():
            n = int(mask.sum())
            if n:
                means = case.images[:, mask].astype(np.float64).mean(axis=1)
                rel = np.concatenate([[0.0], relative_enhancement(case.images, mask, phase_axis=0)])
            else:
                means = rel = np.full(len(phases), np.nan)
            for p, phase in enumerate(phases):
                rows.append({
                    "case": case_id, "split": case.split, "class": case.class_id,
                    "class_name": index.class_names[case.class_id],
                    "atypical": bool(record.get("atypical", False)), "region": region, "n_voxels": n,
                    "phase_index": p, "phase": phase, "time_s": float(times[p]),
                    "signal": float(means[p]), "relative_enhancement": float(rel[p]),
                })
    return pd.DataFrame(rows)

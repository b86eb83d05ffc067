"""On-disk layout (DESIGN §2.2): nnU-Net-compatible folders plus an ``mtilib`` block in dataset.json.

::

    <root>/dataset.json
    <root>/imagesTr/<case>_0000.nii.gz ... <case>_0003.nii.gz   one file per phase, in phase order
    <root>/labelsTr/<case>.nii.gz                               0 background, 1 liver, 2 lesion
    <root>/imagesTs/... <root>/labelsTs/...                     held-out (test) cases

``dataset.json`` carries the nnU-Net keys (``channel_names``, ``labels``, ``numTraining``,
``file_ending``) and ``mtilib``: ``class_names``, ``phase_names``, ``intensity_storage`` and one
record per case. Required record keys: ``case``, ``split`` ("train" / "test"), ``class`` (LLD-MMRI
id). Phantom records add ``class_name``, ``enhancement``, ``enhancement_measured``,
``enhancement_by_slice`` (one row per slice, null where the lesion does not reach),
``phase_times_s``, ``lesion_diameter_mm``, ``lesion_volume_ml``, ``atypical``, ``presentation``,
``seed`` and ``settings``; records of converted real data may omit them (the enhancement is then
measured from the images under the label, and the default phase times are assumed).

Validation: :func:`read_dataset` checks dataset.json and that every expected file is there and no
unexpected NIfTI file is; :func:`load_case` checks the contents (readable, 3D, equal shapes, equal
affines within ``affine_tol_mm``, finite values, label values in {0, 1, 2}). Every failure raises
one :class:`DatasetError` whose message names the file and the problem. Nothing is skipped.

Intensities are stored as ``int16`` with a per-file NIfTI scale (``scl_slope``/``scl_inter``,
chosen by nibabel to use the full int16 range: relative error <= 1/65535 of the file's range) or
as ``float32``; int16 files are about half the size for the same content.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import shutil
import zlib
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from mtilib import __version__
from mtilib.constants import CLASS_NAMES, DEFAULT_PHASE_TIMES_S, LABEL_NAMES, PHASES
from mtilib.data.enhancement import relative_enhancement
from mtilib.jsonable import json_ready

FILE_ENDING = ".nii.gz"
FORMAT_VERSION = 1
SPLITS = {"train": ("imagesTr", "labelsTr"), "test": ("imagesTs", "labelsTs")}
LAYOUT_ENTRIES = ("dataset.json", "imagesTr", "labelsTr", "imagesTs", "labelsTs")
#: Largest allowed difference between the affines of one case's files (mm, per matrix entry).
AFFINE_TOL_MM = 1e-3
INTENSITY_DTYPES = ("int16", "float32")


class DatasetError(ValueError):
    """A data set on disk is missing, malformed or inconsistent; the message names file and problem."""


# --------------------------------------------------------------------------------------------
# Index and case containers
# --------------------------------------------------------------------------------------------


@dataclass
class DatasetIndex:
    """What ``dataset.json`` says, with paths resolved. ``records`` keep dataset.json's order."""

    root: Path
    meta: dict
    records: list[dict]
    class_names: tuple[str, ...]
    phase_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.records)

    def cases(self, split: str | None = None) -> list[str]:
        """Case ids, optionally of one split ("train" or "test")."""
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, not {split!r}")
        return [r["case"] for r in self.records if split is None or r["split"] == split]

    def record(self, case_id: str) -> dict:
        for r in self.records:
            if r["case"] == case_id:
                return r
        raise KeyError(f"case {case_id!r} is not in {self.root / 'dataset.json'}")

    def image_paths(self, case_id: str) -> list[Path]:
        folder = SPLITS[self.record(case_id)["split"]][0]
        return [self.root / folder / f"{case_id}_{k:04d}{FILE_ENDING}" for k in range(len(self.phase_names))]

    def label_path(self, case_id: str) -> Path:
        folder = SPLITS[self.record(case_id)["split"]][1]
        return self.root / folder / f"{case_id}{FILE_ENDING}"


@dataclass
class CaseData:
    """A loaded case: images float32 (P, H, W, S), labels uint8 (H, W, S) (``None`` for a case
    labelled by a box: see :attr:`lesion_box`), affine (4, 4), spacing (3,) mm."""

    case_id: str
    images: np.ndarray
    labels: np.ndarray | None
    affine: np.ndarray
    spacing: np.ndarray
    record: dict

    @property
    def class_id(self) -> int:
        return int(self.record["class"])

    @property
    def split(self) -> str:
        return self.record["split"]

    @property
    def phase_times_s(self) -> np.ndarray:
        times = self.record.get("phase_times_s") or DEFAULT_PHASE_TIMES_S[: self.images.shape[0]]
        return np.asarray(times, float)

    @property
    def lesion_box(self) -> tuple[slice, slice, slice] | None:
        """The lesion's box as voxel slices (inclusive ranges of the record), or ``None`` (a mask case)."""
        box = self.record.get("lesion_box")
        return None if box is None else tuple(slice(lo, hi + 1) for lo, hi in box)

    @property
    def enhancement(self) -> np.ndarray:
        """The record's enhancement vector, or (real data without one) measured under the lesion
        label, or in the core of the lesion box (:func:`box_core`)."""
        if self.record.get("enhancement") is not None:
            return np.asarray(self.record["enhancement"], float)
        if self.labels is None:
            return relative_enhancement(self.images, box_core(self.images.shape[1:], self.record["lesion_box"]),
                                        phase_axis=0)
        return relative_enhancement(self.images, self.labels == 2, phase_axis=0)

    @property
    def enhancement_by_slice(self) -> np.ndarray | None:
        """``(S, P-1)`` the lesion tissue's own enhancement within each slice (NaN where the lesion
        does not reach), when the record holds it (phantom cases); ``None`` otherwise."""
        rows = self.record.get("enhancement_by_slice")
        if rows is None:
            return None
        n_post = self.images.shape[0] - 1  # load_case checked one row per slice
        return np.array([[np.nan] * n_post if row is None else row for row in rows], float)


def box_core(shape, box, fraction: float = 0.5) -> np.ndarray:
    """Boolean mask (``shape``) of the core of a lesion box: the ellipse inscribed in the central
    ``fraction`` of the box in-plane, on every slice of the box. A box bounds a roughly round
    lesion; its corners are liver, and its rim mixes lesion and liver (partial volume), so the
    enhancement of a box-labelled lesion is measured in its core. Slices are thick (the lesion's
    end slices are already partial): all of the box's slices are kept. At least the centre voxel."""
    mask = np.zeros(tuple(shape), bool)
    (k0, k1) = box[2]
    mask[..., k0:k1 + 1] = box_core_plane(tuple(shape)[:2], box[:2], fraction)[..., None]
    return mask


def box_core_plane(shape, box, fraction: float = 0.5) -> np.ndarray:
    """The in-plane core of :func:`box_core`, ``(H, W)`` boolean: the same on every slice the box
    crosses. ``box`` holds the in-plane ranges ``[(i0, i1), (j0, j1)]`` (a third range is ignored)."""
    mask = np.zeros(tuple(shape)[:2], bool)
    (i0, i1), (j0, j1) = box[0], box[1]
    ci, cj = (i0 + i1) / 2, (j0 + j1) / 2
    ri = max(fraction * (i1 - i0 + 1) / 2, 0.5)
    rj = max(fraction * (j1 - j0 + 1) / 2, 0.5)
    ii, jj = np.meshgrid(np.arange(i0, i1 + 1), np.arange(j0, j1 + 1), indexing="ij")
    mask[i0:i1 + 1, j0:j1 + 1] = ((ii - ci) / ri) ** 2 + ((jj - cj) / rj) ** 2 <= 1.0
    mask[int(round(ci)), int(round(cj))] = True
    return mask


# --------------------------------------------------------------------------------------------
# NIfTI reading and writing
# --------------------------------------------------------------------------------------------


def _rel(path: Path, root: Path | None) -> str:
    """How a file is named in messages: its path as built from the data-set root (unambiguous)."""
    return str(path)


_READ_ERRORS = (EOFError, OSError, zlib.error, ValueError, nib.filebasedimages.ImageFileError,
                nib.spatialimages.HeaderDataError)


@contextmanager
def _quiet_nibabel():
    logger = nib.imageglobals.logger
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _open_nifti(path: Path, name: str):
    """``nib.load`` with the file named in any failure, and the voxel type checked: real numbers
    only (integers or floats). Complex voxels would lose their imaginary part silently."""
    if not path.is_file():
        raise DatasetError(f"{name}: file is missing")
    try:
        with _quiet_nibabel():  # its header checks would also print to the terminal; we say it once
            img = nib.load(str(path))
        dtype = np.dtype(img.get_data_dtype())
    except nib.spatialimages.HeaderDataError as exc:
        raise DatasetError(f"{name}: unsupported NIfTI data type ({exc})") from exc
    except _READ_ERRORS as exc:
        raise DatasetError(f"{name}: cannot read the NIfTI file (truncated or corrupt?): {exc}") from exc
    if dtype.kind == "c":
        raise DatasetError(f"{name}: complex voxels ({dtype}) are not supported: export magnitude images")
    if dtype.kind not in "iuf":
        raise DatasetError(f"{name}: unsupported NIfTI data type {dtype} (integers or floats expected)")
    return img


def _load_nifti(path: Path, root: Path | None = None, integer: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Read one 3D NIfTI volume -> (data, affine); any failure becomes a DatasetError naming the file."""
    name = _rel(path, root)
    img = _open_nifti(path, name)
    try:
        if integer:
            data = np.asanyarray(img.dataobj)
        else:
            data = img.get_fdata(dtype=np.float32, caching="unchanged")
        affine = np.asarray(img.affine, float)
    except _READ_ERRORS as exc:
        raise DatasetError(f"{name}: cannot read the NIfTI file (truncated or corrupt?): {exc}") from exc
    while data.ndim > 3 and data.shape[-1] == 1:  # tolerate trailing singleton axes
        data = data[..., 0]
    if data.ndim != 3:
        raise DatasetError(f"{name}: expected a 3D volume, got shape {data.shape}")
    return data, affine


def _check_not_constant(data: np.ndarray, name: str) -> None:
    """An image whose voxels all hold one value (all zeros: an empty export) carries no signal."""
    low, high = float(np.min(data)), float(np.max(data))
    if low == high:
        raise DatasetError(f"{name}: every voxel is {low:g}: an empty or constant image")


def _check_finite(data: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(data)
    if bad.any():
        n_nan = int(np.isnan(data).sum())
        raise DatasetError(f"{name}: {int(bad.sum())} non-finite voxels ({n_nan} NaN, "
                           f"{int(bad.sum()) - n_nan} infinite)")


def _check_same_grid(shape, affine, ref_shape, ref_affine, name: str, ref_name: str, tol: float) -> None:
    if tuple(shape) != tuple(ref_shape):
        raise DatasetError(f"{name}: shape {tuple(shape)} differs from {ref_name} {tuple(ref_shape)}")
    diff = float(np.abs(np.asarray(affine) - np.asarray(ref_affine)).max())
    if diff > tol:
        raise DatasetError(f"{name}: affine differs from {ref_name} by up to {diff:.4g} mm "
                           f"(tolerance {tol:g} mm)")


def _nifti(data: np.ndarray, affine: np.ndarray, dtype) -> nib.Nifti1Image:
    img = nib.Nifti1Image(np.asarray(data), np.asarray(affine, float))
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    # For int16 nibabel picks scl_slope / scl_inter on save so that the data use the int16 range.
    img.set_data_dtype(dtype)
    return img


def _save(img: nib.Nifti1Image, path: Path, compresslevel: int = 6) -> None:
    """Write ``.nii.gz`` byte-reproducibly (no time stamp or name in the gzip header), via a temp file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                               compresslevel=compresslevel, mtime=0) as fh:
        fh.write(img.to_bytes())
    tmp.replace(path)


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel size ``(3,)`` in mm along the array axes (nibabel's ``voxel_sizes``: the lengths of the
    affine's columns; right for oblique affines, where the diagonal is not)."""
    return nib.affines.voxel_sizes(np.asarray(affine, float))


def mask_volume_ml(mask: np.ndarray, spacing) -> float:
    """Volume of a binary mask in ml: voxels × voxel volume (mm³) / 1000."""
    return float(np.count_nonzero(mask) * np.prod(spacing) / 1000.0)


def write_label_volume(path, labels: np.ndarray, affine: np.ndarray) -> Path:
    """Write a label map or binary mask ``(H, W, S)`` as uint8 NIfTI with ``affine`` (e.g. the
    input image's, so that the mask overlays it in any viewer). Returns the path."""
    path = Path(path)
    _save(_nifti(np.asarray(labels).astype(np.uint8), affine, np.uint8), path)
    return path


def combine_masks(liver_path, lesion_path, out_path) -> Path:
    """Merge a liver mask and a lesion mask (two NIfTI files on one grid; any non-zero voxel counts)
    into one label map 0 background, 1 liver, 2 lesion (the lesion wins where both are set), written
    to ``out_path`` with the liver mask's affine. Exports often store the two masks separately;
    this layout wants one label file. Masks on different grids are refused, naming the files."""
    liver_path, lesion_path = Path(liver_path), Path(lesion_path)
    liver, liver_affine = _load_nifti(liver_path, integer=True)
    lesion, lesion_affine = _load_nifti(lesion_path, integer=True)
    _check_same_grid(lesion.shape, lesion_affine, liver.shape, liver_affine, str(lesion_path), str(liver_path),
                     AFFINE_TOL_MM)
    labels = np.where(np.asarray(lesion) != 0, 2, np.where(np.asarray(liver) != 0, 1, 0)).astype(np.uint8)
    return write_label_volume(out_path, labels, liver_affine)


def write_case(root, case_id: str, images: np.ndarray, labels: np.ndarray | None, affine: np.ndarray,
               split: str = "train", dtype: str = "int16") -> list[Path]:
    """Write one case's phase files and label file; returns the paths written.

    ``images``: (P, H, W, S) non-negative intensities; ``labels``: (H, W, S) in {0, 1, 2}, or
    ``None`` for a case labelled by a box (its record carries ``lesion_box``; no label file);
    ``affine``: NIfTI 4x4 (spacing on its diagonal for axis-aligned data). ``dtype``: "int16"
    (scaled) or "float32".
    """
    root = Path(root)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, not {split!r}")
    if dtype not in INTENSITY_DTYPES:
        raise ValueError(f"dtype must be one of {INTENSITY_DTYPES}, not {dtype!r}")
    images = np.asarray(images, np.float32)
    boxed = labels is None
    labels = np.zeros(images.shape[1:], np.uint8) if boxed and images.ndim == 4 else np.asarray(labels)
    if images.ndim != 4 or images.shape[1:] != labels.shape:
        raise ValueError(f"images (P, H, W, S) and labels (H, W, S) do not match: "
                         f"{images.shape} vs {labels.shape}")
    if not np.all(np.isfinite(images)):
        raise ValueError(f"case {case_id}: images contain non-finite values")
    if not np.isin(labels, (0, 1, 2)).all():
        raise ValueError(f"case {case_id}: labels must be 0, 1 or 2")
    image_dir, label_dir = (root / d for d in SPLITS[split])
    paths = []
    for k, phase in enumerate(images):
        path = image_dir / f"{case_id}_{k:04d}{FILE_ENDING}"
        _save(_nifti(phase, affine, np.int16 if dtype == "int16" else np.float32), path)
        paths.append(path)
    if not boxed:
        path = label_dir / f"{case_id}{FILE_ENDING}"
        _save(_nifti(labels.astype(np.uint8), affine, np.uint8), path)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------
# dataset.json
# --------------------------------------------------------------------------------------------


def phantom_record(case, case_id: str, split: str) -> dict:
    """The dataset.json record of a :class:`~mtilib.data.phantom.PhantomCase`."""
    return json_ready({
        "case": case_id,
        "split": split,
        "class": int(case.class_id),
        "class_name": case.class_name,
        "enhancement": [float(v) for v in case.enhancement],
        "enhancement_measured": (None if case.enhancement_measured is None
                                 else [float(v) for v in case.enhancement_measured]),
        "enhancement_by_slice": (None if case.enhancement_by_slice is None
                                 else [None if not np.all(np.isfinite(row)) else [float(v) for v in row]
                                       for row in case.enhancement_by_slice]),
        "phase_times_s": [float(v) for v in case.phase_times_s],
        "lesion_diameter_mm": round(float(case.lesion_diameter_mm), 3),
        "lesion_volume_ml": round(float(case.lesion_volume_ml), 4),
        "atypical": bool(case.atypical),
        "presentation": case.presentation,
        "seed": int(case.seed),
        "settings": case.config,
    })


def write_dataset_json(root, records: Sequence[dict], name: str = "mtilib-phantom", description: str = "",
                       intensity_storage: str = "int16", phase_names: Sequence[str] = PHASES,
                       class_names: Sequence[str] = CLASS_NAMES) -> Path:
    """Write ``dataset.json`` for ``records`` (see the module docstring for the keys)."""
    root = Path(root)
    meta = {
        "name": name,
        "description": description,
        "channel_names": {str(k): p for k, p in enumerate(phase_names)},
        "labels": {n: i for i, n in enumerate(LABEL_NAMES)},
        "numTraining": sum(1 for r in records if r["split"] == "train"),
        "numTest": sum(1 for r in records if r["split"] == "test"),
        "file_ending": FILE_ENDING,
        "mtilib": {
            "format_version": FORMAT_VERSION,
            "mtilib_version": __version__,
            "class_names": list(class_names),
            "phase_names": list(phase_names),
            "intensity_storage": intensity_storage,
            "cases": [json_ready(r) for r in records],
        },
    }
    root.mkdir(parents=True, exist_ok=True)
    path = root / "dataset.json"
    path.write_text(json.dumps(meta, indent=1) + "\n")
    return path


def write_dataset(root, train_cases: Iterable, test_cases: Iterable = (), dtype: str = "int16",
                  prefix: str = "phantom", name: str = "mtilib-phantom", description: str = "",
                  progress=None) -> DatasetIndex:
    """Write phantom cases in the nnU-Net layout and ``dataset.json``; returns the index read back.

    ``train_cases`` / ``test_cases``: iterables of ``PhantomCase`` (generators are consumed one case
    at a time, so a large data set never sits in memory). Case ids are ``<prefix>_<nnn>``, numbered
    through both splits. ``progress``: optional callable(case_id, split) called after each case.
    """
    root = Path(root)
    records = []
    counter = 0
    for split, cases in (("train", train_cases), ("test", test_cases)):
        for case in cases:
            case_id = f"{prefix}_{counter:03d}"
            counter += 1
            write_case(root, case_id, case.images, case.labels, case.affine, split=split, dtype=dtype)
            records.append(phantom_record(case, case_id, split))
            if progress is not None:
                progress(case_id, split)
    for folder in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / folder).mkdir(parents=True, exist_ok=True)  # nnU-Net expects the folders to exist
    write_dataset_json(root, records, name=name, description=description, intensity_storage=dtype)
    return read_dataset(root)


def clear_layout(root) -> None:
    """Remove the data-set entries (dataset.json and the four folders) from ``root``, nothing else."""
    root = Path(root)
    for entry in LAYOUT_ENTRIES:
        path = root / entry
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


# --------------------------------------------------------------------------------------------
# Reading and validation
# --------------------------------------------------------------------------------------------


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _valid_box(box) -> bool:
    return (isinstance(box, list) and len(box) == 3
            and all(isinstance(r, list) and len(r) == 2 and all(_is_int(v) for v in r) and 0 <= r[0] <= r[1]
                    for r in box))


def _finite_numbers(value, n: int) -> bool:
    """Whether ``value`` (from JSON) is a list of ``n`` finite numbers."""
    return (isinstance(value, list) and len(value) == n
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value))


def _validate_meta(meta, where: str) -> tuple[tuple[str, ...], tuple[str, ...], list[dict]]:
    if not isinstance(meta, dict):
        raise DatasetError(f"{where}: the top level must be a JSON object")
    for key in ("channel_names", "labels", "numTraining", "file_ending", "mtilib"):
        if key not in meta:
            raise DatasetError(f"{where}: missing key {key!r}")
    if meta["file_ending"] != FILE_ENDING:
        raise DatasetError(f"{where}: file_ending must be {FILE_ENDING!r}, got {meta['file_ending']!r}")
    channels = meta["channel_names"]
    if not isinstance(channels, dict) or not channels or set(channels) != set(map(str, range(len(channels)))):
        raise DatasetError(f"{where}: channel_names must map '0', '1', ... to phase names, got {channels!r}")
    expected_labels = {n: i for i, n in enumerate(LABEL_NAMES)}
    if meta["labels"] != expected_labels:
        raise DatasetError(f"{where}: labels must be {expected_labels}, got {meta['labels']!r}")
    block = meta["mtilib"]
    if not isinstance(block, dict):
        raise DatasetError(f"{where}: 'mtilib' must be an object")
    for key in ("class_names", "phase_names", "cases"):
        if key not in block:
            raise DatasetError(f"{where}: missing key 'mtilib.{key}'")
    phase_names = block["phase_names"]
    class_names = block["class_names"]
    if not isinstance(phase_names, list) or len(phase_names) < 2:
        raise DatasetError(f"{where}: mtilib.phase_names must list at least two phases")
    if [channels[str(k)] for k in range(len(channels))] != phase_names:
        raise DatasetError(f"{where}: channel_names {channels} disagree with "
                           f"mtilib.phase_names {phase_names}")
    if not isinstance(class_names, list) or not class_names:
        raise DatasetError(f"{where}: mtilib.class_names must be a non-empty list")
    records = block["cases"]
    if not isinstance(records, list):
        raise DatasetError(f"{where}: mtilib.cases must be a list of records")
    n_phases = len(phase_names)
    seen = set()
    for i, rec in enumerate(records):
        label = f"{where}: case record {i}"
        if not isinstance(rec, dict):
            raise DatasetError(f"{label} is not an object")
        case = rec.get("case")
        if not isinstance(case, str) or not case or not case.isprintable() or any(c in case for c in "/\\"):
            raise DatasetError(f"{label}: 'case' must be a non-empty printable name without '/' or '\\', "
                               f"got {case!r}")
        label = f"{where}: case {case!r}"
        if case in seen:
            raise DatasetError(f"{label} is listed twice")
        seen.add(case)
        if rec.get("split") not in SPLITS:
            raise DatasetError(f"{label}: split must be 'train' or 'test', got {rec.get('split')!r}")
        cls = rec.get("class")
        if not _is_int(cls):
            raise DatasetError(f"{label}: class must be an integer id 0..{len(class_names) - 1}, got {cls!r} "
                               "(class names go in mtilib.class_names)")
        if not 0 <= cls < len(class_names):
            raise DatasetError(f"{label}: class id {cls!r} is out of range 0..{len(class_names) - 1}")
        enh = rec.get("enhancement")
        if enh is not None and not _finite_numbers(enh, n_phases - 1):
            raise DatasetError(f"{label}: enhancement must be {n_phases - 1} finite numbers, got {enh!r}")
        by_slice = rec.get("enhancement_by_slice")
        if by_slice is not None and (not isinstance(by_slice, list) or not all(
                row is None or _finite_numbers(row, n_phases - 1) for row in by_slice)):
            raise DatasetError(f"{label}: enhancement_by_slice must be a list with, per slice, null or "
                               f"{n_phases - 1} finite numbers")
        box = rec.get("lesion_box")
        if box is not None and not _valid_box(box):
            raise DatasetError(f"{label}: lesion_box must be [[i0, i1], [j0, j1], [k0, k1]], voxel indices with "
                               f"0 <= lo <= hi, got {box!r}")
        times = rec.get("phase_times_s")
        if times is not None and (not isinstance(times, list) or len(times) != n_phases
                                  or not all(isinstance(v, (int, float)) for v in times)
                                  or any(b <= a for a, b in zip(times, times[1:]))):
            raise DatasetError(f"{label}: phase_times_s must be {n_phases} increasing numbers, got {times!r}")
    n_train = sum(1 for r in records if r["split"] == "train")
    if not _is_int(meta["numTraining"]) or meta["numTraining"] != n_train:
        raise DatasetError(f"{where}: numTraining is {meta['numTraining']!r} but {n_train} cases "
                           "have split 'train'")
    return tuple(class_names), tuple(phase_names), records


def read_dataset(root) -> DatasetIndex:
    """Read and validate ``<root>/dataset.json`` and the presence of every file it implies.

    Raises :class:`DatasetError` for a missing or malformed dataset.json, a missing phase or label
    file, or a NIfTI file in the layout folders that no record accounts for.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: data-set folder does not exist")
    path = root / "dataset.json"
    if not path.is_file():
        raise DatasetError(f"{path}: dataset.json is missing")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: dataset.json is not valid JSON ({exc})") from exc
    class_names, phase_names, records = _validate_meta(meta, str(path))
    index = DatasetIndex(root=root, meta=meta, records=records, class_names=class_names,
                         phase_names=phase_names)

    expected: set[Path] = set()
    for rec in records:
        case = rec["case"]
        for k, p in enumerate(index.image_paths(case)):
            if not p.is_file():
                raise DatasetError(f"{_rel(p, root)}: missing phase file (phase {k}, "
                                   f"'{phase_names[k]}') of case {case!r}")
            expected.add(p)
        if rec.get("lesion_box") is not None:
            continue  # labelled by a box: no label file
        p = index.label_path(case)
        if not p.is_file():
            raise DatasetError(f"{_rel(p, root)}: missing label file of case {case!r}")
        expected.add(p)
    for folder in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        for p in sorted((root / folder).glob("*")) if (root / folder).is_dir() else ():
            if p.name.endswith((".nii", ".nii.gz")) and p not in expected:
                raise DatasetError(f"{_rel(p, root)}: NIfTI file not accounted for by any record in "
                                   "dataset.json (unknown case or phase index)")
    return index


def load_case(index: DatasetIndex, case_id: str, affine_tol_mm: float = AFFINE_TOL_MM) -> CaseData:
    """Load and validate one case's phases and label (see the module docstring for the checks)."""
    try:
        record = index.record(case_id)
    except KeyError as exc:
        raise DatasetError(str(exc.args[0])) from exc
    root = index.root
    paths = index.image_paths(case_id)
    images, affine = _load_phases(paths, root, affine_tol_mm)
    by_slice = record.get("enhancement_by_slice")
    if by_slice is not None and len(by_slice) != images.shape[-1]:
        raise DatasetError(f"dataset.json: enhancement_by_slice of case {case_id!r} has {len(by_slice)} rows "
                           f"for {images.shape[-1]} slices ({_rel(paths[0], root)})")
    if record.get("lesion_box") is not None:
        box = record["lesion_box"]
        outside = [axis for axis, (r, n) in enumerate(zip(box, images.shape[1:])) if r[1] >= n]
        if outside:
            raise DatasetError(f"{_rel(paths[0], root)}: lesion_box {box} of case {case_id!r} reaches past the "
                               f"image (shape {images.shape[1:]}) along axis {outside[0]}")
        return CaseData(case_id=case_id, images=images, labels=None, affine=affine,
                        spacing=voxel_spacing(affine), record=record)
    label_path = index.label_path(case_id)
    name = _rel(label_path, root)
    raw, label_affine = _load_nifti(label_path, root, integer=True)
    _check_same_grid(raw.shape, label_affine, images.shape[1:], affine, name, _rel(paths[0], root),
                     affine_tol_mm)
    if not np.issubdtype(raw.dtype, np.integer):
        _check_finite(raw, name)
        if np.any(raw != np.round(raw)):
            raise DatasetError(f"{name}: label values must be integers 0, 1, 2")
    bad = np.setdiff1d(np.unique(raw), (0, 1, 2))
    if bad.size:
        raise DatasetError(f"{name}: label values outside {{0, 1, 2}}: {bad.tolist()[:10]}")
    labels = raw.astype(np.uint8)
    spacing = voxel_spacing(affine)
    return CaseData(case_id=case_id, images=images, labels=labels, affine=affine, spacing=spacing,
                    record=record)


def _load_phases(paths: Sequence[Path], root: Path | None, tol: float) -> tuple[np.ndarray, np.ndarray]:
    volumes = []
    ref_shape = ref_affine = None
    ref_name = ""
    for path in paths:
        name = _rel(path, root)
        data, affine = _load_nifti(path, root)
        if ref_shape is None:
            ref_shape, ref_affine, ref_name = data.shape, affine, name
        else:
            _check_same_grid(data.shape, affine, ref_shape, ref_affine, name, ref_name, tol)
        _check_finite(data, name)
        _check_not_constant(data, name)
        volumes.append(np.asarray(data, np.float32))
    return np.stack(volumes), ref_affine


def load_phase_images(paths, expected_phases: int | None = len(PHASES),
                      affine_tol_mm: float = AFFINE_TOL_MM) -> tuple[np.ndarray, np.ndarray]:
    """Load a user's phase images for inference -> (images float32 (P, H, W, S), affine of the first).

    ``paths``: one 3D file per phase in phase order (pre, arterial, venous, delayed), or a single
    4D file with the phases on its last axis. Same checks as :func:`load_case` (readable, equal
    shapes and affines, finite). ``expected_phases``: required phase count (``None``: any >= 2).
    """
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    if len(paths) == 1:
        path = paths[0]
        img = _open_nifti(path, str(path))
        try:
            data = img.get_fdata(dtype=np.float32, caching="unchanged")
            affine = np.asarray(img.affine, float)
        except _READ_ERRORS as exc:
            raise DatasetError(f"{path}: cannot read the NIfTI file (truncated or corrupt?): {exc}") from exc
        if data.ndim != 4:
            raise DatasetError(f"{path}: a single file must be 4D with the phases last, "
                               f"got shape {data.shape}")
        _check_finite(data, str(path))
        for k in range(data.shape[-1]):
            _check_not_constant(data[..., k], f"{path} (phase {k})")
        images = np.ascontiguousarray(np.moveaxis(data, -1, 0), dtype=np.float32)
    else:
        images, affine = _load_phases(paths, None, affine_tol_mm)
    n = images.shape[0]
    if expected_phases is not None and n != expected_phases:
        raise DatasetError(f"{paths[0]}: expected {expected_phases} phases ({', '.join(PHASES)}), got {n}")
    if n < 2:
        raise DatasetError(f"{paths[0]}: need at least two phases, got {n}")
    return images, affine


def reference_index(reference, n_phases: int = len(PHASES)) -> int:
    """A reference phase given by name (``"pre"``, ``"arterial"``, ...) or index -> its index."""
    if isinstance(reference, str) and not reference.isdigit():
        if reference not in PHASES[:n_phases]:
            raise DatasetError(f"reference phase {reference!r}: choose one of {', '.join(PHASES[:n_phases])}")
        return PHASES.index(reference)
    k = int(reference)
    if not 0 <= k < n_phases:
        raise DatasetError(f"reference phase {k}: out of range for {n_phases} phases")
    return k


def align_phase_files(paths, reference=0, affine_tol_mm: float = AFFINE_TOL_MM,
                      min_overlap: float | None = None):
    """Load one 3D file per phase (phase order) and resample every phase onto the grid of the
    reference phase (index or name; the pre-contrast phase by default) through the affines.

    Returns ``(images float32 (P, X, Y, Z), reference affine, report)``, ``report`` a list of
    :class:`mtilib.data.resample.PhaseGrid` (what was resampled and by how much). Each file gets the
    checks of :func:`load_case` except the equal-grid one; a phase whose field of view misses the
    reference grid is refused, naming the file.
    """
    from mtilib.data.resample import MIN_OVERLAP, align_phases

    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise DatasetError(f"{paths[0] if paths else 'phases'}: need one 3D file per phase, at least two")
    volumes = []
    for path in paths:
        data, affine = _load_nifti(path)
        _check_finite(data, str(path))
        _check_not_constant(data, str(path))
        volumes.append((data, affine))
    try:
        return align_phases(volumes, [str(p) for p in paths], reference_index(reference, len(paths)),
                            affine_tol_mm, MIN_OVERLAP if min_overlap is None else min_overlap)
    except ValueError as exc:
        raise DatasetError(str(exc)) from exc


def import_nifti_cases(root, cases: Sequence[dict], dtype: str = "float32", name: str = "my-data",
                       description: str = "") -> DatasetIndex:
    """Convert a user's NIfTI files into the layout of this package (nnU-Net compatible).

    ``cases``: one dict per case with ``case`` (id), ``phases`` (one file per phase, in phase order,
    or one 4D file), ``label`` (label map file: 0 background, 1 liver, 2 lesion, on the same grid),
    ``class`` (name or id), ``split`` ("train"/"test") and optionally ``phase_times_s``
    (default 0, 35, 70, 180 s) and ``reference`` (phases on different grids: resample every phase,
    and a label map on another grid, onto this phase's grid, by name or index; without it the files
    must share one grid). Every file is validated as in :func:`load_case`; the enhancement
    target is measured from the images under the lesion label (the real-data route of
    :func:`relative_enhancement`). A case whose phases were resampled keeps the report in its
    record (``resampled``). Returns the index read back, so a bad conversion fails here.
    """
    from mtilib.constants import class_id as to_class_id

    root = Path(root)
    records = []
    for spec in cases:
        missing = [k for k in ("case", "phases", "label", "class", "split") if k not in spec]
        if missing:
            raise DatasetError(f"case spec {spec.get('case', spec)!r}: missing {', '.join(missing)}")
        grids = None
        if spec.get("reference") is not None:
            images, affine, grids = align_phase_files(spec["phases"], spec["reference"])
        else:
            images, affine = load_phase_images(spec["phases"])
        labels, label_affine = _load_nifti(Path(spec["label"]), None, integer=True)
        label_name = str(spec["label"])
        from mtilib.data.resample import coverage, resample_volume, same_grid

        if grids is not None and not same_grid(labels.shape, label_affine, images.shape[1:], affine, AFFINE_TOL_MM):
            if coverage(labels.shape, label_affine, images.shape[1:], affine) == 0:
                raise DatasetError(f"{label_name}: does not overlap the reference phase's grid")
            labels = resample_volume(labels, label_affine, images.shape[1:], affine, order=0)
            label_affine = affine
        _check_same_grid(labels.shape, label_affine, images.shape[1:], affine, label_name, str(spec["phases"][0]),
                         AFFINE_TOL_MM)
        values = set(np.unique(labels).tolist())
        if not values <= {0, 1, 2}:
            raise DatasetError(f"{label_name}: label values {sorted(values - {0, 1, 2})} outside {{0, 1, 2}}")
        if 2 not in values:
            raise DatasetError(f"{label_name}: no lesion voxels (value 2): cannot measure the enhancement target")
        try:
            cls = to_class_id(spec["class"])
        except ValueError as exc:
            raise DatasetError(f"case {spec['case']}: {exc}") from exc
        times = [float(t) for t in spec.get("phase_times_s", DEFAULT_PHASE_TIMES_S[: images.shape[0]])]
        if len(times) != images.shape[0]:
            raise DatasetError(f"case {spec['case']}: {len(times)} phase times for {images.shape[0]} phases")
        write_case(root, spec["case"], images, labels, affine, split=spec["split"], dtype=dtype)
        enhancement = relative_enhancement(images, labels == 2, phase_axis=0)
        records.append(json_ready({
            "case": spec["case"], "split": spec["split"], "class": cls, "class_name": CLASS_NAMES[cls],
            "enhancement": [float(v) for v in enhancement], "phase_times_s": times,
            "lesion_volume_ml": mask_volume_ml(labels == 2, voxel_spacing(affine)),
            "source": [str(p) for p in (spec["phases"] if not isinstance(spec["phases"], (str, Path))
                                        else [spec["phases"]])],
            **({"resampled": [g.to_dict() for g in grids]} if grids and any(g.resampled for g in grids) else {}),
        }))
    for folder in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    write_dataset_json(root, records, name=name, description=description, intensity_storage=dtype)
    return read_dataset(root)


# --------------------------------------------------------------------------------------------
# Data-set summary (``mtilib dataset check``)
# --------------------------------------------------------------------------------------------


def check_dataset(root, affine_tol_mm: float = AFFINE_TOL_MM) -> dict:
    """Validate a whole data set (index and every case; each case must contain lesion voxels) and
    summarise it.

    Returns a dict: ``root``, ``cases`` (count), ``counts`` {split: {class_name: n}}, ``shapes`` and
    ``spacings`` (distinct values with counts), ``enhancement`` {class_name: {"min": [...],
    "max": [...], "mean": [...]}} over all cases, ``lesion_diameter_mm`` [min, max], ``atypical``
    (count). Raises :class:`DatasetError` at the first problem.
    """
    index = read_dataset(root)
    counts: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
    shapes: dict[str, int] = {}
    spacings: dict[str, int] = {}
    enh: dict[str, list[np.ndarray]] = {}
    diameters = []
    atypical = resampled = boxes = 0
    for case_id in index.cases():
        case = load_case(index, case_id, affine_tol_mm)
        boxes += case.labels is None
        if case.labels is not None and not np.any(case.labels == 2):
            raise DatasetError(f"{_rel(index.label_path(case_id), index.root)}: no lesion voxels (label 2)")
        cname = index.class_names[case.class_id]
        counts[case.split][cname] = counts[case.split].get(cname, 0) + 1
        shape = "x".join(str(n) for n in case.images.shape[1:])
        shapes[shape] = shapes.get(shape, 0) + 1
        spacing = "x".join(f"{s:.3g}" for s in case.spacing)
        spacings[spacing] = spacings.get(spacing, 0) + 1
        enh.setdefault(cname, []).append(case.enhancement)
        if case.record.get("lesion_diameter_mm") is not None:
            diameters.append(float(case.record["lesion_diameter_mm"]))
        atypical += bool(case.record.get("atypical", False))
        resampled += bool(case.record.get("resampled"))
    enh_summary = {}
    for cname in [c for c in index.class_names if c in enh]:
        values = np.stack(enh[cname])
        enh_summary[cname] = {"min": values.min(0).tolist(), "max": values.max(0).tolist(),
                              "mean": values.mean(0).tolist()}
    return {
        "root": str(index.root),
        "cases": len(index),
        "phases": list(index.phase_names),
        "counts": counts,
        "shapes": shapes,
        "spacings": spacings,
        "enhancement": enh_summary,
        "lesion_diameter_mm": [min(diameters), max(diameters)] if diameters else None,
        "atypical": atypical,
        "resampled_cases": resampled,
        "box_labelled_cases": boxes,
    }


def format_summary(summary: dict) -> str:
    """Human-readable text of :func:`check_dataset`'s result."""
    lines = [f"data set {summary['root']}: {summary['cases']} cases, valid",
             f"phases: {', '.join(summary['phases'])}"]
    classes = []
    for split_counts in summary["counts"].values():
        classes += [c for c in split_counts if c not in classes]
    width = max([len(c) for c in classes] + [5])
    lines.append(f"{'class':<{width}}  {'train':>5}  {'test':>5}")
    for c in classes:
        n_train = summary["counts"]["train"].get(c, 0)
        n_test = summary["counts"]["test"].get(c, 0)
        lines.append(f"{c:<{width}}  {n_train:>5}  {n_test:>5}")
    lines.append("shapes: " + ", ".join(f"{k} ({v})" for k, v in summary["shapes"].items()))
    lines.append("spacing (mm): " + ", ".join(f"{k} ({v})" for k, v in summary["spacings"].items()))
    if summary.get("lesion_diameter_mm"):
        lo, hi = summary["lesion_diameter_mm"]
        lines.append(f"lesion diameter: {lo:.1f}-{hi:.1f} mm; atypical presentations: {summary['atypical']}")
    if summary.get("box_labelled_cases"):
        lines.append(f"labelled by a lesion box (no mask): {summary['box_labelled_cases']} case(s); "
                     "their enhancement is measured in the box's core")
    if summary.get("resampled_cases"):
        lines.append(f"phases resampled onto one grid on import: {summary['resampled_cases']} case(s)")
    post = summary["phases"][1:]
    lines.append("relative enhancement per class, min..max (" + ", ".join(post) + "):")
    for c, e in summary["enhancement"].items():
        ranges = "  ".join(f"{lo:+.2f}..{hi:+.2f}" for lo, hi in zip(e["min"], e["max"]))
        lines.append(f"  {c:<{width}}  {ranges}")
    return "\n".join(lines)

"""LLD-MMRI studies into this package's layout (``mtilib import lld-mmri``; docs/dataset_format.md).

The LLD-MMRI 2023 challenge ships one NIfTI per series, ``<patient>/<study>/<series>.nii.gz``, and
one annotation JSON: ``{"Annotation_info": {patient: [series entry, ...]}}``, each series entry with
``studyUID``, ``seriesUID``, ``phase`` (``C-pre``, ``C+A``, ``C+V``, ``C+Delay`` are the DCE
phases; ``T2WI``, ``DWI``, ``In Phase``, ``Out Phase`` and others are skipped) and
``annotation.lesion`` = ``{index: {"category": id, "bbox": {"3D_box": {x_min, x_max, y_min,
y_max, z_min, z_max}}}}``: one box per lesion on that series' own voxel grid (x, y, z are the
NIfTI array axes i, j, k, as SimpleITK indexes them).

:func:`import_lld_mmri` writes one case per lesion (the challenge's convention: ``<patient>`` for
lesion 0, ``<patient>_<index>`` for the others): the four DCE phases resampled onto the grid of the
reference phase (:mod:`mtilib.data.resample`), the class, and the lesion box mapped through the
affines onto that grid (its eight corners in millimetres, then the voxel range that holds them).
Every problem is handled and reported, never dropped silently: a missing DCE phase or series file
skips the patient; an unknown category, a box outside the volume or a box that maps outside the
reference grid skips the lesion; a box partly outside is clipped; extra series are counted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mtilib.constants import CLASS_NAMES, DEFAULT_PHASE_TIMES_S, PHASES
from mtilib.data.enhancement import relative_enhancement
from mtilib.data.io import (
    DatasetError,
    _load_nifti,
    box_core,
    read_dataset,
    reference_index,
    write_case,
    write_dataset_json,
)
from mtilib.data.resample import MIN_OVERLAP, align_phases
from mtilib.jsonable import json_ready

#: LLD-MMRI's names of the four DCE phases -> this package's phase names.
LLD_PHASES = {"C-pre": "pre", "C+A": "arterial", "C+V": "venous", "C+Delay": "delayed"}
BOX_KEYS = ("x_min", "x_max", "y_min", "y_max", "z_min", "z_max")


@dataclass
class ImportReport:
    """What an import did: cases written, and every patient, series or lesion left out, with why."""

    cases: list[str] = field(default_factory=list)
    skipped_patients: list[str] = field(default_factory=list)
    skipped_lesions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    other_series: int = 0
    resampled_phases: int = 0

    def lines(self) -> list[str]:
        out = [f"{len(self.cases)} case(s) written (one per lesion); {self.resampled_phases} phase(s) resampled "
               f"onto their case's reference grid; {self.other_series} non-DCE series skipped"]
        out += [f"skipped patient {s}" for s in self.skipped_patients]
        out += [f"skipped lesion {s}" for s in self.skipped_lesions]
        out += self.notes
        return out


def read_annotations(path) -> dict[str, list[dict]]:
    """The ``Annotation_info`` block of an LLD-MMRI annotation file, checked for its structure."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read the annotation JSON ({exc})") from exc
    info = data.get("Annotation_info") if isinstance(data, dict) else None
    if not isinstance(info, dict):
        raise DatasetError(f"{path}: expected an object with 'Annotation_info' (patient -> list of series)")
    for patient, entries in info.items():
        if not isinstance(entries, list):
            raise DatasetError(f"{path}: Annotation_info[{patient!r}] must be a list of series")
        for entry in entries:
            missing = [k for k in ("studyUID", "seriesUID", "phase") if not isinstance(entry, dict) or k not in entry]
            if missing:
                raise DatasetError(f"{path}: a series of patient {patient!r} lacks {', '.join(missing)}")
    return info


def _lesions(entry: dict) -> dict[str, dict]:
    lesions = (entry.get("annotation") or {}).get("lesion") or {}
    return lesions if isinstance(lesions, dict) else {}


def _box_of(lesion: dict):
    box = ((lesion.get("bbox") or {}).get("3D_box")) if isinstance(lesion, dict) else None
    if not isinstance(box, dict) or any(k not in box for k in BOX_KEYS):
        return None
    (x0, x1), (y0, y1), (z0, z1) = [(float(box[f"{a}_min"]), float(box[f"{a}_max"])) for a in "xyz"]
    return np.array([[x0, x1], [y0, y1], [z0, z1]])


def map_box(box: np.ndarray, affine: np.ndarray, ref_affine: np.ndarray, ref_shape) -> tuple[list | None, bool]:
    """A box of voxel index ranges on one grid -> the inclusive voxel ranges on the reference grid
    that hold its eight corners (through millimetres: ``inv(A_ref) · A · corner``), clipped to the
    reference volume. Returns ``(box or None when it lies wholly outside, clipped?)``."""
    corners = np.array([[x, y, z, 1.0] for x in box[0] for y in box[1] for z in box[2]])
    on_ref = corners @ (np.linalg.inv(ref_affine) @ np.asarray(affine, float)).T
    lo = np.floor(on_ref[:, :3].min(axis=0) + 1e-6).astype(int)
    hi = np.ceil(on_ref[:, :3].max(axis=0) - 1e-6).astype(int)
    upper = np.asarray(ref_shape[:3]) - 1
    if np.any(hi < 0) or np.any(lo > upper):
        return None, True
    clipped = bool(np.any(lo < 0) or np.any(hi > upper))
    lo, hi = np.clip(lo, 0, upper), np.clip(hi, 0, upper)
    return [[int(a), int(b)] for a, b in zip(lo, hi)], clipped


def import_lld_mmri(src, out, annotation=None, reference="pre", test_fraction: float = 0.2, seed: int = 0,
                    dtype: str = "int16", min_overlap: float = MIN_OVERLAP):
    """Convert an LLD-MMRI-style folder into this package's layout; ``-> (DatasetIndex, ImportReport)``.

    ``src``: the image folder (``<patient>/<study>/<series>.nii.gz``); ``annotation``: the JSON
    (default: the only ``*.json`` in ``src`` or its parent); ``reference``: the phase whose grid the
    others are resampled onto; ``test_fraction``: share of patients (all of a patient's lesions
    together, drawn with ``seed``) that go to the test split. Cases carry ``lesion_box`` instead
    of a label map (they train the classification and regression heads; see SliceDataset); their
    enhancement target is measured in the box's core. The challenge gives
    no acquisition times: the default 0, 35, 70, 180 s are recorded.
    """
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise DatasetError(f"{src}: the LLD-MMRI image folder does not exist")
    annotation = Path(annotation) if annotation else find_annotation(src)
    info = read_annotations(annotation)
    ref_k = reference_index(reference)
    report = ImportReport()
    patients = sorted(info)
    # the split is drawn among the patients whose annotation lists all four DCE series (those that
    # will be skipped for a missing phase would otherwise take test places)
    complete = [p for p in patients if set(LLD_PHASES) <= {e["phase"] for e in info[p]}]
    rng = np.random.default_rng(seed)
    test_patients = set(rng.permutation(complete)[: int(round(test_fraction * len(complete)))].tolist())
    records = []
    for patient in patients:
        by_phase: dict[str, dict] = {}
        for entry in info[patient]:
            name = LLD_PHASES.get(entry["phase"])
            if name is None:
                report.other_series += 1
            elif name in by_phase:
                report.notes.append(f"patient {patient}: a second {entry['phase']} series "
                                    f"({entry['seriesUID']}) ignored; the first is used")
            else:
                by_phase[name] = entry
        missing = [lld for lld, name in LLD_PHASES.items() if name not in by_phase]
        if missing:
            report.skipped_patients.append(f"{patient}: no {', '.join(missing)} series")
            continue
        entries = [by_phase[name] for name in PHASES]
        paths = [src / patient / e["studyUID"] / f"{e['seriesUID']}.nii.gz" for e in entries]
        absent = [str(p) for p in paths if not p.is_file()]
        if absent:
            report.skipped_patients.append(f"{patient}: series file missing: {absent[0]}")
            continue
        try:
            volumes = [_load_nifti(p) for p in paths]
            images, affine, grids = align_phases(volumes, [str(p) for p in paths], ref_k,
                                                 min_overlap=min_overlap)
        except (DatasetError, ValueError) as exc:
            report.skipped_patients.append(f"{patient}: {exc}")
            continue
        report.resampled_phases += sum(g.resampled for g in grids)
        split = "test" if patient in test_patients else "train"
        for index, lesion, box in _patient_lesions(entries, ref_k, volumes, affine, images.shape[1:],
                                                   patient, report):
            case_id = patient if index == "0" else f"{patient}_{index}"
            write_case(out, case_id, images, None, affine, split=split, dtype=dtype)
            core = box_core(images.shape[1:], box)
            records.append(json_ready({
                "case": case_id, "split": split, "class": int(lesion["category"]),
                "class_name": CLASS_NAMES[int(lesion["category"])], "lesion_box": box,
                "enhancement": [float(v) for v in relative_enhancement(images, core, phase_axis=0)],
                "phase_times_s": list(DEFAULT_PHASE_TIMES_S), "patient": patient,
                "source": [str(p) for p in paths],
                **({"resampled": [g.to_dict() for g in grids]} if any(g.resampled for g in grids) else {}),
            }))
            report.cases.append(case_id)
    if not records:
        raise DatasetError(f"{src}: no case could be imported:\n" + "\n".join(report.lines()))
    for folder in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    write_dataset_json(out, records, name="lld-mmri", intensity_storage=dtype,
                       description=f"imported from {src} with {annotation.name} by mtilib import lld-mmri")
    return read_dataset(out), report


def find_annotation(src: Path) -> Path:
    found = sorted(src.glob("*.json")) or sorted(src.parent.glob("*.json"))
    if len(found) != 1:
        raise DatasetError(f"{src}: pass the annotation JSON (--annotation); found {len(found)} candidates")
    return found[0]


def _patient_lesions(entries, ref_k, volumes, ref_affine, ref_shape, patient, report):
    """Yield ``(index, lesion, box on the reference grid)`` per lesion of a patient. The box comes
    from the reference series when it annotates the lesion, else from the first DCE series that
    does, mapped through the affines."""
    order = [ref_k] + [k for k in range(len(entries)) if k != ref_k]
    indices = sorted({i for e in entries for i in _lesions(e)}, key=lambda i: (len(i), i))
    for index in indices:
        where = f"{patient}/{index}"
        source = next((k for k in order if _box_of(_lesions(entries[k]).get(index)) is not None), None)
        if source is None:
            report.skipped_lesions.append(f"{where}: no 3D_box with {', '.join(BOX_KEYS)}")
            continue
        lesion = _lesions(entries[source])[index]
        category = lesion.get("category")
        if isinstance(category, str) and category.strip().isdigit():
            category = int(category)
        if not isinstance(category, int) or not 0 <= category < len(CLASS_NAMES):
            report.skipped_lesions.append(f"{where}: unknown category {category!r} (LLD-MMRI ids 0-6)")
            continue
        box = _box_of(lesion)
        shape = volumes[source][0].shape
        if np.any(box[:, 0] > box[:, 1]) or np.any(box[:, 1] < 0) or np.any(box[:, 0] > np.asarray(shape) - 1):
            report.skipped_lesions.append(f"{where}: 3D_box {box.astype(int).tolist()} lies outside its series "
                                          f"(shape {tuple(shape)}) or is inverted")
            continue
        mapped, clipped = map_box(box, volumes[source][1], ref_affine, ref_shape)
        if mapped is None:
            report.skipped_lesions.append(f"{where}: its box maps outside the reference grid")
            continue
        if clipped:
            report.notes.append(f"lesion {where}: box clipped to the volume")
        yield index, {**lesion, "category": category}, mapped


# --- a faithful miniature of the layout, from phantom cases (tests and notebook 11) ---------------

def _rotation_z(degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    r = np.eye(4)
    r[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    return r


def series_grids(shape, affine) -> dict[str, tuple[tuple[int, int, int], np.ndarray]]:
    """The grid of each DCE series of the miniature, as scanners export them differently:
    ``C-pre`` the phantom's own grid; ``C+A`` the same voxels with the first axis flipped (another
    orientation); ``C+V`` a matrix twice as fine in-plane; ``C+Delay`` an oblique grid, turned 8°
    about the slice axis around the volume's centre, with a slightly larger field of view."""
    shape = tuple(int(n) for n in shape)
    affine = np.asarray(affine, float)
    flip = np.array([[-1, 0, 0, shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    fine = affine.copy()
    fine[:3, :2] /= 2
    fine[:3, 3] -= (fine[:3, 0] + fine[:3, 1]) / 2  # the same field of view, half-size voxels
    centre = affine @ np.array([(shape[0] - 1) / 2, (shape[1] - 1) / 2, (shape[2] - 1) / 2, 1.0])
    to_centre = np.eye(4)
    to_centre[:3, 3] = centre[:3]
    from_centre = np.eye(4)
    from_centre[:3, 3] = -centre[:3]
    bigger = (shape[0] + 8, shape[1] + 8, shape[2])
    shift = np.eye(4)
    shift[:2, 3] = -4
    oblique = to_centre @ _rotation_z(8.0) @ from_centre @ affine @ shift
    return {"C-pre": (shape, affine), "C+A": (shape, affine @ flip),
            "C+V": ((shape[0] * 2, shape[1] * 2, shape[2]), fine), "C+Delay": (bigger, oblique)}


def write_miniature(cases, root, drop_phase: dict[int, str] | None = None,
                    extra_lesions: dict[int, list[dict]] | None = None) -> Path:
    """Write phantom cases as an LLD-MMRI-style study folder; ``-> the annotation JSON's path``.

    ``cases``: :class:`~mtilib.data.phantom.PhantomCase` s, one patient each (``MR<nnnnn>``, one
    study). Each patient gets the four DCE series on the grids of :func:`series_grids` (resampled
    with nibabel's own resampler, not this package's), a ``T2WI`` and a ``DWI`` series (copies of
    the pre-contrast phase: extra series the importer must skip), and per DCE series the box of the
    lesion on that series' grid (``3D_box``; the lesion label resampled nearest-neighbour) with the
    case's class as ``category``. ``drop_phase``: ``{patient number: LLD phase}`` left out (a missing
    phase); ``extra_lesions``: ``{patient number: [lesion dict, ...]}`` added to every series'
    annotation (for unknown categories, boxes outside the volume, a second lesion).
    """
    import nibabel as nib
    from nibabel.processing import resample_from_to

    root = Path(root)
    info = {}
    for n, case in enumerate(cases):
        patient, study = f"MR{n:05d}", f"1.2.840.{n}"
        entries = []
        label_img = nib.Nifti1Image(case.labels.astype(np.float32), case.affine)
        for k, (lld, (shape, affine)) in enumerate(series_grids(case.labels.shape, case.affine).items()):
            if (drop_phase or {}).get(n) == lld:
                continue
            source = nib.Nifti1Image(case.images[k].astype(np.float32), case.affine)
            data = np.asarray(resample_from_to(source, (shape, affine), order=1, mode="nearest").dataobj)
            labels = np.asarray(resample_from_to(label_img, (shape, affine), order=0, mode="constant").dataobj)
            series = f"{study}.{k + 1}"
            path = root / patient / study / f"{series}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(data.astype(np.float32), affine), path)
            ijk = np.argwhere(labels == 2)
            box = {f"{a}_{m}": int(getattr(ijk[:, i], m)()) for i, a in enumerate("xyz") for m in ("min", "max")}
            lesions = {"0": {"category": int(case.class_id), "bbox": {"3D_box": box}}}
            for j, extra in enumerate((extra_lesions or {}).get(n, []), start=1):
                lesions[str(j)] = extra
            entries.append({"studyUID": study, "seriesUID": series, "phase": lld, "annotation": {"lesion": lesions}})
        for k, other in enumerate(("T2WI", "DWI"), start=5):
            series = f"{study}.{k}"
            path = root / patient / study / f"{series}.nii.gz"
            nib.save(nib.Nifti1Image(case.images[0].astype(np.float32), case.affine), path)
            entries.append({"studyUID": study, "seriesUID": series, "phase": other, "annotation": {"lesion": {}}})
        info[patient] = entries
    path = root / "Annotation.json"
    path.write_text(json.dumps({"Annotation_info": info}, indent=1))
    return path

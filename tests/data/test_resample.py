"""Phases on different grids: resampled onto the reference phase's grid through the affines, checked
on real scanner files from nibabel's test data (an oblique int16 series, a left-anterior-superior
volume) against nibabel's own resampling, and on phantom cases through the import and predict routes."""

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from nibabel.processing import resample_from_to, resample_to_output

from mtilib.course import DEFAULT_DATA
from mtilib.data.io import DatasetError, align_phase_files, check_dataset, import_nifti_cases, load_case
from mtilib.data.phantom import PhantomConfig, generate_case
from mtilib.data.resample import align_phases, coverage

NIBABEL_DATA = os.path.join(os.path.dirname(nib.__file__), "tests", "data")


def _scanner_volume(name: str) -> nib.Nifti1Image:
    """A real scanner file of nibabel's test data, first volume, as a 3D image with its own affine."""
    img = nib.load(os.path.join(NIBABEL_DATA, name))
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4:
        data = data[..., 0]
    return nib.Nifti1Image(np.asarray(data, np.float32), img.affine)


def _save(img, path):
    nib.save(img, path)
    return path


@pytest.mark.parametrize("name", ["example4d.nii.gz", "anatomical.nii", "functional.nii"])
def test_a_reoriented_copy_comes_back_voxel_for_voxel(tmp_path, name):
    """The same voxels with axes flipped and permuted (nibabel's closest canonical RAS+ form): the
    affine says where each voxel is, so resampling onto the original grid restores it exactly.
    (example4d: an oblique int16 series; anatomical: left-anterior-superior, big-endian;
    functional: scaled integers, scl_slope 0.075 and scl_inter 3101, read through the scale.)"""
    ref = _scanner_volume(name)
    if name == "functional.nii":  # its first volume as stored: int16 voxels and the file's scale
        source = nib.load(os.path.join(NIBABEL_DATA, name))
        raw = np.asanyarray(source.dataobj.get_unscaled())[..., 0]
        header = source.header.copy()
        header.set_data_shape(raw.shape)
        ref = nib.Nifti1Image(raw, source.affine, header)
        ref.header.set_slope_inter(source.dataobj.slope, source.dataobj.inter)
    pre = _save(ref, tmp_path / "pre.nii.gz")
    canonical = nib.as_closest_canonical(nib.load(pre))  # from the file, so through its scale
    assert nib.aff2axcodes(canonical.affine) == ("R", "A", "S") != nib.aff2axcodes(ref.affine)
    paths = [pre, _save(canonical, tmp_path / "art.nii.gz")]
    if name == "functional.nii":
        stored = nib.load(paths[0])
        assert stored.get_data_dtype() == np.int16 and stored.dataobj.slope != 1 and stored.dataobj.inter != 0
    images, affine, report = align_phase_files(paths, "pre")
    np.testing.assert_allclose(images[0], nib.load(paths[0]).get_fdata(), rtol=1e-6)  # read through the scale
    np.testing.assert_allclose(affine, ref.affine)
    np.testing.assert_allclose(images[1], images[0], atol=1e-3 * float(np.abs(images[0]).max()))
    assert [g.resampled for g in report] == [False, True]
    assert report[1].axcodes == "RAS" and report[1].coverage == pytest.approx(1.0)


def test_an_oblique_series_on_another_grid_agrees_with_nibabel(tmp_path):
    """The oblique scanner series resampled by nibabel onto an axis-aligned 3 mm grid (another
    matrix, spacing and orientation), then brought back onto the oblique grid: the same result as
    nibabel's own resample_from_to, away from the field-of-view edges."""
    ref = _scanner_volume("example4d.nii.gz")
    other = resample_to_output(ref, voxel_sizes=(3.0, 3.0, 3.0), order=1)
    assert other.shape != ref.shape
    paths = [_save(ref, tmp_path / "pre.nii.gz"), _save(other, tmp_path / "venous.nii.gz")]
    images, _, report = align_phase_files(paths, 0)
    expected = np.asarray(resample_from_to(other, ref, order=1, mode="nearest").dataobj, np.float32)
    interior = (slice(8, -8), slice(8, -8), slice(3, -3))
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(images[1][interior], expected[interior], atol=1e-4 * scale)
    assert report[1].resampled and report[1].coverage > 0.9 and report[1].max_shift_mm > 1.0
    # and it still resembles the original series (3 mm blurs it, it does not move it)
    corr = np.corrcoef(images[1][interior].ravel(), images[0][interior].ravel())[0, 1]
    assert corr > 0.9


def test_a_phase_that_misses_the_reference_is_refused_naming_it(tmp_path):
    ref = _scanner_volume("anatomical.nii")
    far = ref.affine.copy()
    far[:3, 3] += 10_000.0  # ten metres away: another patient, or a broken header
    paths = [_save(ref, tmp_path / "pre.nii.gz"), _save(nib.Nifti1Image(ref.get_fdata(), far), tmp_path / "art.nii.gz")]
    with pytest.raises(DatasetError, match=r"art\.nii\.gz: its field of view does not overlap"):
        align_phase_files(paths, "pre")
    with pytest.raises(DatasetError, match="reference phase 'portal'"):
        align_phase_files(paths, "portal")
    assert coverage((10, 10, 10), np.eye(4), (10, 10, 10), np.eye(4)) == 1.0


def test_align_phases_keeps_label_values_and_the_reference_untouched():
    """On the grid already: copied bit for bit. A label map (order 0) keeps its values."""
    rng = np.random.default_rng(0)
    data = rng.random((6, 7, 5)).astype(np.float32)
    labels = rng.integers(0, 3, (6, 7, 5)).astype(np.uint8)
    shifted = np.eye(4)
    shifted[:3, 3] = [0.4, -0.3, 0.2]
    images, affine, report = align_phases([(data, np.eye(4)), (data, shifted)], ["a", "b"], reference=0)
    np.testing.assert_array_equal(images[0], data)
    from mtilib.data.resample import resample_volume

    moved = resample_volume(labels, shifted, labels.shape, np.eye(4), order=0)
    assert moved.dtype == np.uint8 and set(np.unique(moved)) <= {0, 1, 2}


def _phantom_on_other_grids(tmp_path):
    """A phantom case exported as a scanner might: the pre-contrast phase on the phantom's grid, the
    arterial phase reoriented (same voxels, axes flipped), the venous phase shifted by a third of a
    voxel in-plane, the delayed phase on a finer in-plane matrix; the label on the pre grid."""
    case = generate_case(5, "HCC", PhantomConfig.preset("samples"))
    folder = tmp_path / "raw"
    folder.mkdir()
    pre = nib.Nifti1Image(case.images[0].astype(np.float32), case.affine)
    flip_x = np.array([[-1, 0, 0, case.images.shape[1] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    flipped = nib.Nifti1Image(np.ascontiguousarray(case.images[1][::-1].astype(np.float32)), case.affine @ flip_x)
    shift = case.affine.copy()
    shift[:3, 3] += case.affine[:3, :3] @ np.array([1 / 3, 0.0, 0.0])
    venous = resample_from_to(nib.Nifti1Image(case.images[2].astype(np.float32), case.affine),
                              (case.images.shape[1:], shift), order=1, mode="nearest")
    fine = case.affine.copy()
    fine[:3, :2] /= 2
    fine_shape = (case.images.shape[1] * 2, case.images.shape[2] * 2, case.images.shape[3])
    delayed = resample_from_to(nib.Nifti1Image(case.images[3].astype(np.float32), case.affine),
                               (fine_shape, fine), order=1, mode="nearest")
    paths = [_save(img, folder / f"{name}.nii.gz")
             for img, name in zip((pre, flipped, venous, delayed), ("pre", "art", "venous", "delayed"))]
    label = _save(nib.Nifti1Image(case.labels.astype(np.uint8), case.affine), folder / "label.nii.gz")
    return case, paths, label


def test_import_with_a_reference_phase_round_trips_a_phantom(tmp_path):
    case, paths, label = _phantom_on_other_grids(tmp_path)
    with pytest.raises(DatasetError, match="shape|affine"):  # without --reference the grids must agree
        import_nifti_cases(tmp_path / "strict", [{"case": "c", "phases": paths, "label": label, "class": "HCC",
                                                  "split": "train"}])
    index = import_nifti_cases(tmp_path / "ds", [{"case": "c", "phases": paths, "label": label, "class": "HCC",
                                                  "split": "train", "reference": "pre"}])
    loaded = load_case(index, "c")
    np.testing.assert_allclose(loaded.affine, case.affine)
    np.testing.assert_array_equal(loaded.labels, case.labels)
    np.testing.assert_allclose(loaded.images[0], case.images[0], rtol=1e-5)
    np.testing.assert_allclose(loaded.images[1], case.images[1], atol=1e-3)  # reoriented: the same voxels
    liver = case.labels > 0
    for k in (2, 3):  # interpolated twice (there and back): close inside the liver
        error = np.abs(loaded.images[k] - case.images[k])[liver].mean() / case.images[k][liver].mean()
        assert error < 0.05, (k, error)
    record = loaded.record
    assert [g["resampled"] for g in record["resampled"]] == [False, True, True, True]
    np.testing.assert_allclose(record["enhancement"], case.enhancement_measured, atol=0.05)
    summary = check_dataset(tmp_path / "ds")
    assert summary["resampled_cases"] == 1


@pytest.mark.slow
def test_predict_resamples_onto_the_reference_and_writes_there(tmp_path):
    case, paths, _ = _phantom_on_other_grids(tmp_path)
    ckpt = DEFAULT_DATA.parent / "checkpoints" / "mtinet_course.pt"
    cmd = [sys.executable, "-m", "mtilib.cli", "predict", "--ckpt", str(ckpt), "--images", *map(str, paths),
           "--out", str(tmp_path / "pred")]
    bad = subprocess.run(cmd + ["--reference", "portal"], capture_output=True, text=True)
    assert bad.returncode == 1 and "reference phase 'portal'" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "pred").exists()  # refused before any work
    done = subprocess.run(cmd + ["--reference", "pre"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    mask = nib.load(tmp_path / "pred" / "lesion_mask.nii.gz")
    assert mask.shape == case.labels.shape
    np.testing.assert_allclose(mask.affine, case.affine, atol=1e-5)
    report = json.loads((tmp_path / "pred" / "prediction.json").read_text())
    assert report["reference_grid"] == "pre.nii.gz" and len(report["resampled"]) == 4
    dice = 2 * np.sum((np.asarray(mask.dataobj) > 0) & (case.labels == 2)) / (
        np.sum(np.asarray(mask.dataobj) > 0) + np.sum(case.labels == 2))
    assert dice > 0.6, dice

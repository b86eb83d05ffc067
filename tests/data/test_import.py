"""Importing a user's own NIfTI files into the package layout (notebook 11's route)."""

import nibabel as nib
import numpy as np
import pytest

from mtilib.data.enhancement import relative_enhancement
from mtilib.data.io import DatasetError, import_nifti_cases, load_case
from mtilib.data.phantom import PhantomConfig, generate_case


def _export(case, folder, names=("pre", "art", "pv", "del")):
    folder.mkdir(parents=True)
    paths = []
    for image, name in zip(case.images, names):
        path = folder / f"t1_{name}.nii.gz"
        nib.save(nib.Nifti1Image(image.astype(np.float32), case.affine), path)
        paths.append(path)
    label = folder / "labels.nii.gz"
    nib.save(nib.Nifti1Image(case.labels.astype(np.uint8), case.affine), label)
    return paths, label


def test_import_round_trip_and_real_data_enhancement(tmp_path):
    case = generate_case(3, "HCC", PhantomConfig.preset("quick"))
    phases, label = _export(case, tmp_path / "raw" / "patient_A")
    index = import_nifti_cases(tmp_path / "ds", [
        {"case": "patA", "phases": phases, "label": label, "class": "hcc", "split": "train",
         "phase_times_s": [0, 30, 65, 200]},
    ])
    loaded = load_case(index, "patA")
    np.testing.assert_allclose(loaded.images, case.images, rtol=1e-6)
    np.testing.assert_array_equal(loaded.labels, case.labels)
    np.testing.assert_allclose(loaded.affine, case.affine)
    assert loaded.record["class"] == 6 and loaded.record["phase_times_s"] == [0, 30, 65, 200]
    expected = relative_enhancement(case.images, case.labels == 2)
    np.testing.assert_allclose(loaded.record["enhancement"], expected, rtol=1e-5)


def test_import_refuses_bad_input_naming_the_file(tmp_path):
    case = generate_case(4, "cyst", PhantomConfig.preset("quick"))
    phases, label = _export(case, tmp_path / "raw")
    spec = {"case": "c1", "phases": phases, "label": label, "class": "cyst", "split": "train"}
    bad = tmp_path / "bad_labels.nii.gz"
    nib.save(nib.Nifti1Image(np.where(case.labels == 2, 3, case.labels).astype(np.uint8), case.affine), bad)
    with pytest.raises(DatasetError, match=r"bad_labels.nii.gz: label values \[3\]"):
        import_nifti_cases(tmp_path / "a", [{**spec, "label": bad}])
    shifted = tmp_path / "shifted.nii.gz"
    moved = case.affine.copy()
    moved[0, 3] += 10
    nib.save(nib.Nifti1Image(case.labels.astype(np.uint8), moved), shifted)
    with pytest.raises(DatasetError, match="shifted.nii.gz"):
        import_nifti_cases(tmp_path / "b", [{**spec, "label": shifted}])
    with pytest.raises(DatasetError, match="unknown lesion class"):
        import_nifti_cases(tmp_path / "c", [{**spec, "class": "adenoma"}])
    with pytest.raises(DatasetError, match="missing label"):
        import_nifti_cases(tmp_path / "d", [{k: v for k, v in spec.items() if k != "label"}])


def test_combine_masks_merges_liver_and_lesion_and_refuses_other_grids(tmp_path):
    from mtilib.data.io import combine_masks

    affine = np.diag([2.0, 2.0, 5.0, 1.0])
    liver = np.zeros((6, 6, 3), np.uint8)
    liver[1:5, 1:5] = 1
    lesion = np.zeros((6, 6, 3), np.int16)
    lesion[2:4, 2:4, 1] = 7  # any non-zero value marks the lesion
    lesion[0, 0, 0] = 1      # a lesion voxel outside the liver is still lesion
    nib.save(nib.Nifti1Image(liver, affine), tmp_path / "liver.nii.gz")
    nib.save(nib.Nifti1Image(lesion, affine), tmp_path / "lesion.nii.gz")
    out = combine_masks(tmp_path / "liver.nii.gz", tmp_path / "lesion.nii.gz", tmp_path / "labels.nii.gz")
    labels = np.asarray(nib.load(out).dataobj)
    np.testing.assert_allclose(nib.load(out).affine, affine)
    assert labels[2, 2, 1] == 2 and labels[0, 0, 0] == 2 and labels[1, 1, 0] == 1 and labels[5, 5, 2] == 0
    assert set(np.unique(labels)) == {0, 1, 2}
    nib.save(nib.Nifti1Image(lesion, np.diag([3.0, 2.0, 5.0, 1.0])), tmp_path / "moved.nii.gz")
    with pytest.raises(DatasetError, match=r"moved\.nii\.gz: affine differs from .*liver\.nii\.gz"):
        combine_masks(tmp_path / "liver.nii.gz", tmp_path / "moved.nii.gz", tmp_path / "x.nii.gz")

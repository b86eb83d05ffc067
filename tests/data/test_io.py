"""The nnU-Net layout: CLI round trip, readers, and one clear DatasetError for every kind of bad input."""

import gzip
import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from mtilib.cli import main
from mtilib.constants import CLASS_NAMES
from mtilib.data.io import (
    DatasetError,
    check_dataset,
    load_case,
    load_phase_images,
    mask_volume_ml,
    read_dataset,
    voxel_spacing,
    write_case,
)
from mtilib.data.phantom import PhantomConfig, generate_case

N_TRAIN, N_TEST = 7, 3


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A small data set written by the command line: 7 training (one per class) and 3 test cases."""
    root = tmp_path_factory.mktemp("phantom") / "ds"
    rc = main(["phantom", "--out", str(root), "--preset", "quick", "--cases", str(N_TRAIN),
               "--test-cases", str(N_TEST), "--seed", "5"])
    assert rc == 0
    return root


@pytest.fixture()
def ds(built, tmp_path):
    """A private copy to break."""
    root = tmp_path / "ds"
    shutil.copytree(built, root)
    return root


def _first(root, split="train"):
    return read_dataset(root).cases(split)[0]


def _rewrite(path, data, affine, dtype=np.float32):
    img = nib.Nifti1Image(np.asarray(data), affine)
    img.set_data_dtype(dtype)
    nib.save(img, str(path))


def _expect(root, *fragments, loader=None):
    """Reading (index + every case) must raise DatasetError naming every fragment."""
    with pytest.raises(DatasetError) as info:
        (loader or check_dataset)(root)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# ---------------------------------------------------------------- round trip


def test_layout_and_dataset_json(built):
    meta = json.loads((built / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "pre", "1": "arterial", "2": "venous", "3": "delayed"}
    assert meta["labels"] == {"background": 0, "liver": 1, "lesion": 2}
    assert meta["numTraining"] == N_TRAIN and meta["file_ending"] == ".nii.gz"
    block = meta["mtilib"]
    assert block["class_names"] == list(CLASS_NAMES) and block["phase_names"][0] == "pre"
    records = block["cases"]
    assert [r["split"] for r in records] == ["train"] * N_TRAIN + ["test"] * N_TEST
    assert [r["class"] for r in records[:N_TRAIN]] == list(range(7))  # round-robin classes
    for r in records:
        for key in ("case", "split", "class", "class_name", "enhancement", "phase_times_s",
                    "lesion_diameter_mm", "lesion_volume_ml", "atypical", "seed", "settings"):
            assert key in r
        split_dir = "Tr" if r["split"] == "train" else "Ts"
        for k in range(4):
            assert (built / f"images{split_dir}" / f"{r['case']}_{k:04d}.nii.gz").is_file()
        assert (built / f"labels{split_dir}" / f"{r['case']}.nii.gz").is_file()
    img = nib.load(str(built / "imagesTr" / f"{records[0]['case']}_0000.nii.gz"))
    np.testing.assert_allclose(img.header.get_zooms(), PhantomConfig.preset("quick").spacing_mm, rtol=1e-6)
    assert img.get_data_dtype() == np.int16  # scaled int16 by default


def test_reader_returns_what_the_generator_made(built):
    index = read_dataset(built)
    assert index.cases("train") == [f"phantom_{i:03d}" for i in range(N_TRAIN)]
    assert len(index.cases("test")) == N_TEST and len(index) == N_TRAIN + N_TEST
    for case_id in index.cases():
        data = load_case(index, case_id)
        rec = data.record
        truth = generate_case(rec["seed"], rec["class"], PhantomConfig.from_dict(rec["settings"]))
        assert data.images.dtype == np.float32 and data.labels.dtype == np.uint8
        np.testing.assert_array_equal(data.labels, truth.labels)
        for p in range(4):  # int16 with scl_slope: error within half a quantisation step
            step = float(np.ptp(truth.images[p])) / 65535
            assert np.abs(data.images[p] - truth.images[p]).max() <= 0.51 * step + 1e-6
        np.testing.assert_allclose(data.affine, truth.affine, atol=1e-5)
        np.testing.assert_allclose(data.spacing, truth.spacing, rtol=1e-6)
        np.testing.assert_array_equal(data.enhancement, truth.enhancement)  # JSON floats round-trip
        np.testing.assert_array_equal(data.enhancement_by_slice, truth.enhancement_by_slice)  # NaN as null
        np.testing.assert_array_equal(data.phase_times_s, truth.phase_times_s)
        assert data.class_id == truth.class_id and rec["class_name"] == truth.class_name
        assert rec["atypical"] == truth.atypical
        assert rec["lesion_diameter_mm"] == pytest.approx(truth.lesion_diameter_mm, abs=1e-3)


def test_float32_storage_is_exact(tmp_path):
    case = generate_case(2, "FNH", PhantomConfig.preset("quick"))
    write_case(tmp_path, "c1", case.images, case.labels, case.affine, dtype="float32")
    paths = [tmp_path / "imagesTr" / f"c1_{k:04d}.nii.gz" for k in range(4)]
    images, affine = load_phase_images(paths)
    np.testing.assert_array_equal(images, case.images)
    np.testing.assert_allclose(affine, case.affine, atol=1e-5)


def test_voxel_spacing_matches_nibabel_zooms_for_an_oblique_affine():
    from scipy.spatial.transform import Rotation

    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", [20, -35, 50], degrees=True).as_matrix() @ np.diag([0.7, 1.4, 5.0])
    affine[:3, 3] = [-100, 20, 3]
    img = nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), affine)
    np.testing.assert_allclose(voxel_spacing(affine), img.header.get_zooms(), rtol=1e-6)
    mask = np.zeros((4, 5, 6), bool)
    mask[1:3, 1:4, 2] = True  # 6 voxels of 0.7 × 1.4 × 5 mm³ = 4.9 mm³
    assert mask_volume_ml(mask, voxel_spacing(affine)) == pytest.approx(6 * 4.9 / 1000)


def test_load_phase_images_for_prediction(built, tmp_path):
    index = read_dataset(built)
    case_id = index.cases("test")[0]
    expected = load_case(index, case_id)
    images, affine = load_phase_images(index.image_paths(case_id))
    np.testing.assert_array_equal(images, expected.images)
    # a single 4D file with the phases last works too
    four_d = tmp_path / "case_4d.nii.gz"
    nib.save(nib.Nifti1Image(np.moveaxis(expected.images, 0, -1), affine), str(four_d))
    images4, _ = load_phase_images(four_d)
    np.testing.assert_array_equal(images4, expected.images)
    with pytest.raises(DatasetError, match="expected 4 phases"):
        load_phase_images(index.image_paths(case_id)[:3])
    with pytest.raises(DatasetError, match="missing"):
        load_phase_images([tmp_path / "nope.nii.gz"] * 4)


def test_cli_refuses_to_overwrite_without_force(built, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    args = ["phantom", "--out", str(out), "--preset", "quick", "--cases", "2", "--test-cases", "1"]
    assert main(args) == 3  # refused: finished work is never replaced without --force
    assert "not empty" in capsys.readouterr().err
    assert not (out / "dataset.json").exists()
    assert main(args + ["--force"]) == 0
    assert (out / "notes.txt").read_text() == "keep me"  # --force replaces the data set only
    assert len(read_dataset(out)) == 3
    assert main(args + ["--force", "--classes", "HCC", "0"]) == 0  # names and ids
    assert {r["class"] for r in read_dataset(out).records} == {6, 0}


def test_cli_dataset_check(built, ds, capsys):
    assert main(["dataset", "check", str(built)]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "hemangioma" in out and "HCC" in out and "48x48x8" in out
    (ds / "imagesTr" / f"{_first(ds)}_0001.nii.gz").unlink()
    assert main(["dataset", "check", str(ds)]) == 1
    err = capsys.readouterr().err
    assert "invalid data set" in err and "_0001.nii.gz" in err


def test_check_summary(built):
    summary = check_dataset(built)
    assert summary["cases"] == N_TRAIN + N_TEST
    assert sum(summary["counts"]["train"].values()) == N_TRAIN
    assert summary["shapes"] == {"48x48x8": N_TRAIN + N_TEST}
    assert set(summary["enhancement"]) <= set(CLASS_NAMES)
    assert summary["enhancement"]["cyst"]["max"] == [0.0, 0.0, 0.0]


# ---------------------------------------------------------------- every bad input


def test_missing_phase_file(ds):
    case = _first(ds)
    (ds / "imagesTr" / f"{case}_0002.nii.gz").unlink()
    _expect(ds, f"{case}_0002.nii.gz", "missing phase file", loader=read_dataset)


def test_missing_label_file(ds):
    case = _first(ds, "test")
    (ds / "labelsTs" / f"{case}.nii.gz").unlink()
    _expect(ds, f"labelsTs/{case}.nii.gz", "missing label file", loader=read_dataset)


def test_phase_with_another_shape(ds):
    case = _first(ds)
    path = ds / "imagesTr" / f"{case}_0001.nii.gz"
    img = nib.load(str(path))
    _rewrite(path, img.get_fdata()[:, :, :-1], img.affine)
    _expect(ds, f"{case}_0001.nii.gz", "shape (48, 48, 7) differs")


def test_phase_with_another_affine(ds):
    case = _first(ds)
    path = ds / "imagesTr" / f"{case}_0003.nii.gz"
    img = nib.load(str(path))
    affine = img.affine.copy()
    affine[0, 3] += 1.0  # shifted by 1 mm
    _rewrite(path, img.get_fdata(), affine)
    _expect(ds, f"{case}_0003.nii.gz", "affine differs", "1 mm")


@pytest.mark.parametrize("bad_value, word", [(np.nan, "NaN"), (np.inf, "infinite")])
def test_non_finite_voxels(ds, bad_value, word):
    case = _first(ds)
    path = ds / "imagesTr" / f"{case}_0000.nii.gz"
    img = nib.load(str(path))
    data = img.get_fdata().astype(np.float32)
    data[3, 4, 5] = bad_value
    _rewrite(path, data, img.affine)
    message = _expect(ds, f"{case}_0000.nii.gz", "non-finite")
    assert f"1 {word}" in message or f"({word}" in message or word in message


def test_label_value_out_of_range(ds):
    case = _first(ds)
    path = ds / "labelsTr" / f"{case}.nii.gz"
    img = nib.load(str(path))
    labels = np.asanyarray(img.dataobj).copy()
    labels[0, 0, 0] = 5
    _rewrite(path, labels, img.affine, np.uint8)
    _expect(ds, f"labelsTr/{case}.nii.gz", "label values outside", "[5]")


def test_label_shape_differs_from_images(ds):
    case = _first(ds)
    path = ds / "labelsTr" / f"{case}.nii.gz"
    img = nib.load(str(path))
    _rewrite(path, np.asanyarray(img.dataobj)[:40], img.affine, np.uint8)
    _expect(ds, f"labelsTr/{case}.nii.gz", "shape (40, 48, 8) differs")


def test_class_id_out_of_range(ds):
    meta = json.loads((ds / "dataset.json").read_text())
    meta["mtilib"]["cases"][2]["class"] = 9
    (ds / "dataset.json").write_text(json.dumps(meta))
    _expect(ds, "dataset.json", meta["mtilib"]["cases"][2]["case"], "class id 9 is out of range")


def test_truncated_nifti(ds):
    case = _first(ds)
    path = ds / "imagesTr" / f"{case}_0002.nii.gz"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    _expect(ds, f"{case}_0002.nii.gz", "cannot read the NIfTI file")


def test_corrupt_gzip(ds):
    case = _first(ds)
    path = ds / "labelsTr" / f"{case}.nii.gz"
    path.write_bytes(gzip.compress(b"this is not a NIfTI header")[:-4] + b"junk")
    _expect(ds, f"labelsTr/{case}.nii.gz", "cannot read the NIfTI file")


def test_dataset_json_missing(ds):
    (ds / "dataset.json").unlink()
    _expect(ds, "dataset.json", "missing", loader=read_dataset)


def test_dataset_json_not_json(ds):
    (ds / "dataset.json").write_text('{"channel_names": {"0": "pre"')
    _expect(ds, "dataset.json", "not valid JSON", loader=read_dataset)


@pytest.mark.parametrize("breakage, fragment", [
    (lambda m: m.pop("labels"), "missing key 'labels'"),
    (lambda m: m["mtilib"].pop("cases"), "missing key 'mtilib.cases'"),
    (lambda m: m.update(numTraining=99), "numTraining is 99"),
    (lambda m: m.update(labels={"background": 0, "lesion": 1}), "labels must be"),
    (lambda m: m.update(file_ending=".nii"), "file_ending"),
    (lambda m: m["mtilib"]["cases"][0].update(split="validation"), "split must be"),
    (lambda m: m["mtilib"]["cases"][0].update(enhancement=[1.0]), "enhancement must be"),
    (lambda m: m["mtilib"]["cases"][0].update(enhancement_by_slice=[None, [1.0]]), "enhancement_by_slice must be"),
    (lambda m: m["mtilib"]["cases"][1].update(case=m["mtilib"]["cases"][0]["case"]), "listed twice"),
    (lambda m: m["channel_names"].update({"3": "late"}), "disagree"),
])
def test_dataset_json_malformed(ds, breakage, fragment):
    meta = json.loads((ds / "dataset.json").read_text())
    breakage(meta)
    (ds / "dataset.json").write_text(json.dumps(meta))
    _expect(ds, "dataset.json", fragment, loader=read_dataset)


def test_enhancement_by_slice_needs_one_row_per_slice(ds):
    meta = json.loads((ds / "dataset.json").read_text())
    meta["mtilib"]["cases"][0]["enhancement_by_slice"] = [None, None]
    (ds / "dataset.json").write_text(json.dumps(meta))
    _expect(ds, "enhancement_by_slice", "has 2 rows", meta["mtilib"]["cases"][0]["case"])


def test_unlisted_file_is_not_skipped(ds):
    case = _first(ds)
    shutil.copy(ds / "imagesTr" / f"{case}_0000.nii.gz", ds / "imagesTr" / "stray_0000.nii.gz")
    _expect(ds, "stray_0000.nii.gz", "not accounted for", loader=read_dataset)
    (ds / "imagesTr" / "stray_0000.nii.gz").unlink()
    shutil.copy(ds / "imagesTr" / f"{case}_0000.nii.gz", ds / "imagesTr" / f"{case}_0004.nii.gz")
    _expect(ds, f"{case}_0004.nii.gz", "not accounted for", loader=read_dataset)


def test_missing_folder(tmp_path):
    _expect(tmp_path / "nothing", "does not exist", loader=read_dataset)

"""LLD-MMRI import, on a faithful miniature of its layout written from phantom cases (the real data
cannot be downloaded here): separate series on different grids (flipped, finer, oblique), extra
non-DCE series, a missing phase, boxes, an unknown category, a second lesion, a box outside."""

import json

import numpy as np
import pytest

from mtilib.data.io import check_dataset, load_case
from mtilib.data.lldmmri import import_lld_mmri, map_box, series_grids, write_miniature
from mtilib.data.phantom import PhantomConfig, generate_case
from mtilib.train import load_volumes


def _truth_box(labels):
    ijk = np.argwhere(labels == 2)
    return [[int(ijk[:, a].min()), int(ijk[:, a].max())] for a in range(3)]


@pytest.fixture(scope="module")
def miniature(tmp_path_factory):
    cfg = PhantomConfig.preset("samples")
    cases = [generate_case(40 + n, cls, cfg) for n, cls in enumerate(("HCC", "cyst", "FNH", "ICC", "metastasis"))]
    root = tmp_path_factory.mktemp("lld") / "images"
    second = {"category": 4, "bbox": {"3D_box": {"x_min": 5, "x_max": 9, "y_min": 5, "y_max": 9, "z_min": 1,
                                                 "z_max": 2}}}
    annotation = write_miniature(cases, root, drop_phase={2: "C+V"}, extra_lesions={
        0: [{"category": 9, "bbox": second["bbox"]}],                       # unknown category
        1: [second],                                                         # a second lesion
        3: [{"category": 1, "bbox": {"3D_box": {"x_min": 500, "x_max": 510, "y_min": 5, "y_max": 9,
                                                 "z_min": 1, "z_max": 2}}}],  # outside the volume
    })
    return cases, root, annotation


def test_series_grids_differ_as_scanners_export_them():
    case = generate_case(1, "HCC", PhantomConfig.preset("samples"))
    grids = series_grids(case.labels.shape, case.affine)
    import nibabel as nib

    assert len({tuple(s) for s, _ in grids.values()}) == 3
    assert nib.aff2axcodes(grids["C+A"][1]) != nib.aff2axcodes(grids["C-pre"][1])
    assert abs(grids["C+Delay"][1][0, 1]) > 0.1  # oblique


def test_import_round_trip(miniature, tmp_path):
    cases, root, annotation = miniature
    index, report = import_lld_mmri(root, tmp_path / "ds", annotation=annotation, test_fraction=0.4, seed=1)
    # one case per lesion; patient 2 (no C+V) skipped; the unknown category and the box outside reported
    assert sorted(report.cases) == ["MR00000", "MR00001", "MR00001_1", "MR00003", "MR00004"]
    assert any(s.startswith("MR00002: no C+V") for s in report.skipped_patients)
    assert any("MR00000/1: unknown category 9" in s for s in report.skipped_lesions)
    assert any("MR00003/1" in s and "outside" in s for s in report.skipped_lesions)
    assert report.other_series == 2 * len(cases) and report.resampled_phases == 3 * 4
    for n in (0, 1, 3, 4):
        case = load_case(index, f"MR{n:05d}")
        assert case.labels is None and case.class_id == cases[n].class_id
        assert case.record["lesion_box"] == _truth_box(cases[n].labels)  # the reference series' own box
        np.testing.assert_allclose(case.affine, cases[n].affine)
        np.testing.assert_allclose(case.images[0], cases[n].images[0], atol=1e-3 * cases[n].images[0].max())
        liver = cases[n].labels > 0
        for k in (1, 2, 3):  # resampled there (nibabel) and back (mtilib): close inside the liver
            err = np.abs(case.images[k] - cases[n].images[k])[liver].mean() / cases[n].images[k][liver].mean()
            assert err < 0.06, (n, k, err)
        assert len(case.enhancement) == 3 and np.all(np.isfinite(case.enhancement))
    assert load_case(index, "MR00001_1").record["lesion_box"] == [[5, 9], [5, 9], [1, 2]]
    splits = {r["patient"]: r["split"] for r in index.records}
    assert set(splits.values()) == {"train", "test"}
    assert all(r["split"] == splits[r["patient"]] for r in index.records)  # a patient's lesions stay together
    summary = check_dataset(tmp_path / "ds")
    assert summary["box_labelled_cases"] == 5 and summary["resampled_cases"] == 5
    volumes = load_volumes(tmp_path / "ds", "train")
    assert volumes and all(v.labels is None and v.lesion_box is not None for v in volumes)


def test_boxes_map_through_the_affines(miniature):
    """The box annotated on the flipped arterial series lands on the reference box exactly; the box
    on the oblique delayed series maps to a box that holds the reference one (within a voxel)."""
    cases, _, _ = miniature
    case = cases[0]
    truth = np.array(_truth_box(case.labels))
    grids = series_grids(case.labels.shape, case.affine)
    shape, flipped = grids["C+A"]
    n = case.labels.shape[0] - 1
    box_a = np.array([[n - truth[0, 1], n - truth[0, 0]], truth[1], truth[2]], float)
    mapped, clipped = map_box(box_a, flipped, case.affine, case.labels.shape)
    assert mapped == truth.tolist() and not clipped
    import nibabel as nib
    from nibabel.processing import resample_from_to

    shape, oblique = grids["C+Delay"]
    labels = np.asarray(resample_from_to(nib.Nifti1Image(case.labels.astype(np.float32), case.affine),
                                         (shape, oblique), order=0).dataobj)
    mapped, _ = map_box(np.array(_truth_box(labels), float), oblique, case.affine, case.labels.shape)
    mapped = np.array(mapped)
    assert np.all(mapped[:, 0] <= truth[:, 0] + 1) and np.all(mapped[:, 1] >= truth[:, 1] - 1)
    assert np.all(mapped[:, 1] - mapped[:, 0] <= truth[:, 1] - truth[:, 0] + 6)
    assert map_box(np.array([[900.0, 950], [0, 3], [0, 1]]), case.affine, case.affine, case.labels.shape)[0] is None


def test_the_command_line_imports_refuses_to_overwrite_and_names_bad_input(miniature, tmp_path, capsys):
    from mtilib.cli import main

    _, root, annotation = miniature
    args = ["import", "lld-mmri", str(root), "--out", str(tmp_path / "ds")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "5 case(s) written" in out and "labelled by a lesion box (no mask): 5" in out
    assert main(args) == 3 and "--force" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"patients": {}}))
    assert main(args + ["--force", "--annotation", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "bad.json" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "ds" / "dataset.json").exists()  # refused before anything was removed


@pytest.mark.slow
def test_training_on_a_mixed_mask_and_box_set_then_predict_and_evaluate(miniature, tmp_path):
    """Masks (six sample phantom cases) and boxes (the imported miniature) in one training set: a short
    run trains, validation scores Dice on the mask cases only, and an imported case is predicted."""
    import math

    from mtilib.course import DEFAULT_DATA
    from mtilib.train import TrainConfig, evaluate_cases, predict_case, train

    _, root, annotation = miniature
    index, _ = import_lld_mmri(root, tmp_path / "ds", annotation=annotation, test_fraction=0.0)
    boxes = load_volumes(tmp_path / "ds", "train")
    masks = load_volumes(DEFAULT_DATA, "train")
    cfg = TrainConfig.preset("quick")
    cfg.model.width, cfg.optim.epochs, cfg.deterministic = 4, 1, True
    cfg.precision, cfg.channels_last = "fp32", False
    result = train(cfg, None, tmp_path / "run", train_volumes=masks[:6] + boxes[:-1],
                   val_volumes=masks[-3:] + boxes[-1:], log=lambda *a, **k: None, progress=False)
    record = result.history[-1]
    assert all(math.isfinite(record[k]) for k in ("loss_seg", "loss_reg", "loss_cls", "loss_total"))
    metrics, predictions = evaluate_cases(result_model(tmp_path / "run"), masks[-3:] + boxes[-1:], 64)
    summary = metrics.summary()
    # Dice over the three mask cases only (a box has no mask to score); enhancement and class over all four
    assert summary["n_cases"] == 4 and summary["segmentation"]["n_cases"] == 3
    assert summary["regression"]["n_cases"] == 4 and summary["classification"]["n_cases"] == 4
    pred = predict_case(result_model(tmp_path / "run"), boxes[0], 64)
    assert pred.label_map.shape == boxes[0].images.shape[1:] and pred.class_probs.shape == (7,)


def result_model(run):
    from mtilib.train import load_model

    return load_model(run / "last.pt")[0]

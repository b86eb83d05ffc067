"""The results table machinery on a tiny experiment: data, runs, caching, aggregation, markdown."""

import json

import pytest

from mtilib.results import SHIFTS, ResultsPreset, aggregate, fingerprint, run_results

pytestmark = pytest.mark.slow


def test_results_table_on_a_tiny_experiment(tmp_path):
    tiny = ResultsPreset(phantom_preset="quick", train_preset="quick", width=4, image_size=32, epochs=2,
                         batch_size=8, cases_per_class=3, test_per_class=1, patience=1)
    out = tmp_path / "results.md"
    logs = []
    rows = run_results(out, "results", seeds=(0, 1), networks=["mtinet", "unet", "cls_only"],
                       work=tmp_path / "work", log=logs.append, preset=tiny, jobs=2)  # two worker processes
    assert [r["network"] for r in rows] == ["mtinet", "unet", "cls_only"]
    _, unet, cls_only = rows
    assert unet["seeds"] == 2 and unet["dice"][0] is not None and unet["accuracy"] == (None, None)
    assert cls_only["dice"] == (None, None) and cls_only["accuracy"][0] is not None
    assert set(cls_only["per_class_recall"]) == {"hemangioma", "ICC", "abscess", "metastasis", "cyst", "FNH", "HCC"}
    text = out.read_text()
    assert "| unet |" in text and "| cls_only |" in text and "±" in text and "make results" in text
    assert "seeds 0, 1." in text  # the seeds that ran, not the default three
    assert "at most 2" in text and "epochs (of max)" in text  # early stopping under one maximum
    assert all(1 <= r["epochs"][0] <= 2 and r["max_epochs"] == 2 for r in rows)
    # paired tests against MTI-Net over (case, seed) pairs, and every shifted test set
    assert "Against MTI-Net: paired tests" in text and "Wilcoxon" in text and "McNemar" in text
    assert "Robustness under acquisition shift" in text
    for shift in SHIFTS:
        assert shift in text
    assert "96×96×16 voxels" in text  # the quick preset's 48×48×8 matrix doubled
    assert "Pooled means with 95 % confidence intervals" in text
    data = json.loads(out.with_suffix(".json").read_text())
    assert len(data["runs"]) == 6
    assert {(p["network"], p["metric"]) for p in data["paired"]} >= {("unet", "dice"), ("cls_only", "accuracy")}
    assert {(e["network"], e["shift"]) for e in data["robustness"]} == {(n, s) for n in ("mtinet", "unet", "cls_only")
                                                                        for s in SHIFTS}
    assert all("cases" not in r for r in data["runs"])  # per-case values stay in the work folder
    (folder,) = (tmp_path / "work" / "results").iterdir()  # one folder per preset and phantom fingerprint
    assert folder.name == fingerprint(tiny)
    cached = json.loads((folder / "mtinet_seed0.json").read_text())
    assert len(cached["cases"]["test"]) == 7 and set(cached["cases"]) == {"test", *SHIFTS}
    index = json.loads((folder / "data" / "dataset.json").read_text())
    splits = [c["split"] for c in index["mtilib"]["cases"]]
    assert splits.count("train") == 14 and splits.count("test") == 7

    # a second invocation reuses every finished run (nothing retrained)
    logs.clear()
    again = run_results(out, "results", seeds=(0, 1), networks=["mtinet", "unet", "cls_only"],
                        work=tmp_path / "work", log=logs.append, preset=tiny)
    assert not any("seed" in line and ": " in line and " s," in line for line in logs)
    assert again == rows


def test_compare_to_reference_respects_direction_and_noise():
    from mtilib.results import compare_to_reference, results_table

    def row(network, dice, mae, acc):
        empty = (None, None)
        return {"network": network, "dice": dice, "hd95_mm": empty, "enhancement_mae": mae, "accuracy": acc,
                "macro_f1": empty, "auc": empty}

    rows = [row("mtinet", (0.80, 0.01), (0.20, 0.01), (0.80, 0.03)),
            row("no_tim", (0.70, 0.01), (0.10, 0.01), (0.82, 0.03)),   # Dice worse, MAE better (lower)
            row("seg_only", (0.81, 0.02), (None, None), (None, None))]
    verdicts = {(c["network"], c["metric"]): c for c in compare_to_reference(rows)}
    assert verdicts[("no_tim", "dice")]["verdict"] == "worse"
    assert verdicts[("no_tim", "enhancement_mae")]["verdict"] == "better"
    assert verdicts[("no_tim", "accuracy")]["verdict"] == "within noise"   # 0.02 < hypot(0.03, 0.03)
    assert abs(verdicts[("no_tim", "accuracy")]["noise"] - (0.03 ** 2 * 2) ** 0.5) < 1e-12
    assert verdicts[("seg_only", "dice")]["verdict"] == "within noise"
    assert ("seg_only", "accuracy") not in verdicts                        # no such task
    table = results_table(rows)
    assert table[2]["accuracy"] == "–" and table[0]["Dice"] == "0.800 ± 0.010"
    with pytest.raises(ValueError, match="reference network 'mtinet'"):
        compare_to_reference(rows[1:])


def _record(network, seed, classes, dice=0.8, collapsed=None):
    """A hand-made run record with per-case values on the test set."""
    cases = []
    for k, pred in enumerate(classes):
        c = {"case": k, "dice": dice + 0.01 * (k % 3), "lesion_found": True, "pred_class": pred,
             "true_class": k % 7, "correct": pred == k % 7}
        cases.append(c)
    acc = sum(c["correct"] for c in cases) / len(cases)
    return {"network": network, "seed": seed, "train_seconds": 60.0, "parameters": 1000, "epochs_run": 3,
            "max_epochs": 8, "best_epoch": 2, "per_class_recall": None,
            "headline": {"dice": dice, "accuracy": acc, "enhancement_mae": 0.1, "hd95_mm": 5.0, "macro_f1": acc,
                         "auc": 0.9},
            "collapsed": collapsed or {}, "cases": {"test": cases}}


def test_collapsed_tasks_are_reported_as_failed_not_averaged():
    from mtilib.results import collapse_of, paired_against, results_table

    truth = [k % 7 for k in range(14)]
    constant = [6] * 14
    assert "cls" in collapse_of(_record("cls_only", 0, constant)["cases"]["test"])
    assert collapse_of(_record("mtinet", 0, truth)["cases"]["test"]) == {}
    records = [_record("mtinet", s, truth) for s in (0, 1)]
    records += [_record("multitask", s, constant, collapsed=collapse_of(_record("x", s, constant)["cases"]["test"]))
                for s in (0, 1)]
    rows = aggregate(records)
    multitask = rows[1]
    assert "class 6" in multitask["failed"]["cls"]
    table = results_table(rows)
    assert table[1]["accuracy"] == "failed" and table[1]["macro-F1"] == "failed"
    assert table[1]["Dice"].startswith("0.800")  # the task that works is still reported
    assert table[0]["epochs (of max)"] == "3.0 (8)"
    paired = {p["metric"]: p for p in paired_against(records)}
    assert paired["accuracy"]["failed"] == ["multitask"]
    assert paired["dice"]["failed"] == [] and paired["dice"]["n_pairs"] == 28


def test_lesion_roi_baseline_trains_on_true_boxes_and_tests_on_predicted_ones(tmp_path):
    from mtilib.results import make_data, make_shift_data, run_one
    from mtilib.train import load_checkpoint

    tiny = ResultsPreset(phantom_preset="quick", train_preset="quick", width=4, image_size=32, epochs=1,
                         batch_size=8, cases_per_class=3, test_per_class=1, roi_size=16)
    work = tmp_path / "work"
    data = make_data(work / "data", tiny, log=lambda *a: None)
    shifts = {k: v for k, v in make_shift_data(work / "shifts", tiny, log=lambda *a: None).items() if "SNR" in k}
    record = run_one("roi", 0, tiny, data, work, log=lambda *a: None, shift_data=shifts)
    assert (work / "seg_only_seed0.json").exists()  # its boxes come from the segmentation-only run
    state = load_checkpoint(work / "runs" / "roi_seed0" / "best.pt")
    assert state["config"]["data"]["image_size"] == 16  # crops resized to roi_size
    assert set(record["cases"]) == {"test", "SNR 15"}
    for case in record["cases"]["test"]:
        assert {"abs_err", "correct", "box_found"} <= set(case) and "dice" not in case
    assert record["headline"]["accuracy"] is not None and "dice" not in record["headline"]


def test_bad_arguments_are_refused_before_any_data_is_generated(tmp_path):
    with pytest.raises(ValueError, match="unknown network 'nonsense'"):
        run_results(tmp_path / "r.md", networks=["nonsense"], work=tmp_path / "work")
    with pytest.raises(ValueError, match="jobs must be at least 1"):
        run_results(tmp_path / "r.md", jobs=0, work=tmp_path / "work")
    assert not (tmp_path / "work").exists() and not (tmp_path / "r.md").exists()

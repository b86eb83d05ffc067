"""The results table machinery on a tiny experiment: data, runs, caching, aggregation, markdown."""

import json

import pytest

from mtilib.results import ResultsPreset, aggregate, run_results

pytestmark = pytest.mark.slow


def test_results_table_on_a_tiny_experiment(tmp_path):
    tiny = ResultsPreset(phantom_preset="quick", train_preset="quick", width=4, image_size=32, epochs=1,
                         batch_size=8, cases_per_class=3, test_per_class=1)
    out = tmp_path / "results.md"
    logs = []
    rows = run_results(out, "results", seeds=(0, 1), networks=["unet", "cls_only"], work=tmp_path / "work",
                       log=logs.append, preset=tiny)
    assert [r["network"] for r in rows] == ["unet", "cls_only"]
    unet, cls_only = rows
    assert unet["seeds"] == 2 and unet["dice"][0] is not None and unet["accuracy"] == (None, None)
    assert cls_only["dice"] == (None, None) and cls_only["accuracy"][0] is not None
    assert set(cls_only["per_class_recall"]) == {"hemangioma", "ICC", "abscess", "metastasis", "cyst", "FNH", "HCC"}
    text = out.read_text()
    assert "| unet |" in text and "| cls_only |" in text and "±" in text and "make results" in text
    assert "seeds 0, 1." in text  # the seeds that ran, not the default three
    assert "Against MTI-Net" not in text  # no MTI-Net row in this subset, so no comparison section
    data = json.loads(out.with_suffix(".json").read_text())
    assert len(data["runs"]) == 4
    index = json.loads((tmp_path / "work" / "results" / "data" / "dataset.json").read_text())
    splits = [c["split"] for c in index["mtilib"]["cases"]]
    assert splits.count("train") == 14 and splits.count("test") == 7

    # a second invocation reuses every finished run (nothing retrained)
    logs.clear()
    again = run_results(out, "results", seeds=(0, 1), networks=["unet", "cls_only"], work=tmp_path / "work",
                        log=logs.append, preset=tiny)
    assert not any("seed" in line and ": " in line and " s |" in line for line in logs)
    assert again == aggregate(data["runs"])


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

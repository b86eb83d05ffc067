"""The paper-style results table on the phantom (``make results`` -> ``docs/results.md``).

238 phantom cases (the paper's cohort size), 34 per class, split by case and stratified by class
into 168 training and 70 test cases. Every network of :data:`mtilib.models.BASELINES` (MTI-Net,
its ablations, the plain multi-task network, three single-task networks, the early-fusion U-Net)
is trained with 3 seeds under one rule: until its validation score (20 % of the training cases,
drawn per seed) has not improved for ``patience`` epochs, within the same maximum of epochs; the
table states the epochs each used. Every run is evaluated per case on the test cases and on the
same cases acquired differently (:data:`SHIFTS`: other phase times, lower SNR, misregistration,
another matrix).

The report gives mean ± standard deviation over seeds, bootstrap 95 % intervals of the pooled
per-case means (whole cases resampled), paired comparisons against MTI-Net over every (case, seed)
pair (Wilcoxon signed-rank for Dice and absolute enhancement error, exact McNemar for
correctness; :mod:`mtilib.stats`), the drop under each shift, and per-class recall. A network whose
outputs collapse to a constant (:func:`mtilib.stats.collapse_reason`) is reported as failed for
that task, with the reason, never averaged as a result.

Each finished run writes its own JSON under the work folder and is skipped when the command is
run again, so an interrupted table loses no finished run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtilib.constants import CLASS_NAMES, LESION
from mtilib.data.dataset import CaseVolume, crop_volume, lesion_box
from mtilib.data.io import read_dataset, write_dataset
from mtilib.data.phantom import PhantomConfig, derive_seed, generate_case, iter_cases
from mtilib.metrics import METRIC_TASK, headline_metrics
from mtilib.models import BASELINES, baseline_config
from mtilib.runtime import cpu_name, versions
from mtilib.stats import bootstrap_mean_ci, collapse_reason, mcnemar_exact, paired_comparison
from mtilib.tables import markdown_table
from mtilib.train import TrainConfig, evaluate_cases, load_model, load_volumes, predict_case, train
from mtilib.train.loop import split_train_val


@dataclass
class ResultsPreset:
    """Size of the experiment. ``results``: the course preset's network (width 16, 64² slices) on
    the ``samples`` phantom, sized for 2 CPU cores. ``paper``: full-size phantom and networks, for a
    GPU. ``epochs`` is the maximum; ``patience`` stops a run earlier (0: never)."""

    phantom_preset: str
    train_preset: str
    width: int
    image_size: int
    epochs: int
    batch_size: int
    cases_per_class: int = 34
    test_per_class: int = 10
    data_seed: int = 2025
    patience: int = 2
    shifts: bool = True  # evaluate every run on the shifted test sets of SHIFTS too
    # test cases acquired again per shift (the first ones of the test split, classes balanced; None: all):
    # the shifted sets cost a fifth of each run's time with all 70, and 35 x 3 seeds still pair 105 cases
    shift_cases: int | None = 35
    roi_size: int = 32  # crops of the lesion-ROI baseline are resized to roi_size² (a multiple of 16)
    lesion_slice_floor: int = 1  # 1: every lesion slice once per epoch (the course preset repeats them)
    # The regression head's gain on TIM's measurement (ModelConfig.enhancement_gain): the course
    # preset adopted it after docs/results.md was measured without it; off, so that `make results`
    # reproduces that table. Switch it on to measure the networks with it.
    enhancement_gain: bool = False
    # The learning-rate warm-up in epochs (None: the training preset's). The course preset's was 1
    # when docs/results.md was measured; it now trains on three times the cases and warms up for a
    # third of an epoch, so the `results` preset pins the 1 it was measured with.
    warmup_epochs: float | None = None

    @classmethod
    def named(cls, name: str) -> ResultsPreset:
        if name == "results":
            return cls(phantom_preset="samples", train_preset="course", width=16, image_size=64, epochs=6,
                       batch_size=8, patience=2, warmup_epochs=1.0)
        if name == "paper":
            return cls(phantom_preset="default", train_preset="paper", width=32, image_size=128, epochs=100,
                       batch_size=32, patience=10, shift_cases=None)
        raise ValueError(f"unknown results preset {name!r}; choose 'results' or 'paper'")

    def train_config(self, network: str, seed: int) -> TrainConfig:
        cfg = TrainConfig.preset(self.train_preset)
        cfg.name = f"{network}_seed{seed}"
        cfg.seed = seed
        cfg.model = baseline_config(network, cfg.model)
        cfg.model.width = self.width
        cfg.data.image_size = self.roi_size if network == "roi" else self.image_size
        cfg.optim.epochs = self.epochs
        cfg.optim.batch_size = self.batch_size
        cfg.optim.patience = self.patience
        if self.warmup_epochs is not None:
            cfg.optim.warmup_epochs = self.warmup_epochs
        cfg.data.lesion_slice_floor = self.lesion_slice_floor
        cfg.model.enhancement_gain = self.enhancement_gain  # the network ignores it where there is no residual
        cfg.adversarial.warmup_epochs = max(1.0, self.epochs / 4)
        cfg.adversarial.ramp_epochs = max(1.0, self.epochs / 4)
        return cfg


#: (column, key in the headline metrics, format) of the main table
TABLE_COLUMNS = (
    ("Dice", "dice", ".3f"),
    ("HD95 (mm)", "hd95_mm", ".1f"),
    ("enh. MAE", "enhancement_mae", ".3f"),
    ("accuracy", "accuracy", ".3f"),
    ("macro-F1", "macro_f1", ".3f"),
    ("AUC", "auc", ".3f"),
)

#: Acquisition shifts of the test cases (the same cases, acquired differently): phantom settings
#: that replace the preset's. Training always uses the preset's own protocol.
SHIFTS: dict[str, dict] = {
    "other phase times (0/30/60/240 s)": {"phase_times_s": (0.0, 30.0, 60.0, 240.0)},
    "SNR 15": {"snr": 15.0},
    "misregistration (3 mm, 3°)": {"misregistration_mm": 3.0, "misregistration_deg": 3.0},
    "double matrix (half the voxel size)": {"double_matrix": True},
}

#: The name of the unshifted test set in the per-case records.
IN_DISTRIBUTION = "test"

#: File in the work folder with the wall-clock time of the last invocation that trained every run.
COLD_RUN = "cold_run.json"

#: Bumped when the cached run records change shape, so that stale caches are recomputed.
RUN_FORMAT = 2


def fingerprint(preset: ResultsPreset) -> str:
    """A short hash of the preset and of the phantom's first case: the name of the folder that
    caches its data and runs, so that neither a changed preset nor a changed phantom generator
    reuses stale runs (old folders are left in place, never deleted)."""
    first = generate_case(derive_seed(preset.data_seed, 0), 0, PhantomConfig.preset(preset.phantom_preset))
    digest = hashlib.sha1(json.dumps(dataclasses.asdict(preset), sort_keys=True).encode())
    digest.update(np.ascontiguousarray(first.images).tobytes())
    digest.update(json.dumps(sorted(BASELINES)).encode())
    return digest.hexdigest()[:10]


def make_data(root: Path, preset: ResultsPreset, log=print) -> Path:
    """Generate (once) the 238-case data set, stratified by class into train and test."""
    if (root / "dataset.json").exists():
        return root
    config = PhantomConfig.preset(preset.phantom_preset)
    n_train, n_test = _split_sizes(preset)
    start = time.perf_counter()
    # iter_cases balances classes round-robin, so each split holds the same count per class
    write_dataset(root, iter_cases(n_train, seed=preset.data_seed, config=config),
                  iter_cases(n_test, seed=preset.data_seed, config=config, start=n_train))
    log(f"[results] generated {n_train} training and {n_test} test cases in {time.perf_counter() - start:.0f} s")
    return root


def _split_sizes(preset: ResultsPreset) -> tuple[int, int]:
    return ((preset.cases_per_class - preset.test_per_class) * len(CLASS_NAMES),
            preset.test_per_class * len(CLASS_NAMES))


def shift_config(preset: ResultsPreset, shift: dict) -> PhantomConfig:
    """The phantom config of a shifted test set: the preset's, with the shift's settings. The
    ``double_matrix`` shift doubles the matrix in every axis at the same field of view."""
    config = PhantomConfig.preset(preset.phantom_preset)
    settings = dict(shift)
    if settings.pop("double_matrix", False):
        config = config.with_shape(tuple(2 * n for n in config.shape))
    return dataclasses.replace(config, **settings)


def make_shift_data(root: Path, preset: ResultsPreset, log=print) -> dict[str, Path]:
    """Generate (once) per shift of :data:`SHIFTS` the test cases under that acquisition, as a data
    set of test cases under ``root``: the same case seeds as the test split of :func:`make_data`,
    hence the same patients and lesions, stored like it (so shifted and unshifted sets differ only
    by the acquisition). Returns ``{shift name: data set folder}``."""
    n_train, n_test = _split_sizes(preset)
    n_shifted = min(n_test, preset.shift_cases or n_test)
    out = {}
    for k, (name, shift) in enumerate(SHIFTS.items()):
        folder = root / f"shift_{k}"
        out[name] = folder
        if (folder / "dataset.json").exists():
            continue
        start = time.perf_counter()
        write_dataset(folder, (), iter_cases(n_shifted, seed=preset.data_seed, config=shift_config(preset, shift),
                                             start=n_train), description=f"test cases, {name}")
        log(f"[results] shifted test set '{name}': {n_shifted} cases in {time.perf_counter() - start:.0f} s")
    return out


def case_records(metrics, volumes: list[CaseVolume]) -> list[dict]:
    """The per-case values the statistics need, from a :class:`~mtilib.metrics.CaseMetrics`:
    ``case`` (the test case's position, the same under every shift), ``dice``, ``lesion_found``,
    ``abs_err`` (mean over the post-contrast phases), ``pred_enh``/``true_enh``, ``pred_class``,
    ``true_class``, ``correct``; keys of tasks the network lacks are absent."""
    out = []
    for k, row in enumerate(metrics.table().to_dict("records")):
        rec = {"case": k}
        if "dice" in row:
            rec["dice"] = float(row["dice"])
            rec["lesion_found"] = not bool(row["pred_empty"])
        phases = [c[len("enh_pred_"):] for c in row if c.startswith("enh_pred_")]
        if phases:
            rec["pred_enh"] = [float(row[f"enh_pred_{p}"]) for p in phases]
            rec["true_enh"] = [float(row[f"enh_true_{p}"]) for p in phases]
            rec["abs_err"] = float(np.mean([row[f"enh_abs_err_{p}"] for p in phases]))
        if "pred_class" in row:
            rec.update(pred_class=int(row["pred_class"]), true_class=int(row["true_class"]),
                       correct=bool(row["correct"]))
        out.append(rec)
    if len(out) != len(volumes):
        raise ValueError(f"{len(out)} metric rows for {len(volumes)} cases")
    return out


def collapse_of(cases: list[dict]) -> dict[str, str]:
    """Per task (``seg``, ``reg``, ``cls``), why this run's outputs collapsed (absent when not)."""
    out = {}
    if cases and "dice" in cases[0]:
        reason = collapse_reason(lesion_found=[c["lesion_found"] for c in cases])
        if reason:
            out["seg"] = reason
    if cases and "pred_enh" in cases[0]:
        reason = collapse_reason(pred_enhancement=[c["pred_enh"] for c in cases],
                                 true_enhancement=[c["true_enh"] for c in cases])
        if reason:
            out["reg"] = reason
    if cases and "pred_class" in cases[0]:
        reason = collapse_reason(pred_classes=[c["pred_class"] for c in cases])
        if reason:
            out["cls"] = reason
    return out


def _roi_cropper(seg_checkpoint: Path):
    """A function that crops a test volume to the lesion box of the segmentation network in
    ``seg_checkpoint`` (its largest predicted lesion); with no lesion predicted, the whole volume."""
    seg_model, seg_cfg, _ = load_model(seg_checkpoint)

    def crop(volume: CaseVolume) -> CaseVolume:
        mask = predict_case(seg_model, volume, seg_cfg.data.image_size).lesion_mask
        box = lesion_box(mask)
        return volume if box is None else crop_volume(volume, box)

    return crop


def run_one(network: str, seed: int, preset: ResultsPreset, data: Path, work: Path, log=print,
            shift_data: dict[str, Path] | None = None) -> dict:
    """Train and evaluate one (network, seed); cached in ``work/<network>_seed<seed>.json``.

    The record holds the headline metrics, the epochs used, and per test set (``"test"`` and each
    shift of ``shift_data``, from :func:`make_shift_data`) the per-case values of :func:`case_records`."""
    cache = work / f"{network}_seed{seed}.json"
    if cache.exists():
        record = json.loads(cache.read_text())
        if record.get("format") == RUN_FORMAT:
            return record
    cfg = preset.train_config(network, seed)
    run_dir = work / "runs" / cfg.name
    start = time.perf_counter()
    crop = None
    if network == "roi":
        # train on crops around the true lesion; test on crops around the box that the
        # segmentation-only network of the same seed predicts
        seg_only = run_one("seg_only", seed, preset, data, work, log, shift_data)
        crop = _roi_cropper(work / "runs" / f"seg_only_seed{seed}" / "best.pt")
        train_volumes, val_volumes = split_train_val(load_volumes(data, "train"), cfg)
        result = train(cfg, data, run_dir, resume=True, log=lambda *a: None,
                       train_volumes=[crop_volume(v, lesion_box(v.labels == LESION)) for v in train_volumes],
                       val_volumes=[crop_volume(v, lesion_box(v.labels == LESION)) for v in val_volumes])
    else:
        result = train(cfg, data, run_dir, resume=True, log=lambda *a: None)
    train_seconds = time.perf_counter() - start
    model, ck_cfg, _ = load_model(run_dir / "best.pt")
    cases, headlines, summary = {}, {}, None
    eval_start = None
    for name, folder in {IN_DISTRIBUTION: data, **(shift_data or {})}.items():
        if name != IN_DISTRIBUTION and eval_start is None:
            eval_start = time.perf_counter()
        volumes = load_volumes(folder, "test")
        inputs = volumes if crop is None else [crop(v) for v in volumes]
        metrics, _ = evaluate_cases(model, inputs, ck_cfg.data.image_size)
        cases[name] = case_records(metrics, volumes)
        set_summary = metrics.summary()
        headlines[name] = headline_metrics(set_summary)
        if name == IN_DISTRIBUTION:
            summary = set_summary
    if crop is not None:  # whether seg_only found a box for the case (else the ROI network saw it all)
        for name, seg_cases in seg_only["cases"].items():
            for mine, theirs in zip(cases.get(name, []), seg_cases):
                mine["box_found"] = theirs["lesion_found"]
    record = {
        "format": RUN_FORMAT, "network": network, "seed": seed, "train_seconds": train_seconds,
        "shift_eval_seconds": 0.0 if eval_start is None else time.perf_counter() - eval_start,
        "epochs_run": len(result.history), "best_epoch": result.best_epoch, "max_epochs": cfg.optim.epochs,
        "parameters": sum(p.numel() for p in model.parameters()),
        "headline": headlines[IN_DISTRIBUTION],
        "shift_headline": {k: v for k, v in headlines.items() if k != IN_DISTRIBUTION},
        "per_class_recall": (summary["classification"] or {}).get("per_class_recall"),
        "collapsed": collapse_of(cases[IN_DISTRIBUTION]),
        "cases": cases,
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(record))
    h = record["headline"]
    log(f"[results] {network} seed {seed}: {train_seconds:.0f} s, {record['epochs_run']} epochs | "
        + " ".join(f"{k}={h[k]:.3f}" for k in ("dice", "enhancement_mae", "accuracy") if h.get(k) is not None)
        + (f" | collapsed: {record['collapsed']}" if record["collapsed"] else ""))
    return record


def _mean_std(values: list) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _pooled(records: list[dict], test_set: str, key: str) -> tuple[list, list]:
    """Per-case values of ``key`` on ``test_set`` over every run in ``records`` with that set, and
    the case position of each (the bootstrap's clusters)."""
    values, groups = [], []
    for r in records:
        for c in r.get("cases", {}).get(test_set, []):
            if key in c:
                values.append(float(c[key]))
                groups.append(c["case"])
    return values, groups


#: Per-case key and headline key of the three metrics with pooled intervals and paired tests.
PAIRED_METRICS = (("dice", "dice"), ("abs_err", "enhancement_mae"), ("correct", "accuracy"))


def aggregate(records: list[dict]) -> list[dict]:
    """One row per network: mean and std over seeds of each headline metric, per-class recall, the
    epochs used, failed tasks (``failed``: task -> reason, when any seed's outputs collapsed) and
    bootstrap 95 % intervals of the per-case means pooled over seeds (``ci``)."""
    rows = []
    for network in dict.fromkeys(r["network"] for r in records):
        runs = [r for r in records if r["network"] == network]
        row = {"network": network, "seeds": len(runs), "parameters": runs[0]["parameters"],
               "train_minutes": statistics.mean(r["train_seconds"] for r in runs) / 60}
        for _, key, _ in TABLE_COLUMNS:
            row[key] = _mean_std([r["headline"].get(key) for r in runs])
        recalls = [r["per_class_recall"] for r in runs if r["per_class_recall"]]
        row["per_class_recall"] = (
            {c: _mean_std([rec.get(c) for rec in recalls])[0] for c in CLASS_NAMES} if recalls else None
        )
        if all("epochs_run" in r for r in runs):
            row["epochs"] = _mean_std([r["epochs_run"] for r in runs])
            row["max_epochs"] = max(r["max_epochs"] for r in runs)
        failed: dict[str, str] = {}
        for r in runs:
            for task, reason in r.get("collapsed", {}).items():
                failed.setdefault(task, f"seed {r['seed']}: {reason}")
        row["failed"] = failed
        ci = {}
        for case_key, key in PAIRED_METRICS:
            values, groups = _pooled(runs, IN_DISTRIBUTION, case_key)
            if values:
                ci[key] = bootstrap_mean_ci(values, groups)
        row["ci"] = ci
        rows.append(row)
    return rows


def _paired_values(couples, case_key: str) -> tuple[list, list, list]:
    """Values of ``case_key`` for the cases present in both lists of each ``(first, second)`` couple
    of per-case lists: ``(first values, second values, case of each pair)``."""
    first, second, groups = [], [], []
    for first_cases, second_cases in couples:
        by_case = {c["case"]: c for c in first_cases}
        for c in second_cases:
            if case_key in c and case_key in by_case.get(c["case"], {}):
                first.append(by_case[c["case"]][case_key])
                second.append(c[case_key])
                groups.append(c["case"])
    return first, second, groups


def _compare(key: str, a: list, b: list, groups: list) -> dict:
    """``b`` against ``a``, paired: means, the mean difference with its case-clustered bootstrap
    interval, and the p-value of McNemar's exact test (``accuracy``) or Wilcoxon's (the others)."""
    c = paired_comparison(a, b, groups)
    out = {"mean_a": c["mean_a"], "mean_b": c["mean_b"], "diff": c["diff"], "low": c["low"], "high": c["high"]}
    if key == "accuracy":
        m = mcnemar_exact(a, b)
        out.update(p=m["p_mcnemar"], test="McNemar", only_a=m["only_a"], only_b=m["only_b"])
    else:
        out.update(p=c["p_wilcoxon"], test="Wilcoxon")
    return out


def paired_against(records: list[dict], reference: str = "mtinet", test_set: str = IN_DISTRIBUTION) -> list[dict]:
    """Every other network against ``reference`` on the same (case, seed) pairs of ``test_set``:
    per metric the mean difference (network − reference) with its case-clustered bootstrap
    interval and the Wilcoxon p-value (Dice, absolute enhancement error), or the accuracy
    difference with McNemar's exact p-value. Failed (collapsed) tasks are marked, not tested."""
    by_key = {(r["network"], r["seed"]): r for r in records}
    networks = list(dict.fromkeys(r["network"] for r in records))
    if reference not in networks:
        raise ValueError(f"no runs of the reference network {reference!r} among {networks}")
    out = []
    for network in networks:
        if network == reference:
            continue
        seeds = [s for (n, s) in by_key if n == network and (reference, s) in by_key]
        couples = [(by_key[(reference, s)]["cases"].get(test_set, []), by_key[(network, s)]["cases"].get(test_set, []))
                   for s in seeds]
        for case_key, key in PAIRED_METRICS:
            ref_values, net_values, groups = _paired_values(couples, case_key)
            if not net_values:
                continue
            task = METRIC_TASK[key]
            failed = [n for n in (network, reference)
                      if any(task in by_key[(n, s)].get("collapsed", {}) for s in seeds)]
            c = _compare(key, ref_values, net_values, groups)
            entry = {"network": network, "metric": key, "n_pairs": len(net_values), "failed": failed,
                     "diff": c["diff"], "low": c["low"], "high": c["high"], "p": c["p"], "test": c["test"]}
            if c["test"] == "McNemar":
                entry.update(only_reference=c["only_a"], only_network=c["only_b"])
            out.append(entry)
    return out


def robustness(records: list[dict]) -> list[dict]:
    """Per network and shifted test set: the pooled per-case means of Dice, absolute enhancement
    error and correctness, and their change from the unshifted test set (same cases and seeds)
    with its case-clustered bootstrap interval. A task whose outputs collapsed in any seed is marked
    ``{"failed": reason}`` instead: a constant output does not drop under a shift, and a change of
    0 would read as robustness."""
    out = []
    for network in dict.fromkeys(r["network"] for r in records):
        runs = [r for r in records if r["network"] == network]
        failed = {task: reason for r in runs for task, reason in r.get("collapsed", {}).items()}
        shift_names = [k for k in runs[0].get("cases", {}) if k != IN_DISTRIBUTION]
        for shift in shift_names:
            entry = {"network": network, "shift": shift}
            couples = [(r["cases"].get(IN_DISTRIBUTION, []), r["cases"].get(shift, [])) for r in runs]
            for case_key, key in PAIRED_METRICS:
                base, moved, groups = _paired_values(couples, case_key)
                if moved and METRIC_TASK[key] in failed:
                    entry[key] = {"failed": failed[METRIC_TASK[key]]}
                elif moved:
                    c = _compare(key, base, moved, groups)
                    entry[key] = {"shifted": c["mean_b"], "test": c["mean_a"], "change": c["diff"],
                                  "low": c["low"], "high": c["high"], "p": c["p"]}
            out.append(entry)
    return out


def results_table(rows: list[dict]) -> list[dict]:
    """The main table as display rows: network, what changes, "mean ± std" per metric ("–" where
    the network has no such task, "failed" where its outputs collapsed), and the epochs used.
    ``rows`` as returned by :func:`aggregate` or read back from JSON."""
    def pm(row, key, fmt):
        mean, std = row[key]
        if mean is None:
            return "–"
        if METRIC_TASK[key] in row.get("failed", {}):
            return "failed"
        return f"{format(mean, fmt)} ± {format(std, fmt)}"

    out = []
    for r in rows:
        line = {"network": r["network"], "what changes": BASELINES.get(r["network"], ""),
                **{name: pm(r, key, fmt) for name, key, fmt in TABLE_COLUMNS}}
        if r.get("epochs"):
            line["epochs (of max)"] = f"{r['epochs'][0]:.1f} ({r['max_epochs']})"
        out.append(line)
    return out


#: metrics where lower is better
LOWER_IS_BETTER = {"hd95_mm", "enhancement_mae"}


def compare_to_reference(rows: list[dict], reference: str = "mtinet") -> list[dict]:
    """Each network against ``reference``, metric by metric: the difference of the seed means
    (network − reference), the seed noise of that difference (``sqrt(std_a² + std_b²)``), and a
    verdict: ``"better"``/``"worse"`` when the difference exceeds the noise in the direction that
    matters for the metric, else ``"within noise"``. With 3 seeds this is a rough screen, not a test."""
    ref = next((r for r in rows if r["network"] == reference), None)
    if ref is None:
        raise ValueError(f"no row for the reference network {reference!r} among {[r['network'] for r in rows]}")
    out = []
    for row in rows:
        if row["network"] == reference:
            continue
        for _, key, _ in TABLE_COLUMNS:
            (mean, std), (ref_mean, ref_std) = row[key], ref[key]
            if mean is None or ref_mean is None:
                continue
            if METRIC_TASK[key] in row.get("failed", {}) or METRIC_TASK[key] in ref.get("failed", {}):
                continue  # a collapsed task is reported as failed, not compared
            difference = mean - ref_mean
            noise = math.hypot(std, ref_std)
            gain = -difference if key in LOWER_IS_BETTER else difference
            verdict = "within noise" if abs(difference) <= noise else ("better" if gain > 0 else "worse")
            out.append({"network": row["network"], "metric": key, "difference": difference, "noise": noise,
                        "verdict": verdict})
    return out


def _comparison_table(rows: list[dict]) -> list[dict]:
    """One line per network: ``difference ± noise (verdict)`` per metric of :func:`compare_to_reference`."""
    names = {key: name for name, key, _ in TABLE_COLUMNS}
    table: dict[str, dict] = {}
    for c in compare_to_reference(rows):
        cell = f"{c['difference']:+.3f} ± {c['noise']:.3f}" + ("" if c["verdict"] == "within noise" else
                                                              f" ({c['verdict']})")
        table.setdefault(c["network"], {"network": c["network"]})[names[c["metric"]]] = cell
    return [{"network": t["network"], **{name: t.get(name, "–") for name, _, _ in TABLE_COLUMNS}}
            for t in table.values()]


def _interval(value: dict, fmt: str = ".3f") -> str:
    return f"{format(value['mean'], fmt)} [{format(value['low'], fmt)}, {format(value['high'], fmt)}]"


def _paired_cell(entry: dict) -> str:
    if entry["failed"]:
        return "failed (" + ", ".join(entry["failed"]) + ")"
    cell = f"{entry['diff']:+.3f} [{entry['low']:+.3f}, {entry['high']:+.3f}], p = {entry['p']:.2g}"
    if entry["test"] == "McNemar":
        cell += f" ({entry['only_reference']}/{entry['only_network']})"
    return cell


def paired_table(paired: list[dict]) -> list[dict]:
    """:func:`paired_against`'s entries as display rows: per network the pairs and, per metric,
    ``difference [95 % interval], p`` (or "failed (networks)" where a task collapsed)."""
    names = {"dice": "Dice", "enhancement_mae": "abs. enhancement error", "accuracy": "accuracy"}
    table: dict[str, dict] = {}
    for e in paired:
        table.setdefault(e["network"], {"network": e["network"], "pairs": e["n_pairs"]})[names[e["metric"]]] = \
            _paired_cell(e)
    return [{"network": t["network"], "pairs": t["pairs"], **{n: t.get(n, "–") for n in names.values()}}
            for t in table.values()]


def robustness_table(entries: list[dict], key: str, fmt: str = ".3f") -> list[dict]:
    """:func:`robustness`'s entries for metric ``key`` as display rows: per network the unshifted
    mean, then per shift ``mean under the shift (change [95 % interval])``."""
    table: dict[str, dict] = {}
    for e in entries:
        if key not in e:
            continue
        v = e[key]
        if "failed" in v:
            table.setdefault(e["network"], {"network": e["network"], "test": "failed"})[e["shift"]] = "failed"
            continue
        row = table.setdefault(e["network"], {"network": e["network"], "test": format(v["test"], fmt)})
        row[e["shift"]] = f"{format(v['shifted'], fmt)} ({v['change']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}])"
    return list(table.values())


def format_results(rows: list[dict], command: str, timing: dict, preset_name: str, preset: ResultsPreset,
                   seeds=(0, 1, 2), records: list[dict] | None = None) -> str:
    """The markdown of ``docs/results.md``. ``records`` (the runs) add the paired comparisons and
    the robustness tables when they carry per-case values."""
    main = results_table(rows)
    per_class = [{"network": r["network"], **{c: r["per_class_recall"][c] for c in CLASS_NAMES}}
                 for r in rows if r["per_class_recall"] and "cls" not in r.get("failed", {})]
    n_train, n_test = _split_sizes(preset)
    lines = [
        "# Results on the phantom: MTI-Net, ablations and baselines",
        "",
        f"Produced by `{command}` on {cpu_name()}, {os.cpu_count()} cores (torch {versions()['torch']}): "
        f"{timing['train_seconds_total'] / 60:.0f} minutes of training and evaluation over all runs, "
        f"{timing['wall_seconds'] / 60:.0f} minutes for this invocation ({timing.get('jobs', 1)} run(s) at a "
        "time; finished runs are cached)"
        + (f"; a cold run (all {timing['cold_run']['runs']} runs trained, nothing cached) took "
           f"{timing['cold_run']['wall_seconds'] / 60:.0f} minutes with {timing['cold_run']['jobs']} at a time "
           f"({timing['cold_run']['machine']}, {timing['cold_run']['date']})" if timing.get("cold_run") else "")
        + ". "
        f"Preset `{preset_name}`: {preset.cases_per_class * len(CLASS_NAMES)} phantom cases "
        f"(`{preset.phantom_preset}` phantom preset, data seed {preset.data_seed}), {n_train} for training "
        f"(20 % of them for validation: early stopping and checkpoint selection) and {n_test} "
        f"for test, stratified by class; width {preset.width}, {preset.image_size}² slices, batch "
        f"{preset.batch_size}; every network trained until its validation score had not improved for "
        f"{preset.patience} epochs, at most {preset.epochs}; seeds {', '.join(map(str, seeds))}. "
        "Mean ± standard deviation over the seeds of the per-case metrics on the test cases (Dice and "
        "HD95 of the lesion, HD95 with the explicit empty-mask policy; enhancement MAE averaged over the "
        "three post-contrast phases; macro one-vs-rest AUC). *failed*: the network's outputs for that task "
        "collapsed to a constant (reasons below); such a task is not averaged or compared.",
        "",
        markdown_table(main),
        "",
    ]
    failures = [(r["network"], task, reason) for r in rows for task, reason in r.get("failed", {}).items()]
    if failures:
        lines += ["## Failed (collapsed) tasks", "",
                  markdown_table([{"network": n, "task": t, "why": why} for n, t, why in failures]), ""]
    with_ci = [r for r in rows if r.get("ci")]
    if with_ci:
        lines += [
            "## Pooled means with 95 % confidence intervals",
            "",
            "Per-case values of all seeds pooled; percentile bootstrap resampling whole test cases "
            "(the seeds of a case are not independent).",
            "",
            markdown_table([{"network": r["network"],
                             **{name: ("failed" if METRIC_TASK[key] in r.get("failed", {}) else
                                       (_interval(r["ci"][key]) if key in r["ci"] else "–"))
                                for name, key in (("Dice", "dice"), ("enh. MAE", "enhancement_mae"),
                                                  ("accuracy", "accuracy"))}} for r in with_ci]),
            "",
        ]
    lines += [
        "## Per-class accuracy (recall), mean over seeds",
        "",
        markdown_table(per_class, floatfmt=".2f"),
        "",
    ]
    has_cases = bool(records) and all("cases" in r for r in records)
    if any(r["network"] == "mtinet" for r in rows):  # a subset of networks may leave MTI-Net out
        if has_cases:
            lines += [
                "## Against MTI-Net: paired tests",
                "",
                "Each network against MTI-Net on the same test cases and training seeds (all seeds pooled): "
                "mean difference (network − MTI-Net) with its 95 % bootstrap interval (whole cases "
                "resampled) and the p-value of the Wilcoxon signed-rank test (Dice, absolute enhancement "
                "error: lower is better) or of McNemar's exact test (accuracy; in brackets the cases only "
                "MTI-Net / only the network got right). The pooled pairs are not independent across "
                "seeds, so the p-values are optimistic; read the intervals first.",
                "",
                markdown_table(paired_table(paired_against(records))),
                "",
            ]
        lines += [
            "## Against MTI-Net: seed noise",
            "",
            "Difference of the seed means (network − MTI-Net) and its seed noise (√(std² + std²)); "
            "*better*/*worse* only where the difference exceeds the noise.",
            "",
            markdown_table(_comparison_table(rows), floatfmt=".3f"),
            "",
        ]
    if has_cases and any(len(r["cases"]) > 1 for r in records):
        entries = robustness(records)
        shapes = {name: shift_config(preset, shift).shape for name, shift in SHIFTS.items()}
        lines += [
            "## Robustness under acquisition shift",
            "",
            f"The first {min(n_test, preset.shift_cases or n_test)} test cases "
            f"({min(n_test, preset.shift_cases or n_test) // len(CLASS_NAMES)} per class) acquired differently "
            "(trained on the default protocol only): "
            + "; ".join(f"*{name}*" + (f" ({'×'.join(map(str, shapes[name]))} voxels)" if "matrix" in name else "")
                        for name in SHIFTS)
            + ". Pooled per-case mean under the shift, and in brackets its change from the unshifted "
            "test set with a 95 % bootstrap interval.",
            "",
        ]
        for title, key in (("Dice", "dice"), ("Absolute enhancement error", "enhancement_mae"),
                           ("Accuracy", "accuracy")):
            table = robustness_table(entries, key)
            if table:
                lines += [f"### {title}", "", markdown_table(table), ""]
    lines += [
        "## Size and cost",
        "",
        markdown_table([{"network": r["network"], "parameters": r["parameters"],
                         "training minutes (mean)": r["train_minutes"]} for r in rows], floatfmt=".1f"),
        "",
    ]
    return "\n".join(lines)


def _flushed_print(*args) -> None:
    print(*args, flush=True)


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run_parallel(tasks: list[tuple[str, int]], preset: ResultsPreset, data: Path, work: Path,
                  shift_data: dict[str, Path] | None, jobs: int) -> None:
    """Run every (network, seed) of ``tasks`` in ``jobs`` worker processes that share the cores
    (each with cores / jobs threads): on 2 cores two single-threaded runs get through 1.26× the
    training samples of one run on both threads (measured), and evaluation, mostly
    single-threaded, gains more. The lesion-ROI runs wait for the segmentation-only runs whose
    boxes they use. Each finished run is cached, where :func:`run_results` then reads it."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // jobs)
    waves = [[t for t in tasks if t[0] != "roi"], [t for t in tasks if t[0] == "roi"]]
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_init, initargs=(threads,)) as pool:
        for wave in waves:
            # a worker's stdout is a pipe or a file, block-buffered: flush each line as it is logged
            futures = [pool.submit(run_one, network, seed, preset, data, work, _flushed_print, shift_data)
                       for network, seed in wave]
            for future in futures:
                future.result()  # re-raises a worker's error here


def run_results(out: str | Path = "docs/results.md", preset_name: str = "results", seeds=(0, 1, 2),
                networks=None, work: str | Path = "build/results", log=print,
                preset: ResultsPreset | None = None, jobs: int = 1) -> list[dict]:
    """Build the whole table (skipping runs already cached in ``work``) and write ``out`` plus a
    JSON twin (``out`` with ``.json``) that notebook 10 reads. ``preset`` overrides the named one
    (tests use a tiny experiment); ``jobs``: runs trained at once (see :func:`_run_parallel`)."""
    preset = preset or ResultsPreset.named(preset_name)
    # arguments are checked before minutes of data generation, not after
    for name in networks or ():
        if name not in BASELINES:
            raise ValueError(f"unknown network {name!r}; choose from {', '.join(BASELINES)}")
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    # cached data and runs are valid only for this preset and this phantom: each gets its folder
    work = Path(work) / preset_name / fingerprint(preset)
    networks = list(networks or BASELINES)
    start = time.perf_counter()
    data = make_data(work / "data", preset, log)
    read_dataset(data)  # validate before spending an hour
    shift_data = make_shift_data(work / "shifts", preset, log) if preset.shifts else None
    tasks = [(n, s) for n in networks for s in seeds]
    cached = [(n, s) for n, s in tasks if (work / f"{n}_seed{s}.json").exists()]
    if jobs > 1:
        _run_parallel(tasks, preset, data, work, shift_data, jobs)
    records = [run_one(n, s, preset, data, work, log, shift_data) for n, s in tasks]  # cached ones are read
    rows = aggregate(records)
    command = "make results" if preset_name == "results" else f"mtilib results --preset {preset_name}"
    wall = time.perf_counter() - start
    cold_path = work / COLD_RUN
    if not cached and set(networks) == set(BASELINES):
        # every run was trained by this invocation: its time is what a fresh `make results` costs
        cold_path.write_text(json.dumps({"wall_seconds": wall, "jobs": jobs, "runs": len(tasks),
                                         "machine": f"{cpu_name()}, {os.cpu_count()} cores",
                                         "date": time.strftime("%Y-%m-%d")}))
    timing = {"wall_seconds": wall,
              "train_seconds_total": sum(r["train_seconds"] + r.get("shift_eval_seconds", 0.0) for r in records),
              "jobs": jobs, "cold_run": json.loads(cold_path.read_text()) if cold_path.exists() else None}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(format_results(rows, command, timing, preset_name, preset, seeds, records))
    summary_runs = [{k: v for k, v in r.items() if k != "cases"} for r in records]
    out.with_suffix(".json").write_text(json.dumps(
        {"preset": preset_name, "command": command, **timing, "rows": rows, "runs": summary_runs,
         "paired": paired_against(records) if "mtinet" in networks else [],
         "robustness": robustness(records)}, indent=2))
    log(f"[results] wrote {out} and {out.with_suffix('.json')}")
    return rows

"""The paper-style results table on the phantom (``make results`` -> ``docs/results.md``).

238 phantom cases (the paper's cohort size), 34 per class, split by case and stratified by class
into 168 training and 70 test cases. Every network of :data:`mtilib.models.BASELINES` (MTI-Net,
its four ablations, the plain multi-task network, three single-task networks, the early-fusion
U-Net) is trained with 3 seeds (each also draws its own 20 % validation split from the training
cases, for checkpoint selection) and evaluated per case on the test cases. The table reports
mean ± standard deviation over seeds.

Each finished run writes its own JSON under the work folder and is skipped when the command is
run again, so an interrupted table loses no finished run.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from mtilib.constants import CLASS_NAMES
from mtilib.data.io import read_dataset, write_dataset
from mtilib.data.phantom import PhantomConfig, iter_cases
from mtilib.metrics import headline_metrics
from mtilib.models import BASELINES, baseline_config
from mtilib.runtime import versions
from mtilib.tables import markdown_table
from mtilib.train import TrainConfig, evaluate_cases, load_model, load_volumes, train


@dataclass
class ResultsPreset:
    """Size of the experiment. ``results``: sized to reproduce the whole table in about 90 minutes
    on 2 CPU cores. ``paper``: full-size phantom and networks, for a GPU."""

    phantom_preset: str
    train_preset: str
    width: int
    image_size: int
    epochs: int
    batch_size: int
    cases_per_class: int = 34
    test_per_class: int = 10
    data_seed: int = 2025

    @classmethod
    def named(cls, name: str) -> ResultsPreset:
        if name == "results":
            return cls(phantom_preset="quick", train_preset="quick", width=8, image_size=48, epochs=8, batch_size=16)
        if name == "paper":
            return cls(phantom_preset="default", train_preset="paper", width=32, image_size=128, epochs=100,
                       batch_size=32)
        raise ValueError(f"unknown results preset {name!r}; choose 'results' or 'paper'")

    def train_config(self, network: str, seed: int) -> TrainConfig:
        cfg = TrainConfig.preset(self.train_preset)
        cfg.name = f"{network}_seed{seed}"
        cfg.seed = seed
        cfg.model = baseline_config(network, cfg.model)
        cfg.model.width = self.width
        cfg.data.image_size = self.image_size
        cfg.optim.epochs = self.epochs
        cfg.optim.batch_size = self.batch_size
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


def make_data(root: Path, preset: ResultsPreset, log=print) -> Path:
    """Generate (once) the 238-case data set, stratified by class into train and test."""
    if (root / "dataset.json").exists():
        return root
    config = PhantomConfig.preset(preset.phantom_preset)
    n_train = (preset.cases_per_class - preset.test_per_class) * len(CLASS_NAMES)
    n_test = preset.test_per_class * len(CLASS_NAMES)
    start = time.perf_counter()
    # iter_cases balances classes round-robin, so each split holds the same count per class
    write_dataset(root, iter_cases(n_train, seed=preset.data_seed, config=config),
                  iter_cases(n_test, seed=preset.data_seed, config=config, start=n_train))
    log(f"[results] generated {n_train} training and {n_test} test cases in {time.perf_counter() - start:.0f} s")
    return root


def run_one(network: str, seed: int, preset: ResultsPreset, data: Path, work: Path, log=print) -> dict:
    """Train and evaluate one (network, seed); cached in ``work/<network>_seed<seed>.json``."""
    cache = work / f"{network}_seed{seed}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    cfg = preset.train_config(network, seed)
    run_dir = work / "runs" / cfg.name
    start = time.perf_counter()
    train(cfg, data, run_dir, resume=True, log=lambda *a: None)
    train_seconds = time.perf_counter() - start
    model, ck_cfg, _ = load_model(run_dir / "best.pt")
    metrics, _ = evaluate_cases(model, load_volumes(data, "test"), ck_cfg.data.image_size)
    summary = metrics.summary()
    record = {
        "network": network, "seed": seed, "train_seconds": train_seconds,
        "parameters": sum(p.numel() for p in model.parameters()),
        "headline": headline_metrics(summary),
        "per_class_recall": (summary["classification"] or {}).get("per_class_recall"),
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(record, indent=2))
    h = record["headline"]
    log(f"[results] {network} seed {seed}: {train_seconds:.0f} s | "
        + " ".join(f"{k}={h[k]:.3f}" for k in ("dice", "enhancement_mae", "accuracy") if h.get(k) is not None))
    return record


def _mean_std(values: list) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(records: list[dict]) -> list[dict]:
    """One row per network: mean and std over seeds of each headline metric, per-class recall."""
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
        rows.append(row)
    return rows


def results_table(rows: list[dict]) -> list[dict]:
    """The main table as display rows: network, what changes, and "mean ± std" per metric ("–" where
    the network has no such task). ``rows`` as returned by :func:`aggregate` or read back from JSON."""
    def pm(value, fmt):
        mean, std = value
        return "–" if mean is None else f"{format(mean, fmt)} ± {format(std, fmt)}"

    return [{"network": r["network"], "what changes": BASELINES[r["network"]],
             **{name: pm(r[key], fmt) for name, key, fmt in TABLE_COLUMNS}} for r in rows]


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


def format_results(rows: list[dict], command: str, timing: dict, preset_name: str, preset: ResultsPreset,
                   seeds=(0, 1, 2)) -> str:
    """The markdown of ``docs/results.md``."""
    main = results_table(rows)
    per_class = [{"network": r["network"], **{c: r["per_class_recall"][c] for c in CLASS_NAMES}}
                 for r in rows if r["per_class_recall"]]
    n_train = (preset.cases_per_class - preset.test_per_class) * len(CLASS_NAMES)
    lines = [
        "# Results on the phantom: MTI-Net, ablations and baselines",
        "",
        f"Produced by `{command}` on {platform.processor() or platform.machine()} (torch {versions()['torch']}): "
        f"{timing['train_seconds_total'] / 60:.0f} minutes of training and evaluation over all runs, "
        f"{timing['wall_seconds'] / 60:.0f} minutes for this invocation (finished runs are cached). "
        f"Preset `{preset_name}`: {preset.cases_per_class * len(CLASS_NAMES)} phantom cases "
        f"(`{preset.phantom_preset}` phantom preset, data seed {preset.data_seed}), {n_train} for training "
        f"(20 % of them for validation / checkpoint selection) and {preset.test_per_class * len(CLASS_NAMES)} "
        f"for test, stratified by class; width {preset.width}, {preset.image_size}² slices, "
        f"{preset.epochs} epochs, batch {preset.batch_size}; seeds {', '.join(map(str, seeds))}. "
        "Mean ± standard deviation over the seeds of the per-case metrics on the test cases (Dice and "
        "HD95 of the lesion, HD95 with the explicit empty-mask policy; enhancement MAE averaged over the "
        "three post-contrast phases; macro one-vs-rest AUC).",
        "",
        markdown_table(main),
        "",
        "## Per-class accuracy (recall), mean over seeds",
        "",
        markdown_table(per_class, floatfmt=".2f"),
        "",
    ]
    if any(r["network"] == "mtinet" for r in rows):  # a subset of networks may leave MTI-Net out
        lines += [
            "## Against MTI-Net",
            "",
            "Difference of the seed means (network − MTI-Net) and its seed noise (√(std² + std²)); "
            "*better*/*worse* only where the difference exceeds the noise. With 3 seeds this is a screen, "
            "not a significance test.",
            "",
            markdown_table(_comparison_table(rows), floatfmt=".3f"),
            "",
        ]
    lines += [
        "## Size and cost",
        "",
        markdown_table([{"network": r["network"], "parameters": r["parameters"],
                         "training minutes (mean)": r["train_minutes"]} for r in rows], floatfmt=".1f"),
        "",
    ]
    return "\n".join(lines)


def run_results(out: str | Path = "docs/results.md", preset_name: str = "results", seeds=(0, 1, 2),
                networks=None, work: str | Path = "build/results", log=print,
                preset: ResultsPreset | None = None) -> list[dict]:
    """Build the whole table (skipping runs already cached in ``work``) and write ``out`` plus a
    JSON twin (``out`` with ``.json``) that notebook 09 reads. ``preset`` overrides the named one
    (tests use a tiny experiment)."""
    preset = preset or ResultsPreset.named(preset_name)
    work = Path(work) / preset_name
    networks = list(networks or BASELINES)
    start = time.perf_counter()
    data = make_data(work / "data", preset, log)
    read_dataset(data)  # validate before spending an hour
    records = [run_one(n, s, preset, data, work, log) for n in networks for s in seeds]
    rows = aggregate(records)
    command = "make results" if preset_name == "results" else f"mtilib results --preset {preset_name}"
    timing = {"wall_seconds": time.perf_counter() - start,
              "train_seconds_total": sum(r["train_seconds"] for r in records)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(format_results(rows, command, timing, preset_name, preset, seeds))
    out.with_suffix(".json").write_text(json.dumps(
        {"preset": preset_name, "command": command, **timing, "rows": rows, "runs": records}, indent=2))
    log(f"[results] wrote {out} and {out.with_suffix('.json')}")
    return rows

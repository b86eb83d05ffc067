"""Reproduce the shipped checkpoint: ``make checkpoint`` (under 20 minutes on 2 CPU cores).

1. generate a phantom training set (``samples`` preset, 120 cases per class, seed 1000: disjoint
   from the seeds of ``data_samples/phantom``) into ``build/checkpoint_data``;
2. train MTI-Net with the ``course`` preset into ``build/checkpoint_run``;
3. write a slim copy of the run's final weights (weights, config, history; no optimiser state, so
   it stays small) to ``data_samples/checkpoints/mtinet_course.pt``: the preset runs its whole
   schedule and averages the weights, so the end of the run is the network it trains; picking an
   epoch by a validation score picks noise (docs/DESIGN.md, "the course recipe").
   With early stopping (``optim.patience``) the best epoch is shipped instead;
4. evaluate it on the test cases of ``data_samples/phantom``
   (``data_samples/checkpoints/mtinet_course_evaluation.json``) and on a held-out phantom of
   238 cases drawn with another seed (``mtinet_course_heldout.json``), and write a ``README.md``
   beside them.

A checkpoint already in ``--out`` is replaced only with ``--force`` (``make checkpoint`` passes it:
regenerating the shipped file is what that target is for).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from mtilib.data.dataset import CaseVolume
from mtilib.data.io import write_dataset
from mtilib.data.phantom import PhantomConfig, iter_cases
from mtilib.metrics import COURSE_TARGETS, headline_metrics
from mtilib.runtime import cpu_name, versions
from mtilib.train import TrainConfig, evaluate_cases, load_checkpoint, load_model, load_volumes, save_checkpoint, train
from mtilib.viz import meets_target

ROOT = Path(__file__).resolve().parents[1]
CASES_PER_CLASS = 120
DATA_SEED = 1000
#: The held-out phantom: 34 cases per class (238), a seed no other data set of the project uses.
HELDOUT_CASES_PER_CLASS = 34
HELDOUT_SEED = 7_000


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, help="override the preset's epochs (for a quick rehearsal)")
    parser.add_argument("--out", default=str(ROOT / "data_samples" / "checkpoints"))
    parser.add_argument("--heldout-cases-per-class", type=int, default=HELDOUT_CASES_PER_CLASS)
    parser.add_argument("--force", action="store_true", help="replace a checkpoint already in --out")
    args = parser.parse_args(argv)
    existing = Path(args.out) / "mtinet_course.pt"
    if existing.exists() and not args.force:  # checked before 15 minutes of work, not after
        print(f"make_checkpoint: {existing} exists; pass --force to replace it", file=sys.stderr)
        return 3
    t_start = time.perf_counter()
    data_dir, run_dir, out_dir = ROOT / "build" / "checkpoint_data", ROOT / "build" / "checkpoint_run", Path(args.out)

    phantom = PhantomConfig.preset("samples")
    if data_dir.exists():
        shutil.rmtree(data_dir)
    t0 = time.perf_counter()
    write_dataset(data_dir, iter_cases(CASES_PER_CLASS * 7, seed=DATA_SEED, config=phantom), ())
    print(f"[checkpoint] generated {CASES_PER_CLASS * 7} training cases in {time.perf_counter() - t0:.1f} s")

    cfg = TrainConfig.preset("course")
    if args.epochs:
        cfg.optim.epochs = args.epochs
    if run_dir.exists():
        shutil.rmtree(run_dir)
    t0 = time.perf_counter()
    result = train(cfg, data_dir, run_dir)
    train_seconds = time.perf_counter() - t0
    print(f"[checkpoint] trained in {train_seconds / 60:.1f} min; best epoch {result.best_epoch} "
          f"of {len(result.history)}")

    chosen = load_checkpoint(run_dir / shipped_file(cfg))
    shipped_epoch = chosen["epoch"] + 1
    slim = {k: chosen[k] for k in ("config", "model", "epoch", "best_score", "best_epoch", "val_summary",
                                   "versions")}
    slim["discriminator"] = chosen["discriminator"]
    if "fast_path" in chosen:  # the precision it trained in: `auto` is a measurement, not a setting
        slim["fast_path"] = chosen["fast_path"]
    # the whole run's curve (a checkpoint knows only the epochs up to the one it was written at)
    slim["history"] = json.dumps(result.history)
    slim["training"] = json.dumps({
        "command": "make checkpoint", "train_seconds": train_seconds, "data_seed": DATA_SEED,
        "cases_per_class": CASES_PER_CLASS, "phantom_preset": "samples",
        "threads": torch.get_num_threads(), "cpu": cpu_name(),
        "heldout_seed": HELDOUT_SEED, "heldout_cases_per_class": args.heldout_cases_per_class,
    })
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = save_checkpoint(out_dir / "mtinet_course.pt", slim)

    model, cfg, _ = load_model(ckpt)
    metrics, _ = evaluate_cases(model, load_volumes(ROOT / "data_samples" / "phantom", "test"), cfg.data.image_size)
    metrics.to_json(out_dir / "mtinet_course_evaluation.json")
    headline = headline_metrics(metrics.summary())
    print("[checkpoint] data_samples test cases:", json.dumps(headline))

    # the held-out phantom: generated, evaluated case by case, never written to disk
    n_heldout = args.heldout_cases_per_class * 7
    t0 = time.perf_counter()
    heldout_volumes = [CaseVolume.from_phantom(case, f"heldout_{i:04d}") for i, case in
                       enumerate(iter_cases(n_heldout, seed=HELDOUT_SEED, config=phantom))]
    heldout_metrics, _ = evaluate_cases(model, heldout_volumes, cfg.data.image_size)
    heldout = headline_metrics(heldout_metrics.summary())
    heldout_metrics.to_json(out_dir / "mtinet_course_heldout.json")
    print(f"[checkpoint] held-out phantom ({n_heldout} cases, seed {HELDOUT_SEED}, "
          f"{time.perf_counter() - t0:.0f} s):", json.dumps(heldout))
    total_minutes = (time.perf_counter() - t_start) / 60
    met = {k: meets_target(heldout.get(k), op, v) for k, (op, v) in COURSE_TARGETS.items()}
    print(f"[checkpoint] targets on the held-out phantom: {met}; make checkpoint took {total_minutes:.1f} min")

    history = result.history
    val_share = f"{round(cfg.data.val_fraction * 100)} %"  # the README states the preset's split
    stopping = (f"at most {cfg.optim.epochs} epochs with early stopping after {cfg.optim.patience} without "
                "improvement, the epoch with the best validation score kept" if cfg.optim.patience else
                f"all {cfg.optim.epochs} epochs, the final weights kept")
    averaging = (f", weights averaged over the steps (exponential moving average, decay {cfg.optim.ema_decay})"
                 if cfg.optim.ema_decay else "")
    floor = (f"a case's lesion slices repeated until it contributes {cfg.data.lesion_slice_floor}, "
             if cfg.data.lesion_slice_floor else "")
    gain = (", the regression head free to scale TIM's measurement (`model.enhancement_gain`)"
            if cfg.model.enhancement_gain else "")
    fast = chosen.get("fast_path")
    trained_in = "" if not fast else (
        f", in {fast['precision']}{' + channels_last' if fast['channels_last'] else ''} ({fast['reason']})")
    lines = [
        "# Shipped checkpoint",
        "",
        "`mtinet_course.pt`: MTI-Net trained with the `course` preset "
        f"(width {cfg.model.width}, batch {cfg.optim.batch_size}, {stopping}{averaging}, {cfg.data.image_size}×"
        f"{cfg.data.image_size} slices, {floor}each lesion slice regressing its own slice's enhancement{gain}) on "
        f"{CASES_PER_CLASS * 7} phantom cases (`samples` preset, seed {DATA_SEED}; {val_share} held out for "
        f"validation), epoch {shipped_epoch} of {len(history)} (best validation score: epoch "
        f"{result.best_epoch}). Training (with validation after every "
        f"epoch) took {train_seconds / 60:.1f} minutes on {torch.get_num_threads()} threads of {cpu_name()}, "
        f"torch {versions()['torch']} ({'GPU' if torch.cuda.is_available() else 'CPU'}){trained_in}; `make checkpoint` "
        f"end to end {total_minutes:.1f} minutes.",
        "",
        "Reproduce: `make checkpoint` (runs `scripts/make_checkpoint.py`).",
        "",
        f"Evaluation per case on a held-out phantom (`samples` preset, {n_heldout} cases, "
        f"{args.heldout_cases_per_class} per class, seed {HELDOUT_SEED}; `mtinet_course_heldout.json`) and on the "
        "14 test cases of `data_samples/phantom` (`mtinet_course_evaluation.json`):",
        "",
        f"| metric | held-out ({n_heldout} cases) | data_samples test (14 cases) | target |",
        "|---|---|---|---|",
    ]
    for key in heldout:
        target = ""
        if key in COURSE_TARGETS:
            op, value = COURSE_TARGETS[key]
            target = f"{'≥' if op == '>=' else '≤'} {value:.2f} ({'met' if met[key] else 'not met'})"
        lines.append(f"| {key} | {_fmt(heldout[key])} | {_fmt(headline.get(key))} | {target} |")
    lines += ["", f"Validation curve (the {val_share} validation cases, after each epoch):", "",
              "| epoch | minutes | Dice | accuracy | enhancement MAE |", "|---|---|---|---|---|"]
    for r in history:
        lines.append(f"| {r['epoch']} | {r['elapsed_s'] / 60:.1f} | {_fmt(r.get('val_dice'))} | "
                     f"{_fmt(r.get('val_accuracy'))} | {_fmt(r.get('val_enhancement_mae'))} |")
    lines += ["", "The file holds weights and config only (no optimiser state); load it with",
              "`mtilib.train.load_model(path)` or `mtilib evaluate --ckpt ...`."]
    (out_dir / "README.md").write_text("\n".join(lines) + "\n")
    return 0


def shipped_file(cfg: TrainConfig) -> str:
    """The run's checkpoint that is shipped: the final weights of a run that follows its whole
    schedule, the best-scored epoch of one that stops early (its last epochs did not improve)."""
    return "best.pt" if cfg.optim.patience else "last.pt"


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else ("" if value is None else str(value))


if __name__ == "__main__":
    raise SystemExit(main())

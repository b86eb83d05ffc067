"""Reproduce the shipped checkpoint: ``make checkpoint`` (about 35 minutes on 2 CPU cores).

1. generate a phantom training set (``samples`` preset, 20 cases per class, seed 1000: disjoint
   from the seeds of ``data_samples/phantom``) into ``build/checkpoint_data``;
2. train MTI-Net with the ``course`` preset into ``build/checkpoint_run``;
3. write a slim copy of the best checkpoint (weights, config, history; no optimiser state, so it
   stays small) to ``data_samples/checkpoints/mtinet_course.pt``;
4. evaluate it on the test cases of ``data_samples/phantom`` and write
   ``data_samples/checkpoints/mtinet_course_evaluation.json`` and a ``README.md`` beside it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from mtilib.data.io import write_dataset
from mtilib.data.phantom import PhantomConfig, iter_cases
from mtilib.metrics import headline_metrics
from mtilib.runtime import versions
from mtilib.train import TrainConfig, evaluate_cases, load_checkpoint, load_model, load_volumes, save_checkpoint, train

ROOT = Path(__file__).resolve().parents[1]
CASES_PER_CLASS = 20
DATA_SEED = 1000


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, help="override the preset's epochs (for a quick rehearsal)")
    parser.add_argument("--out", default=str(ROOT / "data_samples" / "checkpoints"))
    args = parser.parse_args(argv)
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
    print(f"[checkpoint] trained in {train_seconds / 60:.1f} min; best epoch {result.best_epoch}")

    best = load_checkpoint(run_dir / "best.pt")
    slim = {k: best[k] for k in ("config", "model", "epoch", "best_score", "best_epoch", "history",
                                 "val_summary", "versions")}
    slim["discriminator"] = best["discriminator"]
    slim["training"] = json.dumps({
        "command": "make checkpoint", "train_seconds": train_seconds, "data_seed": DATA_SEED,
        "cases_per_class": CASES_PER_CLASS, "phantom_preset": "samples",
    })
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = save_checkpoint(out_dir / "mtinet_course.pt", slim)

    model, cfg, _ = load_model(ckpt)
    metrics, _ = evaluate_cases(model, load_volumes(ROOT / "data_samples" / "phantom", "test"), cfg.data.image_size)
    evaluation = out_dir / "mtinet_course_evaluation.json"
    metrics.to_json(evaluation)
    headline = headline_metrics(metrics.summary())
    print("[checkpoint] test cases:", json.dumps(headline))
    lines = [
        "# Shipped checkpoint",
        "",
        "`mtinet_course.pt`: MTI-Net trained with the `course` preset "
        f"(width {cfg.model.width}, {cfg.optim.epochs} epochs, {cfg.data.image_size}×{cfg.data.image_size} slices) "
        f"on {CASES_PER_CLASS * 7} phantom cases (`samples` preset, seed {DATA_SEED}; 20 % held out for "
        f"validation), best epoch {result.best_epoch}. Training took {train_seconds / 60:.1f} minutes "
        f"on torch {versions()['torch']} ({'GPU' if torch.cuda.is_available() else 'CPU'}).",
        "",
        "Reproduce: `make checkpoint` (runs `scripts/make_checkpoint.py`).",
        "",
        "Evaluation on the 14 test cases of `data_samples/phantom` (`mtinet_course_evaluation.json`):",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in headline.items()]
    lines += ["", "The file holds weights and config only (no optimiser state); load it with",
              "`mtilib.train.load_model(path)` or `mtilib evaluate --ckpt ...`."]
    (out_dir / "README.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

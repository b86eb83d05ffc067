"""The training loop end to end: quick training, exact resume after a kill, DDP equivalence,
evaluate and predict from the command line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mtilib.course import DEFAULT_DATA
from mtilib.train import TrainConfig

pytestmark = pytest.mark.slow


def tiny_config(epochs: int = 2, seed: int = 0) -> TrainConfig:
    """The quick preset, smaller still: 32×32 slices, width 4, no dropout (for DDP equivalence)."""
    cfg = TrainConfig.preset("quick")
    cfg.seed = seed
    cfg.deterministic = True
    cfg.model.width = 4
    cfg.model.dropout = 0.0
    cfg.data.image_size = 32
    cfg.optim.epochs = epochs
    cfg.adversarial.warmup_epochs = 0.5  # the adversary takes part within the tiny run
    cfg.adversarial.ramp_epochs = 0.5
    # explicit, so these tests take the same path on every CPU (test_fastpath forces each one)
    cfg.precision, cfg.channels_last = "fp32", False
    return cfg


def mtilib_cmd(*args):
    return [sys.executable, "-m", "mtilib.cli", *map(str, args)]


def test_killed_run_resumes_to_the_same_weights(tmp_path, load_script):
    """SIGKILL right after the first checkpoint, then --resume: the same weights as an uninterrupted
    run, network and discriminator, and a history without gaps or repeats. The GPU check
    (``scripts/gpu_check.py``) runs the same step on CUDA."""
    gpu_check = load_script("gpu_check")
    cfg = tiny_config(epochs=3)
    cfg_path = tmp_path / "cfg.yaml"
    cfg.to_yaml(cfg_path)
    result = gpu_check.step_kill_resume(cfg_path, tmp_path, DEFAULT_DATA)
    assert result["killed_after_epoch"] < cfg.optim.epochs, "the run finished before it could be killed"
    assert result["identical"], result
    assert result["epochs"] == (cfg.optim.epochs, cfg.optim.epochs)
    assert result["history_epochs"] == list(range(1, cfg.optim.epochs + 1))
    assert f"after epoch {result['killed_after_epoch']}/{cfg.optim.epochs}" in result["resume_message"]


SHIPPED = DEFAULT_DATA.parent / "checkpoints" / "mtinet_course.pt"

#: DDP splits each global batch over 2 processes and averages their gradients. The batch-pooled
#: Dice and the lesion-slice means differ slightly per rank, so the runs are close, not identical.
#: (Training losses are not compared: rank 0 logs the loss of its half batch only.)
DDP_TOLERANCE = {"val_dice": 0.05, "val_enhancement_mae": 0.03, "val_accuracy": 0.15, "val_score": 0.05}


def test_torchrun_two_processes_match_one_process(tmp_path):
    """Fine-tune the shipped checkpoint for 1 epoch with 1 and with 2 processes (Gloo on CPU):
    starting from trained weights makes the validation metrics meaningful in a short run."""
    cfg = TrainConfig.preset("course")
    cfg.init_checkpoint = str(SHIPPED)
    cfg.model.dropout = 0.0
    cfg.optim.epochs, cfg.optim.lr, cfg.optim.warmup_epochs = 1, 2e-4, 0.0
    # half the steps of the preset's batch 8 with repeated lesion slices: the comparison needs
    # a fine-tuning epoch, not the recipe
    cfg.optim.batch_size, cfg.data.lesion_slice_floor = 16, 0
    cfg.adversarial.warmup_epochs = 0.0
    cfg_path = tmp_path / "cfg.yaml"
    cfg.to_yaml(cfg_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    subprocess.run(mtilib_cmd("train", "--config", cfg_path, "--data", DEFAULT_DATA, "--out", single),
                   check=True, capture_output=True, env=env)
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "mtilib.cli",
         "train", "--config", str(cfg_path), "--data", str(DEFAULT_DATA), "--out", str(ddp)],
        capture_output=True, text=True, env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("[train] epoch 1/1") == 1  # only rank 0 logs
    assert "2 process(es)" in run.stdout
    one = json.loads((single / "history.jsonl").read_text().splitlines()[-1])
    two = json.loads((ddp / "history.jsonl").read_text().splitlines()[-1])
    print("1 process vs 2 processes:", {k: (round(one[k], 4), round(two[k], 4)) for k in DDP_TOLERANCE})
    assert one["val_dice"] > 0.3, "the fine-tuned model should segment: the comparison would be empty otherwise"
    for key, tol in DDP_TOLERANCE.items():
        assert abs(one[key] - two[key]) <= tol, f"{key}: 1 process {one[key]:.4f}, 2 processes {two[key]:.4f}"


def test_train_evaluate_predict_from_the_command_line(tmp_path):
    run = tmp_path / "run"
    out = subprocess.run(mtilib_cmd("train", "--preset", "quick", "--data", DEFAULT_DATA, "--out", run,
                                    "--epochs", "1"), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert {"last.pt", "best.pt", "config.yaml", "history.jsonl", "versions.json"} <= {p.name for p in run.iterdir()}

    ev = subprocess.run(mtilib_cmd("evaluate", "--ckpt", run / "best.pt", "--data", DEFAULT_DATA,
                                   "--out", tmp_path / "eval.json"), capture_output=True, text=True)
    assert ev.returncode == 0, ev.stderr[-3000:]
    report = json.loads((tmp_path / "eval.json").read_text())
    assert len(report["cases"]) == 14 and report["summary"]["n_cases"] == 14
    assert "dice" in ev.stdout and "accuracy" in ev.stdout

    index = json.loads((DEFAULT_DATA / "dataset.json").read_text())
    case = next(r for r in index["mtilib"]["cases"] if r["split"] == "test")["case"]
    phases = [DEFAULT_DATA / "imagesTs" / f"{case}_{p:04d}.nii.gz" for p in range(4)]
    pred_dir = tmp_path / "pred"
    pr = subprocess.run(mtilib_cmd("predict", "--ckpt", run / "best.pt", "--images", *phases, "--out", pred_dir),
                        capture_output=True, text=True)
    assert pr.returncode == 0, pr.stderr[-3000:]
    mask = nib.load(pred_dir / "lesion_mask.nii.gz")
    source = nib.load(phases[0])
    np.testing.assert_allclose(mask.affine, source.affine, atol=1e-5)
    assert mask.shape == source.shape
    assert set(np.unique(np.asarray(mask.dataobj)).tolist()) <= {0, 1}
    result = json.loads((pred_dir / "prediction.json").read_text())
    assert abs(sum(result["class_probabilities"].values()) - 1) < 1e-4
    assert set(result["enhancement"]) == {"arterial", "venous", "delayed"}


def test_resume_refuses_another_model(tmp_path):
    from mtilib.train import train

    cfg = tiny_config(epochs=1)
    train(cfg, DEFAULT_DATA, tmp_path, log=lambda *a: None)
    other = tiny_config(epochs=2)
    other.model.width = 8
    with pytest.raises(ValueError, match="another model config"):
        train(other, DEFAULT_DATA, tmp_path, resume=True, log=lambda *a: None)
    assert Path(tmp_path / "best.pt").exists()


def test_weight_averaging_checkpoints_and_exact_resume(tmp_path):
    """With ``optim.ema_decay``: ``model`` in a checkpoint is the average (what inference loads),
    ``train_model`` the raw weights; a run stopped after one epoch and resumed ends with the same
    two sets of weights as an uninterrupted one."""
    from mtilib.train import load_checkpoint, load_model, train

    cfg = tiny_config(epochs=2)
    cfg.optim.ema_decay = 0.95
    quiet = {"log": lambda *a, **k: None, "progress": False}
    whole, split = tmp_path / "whole", tmp_path / "split"
    train(cfg, DEFAULT_DATA, whole, **quiet)
    train(cfg, DEFAULT_DATA, split, stop_after_epochs=1, **quiet)
    train(cfg, DEFAULT_DATA, split, resume=True, **quiet)

    a, b = load_checkpoint(whole / "last.pt"), load_checkpoint(split / "last.pt")
    assert a["ema_updates"] == b["ema_updates"] > 0
    # the checkpoint says what precision and memory format the run trained in (explicit here)
    assert a["fast_path"] == {"precision": "fp32", "channels_last": False, "reason": "as configured"}
    for key in ("model", "train_model"):
        for name, tensor in a[key].items():
            torch.testing.assert_close(b[key][name], tensor, rtol=0, atol=0, msg=f"{key}.{name}")
    differs = [n for n, t in a["model"].items() if t.is_floating_point() and not torch.equal(t, a["train_model"][n])]
    assert differs, "the averaged weights equal the raw ones: nothing was averaged"

    model, _, _ = load_model(whole / "last.pt")
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, a["model"][name], rtol=0, atol=0)

    plain = tiny_config(epochs=3)
    with pytest.raises(ValueError, match="with weight averaging"):
        train(plain, DEFAULT_DATA, split, resume=True, **quiet)

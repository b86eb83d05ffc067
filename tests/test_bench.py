"""Benchmark measurements return sane numbers (no timing assertions: the machines are noisy)."""

import pytest

from mtilib.bench import measure_phantom, run_isolated


@pytest.mark.slow
def test_train_step_measurement_in_a_fresh_process():
    result = run_isolated("train_step", arch="mtinet", width=4, batch=2, size=32, repeats=1)
    assert result["samples_per_s"] > 0 and result["median_step_s"] > 0
    assert result["parameters"] > 0 and result["train_gflop_per_step"] > 0 and result["peak_rss_mb"] > 50


@pytest.mark.slow
def test_fast_path_choice_is_measured_in_a_fresh_process():
    result = run_isolated("fast_paths", preset="quick")
    assert result["label"] in ("fp32", "fp32+channels_last", "bf16", "bf16+channels_last")
    assert result["measured"]["fp32"] > 0 and "measured" in result["reason"]
    assert 0 < result["seconds"] < 60


def test_phantom_measurement():
    result = measure_phantom(preset="quick", repeats=1, dataset_cases=2, dataset_preset="quick")
    assert result["median_case_s"] > 0 and result["dataset_s"] > 0 and result["dataset_cases"] == 2


@pytest.mark.slow
def test_gpu_benchmark_script_runs_on_cpu(tmp_path):
    """The GPU script is exercised here on the CPU (no GPU in CI): same code path, other device."""
    import subprocess
    import sys

    from mtilib.course import REPO_ROOT

    out = tmp_path / "gpu.md"
    done = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "bench_gpu.py"), "--device", "cpu",
                           "--batch", "2", "--size", "32", "--width", "4", "--repeats", "1", "--no-compile",
                           "--matmul-size", "256",  # a CPU without native bf16 emulates it: 1024² takes seconds
                           "--inference-presets", "samples", "--out", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    text = out.read_text()
    assert "| mtinet | fp32 |" in text and "| unet | bf16 + channels_last |" in text



def test_gpu_benchmark_script_refuses_a_matmul_size_below_one(capsys, load_script):
    bench_gpu = load_script("bench_gpu")
    with pytest.raises(SystemExit) as stop:
        bench_gpu.main(["--device", "cpu", "--matmul-size", "0"])
    assert stop.value.code == 2  # refused before any measurement starts
    assert "--matmul-size must be a positive number of rows, got 0" in capsys.readouterr().err

# --- comparison with MONAI's BasicUNet and time to accuracy --------------------------------------------

def _history():
    """Four epochs: Dice first >= 0.9 at epoch 3, accuracy never, MAE exactly at its target at epoch 2."""
    return [
        {"epoch": 1, "elapsed_s": 60.0, "val_dice": 0.50, "val_accuracy": 0.50, "val_enhancement_mae": 0.20},
        {"epoch": 2, "elapsed_s": 120.0, "val_dice": 0.85, "val_accuracy": 0.70, "val_enhancement_mae": 0.08},
        {"epoch": 3, "elapsed_s": 240.0, "val_dice": 0.90, "val_accuracy": 0.89, "val_enhancement_mae": 0.09},
        {"epoch": 4, "elapsed_s": 300.0, "val_dice": 0.95, "val_accuracy": 0.80, "val_enhancement_mae": 0.05},
    ]


def test_minutes_to_targets_finds_the_first_crossing():
    import json

    from mtilib.metrics import COURSE_TARGETS
    from mtilib.viz import minutes_to_targets

    reached = minutes_to_targets(_history(), COURSE_TARGETS)
    assert reached == {"dice": 4.0, "accuracy": None, "enhancement_mae": 2.0}  # MAE: <= counts equality
    assert minutes_to_targets(json.dumps(_history()), COURSE_TARGETS) == reached  # a checkpoint's JSON string


def test_training_minutes_fall_back_to_summed_seconds_for_old_histories():
    from mtilib.viz import minutes_to_targets, training_minutes

    old = [{"epoch": 1, "train_seconds": 30.0, "val_seconds": 30.0, "val_dice": 0.1},
           {"epoch": 2, "train_seconds": 90.0, "val_dice": 0.95},  # no val_seconds recorded
           {"epoch": 3, "elapsed_s": 600.0, "val_dice": 0.97}]  # a resumed run that records elapsed_s
    assert training_minutes(old) == [1.0, 2.5, 10.0]
    assert minutes_to_targets(old, {"dice": (">=", 0.9)}) == {"dice": 2.5}


def test_time_to_accuracy_plot_is_a_small_png(tmp_path):
    from mtilib.metrics import COURSE_TARGETS
    from mtilib.viz import plot_time_to_accuracy

    path = tmp_path / "figures" / "tta.png"
    fig = plot_time_to_accuracy(_history(), COURSE_TARGETS, path)
    assert len(fig.axes) == 3
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and 5_000 < len(data) < 300_000


def test_time_to_accuracy_section_reads_the_checkpoint_and_the_heldout_evaluation(tmp_path):
    import json
    import shutil

    from mtilib.bench import time_to_accuracy
    from mtilib.course import REPO_ROOT

    shipped = REPO_ROOT / "data_samples" / "checkpoints"
    checkpoint = tmp_path / "mtinet_course.pt"
    shutil.copy(shipped / "mtinet_course.pt", checkpoint)
    # the test-case evaluation stands in for a held-out one: same MetricsTable.to_json format
    evaluation = json.loads((shipped / "mtinet_course_evaluation.json").read_text())
    (tmp_path / "mtinet_course_heldout.json").write_text(json.dumps(evaluation))
    title, _, text, table = time_to_accuracy(checkpoint, tmp_path / "fig.png", "fig.png")
    assert title.startswith("Time to accuracy") and (tmp_path / "fig.png").exists()
    assert "![" in table and "](fig.png)" in table
    assert f"{evaluation['summary']['n_cases']} phantom cases" in text and "seed" in text
    assert "| dice | >= 0.9 |" in table and "| enhancement_mae | <= 0.08 |" in table
    assert time_to_accuracy(tmp_path / "missing.pt", tmp_path / "f.png", "f.png") is None


def test_foreign_network_step_is_timed():
    from torch import nn

    from mtilib.bench import measure_step_of

    result = measure_step_of(lambda: nn.Conv2d(4, 3, 3, padding=1), batch=2, size=16, repeats=1)
    assert result["median_step_s"] > 0 and result["samples_per_s"] > 0
    assert result["parameters"] == 4 * 3 * 9 + 3
    # 16² outputs × 3 channels × 36 MACs per sample; a step counts 3 × MACs × 2 FLOPs × batch 2
    assert abs(result["train_gflop_per_step"] - 3 * 2 * 2 * 16 * 16 * 3 * 36 / 1e9) < 1e-9
    assert result["peak_rss_mb"] > 0 and result["network"] == "Conv2d"


def test_peer_comparison_ratios_and_goals(monkeypatch):
    import mtilib.bench as bench

    seconds = {"basicunet": 0.10, "unet": 0.11, "mtinet": 0.50}

    def fake_isolated(name, **kwargs):
        if name == "fast_paths":  # auto picks fp32 for the U-Net, bf16 + channels_last for MTI-Net
            precision, cl = ("fp32", False) if kwargs["arch"] == "unet" else ("bf16", True)
            return {"label": precision + ("+channels_last" if cl else ""), "precision": precision,
                    "channels_last": cl, "reason": "measured", "measured": {}, "seconds": 1.0}
        return step(kwargs["arch"], kwargs)

    def step(net, kwargs):
        s = seconds[net] * (0.5 if kwargs["precision"] == "bf16" else 1.0)
        return {"median_step_s": s, "samples_per_s": kwargs["batch"] / s, "parameters": 1000,
                "achieved_gflops": 13.0, "peak_rss_mb": 500.0}

    monkeypatch.setattr(bench, "peers_missing", lambda: None)
    monkeypatch.setattr(bench, "run_isolated", fake_isolated)
    monkeypatch.setattr(bench, "run_peer", lambda name, **kwargs: step(name, kwargs))
    title, _, text, table = bench.peer_comparison(130.0, log=lambda m: None)  # both sizes of PEER_SIZES
    lines = table.splitlines()
    assert title == "Step speed against MONAI BasicUNet" and len(lines) == 2 + 2 * 5  # BasicUNet measured twice
    lines = [line for line in lines if "course: width 16, 64², batch 16" in line]
    unet = next(line for line in lines if "U-Net" in line)
    assert "fp32 (= auto)" in unet and "| 1.1 |" in unet and "≤ 1.2×: met" in unet
    mtinet = [line for line in lines if "MTI-Net" in line]
    assert len(mtinet) == 2 and all("| 5 |" in line and "≤ 4×: not met" in line for line in mtinet)
    assert "bf16 + channels_last (auto)" in mtinet[1] and "| 0.1 |" in mtinet[0]  # 13 / 130 GFLOP/s
    assert "met in 2 of 6 rows" in text and "CPU-sized batch" in text


def test_peer_comparison_alternates_rounds_and_reports_the_median_round(monkeypatch):
    """Rounds go BasicUNet, U-Net, MTI-Net, BasicUNet, ...; each network's middle round is reported,
    so a machine that slows down for a while slows every network alike."""
    import mtilib.bench as bench

    calls = []
    drift = iter([1.0, 1.0, 1.0, 3.0, 3.0, 3.0, 2.0, 2.0, 2.0])  # round 2 on a busy machine
    base = {"basicunet": 0.10, "unet": 0.11, "mtinet": 0.30}

    def step(net, kwargs):
        calls.append(net)
        s = base[net] * next(drift)
        return {"median_step_s": s, "samples_per_s": kwargs["batch"] / s, "parameters": 1,
                "achieved_gflops": 1.0, "peak_rss_mb": 1.0}

    def fake_isolated(name, **kwargs):
        if name == "fast_paths":
            return {"label": "fp32", "precision": "fp32", "channels_last": False, "reason": "measured",
                    "measured": {}, "seconds": 1.0}
        return step(kwargs["arch"], kwargs)

    monkeypatch.setattr(bench, "peers_missing", lambda: None)
    monkeypatch.setattr(bench, "run_isolated", fake_isolated)
    monkeypatch.setattr(bench, "run_peer", lambda name, **kwargs: step(name, kwargs))
    _, _, text, table = bench.peer_comparison(None, sizes={"tiny": (4, 32, 2)}, rounds=3, log=lambda m: None)
    assert calls == ["basicunet", "unet", "mtinet"] * 3
    unet = next(line for line in table.splitlines() if "U-Net" in line)
    # reported: the middle round (factor 2) of each, so the ratio is the true 1.1, with the spread
    assert "| 220 |" in unet and "| 1.1 |" in unet and "110–330" in unet
    assert "3 alternating rounds" in text
    assert bench.median_round([{"median_step_s": t} for t in (4.0, 1.0, 3.0, 2.0)])["median_step_s"] == 2.0


def test_peer_comparison_is_skipped_without_monai(monkeypatch):
    import mtilib.bench as bench

    monkeypatch.setattr(bench, "peers_missing", lambda: "MONAI not installed")
    _, _, text, table = bench.peer_comparison(100.0)
    assert text.startswith("MONAI not installed: peer comparison skipped") and table == ""


@pytest.mark.slow
def test_bench_peers_script_times_basicunet_in_a_fresh_process():
    import importlib.util
    import json
    import subprocess
    import sys

    from mtilib.course import REPO_ROOT

    if importlib.util.find_spec("monai") is None:
        pytest.skip("MONAI not installed (the bench extra)")
    kwargs = {"width": 4, "size": 32, "batch": 2, "repeats": 1}
    done = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "bench_peers.py"), "--one", "basicunet",
                           "--kwargs", json.dumps(kwargs)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["network"] == "basicunet" and result["parameters"] > 0 and result["median_step_s"] > 0
    assert result["achieved_gflops"] > 0 and result["peak_rss_mb"] > 50


def test_mtilib_never_imports_monai():
    """MONAI is a benchmark/test-only dependency: scripts/bench_peers.py may use it, the package may not."""
    import re

    from mtilib.course import REPO_ROOT

    pattern = re.compile(r"^\s*(import\s+monai|from\s+monai\b)|import_module\(\s*['\"]monai|__import__\(\s*['\"]monai",
                         re.M)
    offenders = [str(p.relative_to(REPO_ROOT)) for p in sorted((REPO_ROOT / "mtilib").rglob("*.py"))
                 if pattern.search(p.read_text())]
    assert not offenders, f"these files import monai: {offenders}"


def test_machine_line_names_the_cpu_and_its_flags():
    from mtilib.bench import machine_line
    from mtilib.runtime import CPU_FLAGS, cpu_flags

    flags = cpu_flags()
    assert flags is None or set(flags) == set(CPU_FLAGS)
    line = machine_line()
    assert "torch CPU capability" in line and ("CPU flags avx2" in line or "CPU flags unknown" in line)

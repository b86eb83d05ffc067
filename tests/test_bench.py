"""Benchmark measurements return sane numbers (no timing assertions: the machines are noisy)."""

from mtilib.bench import measure_phantom, run_isolated


def test_train_step_measurement_in_a_fresh_process():
    result = run_isolated("train_step", arch="mtinet", width=4, batch=2, size=32, repeats=1)
    assert result["samples_per_s"] > 0 and result["median_step_s"] > 0
    assert result["parameters"] > 0 and result["train_gflop_per_step"] > 0 and result["peak_rss_mb"] > 50


def test_fast_path_choice_is_measured_in_a_fresh_process():
    result = run_isolated("fast_paths", preset="quick")
    assert result["label"] in ("fp32", "fp32+channels_last", "bf16", "bf16+channels_last")
    assert result["measured"]["fp32"] > 0 and "measured" in result["reason"]
    assert 0 < result["seconds"] < 60


def test_phantom_measurement():
    result = measure_phantom(preset="quick", repeats=1, dataset_cases=2, dataset_preset="quick")
    assert result["median_case_s"] > 0 and result["dataset_s"] > 0 and result["dataset_cases"] == 2


def test_gpu_benchmark_script_runs_on_cpu(tmp_path):
    """The GPU script is exercised here on the CPU (no GPU in CI): same code path, other device."""
    import subprocess
    import sys

    from mtilib.course import REPO_ROOT

    out = tmp_path / "gpu.md"
    done = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "bench_gpu.py"), "--device", "cpu",
                           "--batch", "2", "--size", "32", "--width", "4", "--repeats", "1", "--no-compile",
                           "--out", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    text = out.read_text()
    assert "| mtinet | fp32 |" in text and "| unet | bf16 + channels_last |" in text

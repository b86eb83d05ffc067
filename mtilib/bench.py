"""Benchmarks (``make bench`` -> ``docs/benchmarks.md``). Medians and ratios, never single runs.

Each measurement runs in a fresh subprocess (``python -m mtilib.bench --one NAME ...``) so that
its peak resident memory is its own and one measurement's caches do not flatter the next.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

from mtilib.runtime import autocast, info, versions


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports kB


def _timed(fn, repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


# --- single measurements (run inside a subprocess) --------------------------------------------------

def measure_train_step(arch: str = "mtinet", width: int = 32, batch: int = 8, size: int = 96,
                       precision: str = "fp32", channels_last: bool = False, repeats: int = 5,
                       device: str = "cpu", compile: bool = False) -> dict:
    """Forward + backward + AdamW step of a network on random data; samples/s and MACs."""
    from mtilib.losses import LossWeights, multitask_loss
    from mtilib.models import ModelConfig, baseline_config, build_model
    from mtilib.models.summary import model_summary

    torch.manual_seed(0)
    dev = torch.device(device)
    cfg = baseline_config(arch, ModelConfig(width=width))
    model = build_model(cfg)
    macs = model_summary(model, image_size=size)[-1]["macs"]
    model = model.to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.rand(batch, cfg.phases, size, size, device=dev) + 0.5
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    batch_data = {
        "image": x, "times": torch.tensor([[0.0, 35.0, 70.0, 180.0]], device=dev).repeat(batch, 1),
        "label": torch.randint(0, 3, (batch, size, size), device=dev),
        "class_id": torch.randint(0, cfg.num_classes, (batch,), device=dev),
        "enhancement": torch.rand(batch, cfg.phases - 1, device=dev),
        "has_lesion": torch.arange(batch, device=dev) % 2 == 0,
    }

    def step():
        with autocast(dev, precision):
            out = step_model(batch_data["image"], batch_data["times"])
        loss, _ = multitask_loss(out, batch_data, LossWeights())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    times = _timed(step, repeats, warmup=3 if compile else 1)
    median = statistics.median(times)
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "arch": arch, "width": width, "batch": batch, "size": size, "precision": precision,
        "channels_last": channels_last, "compile": compile, "device": device,
        "median_step_s": median, "samples_per_s": batch / median, "parameters": n_params,
        # a training step is about 3x the forward MACs (forward + two backward products), 2 FLOPs each
        "train_gflop_per_step": 3 * 2 * macs / 1e9, "achieved_gflops": 3 * 2 * macs / 1e9 / median,
        "peak_rss_mb": _peak_rss_mb(),
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None,
    }


def measure_matmul_peak(n: int = 2048, repeats: int = 5, device: str = "cpu", dtype: str = "fp32") -> dict:
    """Achieved GFLOP/s of a large square matmul: the practical peak of this machine."""
    dev = torch.device(device)
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    a = torch.randn(n, n, device=dev, dtype=torch_dtype)
    b = torch.randn(n, n, device=dev, dtype=torch_dtype)

    def run():
        a @ b
        if dev.type == "cuda":
            torch.cuda.synchronize()

    median = statistics.median(_timed(run, repeats))
    return {"n": n, "dtype": dtype, "median_s": median, "gflops": 2 * n**3 / median / 1e9}


ONE = {"train_step": measure_train_step, "matmul": measure_matmul_peak}


def run_isolated(name: str, **kwargs) -> dict:
    """Run one measurement in a fresh Python process and return its result dict."""
    cmd = [sys.executable, "-m", "mtilib.bench", "--one", name, "--kwargs", json.dumps(kwargs)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark {name} {kwargs} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine_line() -> str:
    data = info()
    cpu = platform.processor() or platform.machine()
    return (f"{cpu}, {data['cpu_count']} cores, torch {versions()['torch']} ({data['torch_threads']} threads), "
            f"device {data['device']}, CPU capability {data['cpu_capability']}, native bf16: "
            f"{data['cpu_native_bf16']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtilib.bench")
    parser.add_argument("--one", choices=sorted(ONE), required=True)
    parser.add_argument("--kwargs", default="{}")
    args = parser.parse_args(argv)
    result = ONE[args.one](**json.loads(args.kwargs))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The GPU check in one command: ``make gpu-check`` (``python scripts/gpu_check.py``).

On a CUDA machine, in a few minutes, it exercises every path that only a GPU takes and prints one
summary:

1. ``mtilib info``: the device and the fast paths measured for the course preset;
2. quick training in bf16 + channels_last (3 epochs on the shipped sample data), with the count
   of device-to-host synchronisations per training step (``torch.cuda.set_sync_debug_mode``);
3. kill + resume: the same run killed after its first checkpoint and resumed must end with the
   same weights as an uninterrupted run (RNG states restored from CPU copies);
4. ``torchrun`` with 2 processes on the GPU(s) (2 ranks share one GPU over Gloo when there is one);
5. ``mtilib evaluate`` of the trained checkpoint on the sample test cases;
6. the GPU benchmark (``scripts/bench_gpu.py``, shortened) -> ``OUT/benchmarks_gpu.md``.

``--device cpu`` runs the same steps on a CPU in fp32 (a rehearsal of the script itself).
Results: ``OUT/summary.json`` and ``OUT/summary.md`` (default OUT: ``build/gpu_check``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data_samples" / "phantom"


def mtilib(*args) -> list[str]:
    return [sys.executable, "-m", "mtilib.cli", *map(str, args)]


def run(cmd, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, **kwargs)


def check_config(device: str, out: Path):
    from mtilib.train import TrainConfig

    cfg = TrainConfig.preset("quick")
    cfg.device = device
    cfg.seed = 0
    cfg.deterministic = True
    cfg.optim.epochs = 3
    cfg.model.dropout = 0.0
    cfg.adversarial.warmup_epochs, cfg.adversarial.ramp_epochs = 0.5, 0.5
    cfg.precision, cfg.channels_last = ("bf16", True) if device.startswith("cuda") else ("fp32", False)
    path = out / "check.yaml"
    cfg.to_yaml(path)
    return cfg, path


def step_info(out: Path) -> dict:
    done = run(mtilib("info", "--json"))
    data = json.loads(done.stdout) if done.returncode == 0 else {}
    return {"ok": done.returncode == 0, "device": data.get("device"), "cuda_devices": data.get("cuda_devices"),
            "fast_paths": data.get("fast_paths"), "error": done.stderr[-1500:] if done.returncode else ""}


def step_train_and_syncs(cfg, out: Path) -> dict:
    """Quick training in this process, counting host syncs in the training steps (CUDA only)."""
    import torch

    from mtilib.train import load_volumes, train

    run_dir = out / "train"
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    result = train(cfg, DATA, run_dir, log=lambda *a: None)
    seconds = time.perf_counter() - start
    syncs = None
    if torch.cuda.is_available() and cfg.device.startswith("cuda"):
        # one more epoch without validation, with every synchronising call reported as a warning
        volumes = load_volumes(DATA, "train")
        one = type(cfg).from_dict(cfg.to_dict())
        one.optim.epochs = 1
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                res = train(one, DATA, out / "sync_epoch", train_volumes=volumes, val_volumes=[], log=lambda *a: None)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        steps = max(1, round(res.history[-1]["samples_per_s"] * res.history[-1]["train_seconds"]
                             / cfg.optim.batch_size))
        count = sum("synchroniz" in str(w.message) for w in caught)
        syncs = {"total_in_epoch": count, "steps": steps, "per_step": round(count / steps, 2)}
    last = result.history[-1]
    return {"ok": True, "seconds": round(seconds, 1), "samples_per_s": round(last["samples_per_s"], 1),
            "val_dice": last.get("val_dice"), "val_accuracy": last.get("val_accuracy"),
            "val_enhancement_mae": last.get("val_enhancement_mae"), "host_syncs": syncs,
            "best": str(run_dir / "best.pt")}


def step_kill_resume(cfg_path: Path, out: Path, data: Path = DATA) -> dict:
    """Train ``cfg_path`` once uninterrupted, once killed (SIGKILL) right after its first checkpoint
    and resumed; compare the final weights (network and discriminator). ``tests/train`` runs it on
    the CPU."""
    import json

    import torch

    from mtilib.train import load_checkpoint

    full, killed = out / "resume_full", out / "resume_killed"
    for folder in (full, killed):
        shutil.rmtree(folder, ignore_errors=True)
    done = run(mtilib("train", "--config", cfg_path, "--data", data, "--out", full))
    if done.returncode:
        return {"ok": False, "error": done.stderr[-1500:]}
    proc = subprocess.Popen(mtilib("train", "--config", cfg_path, "--data", data, "--out", killed), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (killed / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(killed / "last.pt")["epoch"] + 1
    done = run(mtilib("train", "--config", cfg_path, "--data", data, "--out", killed, "--resume"))
    if done.returncode:
        return {"ok": False, "killed_after_epoch": killed_at, "error": done.stderr[-1500:]}
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(killed / "last.pt")
    weights = [(a["model"], b["model"])] + ([(a["discriminator"], b["discriminator"])] if a["discriminator"] else [])
    diff = max(float((x[k].float() - y[k].float()).abs().max()) for x, y in weights for k in x)
    identical = all(torch.equal(x[k], y[k]) for x, y in weights for k in x)
    history = [json.loads(line)["epoch"] for line in (killed / "history.jsonl").read_text().splitlines()]
    return {"ok": identical or diff < 1e-3, "killed_after_epoch": killed_at, "identical": identical,
            "max_weight_difference": diff, "epochs": (a["epoch"] + 1, b["epoch"] + 1), "history_epochs": history,
            "resume_message": next((line for line in done.stdout.splitlines() if "resumed from" in line), "")}


def step_torchrun(cfg_path: Path, out: Path) -> dict:
    folder = out / "torchrun"
    shutil.rmtree(folder, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "mtilib.cli", "train", "--config", cfg_path, "--data", DATA, "--out", folder,
                "--epochs", "1"], env=env)
    return {"ok": done.returncode == 0 and "2 process(es)" in done.stdout,
            "error": done.stderr[-1500:] if done.returncode else ""}


def step_evaluate(best: str, out: Path, device: str) -> dict:
    target = out / "evaluation_test.json"
    target.unlink(missing_ok=True)
    done = run(mtilib("evaluate", "--ckpt", best, "--data", DATA, "--device", device, "--out", target))
    if done.returncode:
        return {"ok": False, "error": done.stderr[-1500:]}
    from mtilib.metrics import headline_metrics

    summary = json.loads(target.read_text())["summary"]
    return {"ok": True, **{k: v for k, v in headline_metrics(summary).items() if v is not None}}


def step_bench(out: Path, device: str) -> dict:
    args = ["--device", device, "--out", out / "benchmarks_gpu.md", "--repeats", "5"]
    if not device.startswith("cuda"):
        args += ["--no-compile", "--batch", "4", "--size", "64", "--repeats", "2"]
    done = run([sys.executable, str(ROOT / "scripts" / "bench_gpu.py"), *map(str, args)])
    return {"ok": done.returncode == 0, "report": str(out / "benchmarks_gpu.md"),
            "error": done.stderr[-1500:] if done.returncode else ""}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:1, or cpu for a rehearsal")
    parser.add_argument("--out", default=str(ROOT / "build" / "gpu_check"))
    parser.add_argument("--skip-bench", action="store_true")
    args = parser.parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (use --device cpu to rehearse the script)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg, cfg_path = check_config(args.device, out)
    started = time.perf_counter()
    summary: dict = {"device": args.device, "torch": torch.__version__,
                     "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None}
    steps = [("info", lambda: step_info(out)), ("train", lambda: step_train_and_syncs(cfg, out)),
             ("kill_resume", lambda: step_kill_resume(cfg_path, out)),
             ("torchrun_2", lambda: step_torchrun(cfg_path, out))]
    for name, step in steps:
        t0 = time.perf_counter()
        try:
            summary[name] = step()
        except Exception as exc:  # one broken step must not hide the others' results
            summary[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        summary[name]["seconds_total"] = round(time.perf_counter() - t0, 1)
        print(f"[gpu_check] {name}: {'ok' if summary[name]['ok'] else 'FAILED'}", flush=True)
    if summary["train"].get("ok"):
        summary["evaluate"] = step_evaluate(summary["train"]["best"], out, args.device)
        print(f"[gpu_check] evaluate: {'ok' if summary['evaluate']['ok'] else 'FAILED'}", flush=True)
    if not args.skip_bench:
        summary["bench"] = step_bench(out, args.device)
        print(f"[gpu_check] bench: {'ok' if summary['bench']['ok'] else 'FAILED'}", flush=True)
    summary["minutes"] = round((time.perf_counter() - started) / 60, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    lines = [f"# GPU check ({args.device}, {summary['gpu'] or 'no GPU'}, torch {summary['torch']}, "
             f"{summary['minutes']} min)", "", "| step | ok | figures |", "|---|---|---|"]
    for name, value in summary.items():
        if isinstance(value, dict):
            figures = {k: v for k, v in value.items() if k not in ("ok", "error") and v not in (None, "")}
            lines.append(f"| {name} | {'yes' if value.get('ok') else 'NO'} | {json.dumps(figures, default=str)} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    failed = [k for k, v in summary.items() if isinstance(v, dict) and not v.get("ok")]
    for name in failed:
        print(f"\nFAILED {name}: {summary[name].get('error', '')}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())

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
from pathlib import Path

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


def measure_inference(checkpoint: str, preset: str = "samples", repeats: int = 5, device: str = "cpu") -> dict:
    """Per-case inference latency of a checkpoint on one phantom case of a preset (median seconds)."""
    from mtilib.data.dataset import CaseVolume
    from mtilib.data.phantom import PhantomConfig, generate_case
    from mtilib.train import load_model, predict_case

    model, cfg, _ = load_model(checkpoint, device)
    case = generate_case(7, class_id=6, config=PhantomConfig.preset(preset))
    volume = CaseVolume.from_arrays("bench", case.images, case.phase_times_s, case.spacing)
    times = _timed(lambda: predict_case(model, volume, cfg.data.image_size, device), repeats)
    return {"preset": preset, "shape": list(case.images.shape), "median_s": statistics.median(times),
            "peak_rss_mb": _peak_rss_mb()}


def measure_phantom(preset: str = "default", repeats: int = 5, dataset_cases: int = 0,
                    dataset_preset: str = "samples") -> dict:
    """Median seconds to generate one case of ``preset``; optionally the time to generate (not
    write) ``dataset_cases`` cases of ``dataset_preset``."""
    from mtilib.data.phantom import PhantomConfig, generate_case, iter_cases

    config = PhantomConfig.preset(preset)
    times = _timed(lambda: generate_case(11, config=config), repeats)
    result = {"preset": preset, "median_case_s": statistics.median(times)}
    if dataset_cases:
        start = time.perf_counter()
        for _ in iter_cases(dataset_cases, seed=3, config=PhantomConfig.preset(dataset_preset)):
            pass
        result.update(dataset_cases=dataset_cases, dataset_preset=dataset_preset,
                      dataset_s=time.perf_counter() - start)
    result["peak_rss_mb"] = _peak_rss_mb()
    return result


def measure_fast_path_choice(preset: str = "course", device: str = "cpu") -> dict:
    """What ``precision="auto"`` / ``channels_last="auto"`` choose for a preset's network, measured
    afresh (no cache), and how long the probe took."""
    from mtilib.train import TrainConfig
    from mtilib.train.fastpath import choose_fast_paths

    cfg = TrainConfig.preset(preset)
    start = time.perf_counter()
    paths = choose_fast_paths(cfg.model, torch.device(device), "auto", "auto", cfg.data.image_size,
                              cfg.optim.batch_size, use_cache=False)
    return {"label": paths.label, "reason": paths.reason, "measured": paths.measured,
            "seconds": time.perf_counter() - start}


ONE = {"train_step": measure_train_step, "fast_paths": measure_fast_path_choice, "matmul": measure_matmul_peak,
       "inference": measure_inference, "phantom": measure_phantom}


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


def measure_course(quick: bool, out: Path) -> list[dict]:
    """Execute each notebook in its own ``mtilib course --only NN`` process; seconds and the peak
    resident memory of that process and its kernel (``wait4`` rusage covers waited descendants)."""
    import os

    from mtilib.course import discover

    rows = []
    for path in discover():
        cmd = [sys.executable, "-m", "mtilib.cli", "course", "--only", path.name[:2], "--out", str(out)]
        if quick:
            cmd.append("--quick")
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        rows.append({"notebook": path.name, "ok": os.waitstatus_to_exitcode(status) == 0,
                     "seconds": time.perf_counter() - start, "peak_rss_mb": usage.ru_maxrss / 1024.0})
    return rows


def recorded_runs(checkpoint: Path, results_json: Path) -> list[tuple[str, str, str, str]]:
    """Sections for long runs that other commands measured and recorded: the shipped checkpoint's
    training (time, throughput, test metrics) and the results table's total time."""
    import json

    from mtilib.metrics import headline_metrics
    from mtilib.tables import markdown_table
    from mtilib.train import load_checkpoint

    sections = []
    if checkpoint.exists():
        state = load_checkpoint(checkpoint)
        training = json.loads(state.get("training", "{}"))
        history = json.loads(state["history"])
        evaluation = checkpoint.with_name("mtinet_course_evaluation.json")
        headline = headline_metrics(json.loads(evaluation.read_text())["summary"]) if evaluation.exists() else {}
        rows = [
            {"what": "training time (minutes)", "value": training.get("train_seconds", float("nan")) / 60},
            {"what": "epochs in this checkpoint's history (best epoch)",
             "value": f"{len(history)} ({state['best_epoch']})"},
            {"what": "training throughput (samples/s, median over epochs)",
             "value": statistics.median(h["samples_per_s"] for h in history)},
        ] + [{"what": f"test cases: {k}", "value": v} for k, v in headline.items() if k != "n_cases"]
        sections.append((
            "Shipped checkpoint (`course` preset)", "`make checkpoint` (`scripts/make_checkpoint.py`)",
            "Recorded in the checkpoint and `mtinet_course_evaluation.json` when it was trained; "
            "evaluated per case on the 14 test cases of `data_samples/phantom`.",
            markdown_table(rows, floatfmt=".3g"),
        ))
    if results_json.exists():
        data = json.loads(results_json.read_text())
        sections.append((
            "Results table (`docs/results.md`)", f"`{data['command']}`",
            f"{len(data['runs'])} training runs; recorded when the table was made.",
            # summed over the runs, not the wall time of the last invocation: finished runs are cached
            markdown_table([{"training + evaluation, all runs (minutes)": data["train_seconds_total"] / 60,
                             "per run, median (minutes)": statistics.median(r["train_seconds"]
                                                                            for r in data["runs"]) / 60,
                             "slowest run (minutes)": max(r["train_seconds"] for r in data["runs"]) / 60}],
                           floatfmt=".1f"),
        ))
    return sections


def write_benchmarks(out: str | Path = "docs/benchmarks.md", course: bool = True, log=print) -> Path:
    """Run every benchmark (each in a fresh process) and write the markdown report."""
    from mtilib.course import REPO_ROOT
    from mtilib.tables import markdown_table

    out = Path(out)
    checkpoint = REPO_ROOT / "data_samples" / "checkpoints" / "mtinet_course.pt"
    started = time.perf_counter()
    sections = []

    log("[bench] training steps ...")
    steps = []
    variants = (("fp32", False, 5), ("fp32", True, 5), ("bf16", True, 3))
    for arch in ("mtinet", "unet"):
        for precision, channels_last, repeats in variants:
            steps.append(run_isolated("train_step", arch=arch, width=32, batch=8, size=96, precision=precision,
                                      channels_last=channels_last, repeats=repeats))
    # the course preset in all four precision / memory-format combinations, and what "auto" picks
    course_steps = [run_isolated("train_step", arch="mtinet", width=16, batch=16, size=64, precision=precision,
                                 channels_last=channels_last, repeats=repeats)
                    for precision, channels_last, repeats in variants + (("bf16", False, 3),)]
    course_step = course_steps[0]
    auto = run_isolated("fast_paths", preset="course")
    peak = run_isolated("matmul", n=2048, repeats=5)
    def step_row(network: str, r: dict, fp32: dict) -> dict:
        return {
            "network": network, "precision": r["precision"] + (" + channels_last" if r["channels_last"] else ""),
            "parameters": r["parameters"], "step (s, median)": r["median_step_s"],
            "samples/s": r["samples_per_s"], "speed vs fp32": r["samples_per_s"] / fp32["samples_per_s"],
            "GFLOP/s": r["achieved_gflops"], "of matmul peak": r["achieved_gflops"] / peak["gflops"],
            "peak RSS (MB)": r["peak_rss_mb"],
        }

    rows = []
    for arch in ("mtinet", "unet"):
        mine = [r for r in steps if r["arch"] == arch]
        rows += [step_row(arch, r, mine[0]) for r in mine]
    rows += [step_row("mtinet (course preset: width 16, 64², batch 16)", r, course_step) for r in course_steps]
    sections.append((
        "Training step (forward + backward + AdamW), random data",
        "`python -m mtilib.bench --one train_step --kwargs '{\"arch\": \"mtinet\", \"width\": 32, \"batch\": 8, "
        "\"size\": 96, \"precision\": \"fp32\"}'` (and the other rows' arguments)",
        f"Default MTI-Net (width 32) and the early-fusion U-Net, batch 8 at 96×96 unless stated. FLOP/s counts "
        f"3 × the forward MACs × 2. The CPU's practical peak, an fp32 2048² matmul, is {peak['gflops']:.0f} GFLOP/s "
        f"(`python -m mtilib.bench --one matmul`). `precision: auto` / `channels_last: auto` on this machine, "
        f"measured by its own probe for the course preset: **{auto['label']}** ({auto['reason']}; probe "
        f"{auto['seconds']:.1f} s, batch 4, ms per step "
        + ", ".join(f"{k} {'abandoned' if v is None else round(1000 * v)}" for k, v in auto["measured"].items())
        + ").",
        markdown_table(rows, floatfmt=".3g"),
    ))

    if checkpoint.exists():
        log("[bench] inference ...")
        inf = [run_isolated("inference", checkpoint=str(checkpoint), preset=p) for p in ("samples", "default")]
        sections.append((
            "Per-case inference latency (shipped checkpoint)",
            "`python -m mtilib.bench --one inference --kwargs '{\"checkpoint\": "
            "\"data_samples/checkpoints/mtinet_course.pt\", \"preset\": \"samples\"}'`",
            "All slices of one case, stitched, largest component kept, class and enhancement aggregated; median of 5.",
            markdown_table([{"case (P, H, W, S)": str(tuple(r["shape"])), "seconds (median)": r["median_s"],
                             "peak RSS (MB)": r["peak_rss_mb"]} for r in inf], floatfmt=".3g"),
        ))

    log("[bench] phantom ...")
    gen = [run_isolated("phantom", preset="default", repeats=5, dataset_cases=238, dataset_preset="default"),
           run_isolated("phantom", preset="samples", repeats=5, dataset_cases=238, dataset_preset="samples")]
    sections.append((
        "Phantom generation",
        "`python -m mtilib.bench --one phantom --kwargs '{\"preset\": \"default\", \"dataset_cases\": 238, "
        "\"dataset_preset\": \"default\"}'` (and `\"samples\"`)",
        "Median of 5 single cases; the 238-case data sets (the paper's cohort size) generated in memory, "
        "one process, classes round-robin (writing NIfTI adds about 0.15 s per default case).",
        markdown_table([
            {"what": "one `default` case (128×128×24)", "seconds": gen[0]["median_case_s"],
             "peak RSS (MB)": None},
            {"what": "238 `default` cases", "seconds": gen[0]["dataset_s"], "peak RSS (MB)": gen[0]["peak_rss_mb"]},
            {"what": "one `samples` case (64×64×12)", "seconds": gen[1]["median_case_s"], "peak RSS (MB)": None},
            {"what": "238 `samples` cases", "seconds": gen[1]["dataset_s"], "peak RSS (MB)": gen[1]["peak_rss_mb"]},
        ], floatfmt=".3g"),
    ))

    if course:
        for quick in (True, False):
            mode = "QUICK" if quick else "full"
            log(f"[bench] notebooks ({mode}) ...")
            nb = measure_course(quick, REPO_ROOT / "build" / f"bench-course-{mode.lower()}")
            total = sum(r["seconds"] for r in nb)
            nb.append({"notebook": "total", "ok": all(r["ok"] for r in nb), "seconds": total,
                       "peak_rss_mb": max(r["peak_rss_mb"] for r in nb)})
            sections.append((
                f"Notebooks, {mode} mode",
                f"`mtilib course {'--quick ' if quick else ''}--only NN` per notebook (what `make "
                f"{'test' if quick else 'course'}` runs), kernel start included",
                f"Total {total / 60:.1f} minutes.",
                markdown_table(nb, floatfmt=".1f"),
            ))

    gpu_report = REPO_ROOT / "docs" / "gpu_check.md"
    sections.append((
        "GPU", "`make gpu-check` (`scripts/gpu_check.py`) on a CUDA machine",
        "bf16 training, kill + resume, 2-process `torchrun`, evaluation and the GPU benchmark: see "
        "[gpu_check.md](gpu_check.md)." if gpu_report.exists() else
        "**Not run on a GPU yet**: no CUDA machine has been available to the project. The script has "
        "been rehearsed on a CPU (`make gpu-check GPU_CHECK_ARGS=\"--device cpu\"`); its GPU figures "
        "(bf16 speed, host syncs per step, resume on CUDA, two ranks on one GPU) are still to be measured.",
        "",
    ))

    lines = ["# Benchmarks", "", f"Written by `make bench` (`mtilib bench`) on {time.strftime('%Y-%m-%d')} in "
             f"{(time.perf_counter() - started) / 60:.0f} minutes. Machine: {machine_line()}.", "",
             "Medians of repeated runs; each measurement in a fresh process, its peak resident memory (RSS) "
             "included. The machines are noisy: compare ratios, not third digits.", ""]
    for title, command, text, table in sections:
        lines += [f"## {title}", "", f"Command: {command}.", "", text, "", table, ""]
    for title, command, text, table in recorded_runs(checkpoint, REPO_ROOT / "docs" / "results.json"):
        lines += [f"## {title}", "", f"Command: {command}.", "", text, "", table, ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    log(f"[bench] wrote {out}")
    return out


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

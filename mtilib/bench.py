"""Benchmarks (``make bench`` -> ``docs/benchmarks.md``). Medians and ratios, never single runs.

Each measurement runs in a fresh subprocess (``python -m mtilib.bench --one NAME ...``) so that
its peak resident memory is its own and one measurement's caches do not flatter the next.

MONAI is a benchmark/test-only dependency that this package never imports: the comparison with
MONAI's BasicUNet runs ``scripts/bench_peers.py`` in subprocesses (:func:`peer_comparison`), which
times BasicUNet with :func:`measure_step_of`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from mtilib.runtime import autocast, cpu_flags, cpu_name, info, optimizer_kernel, versions


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


def _step_figures(median_s: float, batch: int, macs_per_sample: int | None, model: torch.nn.Module,
                  dev: torch.device) -> dict:
    """The numbers every training-step measurement reports, from its median step time (seconds)
    and the forward MACs of one sample (``None``: not counted)."""
    # a training step is about 3x the forward MACs (forward + two backward products), 2 FLOPs each
    gflop = 3 * 2 * macs_per_sample * batch / 1e9 if macs_per_sample else None
    return {
        "median_step_s": median_s, "samples_per_s": batch / median_s,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_gflop_per_step": gflop, "achieved_gflops": gflop / median_s if gflop else None,
        "peak_rss_mb": _peak_rss_mb(),
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None,
    }


def _median_train_step(model: torch.nn.Module, forward, loss_of, dev: torch.device, precision: str,
                       repeats: int, warmup: int = 1) -> float:
    """Median seconds of a training step: ``forward()`` under ``precision``'s autocast,
    ``loss_of(output)`` outside it, backward and an AdamW step on ``model``'s parameters."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, **optimizer_kernel(dev))

    def step():
        with autocast(dev, precision):
            out = forward()
        loss = loss_of(out)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    return statistics.median(_timed(step, repeats, warmup=warmup))


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

    median = _median_train_step(model, lambda: step_model(batch_data["image"], batch_data["times"]),
                                lambda out: multitask_loss(out, batch_data, LossWeights())[0], dev, precision,
                                repeats, warmup=3 if compile else 1)
    # model_summary counts one sample (batch 1); _step_figures scales it to the batch
    return {"arch": arch, "width": width, "batch": batch, "size": size, "precision": precision,
            "channels_last": channels_last, "compile": compile, "device": device,
            **_step_figures(median, batch, macs, model, dev)}


def measure_step_of(build, batch: int = 8, size: int = 96, precision: str = "fp32", channels_last: bool = False,
                    repeats: int = 5, device: str = "cpu", in_channels: int = 4, num_labels: int = 3,
                    count_macs: bool = True) -> dict:
    """Training step of any segmentation network, for comparisons with networks not built by mtilib.

    ``build()`` returns an ``nn.Module`` mapping ``x (B, in_channels, size, size)`` to logits
    ``(B, num_labels, size, size)``. One step: forward (under ``precision``'s autocast),
    cross-entropy against random labels, backward, AdamW; timed like :func:`measure_train_step`
    (one warm-up step, median of ``repeats``), with the same keys where they apply.
    ``train_gflop_per_step`` / ``achieved_gflops`` are ``None`` unless ``count_macs``.
    """
    from torch.nn import functional as F

    torch.manual_seed(0)
    dev = torch.device(device)
    model = build()
    from mtilib.models.summary import forward_macs

    macs = forward_macs(model, torch.rand(1, in_channels, size, size)) if count_macs else None
    model = model.to(dev).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    x = torch.rand(batch, in_channels, size, size, device=dev) + 0.5
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    label = torch.randint(0, num_labels, (batch, size, size), device=dev)
    median = _median_train_step(model, lambda: model(x), lambda logits: F.cross_entropy(logits.float(), label),
                                dev, precision, repeats)
    return {"network": type(model).__name__, "batch": batch, "size": size, "precision": precision,
            "channels_last": channels_last, "device": device, **_step_figures(median, batch, macs, model, dev)}


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


def measure_fast_path_choice(preset: str = "course", device: str = "cpu", arch: str | None = None,
                             width: int | None = None, size: int | None = None, batch: int | None = None) -> dict:
    """What ``precision="auto"`` / ``channels_last="auto"`` choose for a preset's network, measured
    afresh (no cache), and how long the probe took.

    ``arch`` / ``width`` replace the preset's network by the one :func:`measure_train_step` builds
    (``baseline_config(arch, ModelConfig(width=width))``); ``size`` / ``batch`` replace the preset's
    slice size and batch (the probe caps its batch at ``fastpath.PROBE_BATCH_CAP``).
    """
    from mtilib.models import ModelConfig, baseline_config
    from mtilib.train import TrainConfig
    from mtilib.train.fastpath import choose_fast_paths

    cfg = TrainConfig.preset(preset)
    model_cfg = cfg.model
    if arch is not None or width is not None:
        model_cfg = baseline_config(arch or "mtinet", ModelConfig(width=width or cfg.model.width))
    start = time.perf_counter()
    paths = choose_fast_paths(model_cfg, torch.device(device), "auto", "auto", size or cfg.data.image_size,
                              batch or cfg.optim.batch_size, use_cache=False)
    return {"label": paths.label, "precision": paths.precision, "channels_last": paths.channels_last,
            "reason": paths.reason, "measured": paths.measured, "seconds": time.perf_counter() - start}


ONE = {"train_step": measure_train_step, "fast_paths": measure_fast_path_choice, "matmul": measure_matmul_peak,
       "inference": measure_inference, "phantom": measure_phantom}


def _run_json(cmd: list[str], what: str) -> dict:
    """Run ``cmd``; its last line of output is the result, as JSON."""
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark {what} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_isolated(name: str, **kwargs) -> dict:
    """Run one measurement in a fresh Python process and return its result dict."""
    return _run_json([sys.executable, "-m", "mtilib.bench", "--one", name, "--kwargs", json.dumps(kwargs)],
                     f"{name} {kwargs}")


def machine_line() -> str:
    data = info()
    flags = cpu_flags()
    flag_text = ("CPU flags unknown" if flags is None else
                 "CPU flags " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in flags.items()))
    return (f"{cpu_name()}, {data['cpu_count']} cores, torch {versions()['torch']} ({data['torch_threads']} threads), "
            f"device {data['device']}, torch CPU capability {torch.backends.cpu.get_cpu_capability()}, {flag_text}, "
            f"native bf16: {data['cpu_native_bf16']}")


# --- MONAI's BasicUNet against our networks ----------------------------------------------------------

#: The sizes of the comparison: label -> (width, slice size, batch). The paper's widths and slices
#: at a CPU-sized batch (its preset trains at batch 32 on a GPU).
PEER_SIZES: dict[str, tuple[int, int, int]] = {"course": (16, 64, 16), "paper": (32, 128, 8)}
#: Our goal: ms per training step at most this many times BasicUNet's, same size and settings.
PEER_GOALS = {"unet": 1.2, "mtinet": 4.0}
PEER_NAMES = {"basicunet": "MONAI BasicUNet", "unet": "early-fusion U-Net (ours)", "mtinet": "MTI-Net (ours)"}


def peers_script() -> Path:
    """``scripts/bench_peers.py`` of the source tree (absent when mtilib is installed from a wheel)."""
    from mtilib.course import REPO_ROOT

    return REPO_ROOT / "scripts" / "bench_peers.py"


def peers_missing() -> str | None:
    """Why the comparison with MONAI cannot run here, or ``None`` when it can."""
    import importlib.util

    if importlib.util.find_spec("monai") is None:  # finds the package without importing it
        return "MONAI not installed"
    if not peers_script().exists():
        return f"{peers_script()} not found (mtilib installed without its source tree)"
    return None


def run_peer(name: str, **kwargs) -> dict:
    """One measurement of ``scripts/bench_peers.py`` (e.g. ``"basicunet"``) in a fresh process."""
    return _run_json([sys.executable, str(peers_script()), "--one", name, "--kwargs", json.dumps(kwargs)],
                     f"peer {name} {kwargs}")


def median_round(runs: list[dict]) -> dict:
    """Of several measurements of one network (each with ``median_step_s``), the one with the
    median time (the lower middle one for an even count), with ``rounds`` and every round's time
    (``round_step_s``) added."""
    ordered = sorted(runs, key=lambda r: r["median_step_s"])
    return {**ordered[(len(ordered) - 1) // 2], "rounds": len(runs),
            "round_step_s": [r["median_step_s"] for r in runs]}


def setting_label(precision: str, channels_last: bool) -> str:
    """A precision / memory-format setting as the benchmark tables name it: ``"fp32 + channels_last"``."""
    return precision + (" + channels_last" if channels_last else "")


def peer_comparison(peak_gflops: float | None, sizes: dict[str, tuple[int, int, int]] | None = None,
                    repeats: int = 5, rounds: int = 3, log=print) -> tuple[str, str, str, str]:
    """The section "Step speed against MONAI BasicUNet": ``(title, command, text, table)``.

    At each of ``sizes`` (default :data:`PEER_SIZES`): BasicUNet, our early-fusion U-Net and
    MTI-Net in fp32, and each of ours also in what ``precision: auto`` / ``channels_last: auto``
    picks for it there (BasicUNet measured in the same settings, so every ratio compares like with
    like). ``peak_gflops``: the machine's fp32 matmul peak (``None``: no "of matmul peak" column).
    Every network is measured in ``rounds`` alternating rounds (BasicUNet, U-Net, MTI-Net,
    BasicUNet, ...), each a fresh process timing the median of ``repeats`` steps, and the round with
    the median time is reported: a machine that drifts (a shared host, turbo, other load) then
    slows every network of a comparison alike instead of whichever happened to run at the time.
    """
    from mtilib.tables import markdown_table

    sizes = PEER_SIZES if sizes is None else sizes
    title = "Step speed against MONAI BasicUNet"
    command = ("`python scripts/bench_peers.py --one basicunet --kwargs '{\"width\": 16, \"size\": 64, "
               "\"batch\": 16, \"precision\": \"fp32\"}'` for BasicUNet, `python -m mtilib.bench --one train_step` "
               "and `--one fast_paths` for ours; `python scripts/bench_peers.py` runs this section alone")
    missing = peers_missing()
    if missing:
        return title, command, f"{missing}: peer comparison skipped (`pip install -e '.[bench]'`).", ""

    rows, auto_notes, verdicts = [], [], []
    for label, (width, size, batch) in sizes.items():
        size_text = f"{label}: width {width}, {size}², batch {batch}"
        log(f"[bench] BasicUNet comparison, {size_text} ...")
        settings: dict[str, list[tuple[str, bool]]] = {"basicunet": [("fp32", False)]}
        autos: dict[str, tuple[str, bool]] = {}
        for arch in ("unet", "mtinet"):
            auto = run_isolated("fast_paths", arch=arch, width=width, size=size, batch=batch)
            autos[arch] = (auto["precision"], bool(auto["channels_last"]))
            auto_notes.append(f"{label} {arch}: **{auto['label']}** ({auto['reason']})")
            settings[arch] = list(dict.fromkeys([("fp32", False), autos[arch]]))
            settings["basicunet"] = list(dict.fromkeys(settings["basicunet"] + settings[arch]))
        measured: dict[tuple[str, tuple[str, bool]], list[dict]] = {}
        for _ in range(max(1, rounds)):
            for net, wanted in settings.items():
                for precision, channels_last in wanted:
                    kwargs = dict(width=width, batch=batch, size=size, precision=precision, channels_last=channels_last,
                                  repeats=repeats if precision == "fp32" else min(3, repeats))
                    measured.setdefault((net, (precision, channels_last)), []).append(
                        run_peer("basicunet", **kwargs) if net == "basicunet"
                        else run_isolated("train_step", arch=net, **kwargs))
        results = {key: median_round(runs) for key, runs in measured.items()}
        for setting in settings["basicunet"]:
            base = results["basicunet", setting]
            for net in ("basicunet", "unet", "mtinet"):
                r = results.get((net, setting))
                if r is None:
                    continue
                precision = setting_label(*setting)
                if net != "basicunet" and autos[net] == setting:
                    precision += " (= auto)" if setting == ("fp32", False) else " (auto)"
                ratio = r["median_step_s"] / base["median_step_s"]
                goal = ""
                if net in PEER_GOALS:
                    met = ratio <= PEER_GOALS[net]
                    goal = f"≤ {PEER_GOALS[net]:g}×: {'met' if met else 'not met'}"
                    verdicts.append(met)
                rows.append({
                    "network": PEER_NAMES[net], "size": size_text, "precision": precision,
                    # whole ms and MB: ".3g" would print 1234 as 1.23e+03
                    "parameters": r["parameters"], "ms/step (median)": round(1000 * r["median_step_s"]),
                    "samples/s": r["samples_per_s"], "× BasicUNet": ratio, "goal": goal,
                    "rounds (ms)": "–".join(str(round(1000 * t)) for t in (min(r["round_step_s"]),
                                                                            max(r["round_step_s"]))),
                    "peak RSS (MB)": round(r["peak_rss_mb"]),
                    "of matmul peak": (r["achieved_gflops"] / peak_gflops
                                       if r.get("achieved_gflops") and peak_gflops else None),
                })
    text = (
        "A training step (forward + backward + AdamW) on random data, each measurement in its own process; "
        f"{max(1, rounds)} alternating rounds (BasicUNet, U-Net, MTI-Net, BasicUNet, ...), each timing the median "
        f"of {repeats} steps, and the round with the median time reported, so that a machine that drifts slows "
        "every network of a comparison alike (the spread column gives the fastest and slowest round). "
        "BasicUNet (`monai.networks.nets.BasicUNet(spatial_dims=2, in_channels=4, out_channels=3, "
        "features=(w, w, 2w, 4w, 8w, w))`: our stage widths w, 2w, 4w, 8w, two 3×3 convolutions with instance "
        "norm per level) takes the four phases as channels and trains with cross-entropy; ours train with the "
        "multi-task loss (all their heads) at `blocks_per_stage` 1, as in the first section. Sizes: "
        + ", ".join(f"{k} (width {w}, {s}², batch {b})" for k, (w, s, b) in sizes.items())
        + ("; the paper's widths and slices at a CPU-sized batch (the `paper` preset trains at batch 32 on a GPU)"
           if "paper" in sizes else "")
        + ". × BasicUNet: our ms/step over BasicUNet's at "
        f"the same size, precision and memory format. Goal: early-fusion U-Net ≤ {PEER_GOALS['unet']:g}×, "
        f"MTI-Net ≤ {PEER_GOALS['mtinet']:g}×; met in {sum(verdicts)} of {len(verdicts)} rows. `auto` is what "
        "the fast-path probe (batch capped at 4) picks for that network and size on this machine: "
        + "; ".join(auto_notes) + ". Where it picks fp32 (contiguous) the fp32 row is marked \"(= auto)\" and "
        "not measured twice. Of matmul peak: achieved FLOP/s (3 × forward MACs × 2 FLOPs × batch per step) over "
        "the fp32 matmul peak of the first section."
    )
    return title, command, text, markdown_table(rows, floatfmt=".3g")


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


def measure_course_wall(quick: bool, out: Path) -> dict:
    """The whole course as a user runs it, ``mtilib course [--quick]`` (its default number of
    notebooks at a time): wall-clock seconds and whether every notebook passed."""
    cmd = [sys.executable, "-m", "mtilib.cli", "course", "--out", str(out)] + (["--quick"] if quick else [])
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return {"seconds": time.perf_counter() - start, "ok": proc.returncode == 0}


def time_to_accuracy(checkpoint: Path, figure: Path, figure_link: str, targets: dict | None = None
                     ) -> tuple[str, str, str, str] | None:
    """The section "Time to accuracy" for the shipped checkpoint: draws ``figure`` (PNG) from its
    validation history, tabulates the first minute each target was met and the held-out evaluation
    (``mtinet_course_heldout.json`` beside the checkpoint). ``None`` without a checkpoint."""
    from collections import Counter

    from mtilib.metrics import COURSE_TARGETS, headline_metrics
    from mtilib.tables import markdown_table
    from mtilib.train import load_checkpoint
    from mtilib.viz import meets_target, minutes_to_targets, plot_time_to_accuracy

    if not checkpoint.exists():
        return None
    targets = COURSE_TARGETS if targets is None else targets
    state = load_checkpoint(checkpoint)
    training = json.loads(state.get("training", "{}"))
    history = json.loads(state["history"])
    plot_time_to_accuracy(history, targets, figure)
    reached = minutes_to_targets(history, targets)

    heldout_path = checkpoint.with_name("mtinet_course_heldout.json")
    heldout, heldout_text = {}, ("No held-out evaluation recorded yet (`make checkpoint` writes "
                                 f"`{heldout_path.name}`).")
    if heldout_path.exists():
        data = json.loads(heldout_path.read_text())
        heldout = headline_metrics(data["summary"])
        per_class = Counter(c.get("true_class") for c in data.get("cases", []))
        # make checkpoint records the held-out seed in the checkpoint it evaluates
        seed = training.get("heldout_seed")
        seed_text = ("the seed recorded by `make checkpoint`" if seed is None
                     else f"seed {seed} (recorded in the checkpoint)")
        per_class_text = (f", {next(iter(per_class.values()))} per class"
                          if per_class and len(set(per_class.values())) == 1 else "")
        heldout_text = (f"Held-out evaluation (`{heldout_path.name}`): {heldout.get('n_cases')} phantom cases"
                        f"{per_class_text}, {seed_text}, evaluated per case.")
    rows = []
    for metric, (op, target) in targets.items():
        values = [r.get(f"val_{metric}") for r in history if r.get(f"val_{metric}") is not None]
        best = (max if op == ">=" else min)(values) if values else None
        epoch = next((r["epoch"] for r in history if meets_target(r.get(f"val_{metric}"), op, target)), None)
        value = heldout.get(metric)
        rows.append({
            "metric": metric, "target": f"{op} {target:g}", "validation: first met (minutes)": reached[metric],
            "at epoch": epoch, "validation: best": best, "held-out": value,
            "held-out meets target": None if value is None else ("yes" if meets_target(value, op, target) else "no"),
        })
    timed_by = ("`elapsed_s` of each epoch (training, validation and checkpoints)"
                if all(r.get("elapsed_s") is not None for r in history) else
                "the summed `train_seconds` of the epochs (plus `val_seconds` where recorded): this checkpoint "
                "predates `elapsed_s`, so time spent validating is missing and the minutes are an underestimate")
    val_fraction = (state.get("config") or {}).get("data", {}).get("val_fraction")
    val_text = "the validation cases" if val_fraction is None else f"the {round(val_fraction * 100)} % validation cases"
    text = (f"The shipped checkpoint's validation curve ({len(history)} epochs, {val_text} after "
            f"each epoch) against wall-clock minutes of training, taken from {timed_by}; the targets are "
            "`mtilib.metrics.COURSE_TARGETS`. " + heldout_text)
    table = (f"![validation Dice, accuracy and enhancement MAE against minutes of training]({figure_link})\n\n"
             + markdown_table(rows, floatfmt=".3g"))
    if heldout:
        table += "\n\nAll headline metrics of the held-out evaluation:\n\n" + markdown_table(
            [{"metric": k, "value": v} for k, v in heldout.items()], floatfmt=".3g")
    return ("Time to accuracy (shipped checkpoint)", "`make checkpoint` (`scripts/make_checkpoint.py`); the plot "
            "by `mtilib.viz.plot_time_to_accuracy`", text, table)


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
            {"what": "epochs in this checkpoint's history (the epoch shipped; best validation score)",
             "value": f"{len(history)} ({state['epoch'] + 1}; {state['best_epoch']})"},
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
            "network": network, "precision": setting_label(r["precision"], r["channels_last"]),
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
    sections.append(peer_comparison(peak["gflops"], log=log))

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
            whole = measure_course_wall(quick, REPO_ROOT / "build" / f"bench-course-{mode.lower()}-whole")
            sections.append((
                f"Notebooks, {mode} mode",
                f"`mtilib course {'--quick ' if quick else ''}--only NN` per notebook, one at a time, kernel "
                f"start included; then the whole course as `mtilib course{' --quick' if quick else ''}` "
                f"({'the QUICK course' if quick else 'what `make course` runs'}: two notebooks at a time on two "
                "or more cores)",
                f"One notebook at a time: total {total / 60:.1f} minutes. The whole course, two at a time: "
                f"**{whole['seconds'] / 60:.1f} minutes** wall clock ({whole['seconds']:.0f} s; "
                f"{'every notebook ok' if whole['ok'] else 'A NOTEBOOK FAILED'}).",
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
    recorded = recorded_runs(checkpoint, REPO_ROOT / "docs" / "results.json")
    figure = out.parent / "figures" / "time_to_accuracy.png"
    accuracy = time_to_accuracy(checkpoint, figure, Path(os.path.relpath(figure, out.parent)).as_posix())
    if accuracy is not None:
        log(f"[bench] wrote {figure}")
        recorded.insert(1, accuracy)  # right after "Shipped checkpoint"
    for title, command, text, table in recorded:
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

"""Precision and memory format chosen by measurement, not by CPU flags.

bf16 autocast and channels_last can make a convolutional network faster, or slower: on a CPU
without native bf16 oneDNN emulates it (about 8× slower for MTI-Net), and even on a CPU *with*
native bf16 MTI-Net measured slower in bf16 + channels_last (21.5 vs 25.7 samples/s) than in plain
fp32. So ``"auto"`` times a few training steps of the network at hand, on this machine, for each
candidate, and keeps fp32 / contiguous unless another candidate is clearly faster.

The probe takes a few seconds at most (a candidate whose forward pass alone is far slower than
a whole baseline step is abandoned, and so is the other bf16 candidate once one bf16 candidate
was) and its result is cached in a JSON file per machine, device,
torch version and network (``$MTILIB_CACHE_DIR``, else ``$XDG_CACHE_HOME/mtilib``, else
``~/.cache/mtilib``), so it runs once. ``mtilib info`` shows what it measured.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from mtilib.losses import LossWeights, multitask_loss
from mtilib.models import build_model
from mtilib.models.mtinet import ModelConfig
from mtilib.runtime import autocast, cpu_name, resolve_channels_last, resolve_precision

#: Another candidate must be at least this much faster than fp32 / contiguous to be chosen: a
#: smaller gain is within the noise of a few timed steps and not worth a less tested path.
MIN_SPEEDUP = 1.10
#: Seconds of timed steps, all candidates together (after one warm-up step each).
TIME_BUDGET_S = 1.5
#: A candidate whose warm-up step is this many times slower than the baseline step is abandoned.
ABANDON_FACTOR = 3.0
#: The probe's batch: large enough to load the cores, small enough to take seconds.
PROBE_BATCH_CAP = 4


def path_label(precision: str, channels_last: bool) -> str:
    """The name of a candidate in measurements and messages: ``"fp32"``, ``"bf16+channels_last"``."""
    return precision + ("+channels_last" if channels_last else "")


@dataclass
class FastPaths:
    """The precision and memory format a run uses, and why.

    ``measured``: seconds per training step for each candidate probed (``"fp32"``,
    ``"fp32+channels_last"``, ``"bf16"``, ``"bf16+channels_last"``; ``None`` = abandoned after a
    warm-up step far slower than fp32). Empty when nothing was measured (both settings explicit).
    """

    precision: str
    channels_last: bool
    reason: str
    measured: dict[str, float | None] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return path_label(self.precision, self.channels_last)


def cache_dir() -> Path:
    if os.environ.get("MTILIB_CACHE_DIR"):
        return Path(os.environ["MTILIB_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mtilib"


def machine_key(device: torch.device) -> str:
    """What the measurement depends on besides the network: CPU, threads, accelerator, torch."""
    parts = [cpu_name(), platform.machine(), torch.backends.cpu.get_cpu_capability(),
             f"threads={torch.get_num_threads()}", f"torch={torch.__version__}", device.type]
    if device.type == "cuda":
        parts.append(torch.cuda.get_device_name(device))
    return " | ".join(parts)


def _cache_key(model_config: ModelConfig, device: torch.device, image_size: int, batch: int) -> str:
    network = json.dumps(model_config.architecture(), sort_keys=True, default=str)
    text = f"{machine_key(device)} || {network} || size={image_size} batch={batch}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # no cache yet, or a damaged one: measure again


def _write_cache(path: Path, key: str, entry: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache(path)
        data[key] = entry
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home only costs a new measurement next time


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _probe_batch(model_config: ModelConfig, image_size: int, batch: int, device: torch.device) -> dict:
    generator = torch.Generator().manual_seed(0)
    p, k = model_config.phases, model_config.num_labels
    label = torch.randint(0, k, (batch, image_size, image_size), generator=generator)
    return {
        "image": torch.rand(batch, p, image_size, image_size, generator=generator).to(device),
        "times": torch.tensor([0.0, 35.0, 70.0, 180.0][:p]).expand(batch, p).contiguous().to(device),
        "label": label.to(device),
        "has_lesion": torch.ones(batch, dtype=torch.bool, device=device),
        "class_id": torch.randint(0, model_config.num_classes, (batch,), generator=generator).to(device),
        "enhancement": torch.rand(batch, p - 1, generator=generator).to(device),
    }


class _TrainingStep:
    """One forward + backward pass of a copy of the network in one precision and memory format."""

    def __init__(self, model: torch.nn.Module, batch: dict, device: torch.device, precision: str,
                 channels_last: bool):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = copy.deepcopy(model).to(memory_format=fmt)
        self.x = batch["image"].contiguous(memory_format=fmt)
        self.batch, self.device, self.precision = batch, device, precision

    def __call__(self, abandon_s: float | None = None) -> float | None:
        """Seconds for the step; ``None`` (step not finished) when the forward pass alone took
        longer than ``abandon_s``."""
        _synchronize(self.device)
        start = time.perf_counter()
        with autocast(self.device, self.precision):
            out = self.model(self.x, self.batch["times"])
        loss, _ = multitask_loss(out, self.batch, LossWeights())
        if abandon_s is not None:
            _synchronize(self.device)
            if time.perf_counter() - start > abandon_s:
                return None
        self.model.zero_grad(set_to_none=True)
        loss.backward()
        _synchronize(self.device)
        return time.perf_counter() - start


def measure_fast_paths(model_config: ModelConfig, device: torch.device, image_size: int, batch: int,
                       candidates: list[tuple[str, bool]], budget_s: float = TIME_BUDGET_S
                       ) -> dict[str, float | None]:
    """Median seconds per training step of a freshly built network for each ``(precision,
    channels_last)`` candidate; ``None`` for a candidate abandoned as far too slow.

    The first candidate is the baseline. Each candidate takes one warm-up step (abandoned when its
    forward pass alone outlasts :data:`ABANDON_FACTOR` baseline steps); then the survivors are
    timed in alternation, round after round, so that a drift of the machine's speed (another
    process, the CPU clock) affects them alike, until ``budget_s`` is spent (at least 3 rounds).
    """
    # the probe must not shift the run's random streams (CPU and this GPU)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        model = build_model(model_config).to(device).train()
        batch_data = _probe_batch(model_config, image_size, batch, device)
        steps: dict[str, _TrainingStep] = {}
        results: dict[str, float | None] = {}
        baseline = None
        for precision, channels_last in candidates:
            name = path_label(precision, channels_last)
            if precision == "bf16" and any(k.startswith("bf16") and v is None for k, v in results.items()):
                results[name] = None  # bf16 in the other memory format was already far too slow
                continue
            step = _TrainingStep(model, batch_data, device, precision, channels_last)
            warm = step(None if baseline is None else ABANDON_FACTOR * baseline)
            if baseline is None:
                baseline = step()  # the first step of all also pays one-time set-up costs
                warm = baseline
            if warm is None or warm > ABANDON_FACTOR * baseline:
                results[name] = None
                continue
            steps[name] = step
            results[name] = warm
        timings: dict[str, list[float]] = {name: [] for name in steps}
        start = time.perf_counter()
        rounds = 0
        while rounds < 3 or (time.perf_counter() - start < budget_s and rounds < 25):
            for name, step in steps.items():
                timings[name].append(step())
            rounds += 1
        for name, values in timings.items():
            results[name] = float(sorted(values)[len(values) // 2])
        return results


def _candidates(precision: str, channels_last: bool | str, device: torch.device) -> list[tuple[str, bool]]:
    precisions = ["fp32", "bf16"] if precision == "auto" else [precision]
    if device.type == "mps":
        precisions = [p for p in precisions if p != "bf16"]  # no bf16 autocast on MPS
    formats = [False, True] if channels_last == "auto" else [bool(channels_last)]
    # fp32 / contiguous first (the baseline); bf16 with channels_last before bf16 without, the
    # combination that native-bf16 kernels favour
    return [(p, f) for p in precisions for f in (formats[::-1] if p == "bf16" and len(precisions) > 1 else formats)]


def decide(measured: dict[str, float | None], candidates: list[tuple[str, bool]]) -> tuple[str, bool, str]:
    """The fastest candidate if it beats the first (the baseline) by :data:`MIN_SPEEDUP`, else the baseline."""
    base_precision, base_cl = candidates[0]
    base_name = path_label(base_precision, base_cl)
    base = measured.get(base_name)
    best = (base_precision, base_cl, base_name, base)
    for precision, cl in candidates[1:]:
        name = path_label(precision, cl)
        seconds = measured.get(name)
        if seconds is not None and best[3] is not None and seconds < best[3]:
            best = (precision, cl, name, seconds)
    if best[2] != base_name and base is not None and base / best[3] >= MIN_SPEEDUP:
        return best[0], best[1], f"measured {base / best[3]:.2f}x faster than {base_name}"
    return base_precision, base_cl, f"measured: nothing beat {base_name} by {MIN_SPEEDUP:.2f}x"


def choose_fast_paths(model_config: ModelConfig, device: torch.device, precision: str = "auto",
                      channels_last: bool | str = "auto", image_size: int = 64, batch: int = 8,
                      use_cache: bool = True) -> FastPaths:
    """Resolve ``precision`` (``auto | bf16 | fp32``) and ``channels_last`` (``auto | True | False``)
    for ``model_config`` on ``device``: explicit values as given, ``auto`` by a measured probe.

    Under ``torchrun`` rank 0 measures and broadcasts, so every process runs the same paths.
    """
    import torch.distributed as dist

    precision = resolve_precision(precision, device)
    channels_last = resolve_channels_last(channels_last, device)
    if precision != "auto" and channels_last != "auto":
        return FastPaths(precision, bool(channels_last), "as configured")
    candidates = _candidates(precision, channels_last, device)
    if len(candidates) == 1:
        p, cl = candidates[0]
        return FastPaths(p, cl, "the only candidate on this device")
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    choice: list = [None]
    if not distributed or dist.get_rank() == 0:
        choice[0] = _measure_or_cached(model_config, device, candidates, image_size,
                                       max(1, min(batch, PROBE_BATCH_CAP)), use_cache)
    if distributed:
        dist.broadcast_object_list(choice, src=0)
    return choice[0]


def _measure_or_cached(model_config, device, candidates, image_size, batch, use_cache) -> FastPaths:
    path = cache_dir() / "fastpath.json"
    key = _cache_key(model_config, device, image_size, batch) + "|" + ",".join(
        f"{p}{int(c)}" for p, c in candidates)
    entry = _read_cache(path).get(key) if use_cache else None
    if isinstance(entry, dict) and isinstance(entry.get("measured"), dict):
        measured = entry["measured"]
        cached = True
    else:
        measured = measure_fast_paths(model_config, device, image_size, batch, candidates)
        cached = False
        if use_cache:
            _write_cache(path, key, {"measured": measured, "machine": machine_key(device),
                                     "image_size": image_size, "batch": batch,
                                     "when": time.strftime("%Y-%m-%d %H:%M:%S")})
    precision, cl, reason = decide(measured, candidates)
    return FastPaths(precision, cl, reason + (" (cached)" if cached else ""), dict(measured))


def fast_paths_report(paths: FastPaths) -> dict:
    """A JSON-ready form of :class:`FastPaths` for ``mtilib info``."""
    return asdict(paths) | {"ms_per_step": {k: (None if v is None else round(1000 * v, 1))
                                            for k, v in paths.measured.items()}}

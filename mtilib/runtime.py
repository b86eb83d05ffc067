"""Where code runs: device choice, precision policy, seeding and version records.

Lowest layer next to :mod:`mtilib.constants`; everything else may import it.
"""

from __future__ import annotations

import os
import platform
import random
import sys
from contextlib import nullcontext
from importlib import metadata

import numpy as np
import torch

from mtilib import __version__

STACK = (
    "torch", "numpy", "scipy", "scikit-learn", "pandas", "nibabel", "matplotlib", "seaborn",
    "tqdm", "PyYAML", "papermill", "ipywidgets", "jupyterlab",
)


def select_device(spec: str | torch.device = "auto") -> torch.device:
    """Resolve ``"auto"`` to CUDA, else MPS, else CPU; pass other specs through ``torch.device``.

    Asking for a device that is not present raises a clear error instead of failing later.
    """
    if isinstance(spec, torch.device):
        return spec
    spec = str(spec).strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {spec!r} requested but CUDA is not available (use DEVICE='auto')")
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise RuntimeError(f"device {spec!r} requested but MPS is not available (use DEVICE='auto')")
    return device


def cpu_has_native_bf16() -> bool:
    """True when oneDNN reports native bf16 kernels (AVX512-BF16 / AMX) on this CPU."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """Check an explicit ``"bf16" | "fp32"`` for ``device``; ``"auto"`` is decided by measurement
    (:func:`mtilib.train.fastpath.choose_fast_paths`), and is returned unchanged here."""
    precision = str(precision).lower()
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be 'auto', 'bf16' or 'fp32', not {precision!r}")
    if precision == "bf16" and device.type == "mps":
        raise ValueError("bf16 autocast is not supported on MPS; use 'fp32' or 'auto'")
    return precision


def resolve_channels_last(channels_last: str | bool, device: torch.device) -> bool | str:
    """Check a ``channels_last`` setting: ``True``/``False`` pass through, ``"auto"`` is returned
    unchanged (decided by measurement, see :func:`mtilib.train.fastpath.choose_fast_paths`)."""
    if isinstance(channels_last, bool):
        return channels_last
    text = str(channels_last).strip().lower()
    if text in ("true", "false"):
        return text == "true"
    if text != "auto":
        raise ValueError(f"channels_last must be true, false or 'auto', not {channels_last!r}")
    return "auto"


def autocast(device: torch.device, precision: str):
    """One autocast context chosen by device type and the resolved precision."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def optimizer_kernel(device: torch.device) -> dict:
    """Keyword for ``torch.optim.Adam``/``AdamW``: the fused kernel (all parameters in one pass) on
    CPU and CUDA, ``foreach`` elsewhere. torch's default on a CPU is a loop over the parameter
    tensors: 11.5 ms per step for MTI-Net's 166 tensors on 2 cores, against 1.7 ms fused."""
    return {"fused": True} if torch.device(device).type in ("cpu", "cuda") else {"foreach": True}


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices); optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def rng_state(device: torch.device) -> dict:
    """This process's torch random states as CPU byte tensors: ``{"torch", "cuda"}`` (cuda None off GPU)."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device).cpu() if device.type == "cuda" else None}


def gather_rng_states(world: int, device: torch.device) -> dict:
    """Every rank's :func:`rng_state`, gathered (a collective: all ranks must call it).

    Returns ``{"per_rank": [state of rank 0, rank 1, ...]}`` for a checkpoint, so that on resume
    each rank continues its own random stream.
    """
    local = rng_state(device)
    if world <= 1:
        return {"per_rank": [local]}
    import torch.distributed as dist

    states: list = [None] * world
    dist.all_gather_object(states, local)
    return {"per_rank": [{k: (v.cpu() if v is not None else None) for k, v in st.items()} for st in states]}


def restore_rng_states(saved: dict, rank: int, world: int, device: torch.device) -> bool:
    """Restore this rank's random states from a checkpoint's ``rng`` entry; False if they do not fit.

    ``torch.set_rng_state`` and ``torch.cuda.set_rng_state`` take CPU byte tensors only, so states
    are moved to the CPU first, wherever the checkpoint was loaded. Checkpoints written before
    per-rank states (``{"torch", "cuda": [per device]}``) restore in a single process. A checkpoint
    of another number of processes returns False (the caller reseeds).
    """
    if "per_rank" in saved:
        states = saved["per_rank"]
        if len(states) != world:
            return False
        own = states[rank]
        cuda = own.get("cuda")
    else:
        if world != 1:
            return False
        own = saved
        cuda = saved.get("cuda")
        if isinstance(cuda, (list, tuple)):
            cuda = cuda[device.index or 0] if device.type == "cuda" and len(cuda) > (device.index or 0) else None
    torch.set_rng_state(own["torch"].cpu())
    if device.type == "cuda" and cuda is not None:
        torch.cuda.set_rng_state(cuda.cpu(), device)
    return True


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpuinfo_field(field: str) -> str | None:
    """The value of the first ``field`` line of ``/proc/cpuinfo`` (Linux), or ``None``."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith(field) and ":" in line:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what :mod:`platform` knows."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


#: CPU flags that decide which kernels torch can use (AVX-512, native bf16, AMX tiles).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_flags(names=CPU_FLAGS) -> dict[str, bool] | None:
    """Whether ``/proc/cpuinfo`` lists each flag of ``names``; ``None`` where it cannot be read."""
    line = _cpuinfo_field("flags")
    if line is None:
        return None
    present = set(line.split())
    return {name: name in present for name in names}


def versions() -> dict[str, str | None]:
    """Versions of Python, mtilib and the stack; recorded in every run and checkpoint."""
    out: dict[str, str | None] = {"python": platform.python_version(), "mtilib": __version__}
    for name in STACK:
        out[name] = package_version(name)
    out["torch"] = str(torch.__version__)  # TorchVersion would not load with weights_only=True
    return out


def info() -> dict[str, object]:
    """What ``mtilib info`` prints: versions, device found, threads, CPU capability. The measured
    fast-path choice is added by the command line (it needs a model: :mod:`mtilib.train.fastpath`)."""
    device = select_device("auto")
    result: dict[str, object] = {
        "versions": versions(),
        "platform": platform.platform(),
        "executable": sys.executable,
        "device": str(device),
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "mps_available": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": cpu_has_native_bf16(),  # a fact of the CPU; whether bf16 helps is measured
    }
    return result


def format_info(data: dict[str, object]) -> str:
    """Render :func:`info` as aligned ``key: value`` lines."""
    lines = []
    for key, value in data.items():
        if key == "versions":
            lines.append("versions:")
            for name, ver in value.items():  # type: ignore[union-attr]
                lines.append(f"  {name:<14} {ver if ver is not None else 'not installed'}")
        elif isinstance(value, dict):
            lines.append(f"{key}:")
            for name, item in value.items():
                lines.append(f"  {name + ':':<20} {item}")
        else:
            lines.append(f"{key + ':':<22} {value}")
    return "\n".join(lines)

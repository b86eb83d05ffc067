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


def bf16_helps(device: torch.device) -> bool:
    """Whether bf16 autocast is expected to speed training up on ``device``.

    On CPUs without native bf16 (AVX2-only machines such as our 2-core CI box) oneDNN emulates
    bf16 and a conv net runs about 10x *slower* (measured in docs/benchmarks.md), so the
    ``auto`` policy keeps fp32 there.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """Map ``"auto" | "bf16" | "fp32"`` to the precision actually used on ``device``."""
    precision = precision.lower()
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be 'auto', 'bf16' or 'fp32', not {precision!r}")
    if precision == "auto":
        return "bf16" if bf16_helps(device) else "fp32"
    if precision == "bf16" and device.type == "mps":
        raise ValueError("bf16 autocast is not supported on MPS; use 'fp32' or 'auto'")
    return precision


def resolve_channels_last(channels_last: str | bool, device: torch.device) -> bool:
    """``"auto"`` uses channels_last where convolutions profit: CUDA, or CPUs with native bf16."""
    if isinstance(channels_last, bool):
        return channels_last
    if str(channels_last).lower() != "auto":
        raise ValueError(f"channels_last must be true, false or 'auto', not {channels_last!r}")
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())


def autocast(device: torch.device, precision: str):
    """One autocast context chosen by device type and the resolved precision."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices); optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    """Versions of Python, mtilib and the stack; recorded in every run and checkpoint."""
    out: dict[str, str | None] = {"python": platform.python_version(), "mtilib": __version__}
    for name in STACK:
        out[name] = package_version(name)
    out["torch"] = str(torch.__version__)  # TorchVersion would not load with weights_only=True
    return out


def info() -> dict[str, object]:
    """What ``mtilib info`` prints: versions, device found, threads, fast-path availability."""
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
        "cpu_native_bf16": cpu_has_native_bf16(),
        "bf16_autocast_usable": True,  # autocast runs everywhere; whether it helps is below
        "bf16_helps": bf16_helps(device),
        "channels_last_helps": resolve_channels_last("auto", device),
        "precision_auto": resolve_precision("auto", device),
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
        else:
            lines.append(f"{key + ':':<22} {value}")
    return "\n".join(lines)

"""Checkpoints (DESIGN §4): atomic writes, full training state, safe loading.

A checkpoint is a dict of tensors and plain Python values only, so it loads with
``torch.load(weights_only=True)`` (no arbitrary code runs when a student opens a file from
someone else). It is written to a temporary file in the same folder, flushed, and renamed over the
target, so a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from mtilib import __version__

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "mtilib_version", "config", "model", "epoch")


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used: missing, corrupt, or incompatible."""


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write ``state`` (plus format and package versions) atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format_version": FORMAT_VERSION, "mtilib_version": __version__, **state}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a checkpoint is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load and check a checkpoint; raise :class:`CheckpointError` naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, wrong format, unsafe pickle content
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not an mtilib checkpoint (top level is {type(state).__name__})")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not an mtilib checkpoint (missing {', '.join(missing)})")
    if state["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written by a newer mtilib (format {state['format_version']} > {FORMAT_VERSION}); upgrade"
        )
    _upgrade_config(state)
    return state


#: Model-config fields added after checkpoints were first written, with the value that reproduces
#: what an older checkpoint's network computed (a saved config holds every field of its time, so
#: a missing one means "written before this field existed").
LEGACY_MODEL_FIELDS = {"enhancement_residual": False, "layout": "wide", "enhancement_gain": False}


def _upgrade_config(state: dict) -> None:
    model = state["config"].get("model") if isinstance(state["config"], dict) else None
    if isinstance(model, dict):
        for key, old_value in LEGACY_MODEL_FIELDS.items():
            model.setdefault(key, old_value)


def load_state_dict_checked(module: torch.nn.Module, state_dict: dict, path: str | Path, what: str) -> None:
    """``load_state_dict`` with an error that names the file and the mismatching parameters."""
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        detail = "; ".join(line.strip() for line in first[:4])
        raise CheckpointError(f"{path}: {what} weights do not fit this network ({detail})") from exc


def load_model(path: str | Path, device: str | torch.device = "cpu", which: str = "model"):
    """Rebuild the network stored in a checkpoint: ``-> (model in eval mode, TrainConfig, state)``.

    ``which="discriminator"`` rebuilds the TDD instead.
    """
    from mtilib.models import build_discriminator, build_model
    from mtilib.train.config import TrainConfig

    state = load_checkpoint(path, map_location=device)
    try:
        cfg = TrainConfig.from_dict(state["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: its config does not fit this mtilib version ({exc})") from exc
    if which == "model":
        module = build_model(cfg.model)
    elif which == "discriminator":
        module = build_discriminator(cfg.model)
        if module is None or state.get("discriminator") is None:
            raise CheckpointError(f"{path}: holds no discriminator (trained with tdd=False)")
    else:
        raise ValueError(f"which must be 'model' or 'discriminator', not {which!r}")
    load_state_dict_checked(module, state[which], path, "network" if which == "model" else which)
    return module.to(device).eval(), cfg, state

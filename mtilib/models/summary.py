"""Model summary: parameters and multiply-accumulates per top-level module for one input size."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def forward_flop_counts(model: nn.Module, *inputs) -> dict:
    """FLOPs of one forward pass on ``inputs`` in eval mode, per module and operator, as
    ``torch.utils.flop_counter`` counts them (the model's train/eval mode is restored)."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False, depth=None)
    with torch.no_grad(), counter:
        model(*inputs)
    model.train(was_training)
    return counter.get_flop_counts()


def forward_macs(model: nn.Module, *inputs) -> int:
    """Multiply-accumulates (FLOPs / 2) of one forward pass on ``inputs``, for any network."""
    flops = forward_flop_counts(model, *inputs)
    return int(sum(flops["Global"].values()) // 2)  # "Global": every operator of the pass


def model_summary(model: nn.Module, image_size: int = 64, batch: int = 1, phases: int | None = None,
                  times_s=(0.0, 35.0, 70.0, 180.0)) -> list[dict]:
    """One row per top-level child module: ``module``, ``parameters``, ``macs`` (forward pass).

    MACs are FLOPs/2 as counted by ``torch.utils.flop_counter`` (convolutions, matmuls, attention);
    FFTs and element-wise ops are not counted. A final ``total`` row sums the model.
    """
    phases = phases or getattr(getattr(model, "config", None), "phases", len(times_s))
    x = torch.rand(batch, phases, image_size, image_size)
    t = torch.tensor([list(times_s)[:phases]], dtype=torch.float32).expand(batch, -1)
    flops = forward_flop_counts(model, x, t)
    name = type(model).__name__
    rows = []
    for child_name, child in model.named_children():
        key = f"{name}.{child_name}"
        if key in flops:
            child_flops = sum(flops[key].values())
        else:  # a ModuleList is never called itself: add up its members
            members = [k for k in flops if k.startswith(key + ".") and k[len(key) + 1:].isdigit()]
            child_flops = sum(sum(flops[k].values()) for k in members)
        rows.append({
            "module": child_name,
            "type": type(child).__name__,
            "parameters": sum(p.numel() for p in child.parameters()),
            "macs": int(child_flops // 2),
        })
    rows.append({
        "module": "total",
        "type": name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "macs": int(sum(flops.get(name, {}).values()) // 2),
    })
    return rows


def format_summary(rows: list[dict]) -> str:
    """Aligned text table of :func:`model_summary` rows (parameters in thousands, MACs in millions)."""
    lines = [f"{'module':<16}{'type':<26}{'params (k)':>12}{'MMACs':>12}"]
    for r in rows:
        lines.append(f"{r['module']:<16}{r['type']:<26}{r['parameters'] / 1e3:>12.1f}{r['macs'] / 1e6:>12.1f}")
    return "\n".join(lines)

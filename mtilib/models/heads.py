"""Task heads (DESIGN §3.6)."""

from __future__ import annotations

import torch
from torch import nn

from mtilib.models.blocks import MLP, ConvNormAct


class SegmentationHead(nn.Sequential):
    """``(B, C, H, W) -> (B, K, H, W)`` logits: a 1×1 classifier, after one 3×3 ConvNormAct with
    ``refine=True`` (the first release's "wide" layout; the full-resolution 3×3 block cost about
    a sixth of the early-fusion U-Net's step and is left out of the compact layout)."""

    def __init__(self, channels: int, num_labels: int, refine: bool = False):
        layers = [ConvNormAct(channels, channels)] if refine else []
        super().__init__(*layers, nn.Conv2d(channels, num_labels, 1))


class RegressionHead(nn.Module):
    """MLP over the region descriptors and the pooled summary.

    ``descriptors (B, P, d), pooled (B, F), measured (B, P-1) -> enhancement (B, P-1),
    embedding (B, hidden)``; the embedding is what TIM's FiLM reads.

    ``residual=True``: the output is ``measured + MLP(...)``, where ``measured`` is the relative
    enhancement TIM measured in the input images under the preliminary lesion map s0 (detached:
    the regression loss does not reshape the mask). The last layer starts at zero, so a new
    network answers with the measurement and learns what it misses (partial volume at the lesion
    rim, noise, bias field).
    ``gain=True`` (with ``residual``): the output is ``(1 + g) ⊙ measured + MLP(...)``, with a
    per-phase gain ``g (B, P-1)`` from the same embedding, also starting at zero: the head can
    scale a measurement it should not trust (a lesion of a few pixels, or one that does not enhance,
    whose soft mask picks up the enhancing liver around it) instead of cancelling it with an
    additive correction it cannot compute exactly from the embedding.
    ``residual=False`` (and networks without TIM) regress the enhancement directly.
    """

    def __init__(self, phases: int, descriptor_dim: int, pooled_dim: int, hidden: int = 64,
                 dropout: float = 0.0, residual: bool = False, gain: bool = False):
        super().__init__()
        if gain and not residual:
            raise ValueError("the gain scales the measurement a residual head corrects: gain needs residual")
        self.residual = residual
        self.body = MLP(phases * descriptor_dim + pooled_dim, hidden, hidden, dropout, activate_output=True)
        self.out = nn.Linear(hidden, phases - 1)
        self.gain = nn.Linear(hidden, phases - 1) if gain else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The correction (and gain) of a residual head start at zero (it answers with the measurement)."""
        for layer in (self.out, self.gain) if self.residual else ():
            if layer is not None:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, descriptors: torch.Tensor, pooled: torch.Tensor, measured: torch.Tensor | None = None):
        embedding = self.body(torch.cat([descriptors.flatten(1), pooled], dim=1))
        enhancement = self.out(embedding)
        if self.residual:
            if measured is None:
                raise ValueError("this regression head corrects TIM's measurement: pass measured (B, P-1)")
            measured = measured.detach().to(enhancement.dtype)
            if self.gain is not None:
                measured = measured * (1 + self.gain(embedding))
            enhancement = enhancement + measured
        return enhancement, embedding


class ClassificationHead(nn.Module):
    """MLP over pooled summary, region descriptors and (optionally) the regressed enhancement.

    ``pooled (B, F), descriptors (B, P, d), enhancement (B, P-1) or None -> logits (B, C)``.
    """

    def __init__(self, phases: int, descriptor_dim: int, pooled_dim: int, num_classes: int,
                 use_enhancement: bool = True, hidden: int = 128, dropout: float = 0.1):
        super().__init__()
        self.use_enhancement = use_enhancement
        cin = pooled_dim + phases * descriptor_dim + (phases - 1 if use_enhancement else 0)
        self.mlp = MLP(cin, hidden, num_classes, dropout)

    def forward(self, pooled, descriptors, enhancement=None):
        parts = [pooled, descriptors.flatten(1)]
        if self.use_enhancement:
            parts.append(enhancement)
        return self.mlp(torch.cat(parts, dim=1))

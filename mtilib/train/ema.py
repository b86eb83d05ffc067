"""An exponential moving average of a network's weights (``optim.ema_decay``; DESIGN, "Weight
averaging").

Validation, ``best.pt`` and the shipped checkpoint use the averaged weights; the optimiser keeps
stepping the raw ones. On a short CPU run the per-epoch validation scores of the raw weights jump
by several points from one epoch to the next (each epoch ends at a random point of the noise of
the last few hundred steps); the average over those steps is what a longer, lower-learning-rate
run would approach.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """``ema = decay_t · ema + (1 − decay_t) · weights`` after every optimiser step.

    ``decay_t = min(decay, (1 + t) / (10 + t))`` after ``t`` updates: early on the average follows
    the weights closely (a fixed 0.998 would keep the random initialisation in it for a thousand
    steps). Buffers (none in MTI-Net, whose normalisation is GroupNorm) are copied, not averaged.
    ``module`` is a frozen copy in eval-ready form: pass it wherever a network is evaluated.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"optim.ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model)
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights (call after ``optimizer.step()``)."""
        weight = 1.0 - self.current_decay()
        for mine, theirs in zip(self.module.parameters(), model.parameters()):
            mine.lerp_(theirs.detach(), weight)
        for mine, theirs in zip(self.module.buffers(), model.buffers()):
            mine.copy_(theirs)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"updates": self.updates, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        self.module.load_state_dict(state["module"])

"""A training step that meets a non-finite gradient leaves the weights finite (DESIGN, "Non-finite
steps"): one NaN or overflow in a batch would otherwise reach every weight through the optimiser
and end the run."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def clip_or_drop_gradients(parameters: Iterable[torch.nn.Parameter], max_norm: float) -> torch.Tensor | None:
    """Clip the gradients' total norm to ``max_norm`` (≤ 0: no clipping); where that norm is not
    finite, set every gradient to zero, so that the optimiser step that follows (momentum and
    weight decay only) keeps the weights finite.

    Returns a 0-d bool tensor on the gradients' device, True when they were finite (``None``
    without gradients). Nothing is read back to the host; a finite step is left bit for bit as
    plain clipping leaves it.
    """
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return None
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    finite = torch.isfinite(norm)
    dropped = ~finite
    for p in params:  # in place: no new gradient tensors every step
        p.grad.masked_fill_(dropped, 0)
    return finite

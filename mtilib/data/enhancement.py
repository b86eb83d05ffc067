"""The regression target: relative enhancement of a region in each post-contrast phase (DESIGN §1).

One function serves three routes, so that they cannot drift apart:

- phantom truth: noise-free images under the true lesion mask (numpy),
- real data: images under the ground-truth mask (numpy),
- the TIM consistency loss: input phases under the predicted soft mask (torch, differentiable).

It uses only operators, ``.sum`` and broadcasting, so it runs unchanged on numpy arrays and torch
tensors (torch is never imported here).
"""

from __future__ import annotations

import numpy as np

#: Default floor for the denominators on the torch route (mask area and pre-contrast mean).
DEFAULT_EPS = 1e-6


def relative_enhancement(images, mask, phase_axis: int = 0, eps: float = DEFAULT_EPS):
    """``RE_p = (mean_w S_p - mean_w S_pre) / mean_w S_pre`` for every post-contrast phase p.

    ``mean_w`` is the mask-weighted mean over the spatial axes, ``sum(w S) / sum(w)``; phase 0 of
    ``phase_axis`` is the pre-contrast phase.

    Shapes: ``images`` is (batch..., P, spatial...) with the phase axis at ``phase_axis`` (every axis
    after it is spatial); ``mask`` is (batch..., spatial...) and broadcasts against the images
    without their phase axis. Examples: a case (P, H, W, S) with mask (H, W, S); a model batch
    (B, P, H, W) with ``phase_axis=1`` and a soft mask (B, H, W). Returns (batch..., P - 1).

    ``mask``: binary (bool or 0/1) or soft, with non-negative weights such as lesion probabilities.
    Images are magnitude intensities (non-negative), as MR magnitude images and the phantom are.

    Empty masks (``sum(w) == 0``):

    - numpy input raises ``ValueError``: on data an empty lesion is a labelling error that must
      surface, not become a silent 0; likewise a non-positive pre-contrast mean.
    - torch input stays finite and differentiable: the mask area and the pre-contrast mean are
      floored at ``eps``, so an empty mask gives RE = 0 (and zero gradient through the area). Losses
      that use it should still weight or skip samples whose predicted mask is (nearly) empty.

    numpy results are float64 (sums accumulated in double precision); torch results keep the
    tensor's dtype and device, and gradients flow to both images and mask.
    """
    ndim = images.ndim
    axis = phase_axis if phase_axis >= 0 else ndim + phase_axis
    if not 0 <= axis < ndim:
        raise ValueError(f"phase_axis {phase_axis} is out of range for images with {ndim} dims")
    n_phases = images.shape[axis]
    if n_phases < 2:
        raise ValueError(f"need a pre-contrast and at least one post-contrast phase, got {n_phases}")
    n_spatial = ndim - axis - 1
    if n_spatial < 1:
        raise ValueError("the phase axis must be followed by at least one spatial axis")
    if mask.ndim < n_spatial:
        raise ValueError(f"mask has {mask.ndim} dims, fewer than the {n_spatial} spatial dims of the images")

    is_numpy = isinstance(images, np.ndarray)
    if is_numpy:
        images = images.astype(np.float64, copy=False)
        weights = np.asarray(mask).astype(np.float64, copy=False)
    else:  # torch.Tensor (duck-typed: no torch import needed)
        weights = mask.to(dtype=images.dtype) if mask.dtype != images.dtype else mask

    # Insert the phase axis into the mask so that it broadcasts against the images.
    weights = weights[(Ellipsis, None) + (slice(None),) * n_spatial]
    spatial = tuple(range(-n_spatial, 0))
    area = weights.sum(spatial)  # (batch..., 1)
    weighted = (images * weights).sum(spatial)  # (batch..., P): the phase axis is now last

    if is_numpy:
        if np.any(area <= 0):
            raise ValueError("relative_enhancement: the mask is empty (sum of weights is 0)")
        means = weighted / area
        pre = means[..., :1]
        if np.any(pre <= 0):
            raise ValueError("relative_enhancement: the pre-contrast mean under the mask is not positive")
    else:
        means = weighted / area.clamp_min(eps)
        pre = means[..., :1].clamp_min(eps)
    return (means[..., 1:] - means[..., :1]) / pre

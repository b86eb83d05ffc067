"""TIM, the Task Interaction Module (DESIGN §3.5 a–b; the consistency loss (c) is in ``losses``).

(a) seg -> reg: the preliminary lesion probability ``s0`` pools each phase's encoder features
    into one region descriptor per phase (mask-attention pooling). Besides the features, each
    descriptor carries the phase's mean intensity and its relative enhancement *under s0*, measured
    with the same function that defines the regression target
    (:func:`mtilib.data.enhancement.relative_enhancement`).
(b) reg -> seg: the regression embedding modulates the last decoder features by FiLM
    (``γ ⊙ f + β``, initialised to the identity) before the final segmentation logits.

With ``enabled=False`` (the ablation) the mask is uniform, i.e. plain global average pooling, and
no FiLM is applied.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mtilib.data.enhancement import relative_enhancement

#: Added to a mask's total weight before dividing by it: a slice where the preliminary mask is
#: (numerically) empty gives zero descriptors instead of 0/0.
MASK_EPS = 1e-6


def mask_pool(feats: torch.Tensor, mask: torch.Tensor, eps: float = MASK_EPS) -> torch.Tensor:
    """Mask-weighted mean of each phase's feature maps.

    ``feats (B, P, C, h, w)``, ``mask (B, 1, H, W)`` in [0, 1] (resized to h×w by area averaging)
    ``-> (B, P, C)``.
    """
    h, w = feats.shape[-2:]
    if mask.shape[-2:] != (h, w):
        mask = F.adaptive_avg_pool2d(mask, (h, w))
    weights = mask.to(feats.dtype).unsqueeze(1)  # (B, 1, 1, h, w)
    return (feats * weights).sum((-2, -1)) / (weights.sum((-2, -1)) + eps)


class TaskInteraction(nn.Module):
    """Region descriptors from a (soft) lesion mask and FiLM of decoder features.

    ``describe(images (B,P,H,W), feats [(B,P,C_l,h_l,w_l), ...], mask (B,1,H,W))
    -> descriptors (B, P, d), measured_enhancement (B, P-1)``;
    ``modulate(dec (B, Cd, H, W), embedding (B, E)) -> (B, Cd, H, W)``.
    """

    def __init__(self, feature_channels: list[int], descriptor_dim: int, embed_dim: int,
                 decoder_channels: int, enabled: bool = True):
        super().__init__()
        self.enabled = enabled
        self.project = nn.Sequential(nn.Linear(sum(feature_channels) + 2, descriptor_dim), nn.SiLU())
        if enabled:
            self.film = nn.Linear(embed_dim, 2 * decoder_channels)
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)

    def describe(self, images: torch.Tensor, feats: list[torch.Tensor], mask: torch.Tensor | None):
        b, p, h, w = images.shape
        if mask is None:  # ablation: uniform weights = global average pooling
            mask = images.new_ones(b, 1, h, w)
        mask = mask.float()
        pooled = [mask_pool(f.float(), mask) for f in feats]
        images32 = images.float()
        intensity = (images32 * mask).sum((-2, -1)) / (mask.sum((-2, -1)) + MASK_EPS)  # (B, P)
        measured = relative_enhancement(images32, mask[:, 0], phase_axis=1)  # (B, P-1)
        enhancement_per_phase = torch.cat([measured.new_zeros(b, 1), measured], dim=1)
        stats = torch.stack([intensity, enhancement_per_phase], dim=-1)  # (B, P, 2)
        descriptors = self.project(torch.cat(pooled + [stats], dim=-1))
        return descriptors, measured

    def modulate(self, dec: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return dec
        gamma, beta = self.film(embedding).to(dec.dtype).chunk(2, dim=-1)
        return dec * (1 + gamma[..., None, None]) + beta[..., None, None]

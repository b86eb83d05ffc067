"""MdIEF: Multi-domain Information Entropy Fusion of the per-phase feature maps (DESIGN §3.3).

Our reading of the paper's abstract: three branches look at the P phase maps of one skip level
from three domains, and each branch's *information entropy* decides, per channel, how much it counts.

- spatial:   1×1 conv over the stacked phases (what a plain fusion would do);
- frequency: Gaussian high-pass in the 2D Fourier domain of each phase map, then 1×1 conv;
- wavelet:   Haar detail bands (LH, HL, HH) of each phase map, 1×1 conv, bilinear back to full size.

For branch b and channel c, ``H[b, c]`` is by default the normalised entropy of the energy over
positions (``entropy="spatial"``, :func:`~mtilib.models.blocks.spatial_entropy`): low entropy means
energy concentrated on a few structures (edges, a lesion rim). ``entropy="spectral"`` uses the
entropy of the normalised power spectrum instead (:func:`~mtilib.models.blocks.spectral_entropy`,
the signal-processing "spectral entropy": low for smooth maps). Either way the weights
``softmax_b(-H / τ)`` favour the lowest-entropy branch; ``τ`` is learnable.
Output: ``ConvNormAct(Σ_b w_b · branch_b) + spatial`` (the spatial branch as a residual).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mtilib.models.blocks import ConvNormAct, gaussian_highpass, haar_dwt2d, spatial_entropy, spectral_entropy

BRANCHES = ("spatial", "frequency", "wavelet")
#: What the branch weights measure: ``"spatial"`` (energy over positions) or ``"spectral"`` (power
#: over spatial frequencies).
ENTROPIES = {"spatial": spatial_entropy, "spectral": spectral_entropy}
#: Initial softmax temperature τ of the branch weights: entropies of feature maps differ by a few
#: hundredths, so a small τ is needed for the weights to move away from uniform at all.
INITIAL_TEMPERATURE = 0.1


def entropy_weights(entropy: torch.Tensor, temperature: torch.Tensor | float) -> torch.Tensor:
    """Branch weights from branch entropies: ``softmax_b(−H / τ)`` over dim 1.

    ``entropy (B, 3, C) -> weights (B, 3, C)``, summing to 1 over the branches. τ → 0 gives all
    weight to the lowest-entropy branch, τ → ∞ gives 1/3 each (course notebook 04 sweeps τ).
    """
    return torch.softmax(-entropy / temperature, dim=1)


class PlainFusion(nn.Module):
    """The ablation's plain alternative: 1×1 conv over stacked phases -> GroupNorm -> SiLU.

    ``(B, P, C, h, w) -> (B, C, h, w)``; returns ``None`` for the branch weights.
    """

    def __init__(self, channels: int, phases: int):
        super().__init__()
        self.fuse = ConvNormAct(phases * channels, channels, kernel=1)

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.fuse(feats.flatten(1, 2)), None


class MdIEF(nn.Module):
    """Entropy-weighted fusion of spatial, frequency and wavelet views of P phase maps.

    ``feats (B, P, C, h, w) -> fused (B, C, h, w), weights (B, 3, C)`` (branch order
    :data:`BRANCHES`). ``highpass_sigma`` is the Gaussian width in cycles/pixel; ``entropy`` names
    what the branch weights measure (:data:`ENTROPIES`).
    """

    def __init__(self, channels: int, phases: int, highpass_sigma: float = 0.1, entropy: str = "spatial"):
        super().__init__()
        if entropy not in ENTROPIES:
            raise ValueError(f"entropy must be one of {tuple(ENTROPIES)}, not {entropy!r}")
        self.highpass_sigma = highpass_sigma
        self.entropy = entropy
        self.spatial = nn.Conv2d(phases * channels, channels, 1)
        self.frequency = nn.Conv2d(phases * channels, channels, 1)
        self.wavelet = nn.Conv2d(3 * phases * channels, channels, 1)
        # log-parameterised so τ stays positive
        self.log_temperature = nn.Parameter(torch.tensor(INITIAL_TEMPERATURE).log())
        self.post = ConvNormAct(channels, channels, kernel=3)

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp()

    def branch_maps(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The three branch maps, each ``(B, C, h, w)``, in the order of :data:`BRANCHES`."""
        b, p, c, h, w = feats.shape
        stacked = feats.flatten(1, 2)
        # The high-pass filters each map in space and the 1×1 convolution mixes channels, so they
        # commute: project the P·C maps to C first, then filter C maps (P times fewer FFTs). The
        # high-pass removes a constant, so the frequency bias is added after it, as
        # conv(highpass(f)) has it. The spatial and frequency projections read the same input:
        # one convolution computes both.
        weight = torch.cat([self.spatial.weight, self.frequency.weight])
        spatial, projected = F.conv2d(stacked, weight.to(stacked.dtype)).split(c, dim=1)
        spatial = spatial + self.spatial.bias.to(spatial.dtype)[:, None, None]
        frequency = gaussian_highpass(projected, self.highpass_sigma)
        frequency = frequency + self.frequency.bias.to(frequency.dtype)[:, None, None]
        _, lh, hl, hh = haar_dwt2d(feats)  # each (B, P, C, h/2, w/2)
        details = torch.cat([lh, hl, hh], dim=2).flatten(1, 2)
        wavelet = F.interpolate(self.wavelet(details), size=(h, w), mode="bilinear", align_corners=False)
        return spatial, frequency, wavelet

    def branches(self, feats: torch.Tensor) -> torch.Tensor:
        """The three branch maps stacked: ``(B, 3, C, h, w)``."""
        return torch.stack(self.branch_maps(feats), dim=1)

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.branch_maps(feats)
        entropy_of = ENTROPIES[self.entropy]
        entropy = torch.stack([entropy_of(m) for m in maps], dim=1)  # (B, 3, C)
        weights = entropy_weights(entropy, self.temperature)
        w = weights.to(maps[0].dtype)[..., None, None]
        # the weighted sum branch by branch: no (B, 3, C, h, w) stack to copy forward and back
        fused = w[:, 0] * maps[0] + w[:, 1] * maps[1] + w[:, 2] * maps[2]
        return self.post(fused) + maps[0], weights


def neutral_projections_(module: MdIEF) -> MdIEF:
    """Set the three branch projections of ``module`` to plain averages of their inputs, no bias
    (in place; returns the module).

    Each branch map is then its domain view itself, averaged over phases and channels: the maps
    (spatial), their Gaussian high-pass (frequency), the mean of their Haar details LH, HL, HH
    brought back to full size (wavelet). Course notebook 04 uses it to show which *domain* a
    pattern favours before any learning (a real MdIEF learns these projections instead).
    """
    with torch.no_grad():
        for conv in (module.spatial, module.frequency, module.wavelet):
            conv.weight.fill_(1.0 / conv.in_channels)
            conv.bias.zero_()
    return module

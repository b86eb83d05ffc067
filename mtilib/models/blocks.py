"""Reusable building blocks: conv blocks, Haar DWT, Gaussian FFT high-pass, spectral entropy,
time encoding. Assemblies (MdIEF, MTI-Net, baselines) live in their own modules."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def group_count(channels: int, max_groups: int = 8) -> int:
    """Largest divisor of ``channels`` not above ``max_groups`` (GroupNorm needs a divisor)."""
    for groups in range(min(max_groups, channels), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


class ConvNormAct(nn.Sequential):
    """Conv2d (no bias) -> GroupNorm -> SiLU. ``(B, cin, H, W) -> (B, cout, H/stride, W/stride)``."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.GroupNorm(group_count(cout), cout),
            nn.SiLU(inplace=True),
        )


class SubsampledConv1x1(nn.Conv2d):
    """A 1×1 convolution with stride ``s``, computed as "keep every s-th pixel, then a stride-1 1×1".

    ``(B, cin, H, W) -> (B, cout, ceil(H/s), ceil(W/s))``. Same weights (``weight (cout, cin, 1, 1)``)
    and the same function as ``nn.Conv2d(cin, cout, 1, stride=s)``, so checkpoints of either load
    into the other. Why not the strided conv itself: oneDNN's backward-weights kernel for a *strided*
    1×1 convolution in channels_last with few input channels writes out of bounds on AVX-512 CPUs
    (a crash) and returns wrong weight gradients on AVX2 (oneDNN issue #6035). The subsampling is
    a view, and a stride-1 1×1 convolution is a plain matrix product that every backend does right.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, bias: bool = False):
        super().__init__(cin, cout, 1, stride=1, bias=bias)
        self.subsample = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.subsample > 1:
            x = x[..., :: self.subsample, :: self.subsample]
        return super().forward(x)


class ResBlock(nn.Module):
    """Residual block: two 3×3 convolutions, a 1×1 projection on the skip when shapes change.

    ``(B, cin, H, W) -> (B, cout, H/stride, W/stride)``. The projection subsamples and then
    applies a stride-1 1×1 convolution (:class:`SubsampledConv1x1`), never a strided 1×1 kernel.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = ConvNormAct(cin, cout, 3, stride)
        self.conv2 = nn.Sequential(
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.GroupNorm(group_count(cout), cout)
        )
        self.skip = (
            nn.Identity()
            if cin == cout and stride == 1
            else nn.Sequential(
                SubsampledConv1x1(cin, cout, stride), nn.GroupNorm(group_count(cout), cout)
            )
        )
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.skip(x))


def _pad_even(x: torch.Tensor) -> torch.Tensor:
    """Replicate one row/column where H or W is odd (PyWavelets' 'symmetric' mode for Haar)."""
    pad_w, pad_h = x.shape[-1] % 2, x.shape[-2] % 2
    if pad_w or pad_h:
        shape = x.shape
        flat = x.reshape(-1, 1, shape[-2], shape[-1])
        flat = F.pad(flat, (0, pad_w, 0, pad_h), mode="replicate")
        x = flat.reshape(*shape[:-2], flat.shape[-2], flat.shape[-1])
    return x


def haar_dwt2d(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One-level orthonormal 2D Haar transform over the last two axes.

    ``(..., H, W) -> LL, LH, HL, HH`` each ``(..., ceil(H/2), ceil(W/2))``. Matches
    ``pywt.dwt2(x, "haar")`` = ``(cA, (cH, cV, cD))``: LH is the horizontal detail (differences
    between rows), HL the vertical detail (differences between columns), HH the diagonal.
    """
    x = _pad_even(x)
    height, width = x.shape[-2:]
    # Split rows and columns into (even, odd) pairs with views and unbind, not strided slicing:
    # the backward of unbind is one stack, that of four strided slices four zero-filled copies of
    # the input (a third of MdIEF's backward at full resolution).
    pairs = x.reshape(*x.shape[:-2], height // 2, 2, width // 2, 2)
    top, bottom = pairs.unbind(-3)  # even / odd rows, each (..., h/2, w/2, 2): a, b / c, d
    row_sum, row_diff = top + bottom, top - bottom  # (a + c, b + d) / (a - c, b - d)
    sum_even, sum_odd = row_sum.unbind(-1)
    diff_even, diff_odd = row_diff.unbind(-1)
    ll = (sum_even + sum_odd) * 0.5
    lh = (diff_even + diff_odd) * 0.5
    hl = (sum_even - sum_odd) * 0.5
    hh = (diff_even - diff_odd) * 0.5
    return ll, lh, hl, hh


def haar_idwt2d(ll: torch.Tensor, lh: torch.Tensor, hl: torch.Tensor, hh: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`haar_dwt2d` (for even sizes): four ``(..., h, w)`` bands -> ``(..., 2h, 2w)``."""
    a = (ll + lh + hl + hh) * 0.5
    b = (ll + lh - hl - hh) * 0.5
    c = (ll - lh + hl - hh) * 0.5
    d = (ll - lh - hl + hh) * 0.5
    h, w = ll.shape[-2:]
    out = ll.new_empty(*ll.shape[:-2], 2 * h, 2 * w)
    out[..., 0::2, 0::2] = a
    out[..., 0::2, 1::2] = b
    out[..., 1::2, 0::2] = c
    out[..., 1::2, 1::2] = d
    return out


def gaussian_highpass_response(height: int, width: int, sigma: float, device=None,
                               onesided: bool = False) -> torch.Tensor:
    """Transfer function ``1 - exp(-(fx² + fy²) / (2 σ²))`` on the FFT grid, frequencies in
    cycles/pixel (``torch.fft.fftfreq`` layout, DC at index 0). ``(H, W)`` float32, or
    ``(H, W//2 + 1)`` with ``onesided=True`` (the ``rfft2`` half-spectrum)."""
    fy = torch.fft.fftfreq(height, device=device)
    fx = torch.fft.rfftfreq(width, device=device) if onesided else torch.fft.fftfreq(width, device=device)
    radius2 = fy[:, None] ** 2 + fx[None, :] ** 2
    return 1.0 - torch.exp(-radius2 / (2.0 * sigma**2))


def gaussian_highpass(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Smooth Gaussian high-pass of each ``(H, W)`` map: FFT2, multiply, inverse FFT2.

    ``(..., H, W) -> (..., H, W)``; computed in float32 (FFTs have no bf16 kernels) and returned in
    the input's dtype. ``sigma`` is in cycles/pixel: 0.1 keeps detail finer than about 10 pixels.
    The input is real and the response symmetric, so the real FFT (half the work of a complex
    one) gives the same result.
    """
    dtype = x.dtype
    height, width = x.shape[-2:]
    spectrum = torch.fft.rfft2(x.float())
    response = gaussian_highpass_response(height, width, sigma, device=x.device, onesided=True)
    return torch.fft.irfft2(spectrum * response, s=(height, width)).to(dtype)


#: Energies below this count as zero inside the logarithm of the entropies below.
TINY_ENERGY = 1e-30


def _normalised_entropy(energy: torch.Tensor, eps: float) -> torch.Tensor:
    """``-Σ p log p / log n`` of ``p = energy / Σ energy`` over the last axis (``n`` entries);
    no energy counts as uniform (1)."""
    n = energy.shape[-1]
    if n == 1:
        return energy.new_zeros(energy.shape[:-1])
    total = energy.sum(-1)
    # -Σ p log p with p = e / T equals log T - Σ e log e / T: one full-size temporary instead of
    # four. Energies below TINY contribute e log e ≈ 0 (as p log p → 0), and their gradient stays
    # finite.
    e_log_e = (energy * torch.log(energy.clamp_min(TINY_ENERGY))).sum(-1)
    safe_total = total.clamp_min(eps)
    entropy = torch.log(safe_total) - e_log_e / safe_total
    # a map with (numerically) no energy counts as uniform
    return torch.where(total > eps, entropy / math.log(n), torch.ones_like(entropy))


def spatial_entropy(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Normalised entropy of the energy distribution over *positions* (MdIEF's default).

    ``p = x² / Σ x²`` over the last two axes, ``H = -Σ p log p / log(H·W)``: 1 for energy spread
    uniformly, 0 for a single spike (all energy in one position). ``(..., H, W) -> (...)``.
    A map with no energy counts as uniform (H = 1): it carries no structure to prefer.
    """
    return _normalised_entropy(x.float().pow(2).flatten(-2), eps)


def spectral_entropy(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Normalised entropy of the power spectrum over *spatial frequencies* (the signal-processing
    "spectral entropy").

    ``p = |F(x)|² / Σ |F(x)|²`` over the H·W bins of the 2D DFT (DC included),
    ``H = -Σ p log p / log(H·W)``: 0 for a constant map (all power at DC), 1 for a single spike or
    white noise (flat spectrum); smooth maps score low, fine texture and edges high, so it ranks
    maps roughly opposite to :func:`spatial_entropy`. ``(..., H, W) -> (...)``; no energy: 1.
    """
    power = torch.fft.fft2(x.float(), norm="ortho").abs().pow(2)
    return _normalised_entropy(power.flatten(-2), eps)


class TimeEncoding(nn.Module):
    """Sinusoidal features of the acquisition time, projected to ``dim``.

    ``times (..., ) seconds -> (..., dim)``. Periods are spaced geometrically from 20 s to 2000 s,
    so both the arterial (~35 s) and delayed (~180 s) scales are resolved, and a protocol with
    other timings maps to nearby, meaningful codes (unlike a phase *index* embedding).
    """

    def __init__(self, dim: int, n_frequencies: int = 8, min_period_s: float = 20.0,
                 max_period_s: float = 2000.0):
        super().__init__()
        periods = torch.logspace(math.log10(min_period_s), math.log10(max_period_s), n_frequencies)
        self.register_buffer("angular", 2 * math.pi / periods, persistent=False)
        self.proj = nn.Linear(2 * n_frequencies, dim)

    def forward(self, times_s: torch.Tensor) -> torch.Tensor:
        phase = times_s.float().unsqueeze(-1) * self.angular
        return self.proj(torch.cat([torch.sin(phase), torch.cos(phase)], dim=-1))


class MLP(nn.Sequential):
    """Linear -> activation -> Dropout -> Linear (-> activation with ``activate_output``).

    ``(..., cin) -> (..., cout)``; parameters ``0.*`` and ``3.*`` whatever the options.
    """

    def __init__(self, cin: int, hidden: int, cout: int, dropout: float = 0.0, activation=nn.SiLU,
                 activate_output: bool = False):
        layers = [nn.Linear(cin, hidden), activation(), nn.Dropout(dropout), nn.Linear(hidden, cout)]
        super().__init__(*layers, *([activation()] if activate_output else []))

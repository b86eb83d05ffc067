"""Blocks against independent references: PyWavelets, numpy FFT, entropy limits."""

import numpy as np
import pytest
import pywt
import torch

from mtilib.models.blocks import (
    ResBlock,
    TimeEncoding,
    gaussian_highpass,
    haar_dwt2d,
    haar_idwt2d,
    spatial_entropy,
    spectral_entropy,
)


@pytest.mark.parametrize("shape", [(8, 8), (6, 10), (7, 9), (16, 12)])
def test_haar_dwt_matches_pywavelets(shape):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, *shape))
    ll, lh, hl, hh = haar_dwt2d(torch.from_numpy(x))
    ca, (ch, cv, cd) = pywt.dwt2(x, "haar", mode="symmetric", axes=(-2, -1))
    for ours, ref in zip((ll, lh, hl, hh), (ca, ch, cv, cd)):
        np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-10, atol=1e-10)


def test_haar_inverse_reconstructs_and_preserves_energy():
    x = torch.randn(2, 4, 16, 12, dtype=torch.float64)
    bands = haar_dwt2d(x)
    torch.testing.assert_close(haar_idwt2d(*bands), x)
    # orthonormal transform: energy is preserved (Parseval)
    assert torch.isclose(sum(b.pow(2).sum() for b in bands), x.pow(2).sum())


@pytest.mark.parametrize("sigma", [0.05, 0.1, 0.25])
def test_gaussian_highpass_matches_numpy(sigma):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 20, 24))
    fy = np.fft.fftfreq(20)[:, None]
    fx = np.fft.fftfreq(24)[None, :]
    response = 1 - np.exp(-(fx**2 + fy**2) / (2 * sigma**2))
    expected = np.real(np.fft.ifft2(np.fft.fft2(x) * response))
    ours = gaussian_highpass(torch.from_numpy(x).float(), sigma).double().numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_gaussian_highpass_removes_constant_and_keeps_fine_detail():
    flat = torch.full((1, 16, 16), 3.0)
    assert gaussian_highpass(flat, 0.1).abs().max() < 1e-5
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2 * 2.0 - 1.0
    out = gaussian_highpass(checker[None].float(), 0.1)
    torch.testing.assert_close(out[0], checker.float(), atol=1e-3, rtol=0)  # Nyquist passes (~1)


def test_spatial_entropy_limits():
    uniform = torch.ones(2, 3, 8, 8)
    torch.testing.assert_close(spatial_entropy(uniform), torch.ones(2, 3))
    spike = torch.zeros(8, 8)
    spike[3, 5] = 7.0
    assert spatial_entropy(spike).item() == pytest.approx(0.0, abs=1e-6)
    half = torch.zeros(8, 8)
    half[:4] = 1.0  # energy uniform over 32 of 64 positions -> log(32)/log(64)
    assert spatial_entropy(half).item() == pytest.approx(np.log(32) / np.log(64), rel=1e-5)
    assert spatial_entropy(torch.zeros(4, 4)).item() == pytest.approx(1.0)  # no energy -> uniform


def test_spatial_entropy_matches_numpy_with_zeros_and_has_finite_gradients():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 4, 9, 7))
    x[0, 0] = 0.0  # no energy: uniform
    x[1, 2, :, :4] = 0.0  # zero positions contribute 0 · log 0 = 0
    energy = x.reshape(3, 4, -1) ** 2
    p = energy / np.maximum(energy.sum(-1, keepdims=True), 1e-300)
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    expected = -plogp.sum(-1) / np.log(63)
    expected[0, 0] = 1.0
    xt = torch.from_numpy(x).float().requires_grad_(True)
    entropy = spatial_entropy(xt)
    np.testing.assert_allclose(entropy.detach().numpy(), expected, atol=1e-5)
    entropy.sum().backward()
    assert torch.isfinite(xt.grad).all()


def test_spectral_entropy_limits_and_numpy_reference():
    """Entropy of the normalised power spectrum: 0 for a constant map (all power at DC), 1 for a
    spike (flat spectrum), and equal to numpy's FFT-based computation on random maps."""
    constant = torch.full((2, 8, 8), 3.0)
    torch.testing.assert_close(spectral_entropy(constant), torch.zeros(2), atol=1e-6, rtol=0)
    spike = torch.zeros(8, 8)
    spike[3, 5] = 7.0
    assert spectral_entropy(spike).item() == pytest.approx(1.0, abs=1e-6)
    assert spectral_entropy(torch.zeros(4, 4)).item() == pytest.approx(1.0)  # no energy -> uniform
    x = np.random.default_rng(3).normal(size=(3, 9, 7))
    power = np.abs(np.fft.fft2(x)) ** 2
    p = (power / power.sum(axis=(-2, -1), keepdims=True)).reshape(3, -1)
    expected = -(p * np.log(p)).sum(-1) / np.log(63)
    xt = torch.from_numpy(x).float().requires_grad_(True)
    entropy = spectral_entropy(xt)
    np.testing.assert_allclose(entropy.detach().numpy(), expected, atol=1e-5)
    entropy.sum().backward()
    assert torch.isfinite(xt.grad).all()
    # a smooth ramp puts its power in few low frequencies: lower spectral, higher spatial entropy
    ramp = torch.linspace(0, 1, 16)[None, :].expand(16, 16)
    noise = torch.from_numpy(np.random.default_rng(4).normal(size=(16, 16))).float()
    assert spectral_entropy(ramp) < spectral_entropy(noise)
    assert spatial_entropy(ramp) > 0.9


def test_haar_gradient_is_the_adjoint_of_the_transform():
    """The orthonormal Haar transform's gradient is its inverse applied to the band gradients."""
    x = torch.randn(2, 3, 8, 6, dtype=torch.float64, requires_grad=True)
    bands = haar_dwt2d(x)
    upstream = [torch.randn_like(b) for b in bands]
    sum((b * g).sum() for b, g in zip(bands, upstream)).backward()
    torch.testing.assert_close(x.grad, haar_idwt2d(*upstream))


def test_time_encoding_is_smooth_in_time():
    enc = TimeEncoding(16)
    t = torch.tensor([35.0, 36.0, 180.0])
    codes = enc(t)
    assert codes.shape == (3, 16)
    assert (codes[0] - codes[1]).norm() < (codes[0] - codes[2]).norm()


def test_resblock_shapes():
    block = ResBlock(8, 16, stride=2)
    assert block(torch.randn(2, 8, 12, 10)).shape == (2, 16, 6, 5)

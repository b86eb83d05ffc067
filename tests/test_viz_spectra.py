"""Spectrum helpers and the MdIEF plots of mtilib.viz (course notebook 04): numbers checked against
numpy references, figures drawn headless (Agg) with the expected content."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from mtilib.viz import (
    centred_log_spectrum,
    plot_branch_entropies,
    plot_highpass_response,
    plot_spectra,
    plot_temperature_sweep,
    radial_power,
    show_map_grid,
)

pytestmark = pytest.mark.usefixtures("close_figures")


def test_centred_log_spectrum_puts_the_mean_at_the_centre():
    image = np.full((8, 6), 2.0)
    spectrum = centred_log_spectrum(image)
    assert spectrum.shape == (8, 6)
    assert spectrum[4, 3] == pytest.approx(np.log10(1 + 2.0 * 48))  # DC = sum of the pixels, at n//2
    spectrum[4, 3] = 0
    assert np.allclose(spectrum, 0)  # a constant image has no other frequency


def test_radial_power_locates_a_cosine_and_accepts_tensors():
    n = 64
    wave = np.cos(2 * np.pi * 0.25 * np.arange(n))[:, None] * np.ones((1, n))  # f = 0.25 along axis 0
    centres, power = radial_power(torch.from_numpy(wave), n_bins=16)
    assert centres.shape == power.shape == (16,)
    peak = centres[np.nanargmax(power)]
    assert abs(peak - 0.25) <= centres[1] - centres[0]
    # Parseval: ring means weighted by the ring sizes add up to the total power
    radius = np.hypot(np.fft.fftfreq(n)[:, None], np.fft.fftfreq(n)[None, :])
    edges = np.linspace(0, radius.max() * (1 + 1e-9), 17)
    counts = np.histogram(radius, edges)[0]
    total = np.nansum(power * counts)
    assert total == pytest.approx(n * n * (wave**2).sum())


def test_radial_power_marks_empty_rings_nan():
    _, power = radial_power(np.ones((4, 4)), n_bins=64)  # 64 rings for 16 samples: some are empty
    assert np.isnan(power).any() and np.isfinite(power).any()


def test_show_map_grid_shapes_orientation_and_signed_scale():
    maps = {"a": np.arange(12.0).reshape(3, 4), "b": -np.ones((3, 4)), "c": torch.zeros(3, 4)}
    fig = show_map_grid(maps, ncols=2, signed=True)
    axes = [ax for ax in fig.axes if ax.images]
    assert len(axes) == 3 and [ax.get_title() for ax in axes] == ["a", "b", "c"]
    image = axes[0].images[0]
    assert image.get_array().shape == (4, 3)  # transposed: the first array axis runs left to right
    low, high = image.get_clim()
    assert low == -high == -11.0  # centred on zero
    assert axes[2].images[0].get_clim() == (-1.0, 1.0)  # an all-zero map still gets a valid scale
    with pytest.raises(ValueError, match="titles"):
        show_map_grid([np.zeros((2, 2))], titles=["x", "y"])
    mixed = show_map_grid([np.arange(4.0).reshape(2, 2)] * 2, signed=[False, True])
    low_plain, low_signed = (ax.images[0].get_clim()[0] for ax in mixed.axes if ax.images)
    assert low_plain == 0.0 and low_signed == -3.0
    with pytest.raises(ValueError, match="signed"):
        show_map_grid([np.zeros((2, 2))], signed=[True, False])


def test_plot_spectra_draws_maps_and_spectra():
    images = [np.random.default_rng(0).normal(size=(16, 8)), np.ones((16, 8))]
    fig = plot_spectra(images, titles=["noise", "flat"])
    spectra = [ax for ax in fig.axes if ax.get_xlabel() == "cycles/pixel"]
    assert len(spectra) == 2
    left, right, _, _ = spectra[0].images[0].get_extent()
    assert left == pytest.approx(-0.5 - 1 / 32) and right == pytest.approx(0.5 - 1 / 16 + 1 / 32)
    assert spectra[0].images[0].get_clim() == spectra[1].images[0].get_clim()  # one scale to compare


def test_plot_highpass_response_curves():
    fig = plot_highpass_response([0.05, 0.2], image=np.random.default_rng(1).normal(size=(32, 32)))
    ax = fig.axes[0]
    curves = [line for line in ax.lines if line.get_label().startswith("σ")]
    assert len(curves) == 2
    for line in curves:
        f, r = line.get_data()
        assert r[0] == pytest.approx(0.0) and np.all(np.diff(r) >= -1e-6)  # 0 at DC, rising
    # the wider Gaussian (larger σ) removes more: its response is lower everywhere
    assert np.all(curves[1].get_data()[1] <= curves[0].get_data()[1] + 1e-6)


def test_plot_branch_entropies_and_temperature_sweep():
    entropy = np.array([[0.9, 0.8], [0.7, 0.85], [0.8, 0.6]])
    weights = torch.softmax(torch.tensor(-entropy / 0.1), dim=0)
    fig = plot_branch_entropies(entropy, weights)
    assert len(fig.axes) == 2 and len(fig.axes[1].patches) == 6
    with pytest.raises(ValueError):
        plot_branch_entropies(entropy, weights[:, :1])
    sweep = np.array([[0.0, 1.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    fig = plot_temperature_sweep([0.001, 100.0], sweep, current=0.1)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and len([line for line in ax.lines if line.get_marker() == "o"]) == 3

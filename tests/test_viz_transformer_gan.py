"""Plots of the phase Transformer and the adversarial game (notebooks 08, 09), drawn headless."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from mtilib.losses import discriminator_loss, generator_adversarial_loss
from mtilib.models.blocks import TimeEncoding
from mtilib.viz import (
    gan_loss_terms,
    plot_gan_losses,
    plot_gan_objectives,
    plot_phase_attention,
    plot_runs,
    plot_score_distributions,
    plot_time_encoding,
)

pytestmark = pytest.mark.usefixtures("close_figures")


def test_plot_time_encoding_features_and_similarity():
    enc = TimeEncoding(16)
    t = torch.linspace(0, 300, 61)
    phase = t[:, None] * enc.angular
    feats = torch.cat([torch.sin(phase), torch.cos(phase)], dim=1)
    fig = plot_time_encoding(t, feats, enc(t).detach(), phase_times_s=(0, 35, 70, 180))
    left, right = fig.axes[:2]
    assert len(left.lines) == 16 + 4  # 8 sines, 8 cosines, 4 phase marks
    similarity = right.images[0].get_array()
    assert similarity.shape == (61, 61) and np.allclose(np.diag(similarity), 1.0, atol=1e-5)
    assert len(plot_time_encoding(t, feats).axes) == 1
    with pytest.raises(ValueError):
        plot_time_encoding(t, feats[:, :15])


def test_plot_phase_attention_one_map_per_group_and_pooling_panel():
    a = {f"class {k}": np.full((4, 4), 0.25) for k in range(3)}
    w = {name: np.full(4, 0.25) for name in a}
    fig = plot_phase_attention(a, w)
    titled = [ax.get_title() for ax in fig.axes]
    assert titled[:3] == list(a) and "pooling weights" in titled
    assert len(fig.axes[3].lines) == 3 + 1  # one per group + uniform reference


def test_gan_loss_terms_match_mtilib_losses():
    s = np.array([-1.0, 0.0, 0.5, 2.0])
    lsgan = gan_loss_terms(s, "lsgan")
    assert np.allclose(lsgan["D, real sample"], 0.5 * (s - 1) ** 2)
    assert np.allclose(lsgan["D, fake sample"], 0.5 * s**2)
    assert np.allclose(lsgan["G (fake sample)"], 0.5 * (s - 1) ** 2)
    for kind in ("bce", "hinge"):
        terms = gan_loss_terms(s, kind)
        g = [float(generator_adversarial_loss(torch.tensor([v], dtype=torch.float64), kind)) for v in s]
        assert np.allclose(terms["G (fake sample)"], g)
        # D's loss on a (real, fake) pair is the sum of its two per-sample terms
        pair = float(discriminator_loss(torch.tensor([0.5]), torch.tensor([-0.3]), kind))
        real = gan_loss_terms(np.array([0.5]), kind)["D, real sample"][0]
        fake = gan_loss_terms(np.array([-0.3]), kind)["D, fake sample"][0]
        assert pair == pytest.approx(real + fake, abs=1e-6)
    assert len(plot_gan_objectives().axes) == 3


def test_plot_runs_and_scores_and_gan_losses_on_game_records():
    records = [{"step": s, "epoch": s / 10, "loss_d": 0.25, "loss_adv": 0.12, "lambda_adv": 0.01} for s in (5, 10)]
    fig = plot_runs({"a": records, "b": records}, ["loss_d", "loss_adv"], reference={"loss_d": 0.25})
    assert len(fig.axes[0].lines) == 3
    assert len(plot_gan_losses(records).axes) == 2
    fig = plot_score_distributions({"real": np.random.rand(20), "fake": np.random.rand(20) - 1})
    assert len(fig.axes[0].patches) == 60

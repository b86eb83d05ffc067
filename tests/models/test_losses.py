"""Losses against direct computations (numpy, torch reference functions)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtilib.losses import (
    dice_ce_loss,
    discriminator_loss,
    generator_adversarial_loss,
    masked_cross_entropy,
    masked_smooth_l1,
    pixel_enhancement,
    soft_dice_loss,
    tim_consistency_loss,
    weighted_covariance,
)


def test_soft_dice_perfect_and_wrong():
    labels = torch.randint(0, 3, (2, 8, 8))
    perfect = F.one_hot(labels, 3).permute(0, 3, 1, 2).float() * 50
    assert soft_dice_loss(perfect, labels).item() < 1e-3
    wrong = F.one_hot((labels + 1) % 3, 3).permute(0, 3, 1, 2).float() * 50
    assert soft_dice_loss(wrong, labels).item() > 0.99
    assert dice_ce_loss(perfect, labels).item() < 1e-3


def test_masked_losses_use_only_masked_samples_and_keep_graph_when_empty():
    pred = torch.tensor([[0.0, 0.0], [5.0, 5.0]], requires_grad=True)
    target = torch.zeros(2, 2)
    mask = torch.tensor([True, False])
    assert masked_smooth_l1(pred, target, mask).item() == 0.0  # the wrong row is masked out
    none = masked_smooth_l1(pred, target, torch.tensor([False, False]))
    none.backward()  # still differentiable
    assert none.item() == 0.0 and pred.grad is not None
    logits = torch.randn(3, 4)
    cls = torch.tensor([1, 2, 3])
    m = torch.tensor([True, False, True])
    expected = F.cross_entropy(logits[m], cls[m], label_smoothing=0.1)
    torch.testing.assert_close(masked_cross_entropy(logits, cls, m, label_smoothing=0.1), expected)


def test_weighted_covariance_matches_numpy():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(2, 3, 6, 5))
    weights = rng.uniform(size=(2, 6, 5))
    ours = weighted_covariance(torch.from_numpy(values), torch.from_numpy(weights), eps=0).numpy()
    for b in range(2):
        ref = np.cov(values[b].reshape(3, -1), aweights=weights[b].ravel(), bias=True)
        np.testing.assert_allclose(ours[b], ref, rtol=1e-8)


def test_weighted_covariance_has_finite_gradients_at_zero_weight():
    """A lesion probability that underflows to exactly 0 must not make the gradients NaN (the
    derivative of sqrt at 0 is infinite); elsewhere the gradients are those of the plain root."""
    torch.manual_seed(0)
    values = torch.randn(2, 3, 6, 5, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(2, 6, 5, dtype=torch.float64)
    weights[0, :2] = 0.0  # exact zeros, as a softmax gives in float32 for a large logit gap
    weights.requires_grad_(True)
    weighted_covariance(values, weights).pow(2).sum().backward()
    assert torch.isfinite(weights.grad).all() and torch.isfinite(values.grad).all()

    def plain(v, w, eps=1e-6):  # the formula with w.sqrt(), for w > 0
        w = w.unsqueeze(1)
        total = w.sum((-2, -1), keepdim=True) + eps
        centred = (v - (v * w).sum((-2, -1), keepdim=True) / total) * w.sqrt()
        flat = centred.flatten(2)
        return flat @ flat.transpose(1, 2) / total.flatten(1).unsqueeze(-1)

    positive = (torch.rand(2, 6, 5) + 0.1).requires_grad_(True)
    v = torch.randn(2, 3, 6, 5)
    ours_w = positive.detach().clone().requires_grad_(True)
    out_plain, out_ours = plain(v, positive), weighted_covariance(v, ours_w)
    assert torch.equal(out_plain, out_ours)
    out_plain.sum().backward()
    out_ours.sum().backward()
    assert torch.equal(positive.grad, ours_w.grad)

    # the old formula really does give NaN at a zero weight: the test guards a real failure
    zero = weights.detach().clone().requires_grad_(True)
    plain(values.detach(), zero).pow(2).sum().backward()
    assert not torch.isfinite(zero.grad).all()


def test_tim_consistency_zero_when_consistent():
    torch.manual_seed(0)
    images = torch.rand(2, 4, 16, 16) + 0.5
    truth = torch.zeros(2, 16, 16)
    truth[:, 4:10, 5:12] = 1
    mask = torch.tensor([True, True])
    from mtilib.data.enhancement import relative_enhancement

    measured = relative_enhancement(images, truth, phase_axis=1)
    first, second = tim_consistency_loss(images, truth, truth, measured, mask)
    assert first.item() == pytest.approx(0.0, abs=1e-7)
    assert second.item() == pytest.approx(0.0, abs=1e-7)
    shifted = torch.roll(truth, 3, dims=-1)
    first2, second2 = tim_consistency_loss(images, shifted, truth, measured, mask)
    assert first2.item() > 0 and second2.item() > 0


def test_pixel_enhancement_definition():
    images = torch.tensor([[[[2.0]], [[3.0]], [[4.0]], [[1.0]]]])
    torch.testing.assert_close(pixel_enhancement(images)[0, :, 0, 0], torch.tensor([0.5, 1.0, -0.5]))


def test_gan_objectives():
    real = torch.tensor([1.0, 1.0])
    fake = torch.tensor([0.0, 0.0])
    assert discriminator_loss(real, fake, "lsgan").item() == 0.0  # the LSGAN optimum
    assert generator_adversarial_loss(torch.ones(3), "lsgan").item() == 0.0
    r, f = torch.randn(5), torch.randn(5)
    bce = F.binary_cross_entropy_with_logits(r, torch.ones(5)) + F.binary_cross_entropy_with_logits(f, torch.zeros(5))
    torch.testing.assert_close(discriminator_loss(r, f, "bce"), bce)
    torch.testing.assert_close(generator_adversarial_loss(f, "bce"),
                               F.binary_cross_entropy_with_logits(f, torch.ones(5)))
    assert discriminator_loss(torch.full((2,), 2.0), torch.full((2,), -2.0), "hinge").item() == 0.0
    with pytest.raises(ValueError, match="unknown GAN"):
        discriminator_loss(r, f, "wgan")

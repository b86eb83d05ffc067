"""relative_enhancement against a direct numpy computation; numpy and torch; binary and soft masks."""

import numpy as np
import pytest
import torch

from mtilib.data.enhancement import relative_enhancement


def _direct(images, weights):
    """Reference for one case: images (P, *spatial), weights (*spatial), by explicit loops."""
    w = weights.astype(float).ravel()
    means = [float((img.astype(float).ravel() * w).sum() / w.sum()) for img in images]
    return np.array([(m - means[0]) / means[0] for m in means[1:]])


@pytest.fixture()
def data():
    rng = np.random.default_rng(0)
    images = rng.uniform(50.0, 500.0, size=(3, 4, 6, 5, 2)).astype(np.float32)  # (B, P, H, W, S)
    binary = rng.random((3, 6, 5, 2)) < 0.4
    soft = rng.random((3, 6, 5, 2))
    return images, binary, soft


def test_binary_mask_batch_numpy(data):
    images, binary, _ = data
    out = relative_enhancement(images, binary, phase_axis=1)
    assert out.shape == (3, 3) and out.dtype == np.float64
    for b in range(3):
        np.testing.assert_allclose(out[b], _direct(images[b], binary[b]), rtol=1e-12)


def test_soft_mask_numpy_and_negative_phase_axis(data):
    images, _, soft = data
    out = relative_enhancement(images, soft, phase_axis=-4)
    for b in range(3):
        np.testing.assert_allclose(out[b], _direct(images[b], soft[b]), rtol=1e-12)


def test_single_case_and_broadcast_mask(data):
    images, binary, _ = data
    case = images[0]  # (P, H, W, S) with phase_axis 0, the phantom / real-data route
    np.testing.assert_allclose(relative_enhancement(case, binary[0]), _direct(case, binary[0]), rtol=1e-12)
    # one mask for every batch item
    out = relative_enhancement(images, binary[1], phase_axis=1)
    for b in range(3):
        np.testing.assert_allclose(out[b], _direct(images[b], binary[1]), rtol=1e-12)


def test_known_values():
    images = np.zeros((4, 2, 2))
    images[0], images[1], images[2], images[3] = 100.0, 250.0, 150.0, 100.0
    images[:, 1, 1] = 1000.0  # outside the mask: must not count
    mask = np.array([[1, 1], [1, 0]], bool)
    np.testing.assert_allclose(relative_enhancement(images, mask), [1.5, 0.5, 0.0])


def test_empty_mask_numpy_raises(data):
    images, binary, _ = data
    empty = np.zeros_like(binary)
    with pytest.raises(ValueError, match="empty"):
        relative_enhancement(images, empty, phase_axis=1)
    with pytest.raises(ValueError, match="pre-contrast mean"):
        relative_enhancement(np.zeros((4, 3, 3)), np.ones((3, 3), bool))


def test_argument_errors(data):
    images, binary, _ = data
    with pytest.raises(ValueError, match="phase_axis"):
        relative_enhancement(images, binary, phase_axis=7)
    with pytest.raises(ValueError, match="post-contrast"):
        relative_enhancement(images[:, :1], binary, phase_axis=1)


@pytest.mark.parametrize("mask_kind", ["binary", "soft"])
def test_torch_matches_numpy(data, mask_kind):
    images, binary, soft = data
    mask = binary if mask_kind == "binary" else soft
    expected = relative_enhancement(images, mask, phase_axis=1)
    t_images = torch.from_numpy(images)
    t_mask = torch.from_numpy(mask)
    out = relative_enhancement(t_images, t_mask, phase_axis=1)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (3, 3)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)  # float32
    out64 = relative_enhancement(t_images.double(), t_mask, phase_axis=1)
    np.testing.assert_allclose(out64.numpy(), expected, rtol=1e-12)


def test_torch_gradient_flows_to_images_and_soft_mask(data):
    images, _, soft = data
    t_images = torch.tensor(images[:, :, :3, :3, 0], dtype=torch.float64, requires_grad=True)  # (B, P, H, W)
    logits = torch.tensor(np.log(soft[:, :3, :3, 0] + 0.1), dtype=torch.float64, requires_grad=True)
    out = relative_enhancement(t_images, torch.sigmoid(logits), phase_axis=1)
    out.sum().backward()
    for grad in (t_images.grad, logits.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    # analytic gradient equals finite differences
    assert torch.autograd.gradcheck(
        lambda x, m: relative_enhancement(x, torch.sigmoid(m), phase_axis=1),
        (t_images.detach().clone().requires_grad_(), logits.detach().clone().requires_grad_()),
    )


def test_torch_empty_soft_mask_stays_finite(data):
    images, _, _ = data
    t_images = torch.tensor(images[:, :, :, :, 0], requires_grad=True)
    mask = torch.zeros(3, 6, 5, requires_grad=True)
    out = relative_enhancement(t_images, mask, phase_axis=1)
    assert torch.equal(out, torch.zeros(3, 3))
    out.sum().backward()
    assert torch.isfinite(t_images.grad).all() and torch.isfinite(mask.grad).all()

"""MdIEF with neutral projections shows its three domain views unchanged (course notebook 04)."""

import pytest
import torch
import torch.nn.functional as F

from mtilib.models.blocks import gaussian_highpass, haar_dwt2d, spatial_entropy, spectral_entropy
from mtilib.models.mdief import MdIEF, entropy_weights, neutral_projections_


def _disc(n=32, radius=8.0):
    i0, i1 = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    return ((i0 - 15.5) ** 2 + (i1 - 15.5) ** 2 < radius**2).float()


def test_neutral_projections_give_the_domain_views():
    torch.manual_seed(0)
    feats = torch.randn(2, 3, 4, 16, 12)
    module = neutral_projections_(MdIEF(4, 3))
    with torch.no_grad():
        spatial, frequency, wavelet = module.branches(feats).unbind(1)
    expected_spatial = feats.mean(dim=(1, 2))
    torch.testing.assert_close(spatial[:, 0], expected_spatial)
    torch.testing.assert_close(frequency[:, 0], gaussian_highpass(feats, 0.1).mean(dim=(1, 2)), atol=1e-5, rtol=0)
    _, lh, hl, hh = haar_dwt2d(feats)
    details = torch.stack([lh, hl, hh]).mean(dim=(0, 2, 3))[:, None]
    up = F.interpolate(details, size=(16, 12), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(wavelet[:, 0], up, atol=1e-5, rtol=0)
    # every output channel is the same view
    torch.testing.assert_close(spatial[:, 1:], spatial[:, :1].expand_as(spatial[:, 1:]))


def test_neutral_weights_follow_the_entropy_order():
    module = neutral_projections_(MdIEF(1, 1))
    x = _disc()[None, None, None]
    with torch.no_grad():
        entropy = spatial_entropy(module.branches(x))[0, :, 0]
        _, weights = module(x)
    assert torch.argmax(weights[0, :, 0]) == torch.argmin(entropy)
    torch.testing.assert_close(weights.sum(1), torch.ones(1, 1))


def test_entropy_weights_limits_and_module_agreement():
    entropy = torch.tensor([[[0.80, 0.90], [0.85, 0.70], [0.90, 0.95]]])  # (B=1, 3, C=2)
    sharp = entropy_weights(entropy, 1e-3)
    torch.testing.assert_close(sharp.argmax(1), entropy.argmin(1))
    assert sharp.max(1).values.min() > 0.99
    torch.testing.assert_close(entropy_weights(entropy, 1e3), torch.full_like(entropy, 1 / 3), atol=1e-4, rtol=0)
    torch.manual_seed(0)
    module, feats = MdIEF(4, 2), torch.randn(1, 2, 4, 8, 8)
    with torch.no_grad():
        _, weights = module(feats)
        expected = entropy_weights(spatial_entropy(module.branches(feats)), module.temperature)
    torch.testing.assert_close(weights, expected)


def test_spectral_entropy_switch_weights_by_the_power_spectrum():
    torch.manual_seed(0)
    spatial, spectral = MdIEF(4, 2), MdIEF(4, 2, entropy="spectral")
    spectral.load_state_dict(spatial.state_dict())  # same weights: the switch has no parameters
    feats = torch.randn(1, 2, 4, 8, 8)
    with torch.no_grad():
        _, weights = spectral(feats)
        expected = entropy_weights(spectral_entropy(spectral.branches(feats)), spectral.temperature)
        _, spatial_weights = spatial(feats)
    torch.testing.assert_close(weights, expected)
    assert not torch.allclose(weights, spatial_weights)
    with pytest.raises(ValueError, match="entropy must be one of"):
        MdIEF(4, 2, entropy="temporal")


def test_frequency_branch_projects_then_filters_like_filter_then_project():
    """The 1×1 projection runs before the high-pass (P times fewer FFTs); with random weights and
    bias it computes conv(highpass(feats)), the branch as first written."""
    torch.manual_seed(1)
    module = MdIEF(4, 3)
    with torch.no_grad():
        module.frequency.bias.normal_()
        feats = torch.randn(2, 3, 4, 16, 12)
        _, frequency, _ = module.branch_maps(feats)
        reference = module.frequency(gaussian_highpass(feats, module.highpass_sigma).flatten(1, 2))
        spatial_reference = module.spatial(feats.flatten(1, 2))
        spatial, _, _ = module.branch_maps(feats)
    torch.testing.assert_close(frequency, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(spatial, spatial_reference, atol=1e-6, rtol=1e-6)

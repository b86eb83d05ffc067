"""Every network trains to the same gradients in channels_last as in the contiguous format.

oneDNN's backward-weights kernel of a strided 1×1 convolution in channels_last with few input
channels returns wrong weight gradients on AVX2 CPUs and writes out of bounds on AVX-512 ones
(oneDNN issue #6035); odd batch sizes trigger it most. mtilib never calls that kernel
(:class:`~mtilib.models.blocks.SubsampledConv1x1`); these tests force both memory formats on every
network of the results table, whatever the CPU that runs them, so a regression shows up here on
any machine (wrong gradients on AVX2, a crash on AVX-512).
"""

import copy

import pytest
import torch
from torch import nn

from mtilib.losses import LossWeights, multitask_loss
from mtilib.models import BASELINES, ModelConfig, baseline_config, build_model
from mtilib.models.blocks import ResBlock, SubsampledConv1x1


def make_batch(b: int, size: int = 32, phases: int = 4, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {
        "image": torch.rand(b, phases, size, size, generator=gen) + 0.5,
        "times": torch.tensor([[0.0, 35.0, 70.0, 180.0][:phases]]).repeat(b, 1),
        "label": torch.randint(0, 3, (b, size, size), generator=gen),
        "class_id": torch.randint(0, 7, (b,), generator=gen),
        "enhancement": torch.rand(b, phases - 1, generator=gen),
        "has_lesion": torch.arange(b) % 2 == 0,
    }


def gradients(model: nn.Module, batch: dict, channels_last: bool) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and every parameter's gradient after one forward + backward in the given memory format."""
    model = copy.deepcopy(model)
    x = batch["image"]
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    out = model(x, batch["times"])
    loss, _ = multitask_loss(out, batch, LossWeights())
    loss.backward()
    return float(loss.detach()), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.timeout(120)  # the broken kernel hangs on some CPUs instead of returning wrong values
@pytest.mark.parametrize("width", [4, 8])
@pytest.mark.parametrize("name", list(BASELINES))
def test_channels_last_gradients_agree_with_contiguous(name, width):
    config = baseline_config(name, ModelConfig(width=width, dropout=0.0))
    torch.manual_seed(0)
    model = build_model(config).train()
    for batch_size in (1, 3, 5):
        batch = make_batch(batch_size, seed=batch_size)
        loss_ref, ref = gradients(model, batch, channels_last=False)
        loss_cl, grads = gradients(model, batch, channels_last=True)
        assert abs(loss_cl - loss_ref) <= 1e-4 * max(1.0, abs(loss_ref)), (name, batch_size)
        assert grads.keys() == ref.keys()
        # float32 rounding differs between the formats' summation orders: tolerate it relative to
        # each parameter's gradient, plus a floor relative to the network's largest gradient (a
        # parameter whose gradient nearly cancels out has no meaningful relative error)
        floor = 1e-5 * max(float(g.abs().max()) for g in ref.values())
        for param, g_ref in ref.items():
            scale = float(g_ref.abs().max())
            err = float((grads[param] - g_ref).abs().max())
            assert err <= 2e-3 * scale + floor, (
                f"{name}, width {width}, batch {batch_size}: gradient of {param} differs between "
                f"memory formats by {err:.3g} (largest entry {scale:.3g})")


@pytest.mark.parametrize("batch_size", [1, 3, 5])
@pytest.mark.parametrize("cin", [2, 4, 8])
def test_subsampled_projection_is_the_strided_1x1_convolution(cin, batch_size):
    """Same weights, same function and same gradients as ``nn.Conv2d(cin, cout, 1, stride=2)``,
    checked in float64 (where oneDNN is not involved) against the channels_last float32 result."""
    torch.manual_seed(cin)
    ours = SubsampledConv1x1(cin, 2 * cin, stride=2)
    reference = nn.Conv2d(cin, 2 * cin, 1, stride=2, bias=False).double()
    reference.load_state_dict(ours.state_dict())  # the same state-dict keys and shapes
    x = torch.randn(batch_size, cin, 17, 20, dtype=torch.float64)
    ref_out = reference(x)
    ref_out.pow(2).sum().backward()
    ours = ours.to(memory_format=torch.channels_last)
    out = ours(x.float().contiguous(memory_format=torch.channels_last))
    out.pow(2).sum().backward()
    assert out.shape == ref_out.shape == (batch_size, 2 * cin, 9, 10)
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.weight.grad.double(), reference.weight.grad, rtol=1e-4, atol=1e-4)


def test_resblock_never_builds_a_strided_1x1_convolution():
    block = ResBlock(4, 8, stride=2)
    strided_1x1 = [m for m in block.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)
                   and m.stride != (1, 1)]
    assert not strided_1x1
    assert block(torch.randn(3, 4, 16, 16)).shape == (3, 8, 8, 8)

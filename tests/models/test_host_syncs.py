"""The training step reads nothing back from the device: no ``bool()``/``float()``/``.item()`` of a
tensor, no boolean-mask indexing (each makes the CPU wait for a GPU). Checked on any device by
intercepting those calls, and the sync-free masked losses checked against boolean selection."""

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from mtilib.losses import LossWeights, masked_cross_entropy, masked_smooth_l1, multitask_loss
from mtilib.models import ModelConfig, baseline_config, build_discriminator, build_model
from mtilib.train import TrainConfig
from mtilib.train.gan import discriminator_step

SYNCING = {"__bool__", "__float__", "__int__", "item", "tolist", "nonzero", "numpy"}


class HostReads(TorchFunctionMode):
    """Records every call that needs a tensor's value on the host."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if name in SYNCING:
            self.calls.append(name)
        if name == "__getitem__":
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index):
                self.calls.append("boolean index")
        return func(*args, **(kwargs or {}))


class StepRecorder:
    def __init__(self):
        self.calls = []

    def zero_grad(self, set_to_none=True):
        self.calls.append("zero_grad")

    def step(self):
        self.calls.append("step")


def make_batch(b=5, size=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {
        "image": torch.rand(b, 4, size, size, generator=gen) + 0.5,
        "times": torch.tensor([[0.0, 35.0, 70.0, 180.0]]).repeat(b, 1),
        "label": torch.randint(0, 3, (b, size, size), generator=gen),
        "class_id": torch.where(torch.arange(b) % 2 == 0, torch.randint(0, 7, (b,), generator=gen), -1),
        "enhancement": torch.rand(b, 3, generator=gen),
        "has_lesion": torch.arange(b) % 2 == 0,
    }


@pytest.mark.parametrize("name", ["no_tim", "multitask", "seg_only", "unet"])
def test_loss_and_discriminator_step_read_nothing_back(name):
    config = baseline_config(name, ModelConfig(width=4, descriptor_dim=8, head_hidden=16, tdd_dim=16))
    config.tdd = name == "no_tim"
    model = build_model(config)
    batch = make_batch()
    out = model(batch["image"], batch["times"])
    with HostReads() as reads:
        loss, parts = multitask_loss(out, batch, LossWeights(), class_weights=torch.rand(7) + 0.5)
        loss.backward()
    assert reads.calls == [], f"{name}: the loss reads {reads.calls} back from the device"
    assert all(v.ndim == 0 and not v.requires_grad for v in parts.values())
    disc = build_discriminator(config)
    if disc is not None:
        cfg = TrainConfig.preset("quick")
        lesion_index = batch["has_lesion"].nonzero().flatten()  # taken on the host, before the copy
        fake = (out.enhancement, torch.softmax(out.class_logits.float(), 1), out.aux["descriptors"].flatten(1))
        opt = StepRecorder()  # the optimiser's own bookkeeping reads CPU step counters: not ours
        with HostReads() as reads:
            d_loss = discriminator_step(cfg, disc, opt, batch, lesion_index, fake)
        assert reads.calls == [] and d_loss.ndim == 0
        assert opt.calls == ["zero_grad", "step"] and all(p.grad is not None for p in disc.parameters())


def test_masked_losses_equal_boolean_selection():
    gen = torch.Generator().manual_seed(1)
    pred, target = torch.randn(6, 3, generator=gen), torch.randn(6, 3, generator=gen)
    logits = torch.randn(6, 7, generator=gen)
    labels = torch.randint(0, 7, (6,), generator=gen)
    weights = torch.rand(7, generator=gen) + 0.2
    mask = torch.tensor([True, False, True, True, False, False])
    torch.testing.assert_close(masked_smooth_l1(pred, target, mask, beta=0.1),
                               F.smooth_l1_loss(pred[mask], target[mask], beta=0.1))
    labels_unknown = torch.where(mask, labels, -1)  # lesion-free slices carry class -1
    for class_weights in (None, weights):
        for smoothing in (0.0, 0.1):
            torch.testing.assert_close(
                masked_cross_entropy(logits, labels_unknown, mask, class_weights, smoothing),
                F.cross_entropy(logits[mask], labels[mask], weight=class_weights, label_smoothing=smoothing))
    none = torch.zeros(6, dtype=torch.bool)
    pred.requires_grad_(True)
    zero = masked_smooth_l1(pred, target, none) + masked_cross_entropy(logits.requires_grad_(True), labels, none)
    assert float(zero.detach()) == 0.0 and zero.requires_grad  # graph kept (DDP sees every parameter)
    zero.backward()
    assert float(pred.grad.abs().sum()) == 0.0


def test_the_non_finite_gradient_guard_reads_nothing_back():
    """The loop's clipping step (mtilib.train.guards) decides on the device, not on the host."""
    from mtilib.train.guards import clip_or_drop_gradients

    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    net(torch.randn(5, 4)).square().sum().backward()
    with HostReads() as reads:
        finite = clip_or_drop_gradients(net.parameters(), 1.0)
    assert reads.calls == [] and finite.dtype == torch.bool

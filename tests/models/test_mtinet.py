"""MTI-Net and its modules: shapes, gradients, invariances, switches, the adversary."""

import numpy as np
import pytest
import torch

from mtilib.losses import LossWeights, discriminator_loss, multitask_loss
from mtilib.models import (
    BASELINES,
    EarlyFusionUNet,
    ModelConfig,
    MTINet,
    TaskDrivenDiscriminator,
    baseline_config,
    build_discriminator,
    build_model,
)
from mtilib.models.mdief import MdIEF, PlainFusion
from mtilib.models.summary import model_summary
from mtilib.models.tim import TaskInteraction
from mtilib.models.transformer import PhaseMean, PhaseTransformer

TIMES = (0.0, 35.0, 70.0, 180.0, 300.0)


def make_batch(b=4, p=4, size=32, classes=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(b, p, size, size, generator=gen) + 0.5
    t = torch.tensor([TIMES[:p]]).repeat(b, 1)
    label = torch.randint(0, 3, (b, size, size), generator=gen)
    return {
        "image": x, "times": t, "label": label,
        "class_id": torch.randint(0, classes, (b,), generator=gen),
        "enhancement": torch.rand(b, p - 1, generator=gen),
        "has_lesion": torch.arange(b) % 2 == 0,
    }


@pytest.mark.parametrize("size,phases,classes,halve", [
    (32, 4, 7, True), (48, 4, 2, True), (64, 3, 5, True), (80, 5, 7, True),
    (32, 4, 7, False), (40, 5, 7, False),  # the first release's layout (multiples of 8)
])
def test_output_shapes(size, phases, classes, halve):
    model = MTINet(ModelConfig(width=8, phases=phases, num_classes=classes, descriptor_dim=8, head_hidden=16,
                               layout="compact" if halve else "wide"))
    batch = make_batch(2, phases, size, classes)
    out = model(batch["image"], batch["times"])
    assert out.seg_logits.shape == (2, 3, size, size)
    assert out.enhancement.shape == (2, phases - 1)
    assert out.class_logits.shape == (2, classes)
    # skip channels, finest first: halving layout (w, w, 2w, 4w), first release (w, 2w, 4w)
    skip_channels = [8, 8, 16, 32] if halve else [8, 16, 32]
    assert [w.shape[-1] for w in out.aux["entropy_weights"]] == skip_channels
    for weights, channels in zip(out.aux["entropy_weights"], skip_channels):
        assert weights.shape == (2, 3, channels)
        torch.testing.assert_close(weights.sum(1), torch.ones(2, channels))
    assert out.aux["phase_attention"].shape == (2, phases, phases)
    assert out.aux["prelim_logits"].shape == (2, 1, size, size)


@pytest.mark.parametrize("halve,size,bottleneck", [(True, 64, 4), (False, 64, 8)])
def test_encoder_layout_bottleneck_and_skips(halve, size, bottleneck):
    """Each encoder layout puts the bottleneck (8w channels) where its docstring says."""
    model = MTINet(ModelConfig(width=8, layout="compact" if halve else "wide"))
    feats = model.encoder(torch.rand(2, 1, size, size))
    assert feats[-1].shape == (2, 64, bottleneck, bottleneck)
    assert [f.shape[1] for f in feats[:-1]] == list(model.config.skip_widths)
    assert [f.shape[-1] for f in feats[:-1]] == [size // 2**k for k in range(len(feats) - 1)]


def test_bad_input_is_refused_clearly():
    model = MTINet(width=8)
    with pytest.raises(ValueError, match="multiples of 16"):
        model(torch.rand(1, 4, 24, 32), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="multiples of 8"):
        MTINet(width=8, layout="wide")(torch.rand(1, 4, 30, 32), torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\)"):
        model(torch.rand(1, 3, 32, 32), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="phase times"):
        model(torch.rand(1, 4, 32, 32), torch.zeros(1, 3))


def test_backward_reaches_every_parameter_with_finite_gradients():
    torch.manual_seed(0)
    cfg = ModelConfig(width=8, descriptor_dim=8, head_hidden=16)
    model, disc = build_model(cfg), build_discriminator(cfg)
    batch = make_batch()
    out = model(batch["image"], batch["times"])
    loss, _ = multitask_loss(out, batch, LossWeights())
    probs = torch.softmax(out.class_logits, 1)
    score = disc(out.enhancement, probs, batch["times"], out.aux["descriptors"].flatten(1))
    (loss + score.mean()).backward()
    for name, param in list(model.named_parameters()) + list(disc.named_parameters()):
        assert param.grad is not None, f"{name} received no gradient"
        assert torch.isfinite(param.grad).all(), f"{name} has non-finite gradient"
    assert sum(float(p.grad.abs().sum()) for p in model.parameters()) > 0


def test_transformer_pooled_output_invariant_to_phase_order():
    torch.manual_seed(0)
    layer = PhaseTransformer(32, layers=2, heads=4).eval()
    feats = torch.randn(2, 4, 32, 3, 3)
    times = torch.tensor([[0.0, 35.0, 70.0, 180.0], [0.0, 30.0, 60.0, 240.0]])
    perm = torch.tensor([2, 0, 3, 1])
    per_phase, summary, _ = layer(feats, times)
    per_phase_p, summary_p, _ = layer(feats[:, perm], times[:, perm])
    torch.testing.assert_close(summary_p, summary, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(per_phase_p, per_phase[:, perm], atol=1e-5, rtol=1e-5)
    # ...but the times matter: permuting features without their times changes the output
    _, summary_wrong, _ = layer(feats[:, perm], times)
    assert not torch.allclose(summary_wrong, summary, atol=1e-3)


def test_tim_first_order_statistic_equals_numpy_masked_enhancement():
    rng = np.random.default_rng(3)
    images = rng.uniform(0.5, 2.0, size=(2, 4, 16, 16))
    mask = rng.uniform(0, 1, size=(2, 1, 16, 16))
    tim = TaskInteraction([8], descriptor_dim=4, embed_dim=4, decoder_channels=8)
    feats = [torch.rand(2, 4, 8, 16, 16)]
    _, measured = tim.describe(torch.from_numpy(images).float(), feats, torch.from_numpy(mask).float())
    expected = np.zeros((2, 3))
    for b in range(2):
        m = mask[b, 0]
        means = [(images[b, p] * m).sum() / m.sum() for p in range(4)]
        expected[b] = [(means[p] - means[0]) / means[0] for p in range(1, 4)]
    np.testing.assert_allclose(measured.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_switches_replace_modules_with_plain_alternatives():
    off = MTINet(ModelConfig(width=8, mdief=False, transformer=False, tim=False, tdd=False))
    assert all(isinstance(f, PlainFusion) for f in off.fusions)
    assert isinstance(off.phase_mixer, PhaseMean)
    assert not hasattr(off, "prelim_head") and not hasattr(off.tim, "film")
    assert build_discriminator(off.config) is None
    on = MTINet(ModelConfig(width=8))
    assert all(isinstance(f, MdIEF) for f in on.fusions)
    assert isinstance(on.phase_mixer, PhaseTransformer)
    assert isinstance(build_discriminator(on.config), TaskDrivenDiscriminator)
    assert isinstance(build_model(baseline_config("unet", ModelConfig(width=8))), EarlyFusionUNet)


@pytest.mark.parametrize("name", list(BASELINES))
def test_every_variant_trains(name):
    """Each switch / baseline still learns: the loss on a fixed batch drops within 25 steps."""
    torch.manual_seed(0)
    cfg = baseline_config(name, ModelConfig(width=8, descriptor_dim=8, head_hidden=16, dropout=0.0))
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = make_batch(b=4, size=32)
    losses = []
    for _ in range(25):
        out = model(batch["image"], batch["times"])
        loss, _ = multitask_loss(out, batch, LossWeights())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.8 * losses[0], f"{name}: {losses[0]:.3f} -> {losses[-1]:.3f}"


def test_single_task_networks_only_output_their_task():
    base = ModelConfig(width=8)
    batch = make_batch(b=2, size=32)
    for name, present in (("seg_only", "seg_logits"), ("reg_only", "enhancement"), ("cls_only", "class_logits")):
        out = build_model(baseline_config(name, base))(batch["image"], batch["times"])
        for field in ("seg_logits", "enhancement", "class_logits"):
            assert (getattr(out, field) is not None) == (field == present), (name, field)


def test_config_refuses_impossible_combinations():
    with pytest.raises(ValueError, match="TIM"):
        ModelConfig(tasks=("seg",), tim=True, tdd=False)
    with pytest.raises(ValueError, match="TDD"):
        ModelConfig(tasks=("seg", "reg"), tim=True, tdd=True)
    with pytest.raises(ValueError, match="tasks"):
        ModelConfig(tasks=("depth",))
    with pytest.raises(ValueError, match="mdief_entropy"):
        ModelConfig(mdief_entropy="temporal")


def test_mdief_entropy_switch_reaches_every_fusion_and_old_configs_load_spatial():
    config = ModelConfig(width=8, mdief_entropy="spectral")
    model = build_model(config)
    assert [f.entropy for f in model.fusions] == ["spectral"] * len(model.fusions)
    saved = config.to_dict()
    del saved["mdief_entropy"]  # a checkpoint written before the switch existed
    assert ModelConfig.from_dict(saved).mdief_entropy == "spatial"


def test_discriminator_separates_real_from_fake_on_a_toy_problem():
    """Real: enhancement rising over phases with a confident class; fake: flat curves, diffuse
    probabilities. A few hundred steps of the least-squares objective must separate them."""
    torch.manual_seed(0)
    disc = TaskDrivenDiscriminator(num_classes=3, context_dim=6, dim=32, layers=2, heads=4)
    opt = torch.optim.Adam(disc.parameters(), lr=1e-3, betas=(0.5, 0.999))
    times = torch.tensor([[0.0, 35.0, 70.0, 180.0]]).repeat(32, 1)

    def sample(real: bool):
        base = torch.rand(32, 1) * 0.5
        if real:
            enh = base + torch.tensor([0.3, 0.6, 0.9]) + 0.05 * torch.randn(32, 3)
            probs = torch.nn.functional.one_hot(torch.randint(0, 3, (32,)), 3).float() * 0.9 + 0.1 / 3
        else:
            enh = base + 0.6 + 0.05 * torch.randn(32, 3)
            probs = torch.softmax(0.3 * torch.randn(32, 3), 1)
        return enh, probs, torch.randn(32, 6)

    for _ in range(300):
        real, fake = sample(True), sample(False)
        loss = discriminator_loss(disc(*real[:2], times, real[2]), disc(*fake[:2], times, fake[2]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        real, fake = sample(True), sample(False)
        s_real, s_fake = disc(*real[:2], times, real[2]), disc(*fake[:2], times, fake[2])
    accuracy = ((s_real > 0.5).float().mean() + (s_fake < 0.5).float().mean()) / 2
    assert accuracy > 0.95, f"discriminator accuracy {accuracy:.2f}"


def test_model_summary_counts_parameters_and_macs():
    model = MTINet(width=8)
    rows = model_summary(model, image_size=32)
    total = rows[-1]
    assert total["module"] == "total"
    assert total["parameters"] == sum(p.numel() for p in model.parameters())
    assert sum(r["parameters"] for r in rows[:-1]) == total["parameters"]
    assert total["macs"] > 0 and rows[0]["module"] == "encoder" and rows[0]["macs"] > 0
    # MACs scale with pixels for a conv net: 2x side -> ~4x MACs
    ratio = model_summary(model, image_size=64)[-1]["macs"] / total["macs"]
    assert 3.5 < ratio < 4.5

"""The fast course recipe: early stopping, the wall-clock history, the lesion-slice floor, the
regression head that corrects TIM's measurement, per-slice regression targets, and old checkpoints
that predate them."""

import numpy as np
import pytest
import torch

from mtilib.course import DEFAULT_DATA
from mtilib.data.dataset import SliceDataset
from mtilib.losses import LossWeights, multitask_loss
from mtilib.models import ModelConfig, baseline_config, build_model
from mtilib.train import TrainConfig, load_model, load_volumes, save_checkpoint, train
from mtilib.train.loop import _patience_exhausted

TIMES = torch.tensor([[0.0, 35.0, 70.0, 180.0]])


def test_patience_counts_epochs_since_the_best():
    cfg = TrainConfig.preset("quick")
    cfg.optim.patience = 2
    # best after epoch 3 (1-based): epochs 4 and 5 did not improve, so epoch index 5 does not start
    assert not _patience_exhausted(cfg, 4, 3, True)
    assert _patience_exhausted(cfg, 5, 3, True)
    assert not _patience_exhausted(cfg, 5, 3, False)  # no validation cases: nothing to stop on
    cfg.optim.patience = 0
    assert not _patience_exhausted(cfg, 50, 1, True)  # off


def test_a_run_that_cannot_improve_stops_after_patience_epochs(tmp_path):
    """lr = 0: the weights never move, the validation score repeats, and epoch 1 stays the best."""
    cfg = TrainConfig.preset("quick")
    cfg.model.width, cfg.data.image_size = 4, 32
    cfg.precision, cfg.channels_last = "fp32", False
    cfg.optim.epochs, cfg.optim.patience, cfg.optim.lr, cfg.optim.d_lr = 6, 2, 0.0, 0.0
    volumes = load_volumes(DEFAULT_DATA, "train")
    result = train(cfg, DEFAULT_DATA, tmp_path / "run", train_volumes=volumes[:7], val_volumes=volumes[7:10])
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert result.best_epoch == 1
    elapsed = [r["elapsed_s"] for r in result.history]
    assert all(b > a > 0 for a, b in zip(elapsed, elapsed[1:]))  # wall clock since the start
    assert all(r["val_seconds"] > 0 for r in result.history)


def test_lesion_slice_floor_repeats_the_slices_of_small_lesions():
    volumes = load_volumes(DEFAULT_DATA, "train")
    plain = SliceDataset(volumes, 64, negative_ratio=0.5, seed=3)
    floored = SliceDataset(volumes, 64, negative_ratio=0.5, seed=3, lesion_slice_floor=4)
    for ci, vol in enumerate(volumes):
        lesion_slices = {s for s in range(vol.num_slices) if (vol.labels[..., s] == 2).any()}
        plain_items = [s for c, s in plain.items if c == ci]
        floored_items = [s for c, s in floored.items if c == ci]
        plain_lesion = [s for s in plain_items if s in lesion_slices]
        floored_lesion = [s for s in floored_items if s in lesion_slices]
        assert len(floored_lesion) == max(4, len(lesion_slices))
        assert set(floored_lesion) == lesion_slices  # repeats, never new slices
        # repeats are spread over the lesion's slices: counts differ by at most one
        counts = np.bincount(floored_lesion)[sorted(lesion_slices)]
        assert counts.max() - counts.min() <= 1
        # the negatives are the same as without the floor
        assert sorted(set(floored_items) - lesion_slices) == sorted(set(plain_items) - lesion_slices)
        assert len(plain_lesion) == len(lesion_slices)


def test_lesion_slices_regress_the_truth_of_their_own_slice():
    from dataclasses import replace

    from mtilib.data.dataset import CaseVolume
    from mtilib.data.phantom import PhantomConfig, generate_case

    case = generate_case(3, "ICC", PhantomConfig.preset("quick"))
    vol = CaseVolume.from_phantom(case, "icc")
    data = SliceDataset([vol], 48, negative_ratio=1.0, min_lesion_pixels=1)
    lesion_items = [i for i, (_, s) in enumerate(data.items) if (vol.labels[..., s] == 2).any()]
    assert len(lesion_items) >= 2
    per_slice = [data[i]["enhancement"].numpy() for i in lesion_items]
    for i, target in zip(lesion_items, per_slice):
        np.testing.assert_allclose(target, case.enhancement_by_slice[data.items[i][1]], rtol=1e-6)
    assert not all(np.allclose(t, per_slice[0]) for t in per_slice[1:])  # the slices differ
    # without a per-slice truth (real data), every lesion slice carries the case's
    fallback = SliceDataset([replace(vol, enhancement_by_slice=None)], 48, negative_ratio=1.0, min_lesion_pixels=1)
    for i in lesion_items:
        np.testing.assert_allclose(fallback[i]["enhancement"].numpy(), case.enhancement, rtol=1e-6)
    # slices without a lesion carry zeros (the regression loss skips them)
    negatives = [i for i, (_, s) in enumerate(data.items) if not (vol.labels[..., s] == 2).any()]
    assert negatives and not data[negatives[0]]["enhancement"].any()


def _net_and_batch(**overrides):
    torch.manual_seed(0)
    model = build_model(ModelConfig(width=8, descriptor_dim=8, head_hidden=16, **overrides))
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3, 4, 32, 32, generator=gen) + 0.5
    return model, x, TIMES.repeat(3, 1)


@pytest.mark.parametrize("gain", [False, True])
def test_a_new_regression_head_answers_with_tims_measurement(gain):
    model, x, t = _net_and_batch(enhancement_gain=gain)
    assert (model.reg_head.gain is not None) == gain
    out = model(x, t)
    assert torch.equal(out.enhancement, out.aux["measured_enhancement"])


def test_the_course_preset_scales_the_measurement_and_the_results_table_does_not():
    """The gain is measured in the course recipe (DESIGN); the results table was measured without."""
    from mtilib.results import ResultsPreset

    assert TrainConfig.preset("course").model.enhancement_gain
    assert not TrainConfig.preset("quick").model.enhancement_gain
    for network in ("mtinet", "no_tim"):
        assert not ResultsPreset.named("results").train_config(network, 0).model.enhancement_gain


def test_the_results_table_keeps_the_schedule_it_was_measured_with():
    """The course preset's warm-ups shrank when it moved to three times the cases (DESIGN); the
    results table derives from it and keeps its own, so `make results` reproduces docs/results.md."""
    from mtilib.results import ResultsPreset

    course = TrainConfig.preset("course")
    assert course.optim.epochs == 5 and course.optim.warmup_epochs < 1
    preset = ResultsPreset.named("results")
    for network in ("mtinet", "unet"):
        cfg = preset.train_config(network, 0)
        assert cfg.optim.warmup_epochs == 1.0 and cfg.optim.epochs == preset.epochs == 6
        assert cfg.adversarial.warmup_epochs == cfg.adversarial.ramp_epochs == 1.5
    # the paper-size table keeps its own preset's warm-up
    paper = ResultsPreset.named("paper").train_config("mtinet", 0)
    assert paper.optim.warmup_epochs == TrainConfig.preset("paper").optim.warmup_epochs == 5


def test_the_regression_loss_does_not_reshape_the_mask_through_the_residual():
    """The measurement is detached; with the correction's last layer at zero (as at initialisation),
    the regressed enhancement has no gradient path to the preliminary lesion map."""
    model, x, t = _net_and_batch()
    out = model(x, t)
    out.enhancement.sum().backward()
    assert model.prelim_head.weight.grad is None or float(model.prelim_head.weight.grad.abs().max()) == 0.0
    # the correction itself learns
    assert float(model.reg_head.out.weight.grad.abs().sum()) > 0


def test_the_gain_lets_the_head_set_the_measurement_aside():
    """With the gain at −1 the measurement drops out and the head answers with its correction alone
    (a lesion that does not enhance, whose soft mask picks up the enhancing liver around it); the
    gain learns."""
    model, x, t = _net_and_batch(enhancement_gain=True)
    x = x * torch.tensor([1.0, 1.5, 1.3, 1.2])[:, None, None]  # post-contrast phases brighter: enhancing
    assert model.config.enhancement_gain and model.reg_head.gain is not None
    out = model(x, t)
    out.enhancement.sum().backward()
    assert float(model.reg_head.gain.weight.grad.abs().sum()) > 0
    with torch.no_grad():
        model.reg_head.gain.bias.fill_(-1.0)
        model.reg_head.out.bias.copy_(torch.tensor([0.1, 0.2, 0.3]))
        ignored = model.eval()(x, t)
    assert float(ignored.aux["measured_enhancement"].min()) > 0.1  # there was something to drop
    torch.testing.assert_close(ignored.enhancement, torch.tensor([[0.1, 0.2, 0.3]]).expand(3, 3))


def test_the_gain_needs_the_residual():
    from mtilib.models.heads import RegressionHead

    with pytest.raises(ValueError, match="gain needs residual"):
        RegressionHead(4, 8, 16, gain=True, residual=False)
    model, _, _ = _net_and_batch(enhancement_residual=False, enhancement_gain=True)
    assert model.reg_head.gain is None  # the switch has no meaning without the residual


def _saved_without(field: str, cfg: TrainConfig, model, tmp_path):
    """Save ``model`` as a checkpoint written before ``field`` existed (its config lacks it), load
    it back, and return ``(loaded, loaded_cfg, outputs of model, outputs of loaded)`` on one batch."""
    config = cfg.to_dict()
    del config["model"][field]
    path = save_checkpoint(tmp_path / "old.pt", {"config": config, "model": model.state_dict(), "epoch": 0})
    loaded, loaded_cfg, _ = load_model(path)
    x = torch.rand(2, 4, 64, 64) + 0.5
    with torch.no_grad():
        return loaded, loaded_cfg, model.eval()(x, TIMES.repeat(2, 1)), loaded(x, TIMES.repeat(2, 1))


def test_checkpoints_written_before_the_gain_load_without_it(tmp_path):
    """An older checkpoint's config has no ``enhancement_gain``: it loads with the plain residual
    and computes what it computed when it was trained (its weights have no gain layer)."""
    cfg = TrainConfig.preset("quick")
    cfg.model.enhancement_gain = False
    torch.manual_seed(0)
    model = build_model(cfg.model)
    assert model.reg_head.gain is None
    with torch.no_grad():
        model.reg_head.out.weight.normal_()  # a trained correction, not the zeros of a new head
    loaded, loaded_cfg, expected, got = _saved_without("enhancement_gain", cfg, model, tmp_path)
    assert loaded_cfg.model.enhancement_gain is False and loaded.reg_head.gain is None
    assert torch.equal(expected.enhancement, got.enhancement)


@pytest.mark.parametrize("name", ["no_tim", "reg_only", "multitask"])
def test_networks_without_tim_regress_directly(name):
    torch.manual_seed(0)
    model = build_model(baseline_config(name, ModelConfig(width=8, descriptor_dim=8, head_hidden=16)))
    assert model.reg_head.residual is False
    assert float(model.reg_head.out.weight.detach().abs().sum()) > 0  # default initialisation, not zeros


def test_residual_switch_off_gives_the_direct_head():
    model, x, t = _net_and_batch(enhancement_residual=False)
    out = model(x, t)
    assert not torch.equal(out.enhancement, out.aux["measured_enhancement"])
    loss, _ = multitask_loss(out, {"image": x, "times": t, "label": torch.zeros(3, 32, 32, dtype=torch.long),
                                   "class_id": torch.zeros(3, dtype=torch.long),
                                   "enhancement": torch.zeros(3, 3), "has_lesion": torch.ones(3, dtype=torch.bool)},
                             LossWeights())
    assert torch.isfinite(loss)


def test_checkpoints_written_before_the_residual_load_without_it(tmp_path):
    """An older checkpoint's config has no ``enhancement_residual``: it loads with the direct head,
    so it computes what it computed when it was trained."""
    cfg = TrainConfig.preset("quick")
    cfg.model.enhancement_residual = False
    model = build_model(cfg.model)
    loaded, loaded_cfg, expected, got = _saved_without("enhancement_residual", cfg, model, tmp_path)
    assert loaded_cfg.model.enhancement_residual is False and loaded.reg_head.residual is False
    assert torch.equal(expected.enhancement, got.enhancement)


def test_checkpoints_written_before_the_compact_layout_load_wide(tmp_path):
    """A checkpoint whose config has no ``layout`` was trained with the first release's layout
    (stage 1 at full resolution, bottleneck at H/8): it loads as "wide" and computes the same."""
    cfg = TrainConfig.preset("quick")
    cfg.model.layout = "wide"
    model = build_model(cfg.model)
    loaded, loaded_cfg, expected, got = _saved_without("layout", cfg, model, tmp_path)
    assert loaded_cfg.model.layout == "wide" and len(loaded.fusions) == 3
    assert torch.equal(expected.seg_logits, got.seg_logits)
    assert torch.equal(expected.class_logits, got.class_logits)


def test_make_checkpoint_ships_the_final_weights_unless_the_run_stops_early(load_script):
    make_checkpoint = load_script("make_checkpoint")
    cfg = TrainConfig.preset("course")
    assert cfg.optim.patience == 0 and make_checkpoint.shipped_file(cfg) == "last.pt"
    cfg.optim.patience = 3
    assert make_checkpoint.shipped_file(cfg) == "best.pt"


def test_make_checkpoint_refuses_to_replace_a_checkpoint_without_force(tmp_path, capsys, load_script):
    """Checked before any work: nothing is generated, trained or written."""
    make_checkpoint = load_script("make_checkpoint")
    existing = tmp_path / "mtinet_course.pt"
    existing.write_bytes(b"finished work")
    assert make_checkpoint.main(["--out", str(tmp_path)]) == 3
    assert existing.read_bytes() == b"finished work" and [p.name for p in tmp_path.iterdir()] == [existing.name]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(existing) in err[0] and "--force" in err[0]

"""Looking inside a network on lesion slices, and the heads-only adversarial game of notebook 09."""

import copy

import pytest
import torch

from mtilib.course import DEFAULT_DATA
from mtilib.models import build_discriminator, build_model
from mtilib.train import TrainConfig, load_volumes
from mtilib.train.adversarial import play_heads_game
from mtilib.train.gan import adversarial_weight
from mtilib.train.inference import lesion_slice_outputs


@pytest.fixture(scope="module")
def setting():
    cfg = TrainConfig.preset("quick")
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    volumes = load_volumes(DEFAULT_DATA, "train")[:4]
    return cfg, model, volumes, lesion_slice_outputs(model, volumes, cfg.data.image_size)


def test_lesion_slice_outputs_rows_match_direct_forward(setting):
    cfg, model, volumes, rows = setting
    n = int(sum(((v.labels == 2).sum(axis=(0, 1)) >= 4).sum() for v in volumes))
    assert rows["class_id"].shape == (n,) and n > 0
    assert rows["descriptors"].shape == (n, 4, cfg.model.descriptor_dim)
    assert rows["context"].shape == (n, 4 * cfg.model.descriptor_dim)
    assert rows["phase_attention"].shape == (n, 4, 4) and rows["phase_pool_weights"].shape == (n, 4)
    assert torch.allclose(rows["class_probs"].sum(1), torch.ones(n), atol=1e-5)
    # row 0 is the first lesion slice of the first case: the same as running the model on it directly
    vol, s = volumes[int(rows["case_index"][0])], int(rows["slice_index"][0])
    x = torch.from_numpy(vol.images[..., s])[None]
    with torch.no_grad():
        out = model(x, torch.from_numpy(vol.times_s)[None])
    assert torch.allclose(out.enhancement[0], rows["pred_enhancement"][0], atol=1e-5)
    assert torch.allclose(rows["enhancement"][0], torch.from_numpy(vol.enhancement_by_slice[s]))  # the slice's truth
    assert int(rows["class_id"][0]) == vol.class_id


def test_heads_game_logs_the_schedule_and_leaves_its_inputs_alone(setting):
    cfg, model, _, rows = setting
    cfg = copy.deepcopy(cfg)
    cfg.adversarial.warmup_epochs, cfg.adversarial.ramp_epochs = 1.0, 1.0
    disc = build_discriminator(cfg.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    disc_before = {k: v.clone() for k, v in disc.state_dict().items()}
    threads = torch.get_num_threads()
    records = play_heads_game(model, rows, rows, cfg, steps=24, steps_per_epoch=8, log_every=4, disc=disc)
    assert torch.get_num_threads() == threads
    assert [r["step"] for r in records] == [4, 8, 12, 16, 20, 24]
    for r in records:
        assert r["lambda_adv"] == pytest.approx(adversarial_weight(cfg, (r["step"] - 1) / 8))
        for key in ("loss_reg", "loss_cls", "loss_adv", "loss_d", "eval_enhancement_mae", "eval_accuracy",
                    "eval_score_real", "eval_score_fake"):
            assert key in r and torch.isfinite(torch.tensor(r[key]))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(disc_before[k], v) for k, v in disc.state_dict().items())


def test_heads_game_learns_the_tasks_and_runs_without_an_adversary(setting):
    cfg, model, _, rows = setting
    cfg = copy.deepcopy(cfg)
    cfg.model.tdd = False
    records = play_heads_game(model, rows, rows, cfg, steps=60, log_every=20)
    assert "loss_d" not in records[-1] and "eval_score_real" not in records[-1]
    assert records[-1]["loss_reg"] + records[-1]["loss_cls"] < records[0]["loss_reg"] + records[0]["loss_cls"]



def test_extra_discriminator_steps_are_taken(setting, monkeypatch):
    import mtilib.train.adversarial as game

    cfg, model, _, rows = setting
    calls = []
    real_step = game.discriminator_step
    monkeypatch.setattr(game, "discriminator_step", lambda *a: calls.append(1) or real_step(*a))
    records = play_heads_game(model, rows, rows, cfg, steps=12, log_every=6, d_steps=3)
    assert len(calls) == 36 and len(records) == 2 and all(r["loss_d"] > 0 for r in records)


def test_frozen_trained_heads_stand_still_while_d_learns(setting):
    cfg, model, _, rows = setting
    cfg = copy.deepcopy(cfg)
    cfg.optim.lr, cfg.loss.adv = 0.0, 0.0
    records = play_heads_game(model, rows, rows, cfg, steps=20, log_every=5, fresh_heads=False)
    expected = float((rows["pred_enhancement"] - rows["enhancement"]).abs().mean())
    assert all(r["eval_enhancement_mae"] == pytest.approx(expected, abs=1e-5) for r in records)
    assert len({round(r["eval_score_real"], 6) for r in records}) > 1  # D does learn

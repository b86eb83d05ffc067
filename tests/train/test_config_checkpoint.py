"""Config YAML round trip and presets; checkpoints: atomic, safe to load, clear errors."""

import pytest
import torch

from mtilib.models import MTINet
from mtilib.train import CheckpointError, TrainConfig, load_checkpoint, load_model, save_checkpoint
from mtilib.train.checkpoint import load_state_dict_checked


@pytest.mark.parametrize("name", ["quick", "course", "paper"])
def test_presets_round_trip_through_yaml(name, tmp_path):
    cfg = TrainConfig.preset(name)
    path = tmp_path / "cfg.yaml"
    cfg.to_yaml(path)
    again = TrainConfig.from_yaml(path)
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()


def test_config_rejects_unknown_keys_and_bad_values(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("seed: 1\noptim:\n  epochs: 3\n  learning_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"cfg.yaml: .*learning_rate"):
        TrainConfig.from_yaml(path)
    path.write_text("adversarial:\n  kind: wgan\n")
    with pytest.raises(ValueError, match="wgan"):
        TrainConfig.from_yaml(path)
    with pytest.raises(ValueError, match="unknown preset"):
        TrainConfig.preset("huge")
    # the compact layout halves the slices four times; the first release's three
    path.write_text("data:\n  image_size: 40\n")
    with pytest.raises(ValueError, match="multiple of 16"):
        TrainConfig.from_yaml(path)
    path.write_text("model:\n  layout: wide\ndata:\n  image_size: 40\n")
    assert TrainConfig.from_yaml(path).data.image_size == 40


def _state(model):
    cfg = TrainConfig.preset("quick")
    return {"config": cfg.to_dict(), "model": model.state_dict(), "epoch": 0, "rng": {"torch": torch.get_rng_state()}}


def test_checkpoint_round_trip_is_weights_only_and_atomic(tmp_path):
    cfg = TrainConfig.preset("quick")
    model = MTINet(cfg.model)
    path = save_checkpoint(tmp_path / "ck" / "last.pt", _state(model))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left behind
    state = load_checkpoint(path)
    assert state["mtilib_version"] and state["format_version"] == 1
    torch.load(path, weights_only=True)  # loads without unpickling arbitrary objects
    loaded, loaded_cfg, _ = load_model(path)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert loaded_cfg.model == cfg.model


def test_save_failure_keeps_the_previous_checkpoint(tmp_path):
    model = MTINet(TrainConfig.preset("quick").model)
    path = save_checkpoint(tmp_path / "last.pt", _state(model))
    before = path.read_bytes()

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom while writing")

    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint(path, {**_state(model), "bad": Unpicklable()})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_corrupt_missing_and_incompatible_checkpoints_are_named(tmp_path):
    model = MTINet(TrainConfig.preset("quick").model)
    good = save_checkpoint(tmp_path / "good.pt", _state(model))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="truncated.pt: cannot be read"):
        load_checkpoint(truncated)
    with pytest.raises(CheckpointError, match="nope.pt: no such checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": model.state_dict()}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt: not an mtilib checkpoint"):
        load_checkpoint(foreign)
    other = MTINet(TrainConfig.preset("course").model)  # another width
    with pytest.raises(CheckpointError, match="good.pt: network weights do not fit"):
        load_state_dict_checked(other, load_checkpoint(good)["model"], good, "network")


def test_yaml_values_of_the_wrong_type_are_refused(tmp_path):
    import pytest

    from mtilib.train import TrainConfig

    base = TrainConfig.preset("quick").to_dict()
    for section, key, value in (("optim", "epochs", "30"), ("optim", "lr", True), ("model", "tdd", "yes"),
                                ("model", "tasks", ["seg", 3]), ("data", "image_size", 64.5)):
        data = TrainConfig.preset("quick").to_dict()
        data[section][key] = value
        with pytest.raises(ValueError, match=f"{section}.{key} must be"):
            TrainConfig.from_dict(data)
    data = dict(base, channels_last=True)  # str | bool
    data["optim"] = dict(base["optim"], lr=1)  # an int is a float
    assert TrainConfig.from_dict(data).channels_last is True

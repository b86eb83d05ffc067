"""Precision and memory format: ``auto`` decided by a measured, cached probe; every combination
forced explicitly and trained, whatever the CPU that runs the tests."""

import json

import pytest
import torch

from mtilib.course import DEFAULT_DATA
from mtilib.models import ModelConfig
from mtilib.train import TrainConfig, fastpath
from mtilib.train.fastpath import FastPaths, choose_fast_paths, decide

CPU = torch.device("cpu")
TINY = ModelConfig(width=4, descriptor_dim=8, head_hidden=16, tdd_dim=16)
ALL = [("fp32", False), ("fp32", True), ("bf16", True), ("bf16", False)]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MTILIB_CACHE_DIR", str(tmp_path))
    return tmp_path / "fastpath.json"


def test_decide_keeps_the_baseline_unless_another_is_clearly_faster():
    assert decide({"fp32": 1.0, "fp32+channels_last": 0.95, "bf16+channels_last": None, "bf16": None},
                  ALL)[:2] == ("fp32", False)  # 5 % is within the noise
    assert decide({"fp32": 1.0, "fp32+channels_last": 0.8, "bf16+channels_last": 0.5, "bf16": 0.7},
                  ALL)[:2] == ("bf16", True)
    assert decide({"fp32": 1.0, "fp32+channels_last": 0.8, "bf16+channels_last": None, "bf16": None},
                  ALL)[:2] == ("fp32", True)
    # a baseline that could not be measured is kept: nothing to compare with
    assert decide({"fp32": None, "fp32+channels_last": 0.1}, ALL[:2])[:2] == ("fp32", False)


def test_explicit_settings_are_used_without_measuring(cache, monkeypatch):
    monkeypatch.setattr(fastpath, "measure_fast_paths", lambda *a, **k: pytest.fail("measured"))
    for precision, channels_last in ALL:
        paths = choose_fast_paths(TINY, CPU, precision, channels_last)
        assert (paths.precision, paths.channels_last) == (precision, channels_last)
    assert choose_fast_paths(TINY, CPU, "fp32", "false").channels_last is False  # YAML strings
    with pytest.raises(ValueError, match="precision"):
        choose_fast_paths(TINY, CPU, "fp16", False)
    with pytest.raises(ValueError, match="channels_last"):
        choose_fast_paths(TINY, CPU, "fp32", "sometimes")
    assert not cache.exists()


def test_auto_follows_the_measurement_not_the_cpu(cache, monkeypatch):
    """Whatever this CPU is, the choice is the measured fastest: fake the measurements both ways."""
    for measured, expected in (
        ({"fp32": 1.0, "fp32+channels_last": 1.2, "bf16+channels_last": 0.4, "bf16": 0.6}, ("bf16", True)),
        ({"fp32": 1.0, "fp32+channels_last": 1.2, "bf16+channels_last": None, "bf16": None}, ("fp32", False)),
    ):
        monkeypatch.setattr(fastpath, "measure_fast_paths", lambda *a, m=measured, **k: dict(m))
        paths = choose_fast_paths(TINY, CPU, "auto", "auto", use_cache=False)
        assert (paths.precision, paths.channels_last) == expected
        assert paths.measured == measured
    # only the open setting is probed: bf16 fixed -> the memory format is measured in bf16
    seen = []
    monkeypatch.setattr(fastpath, "measure_fast_paths",
                        lambda m, d, s, b, candidates, **k: seen.append(candidates) or {"bf16": 1.0})
    choose_fast_paths(TINY, CPU, "bf16", "auto", use_cache=False)
    assert seen == [[("bf16", False), ("bf16", True)]]


def test_the_probe_is_real_short_cached_and_leaves_the_random_stream_alone(cache, monkeypatch):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = choose_fast_paths(TINY, CPU, "auto", "auto", image_size=32, batch=16)
    assert torch.equal(torch.rand(3), expected_next), "the probe changed the caller's random stream"
    assert set(first.measured) == {"fp32", "fp32+channels_last", "bf16+channels_last", "bf16"}
    assert first.measured["fp32"] > 0
    assert (first.precision, first.channels_last) in ALL
    entry = next(iter(json.loads(cache.read_text()).values()))
    assert entry["batch"] == fastpath.PROBE_BATCH_CAP and entry["image_size"] == 32
    monkeypatch.setattr(fastpath, "measure_fast_paths", lambda *a, **k: pytest.fail("measured twice"))
    again = choose_fast_paths(TINY, CPU, "auto", "auto", image_size=32, batch=16)
    assert (again.precision, again.channels_last) == (first.precision, first.channels_last)
    assert "cached" in again.reason
    # another network is another measurement
    with pytest.raises(pytest.fail.Exception, match="measured twice"):
        choose_fast_paths(ModelConfig(width=6, descriptor_dim=8, head_hidden=16, tdd_dim=16), CPU,
                          image_size=32)


def test_a_damaged_cache_is_measured_again(cache, monkeypatch):
    cache.write_text("{not json")
    monkeypatch.setattr(fastpath, "measure_fast_paths", lambda *a, **k: {"fp32": 1.0, "fp32+channels_last": 2.0})
    paths = choose_fast_paths(TINY, CPU, "fp32", "auto")
    assert (paths.precision, paths.channels_last) == ("fp32", False)
    assert json.loads(cache.read_text())  # rewritten as valid JSON


@pytest.mark.slow
@pytest.mark.parametrize("precision,channels_last", ALL, ids=lambda v: str(v))
def test_every_precision_and_memory_format_trains(precision, channels_last, tmp_path):
    """One epoch of the real loop (adversary on) in each forced combination, on any CPU."""
    from mtilib.train import train

    cfg = TrainConfig.preset("quick")
    cfg.model.width, cfg.data.image_size, cfg.optim.epochs, cfg.optim.batch_size = 4, 32, 1, 5  # odd batches
    cfg.adversarial.warmup_epochs, cfg.adversarial.ramp_epochs = 0.0, 0.5
    cfg.precision, cfg.channels_last = precision, channels_last
    lines = []
    result = train(cfg, DEFAULT_DATA, tmp_path, log=lines.append)
    record = result.history[-1]
    assert all(torch.isfinite(torch.tensor(v)) for k, v in record.items() if k.startswith("loss_"))
    assert record["loss_adv"] > 0 and record["loss_d"] > 0
    assert f"{precision}, channels_last={channels_last} (as configured)" in lines[0]


def test_fast_paths_report_is_json_ready():
    report = fastpath.fast_paths_report(FastPaths("fp32", False, "why", {"fp32": 0.25, "bf16": None}))
    assert json.loads(json.dumps(report))["ms_per_step"] == {"fp32": 250.0, "bf16": None}


def test_optimizer_kernel_is_fused_on_cpu_and_cuda_and_foreach_elsewhere():
    from mtilib.runtime import optimizer_kernel
    assert optimizer_kernel(CPU) == {"fused": True}
    assert optimizer_kernel(torch.device("cuda")) == {"fused": True}
    assert optimizer_kernel(torch.device("mps")) == {"foreach": True}


@pytest.mark.parametrize("kernel", [{"fused": True}, {"foreach": True}])
def test_fused_and_foreach_adamw_follow_the_per_parameter_loop(kernel):
    """The kernels compute the same update as torch's reference loop (to float rounding), with weight
    decay, after gradient clipping, over several steps and parameters of different shapes."""
    from mtilib.models import build_model
    torch.manual_seed(0)
    reference = build_model(TINY)
    other = build_model(TINY)
    other.load_state_dict(reference.state_dict())
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=1e-2, **kw)
            for m, kw in ((reference, {"foreach": False}), (other, kernel))]
    for _ in range(5):
        grads = [torch.randn_like(p) for p in reference.parameters()]
        for model, opt in zip((reference, other), opts):
            for p, g in zip(model.parameters(), grads):
                p.grad = g.clone()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    for (name, a), b in zip(reference.named_parameters(), other.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


def test_training_uses_the_fused_optimizer_on_cpu(tmp_path):
    cfg = TrainConfig(model=TINY)
    cfg.optim.epochs, cfg.optim.batch_size, cfg.data.image_size = 1, 4, 32
    cfg.precision, cfg.channels_last = "fp32", False
    from mtilib.train import load_checkpoint, load_volumes, train
    volumes = load_volumes(DEFAULT_DATA, "train")[:4]
    train(cfg, None, tmp_path, train_volumes=volumes, val_volumes=[], progress=False)
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["optimizer"]["param_groups"][0]["fused"] is True

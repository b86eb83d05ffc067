"""Distributed training: every network under 2-process DDP, per-rank random streams, RNG restore."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtilib.models import BASELINES
from mtilib.runtime import gather_rng_states, restore_rng_states

CPU = torch.device("cpu")


@pytest.mark.slow
def test_every_network_trains_under_two_process_ddp(tmp_path):
    script = Path(__file__).with_name("ddp_all_networks.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         str(tmp_path)], capture_output=True, text=True, env=env, timeout=600,
    )
    done = [line.split()[2] for line in run.stdout.splitlines() if line.startswith("DDP OK")]
    assert run.returncode == 0, f"networks that trained: {done}\n{run.stderr[-3000:]}"
    assert done == list(BASELINES)
    for name in BASELINES:
        assert (tmp_path / name / "last.pt").exists()


def test_rng_states_round_trip_per_rank():
    torch.manual_seed(5)
    saved = gather_rng_states(1, CPU)
    expected = torch.rand(4)
    torch.manual_seed(99)
    assert restore_rng_states(saved, rank=0, world=1, device=CPU)
    assert torch.equal(torch.rand(4), expected)


def test_rng_states_of_each_rank_are_their_own():
    torch.manual_seed(1)
    rank0 = torch.get_rng_state()
    torch.manual_seed(2)
    rank1 = torch.get_rng_state()
    saved = {"per_rank": [{"torch": rank0, "cuda": None}, {"torch": rank1, "cuda": None}]}
    assert restore_rng_states(saved, rank=1, world=2, device=CPU)
    assert torch.equal(torch.get_rng_state(), rank1)
    assert not restore_rng_states(saved, rank=0, world=3, device=CPU), "another world size must not fit"


def test_checkpoints_of_the_first_release_still_restore():
    torch.manual_seed(3)
    old = {"torch": torch.get_rng_state(), "cuda": None}
    expected = torch.rand(2)
    assert restore_rng_states(old, rank=0, world=1, device=CPU)
    assert torch.equal(torch.rand(2), expected)
    assert not restore_rng_states(old, rank=0, world=2, device=CPU)


def test_resume_loads_the_checkpoint_to_the_cpu(tmp_path, monkeypatch):
    """RNG states must stay CPU byte tensors (torch.set_rng_state / torch.cuda.set_rng_state
    refuse others): resume loads to the CPU whatever the training device."""
    from mtilib.course import DEFAULT_DATA
    from mtilib.train import TrainConfig, load_volumes, loop, train

    cfg = TrainConfig.preset("quick")
    cfg.model.width, cfg.data.image_size, cfg.optim.epochs = 4, 32, 2
    cfg.precision, cfg.channels_last = "fp32", False
    volumes = load_volumes(DEFAULT_DATA, "train")[:2]
    train(cfg, DEFAULT_DATA, tmp_path, stop_after_epochs=1, train_volumes=volumes, val_volumes=[],
          log=lambda *a: None)
    seen = []
    real = loop.load_checkpoint
    monkeypatch.setattr(loop, "load_checkpoint", lambda path, map_location="cpu": seen.append(map_location)
                        or real(path, map_location=map_location))
    lines = []
    train(cfg, DEFAULT_DATA, tmp_path, resume=True, train_volumes=volumes, val_volumes=[], log=lines.append)
    assert seen == ["cpu"]
    assert any("resumed from" in line for line in lines)

"""Train every network of the results table for one short epoch under DistributedDataParallel.

Run by ``tests/train/test_distributed.py`` as
``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/train/ddp_all_networks.py OUT``
(Gloo on CPU). DDP raises "Expected to have finished reduction in the prior iteration" at the
second step when a network has a parameter without a gradient, so each network takes several
steps. Rank 0 prints ``DDP OK <network> <steps>`` per network.
"""

import os
import sys
from pathlib import Path

from mtilib.course import DEFAULT_DATA
from mtilib.models import BASELINES, baseline_config
from mtilib.train import TrainConfig, load_volumes, train


def main(out: Path) -> None:
    volumes = load_volumes(DEFAULT_DATA, "train")[:2]
    for name in BASELINES:
        cfg = TrainConfig.preset("quick")
        cfg.name = name
        cfg.model = baseline_config(name, cfg.model)
        cfg.model.width, cfg.model.dropout = 4, 0.0
        cfg.data.image_size, cfg.data.negative_ratio = 32, 0.2
        cfg.optim.epochs, cfg.optim.batch_size = 1, 6
        cfg.adversarial.warmup_epochs, cfg.adversarial.ramp_epochs = 0.0, 0.5  # the adversary plays
        cfg.precision, cfg.channels_last = "fp32", False
        result = train(cfg, DEFAULT_DATA, out / name, train_volumes=volumes, val_volumes=[], log=lambda *a: None)
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"DDP OK {name} {len(result.history)} epoch", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))

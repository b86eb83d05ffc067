"""Weight averaging (``optim.ema_decay``): the average itself. What the checkpoints hold and an
exact resume with it are tested with the training loop (``test_training.py``)."""

import pytest
import torch
from torch import nn

from mtilib.train.ema import WeightAverage


def test_average_follows_the_formula_with_its_warm_up():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    ema = WeightAverage(model, decay=0.9)
    expected = [p.detach().clone() for p in model.parameters()]
    for step in range(30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        decay = min(0.9, (1 + step) / (10 + step))
        assert ema.current_decay() == pytest.approx(decay)
        ema.update(model)
        expected = [decay * e + (1 - decay) * p.detach() for e, p in zip(expected, model.parameters())]
    for mine, want in zip(ema.module.parameters(), expected):
        torch.testing.assert_close(mine, want)
        assert not mine.requires_grad
    assert ema.updates == 30
    # the average is a copy: the network's own weights are not touched by it
    assert not torch.equal(next(ema.module.parameters()), next(model.parameters()))


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5])
def test_decay_outside_the_open_interval_is_refused(decay):
    with pytest.raises(ValueError, match="ema_decay"):
        WeightAverage(nn.Linear(2, 2), decay)

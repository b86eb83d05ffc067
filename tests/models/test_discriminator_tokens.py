"""The TDD's token sequence and attention (what course notebook 09 opens up)."""

import torch

from mtilib.constants import PHASES
from mtilib.models import TaskDrivenDiscriminator
from mtilib.models.discriminator import token_names


def _inputs(b=5, classes=7, context=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    e = torch.rand(b, 3, generator=gen)
    p = torch.softmax(torch.randn(b, classes, generator=gen), dim=1)
    t = torch.tensor([[0.0, 35.0, 70.0, 180.0]]).repeat(b, 1)
    return e, p, t, torch.randn(b, context, generator=gen)


def test_tokens_are_cls_phases_class_context_and_feed_the_score():
    disc = TaskDrivenDiscriminator(num_classes=7, context_dim=12, dim=32).eval()
    e, p, t, ctx = _inputs()
    tokens = disc.tokens(e, p, t, ctx)
    assert tokens.shape == (5, 6, 32)
    assert token_names() == ["[CLS]", *PHASES[1:], "class", "context"]
    # the arterial token changes with the arterial enhancement only; the class token with the class only
    e2 = e.clone()
    e2[:, 0] += 1.0
    changed = (disc.tokens(e2, p, t, ctx) - tokens).abs().sum(-1)
    assert changed[:, 1].min() > 0 and changed[:, [0, 2, 3, 4, 5]].max() == 0
    # forward = layers over exactly these tokens
    x = tokens
    for layer in disc.layers:
        x, _ = layer(x)
    assert torch.allclose(disc.score(disc.norm(x[:, 0])).squeeze(-1), disc(e, p, t, ctx), atol=1e-6)


def test_last_attention_rows_are_distributions():
    disc = TaskDrivenDiscriminator(num_classes=7, context_dim=12, dim=32).eval()
    attention = disc.last_attention(*_inputs())
    assert attention.shape == (5, 6, 6)
    assert torch.allclose(attention.sum(-1), torch.ones(5, 6), atol=1e-5)
    assert (attention >= 0).all()

"""TDD, the Task-Driven Discriminator (DESIGN §3.7).

A small Transformer judges whether a (enhancement curve, class probabilities) pair looks like a
real annotation given the image region. Tokens: [CLS]; one token per post-contrast phase (its
enhancement value plus the time encoding of that phase); one class token (the probability vector);
one context token (the generator's region descriptors, detached, so the adversary cannot steer the
encoder directly). Real = (true e, label-smoothed one-hot), fake = (ê, softmax(logits)).
"""

from __future__ import annotations

import torch
from torch import nn

from mtilib.constants import PHASES
from mtilib.models.blocks import TimeEncoding
from mtilib.models.transformer import PreNormLayer


class TaskDrivenDiscriminator(nn.Module):
    """``enhancement (B, P-1), class_probs (B, C), times_s (B, P), context (B, D) -> score (B,)``.

    Scores are unbounded real numbers (least-squares, BCE-with-logits and hinge objectives all
    read them that way).
    """

    def __init__(self, num_classes: int, context_dim: int, dim: int = 64, layers: int = 2, heads: int = 4,
                 dropout: float = 0.0):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.enhancement_in = nn.Linear(1, dim)
        self.time_encoding = TimeEncoding(dim)
        self.class_in = nn.Linear(num_classes, dim)
        self.context_in = nn.Sequential(nn.LayerNorm(context_dim), nn.Linear(context_dim, dim))
        self.type_embedding = nn.Embedding(4, dim)  # 0 CLS, 1 phase, 2 class, 3 context
        self.layers = nn.ModuleList(PreNormLayer(dim, heads, dropout=dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.score = nn.Linear(dim, 1)
        nn.init.normal_(self.cls_token, std=0.02)

    def tokens(self, enhancement, class_probs, times_s, context) -> torch.Tensor:
        """The input sequence ``(B, 3 + P-1, dim)``, in the order of :func:`token_names`."""
        b, n_post = enhancement.shape
        types = self.type_embedding.weight
        phase_tokens = self.enhancement_in(enhancement.float().unsqueeze(-1))
        phase_tokens = phase_tokens + self.time_encoding(times_s[:, -n_post:]) + types[1]
        class_token = (self.class_in(class_probs.float()) + types[2]).unsqueeze(1)
        context_token = (self.context_in(context.detach().float()) + types[3]).unsqueeze(1)
        cls = self.cls_token.expand(b, -1, -1) + types[0]
        return torch.cat([cls, phase_tokens, class_token, context_token], dim=1)

    def forward(self, enhancement, class_probs, times_s, context, return_attention: bool = False):
        """Scores ``(B,)``; with ``return_attention`` also the last layer's attention averaged over
        heads, ``(B, T, T)`` (rows = queries, tokens as in :func:`token_names`)."""
        tokens = self.tokens(enhancement, class_probs, times_s, context)
        weights = None
        for i, layer in enumerate(self.layers):
            tokens, weights = layer(tokens, need_weights=return_attention and i == len(self.layers) - 1)
        score = self.score(self.norm(tokens[:, 0])).squeeze(-1)
        return (score, weights.float()) if return_attention else score

    @torch.no_grad()
    def last_attention(self, enhancement, class_probs, times_s, context) -> torch.Tensor:
        """Attention of the last layer, averaged over heads: ``(B, T, T)`` (row 0: what [CLS],
        which makes the score, looks at)."""
        return self.forward(enhancement, class_probs, times_s, context, return_attention=True)[1]


def token_names(post_phases=PHASES[1:]) -> list[str]:
    """Names of the TDD's tokens, in order: ``[CLS]``, one per post-contrast phase, class, context."""
    return ["[CLS]", *post_phases, "class", "context"]

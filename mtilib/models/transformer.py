"""The shallow phase Transformer at the bottleneck (DESIGN §3.2).

At every spatial position the P phase features form a sequence of P tokens. A time encoding of
each phase's acquisition time (seconds, not the phase *index*) is added, two pre-norm Transformer
layers mix the phases, and attention pooling with a learned query gives one summary token.
Without index-based positions the layer is permutation-equivariant over (phase, time) pairs and
the pooled summary is invariant to their order, so a protocol with other timings still works.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mtilib.models.blocks import MLP, TimeEncoding


class PreNormLayer(nn.Module):
    """Pre-norm Transformer layer: ``x + MHA(LN x)``, then ``x + MLP(LN x)``. ``(N, T, d) -> (N, T, d)``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio * dim, dim, dropout, activation=nn.GELU)

    def forward(self, x: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.norm1(x)
        attended, weights = self.attn(h, h, h, need_weights=need_weights, average_attn_weights=True)
        x = x + attended
        return x + self.mlp(self.norm2(x)), weights


class AttentionPool(nn.Module):
    """Pool T tokens into one with a learned query. ``(N, T, d) -> (N, d), weights (N, T)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.query = nn.Parameter(torch.zeros(dim))
        self.key = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.key(self.norm(tokens)) @ self.query / math.sqrt(tokens.shape[-1])
        weights = torch.softmax(scores.float(), dim=-1).to(tokens.dtype)
        return (weights.unsqueeze(-1) * tokens).sum(dim=1), weights


class PhaseTransformer(nn.Module):
    """Mix the phases at every bottleneck position.

    ``feats (B, P, C, h, w), times_s (B, P) -> per_phase (B, P, C, h, w), summary (B, C, h, w),
    aux`` with ``aux["phase_attention"] (B, P, P)`` (last layer, averaged over heads and positions)
    and ``aux["phase_pool_weights"] (B, P)`` (pooling weights averaged over positions).
    """

    def __init__(self, dim: int, layers: int = 2, heads: int = 4, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"transformer width {dim} is not divisible by {heads} heads")
        self.time_encoding = TimeEncoding(dim)
        self.layers = nn.ModuleList(PreNormLayer(dim, heads, dropout=dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.pool = AttentionPool(dim)

    def forward(self, feats: torch.Tensor, times_s: torch.Tensor):
        b, p, c, h, w = feats.shape
        tokens = feats.permute(0, 3, 4, 1, 2).reshape(b * h * w, p, c)
        time_codes = self.time_encoding(times_s).to(tokens.dtype)  # (B, P, C)
        tokens = tokens + time_codes.repeat_interleave(h * w, dim=0)
        attention = None
        for i, layer in enumerate(self.layers):
            tokens, weights = layer(tokens, need_weights=i == len(self.layers) - 1)
            attention = weights if weights is not None else attention
        tokens = self.norm(tokens)
        summary, pool_weights = self.pool(tokens)
        per_phase = tokens.reshape(b, h, w, p, c).permute(0, 3, 4, 1, 2)
        summary = summary.reshape(b, h, w, c).permute(0, 3, 1, 2)
        aux = {"phase_pool_weights": pool_weights.reshape(b, h * w, p).float().mean(1)}
        if attention is not None:
            aux["phase_attention"] = attention.reshape(b, h * w, p, p).float().mean(1)
        # per_phase is returned as a view (MTI-Net discards it; notebook 08 reads it to show the
        # layer's equivariance); the summary feeds the convolutional decoder, which wants it dense.
        return per_phase, summary.contiguous(), aux


class PhaseMean(nn.Module):
    """The ablation's plain alternative: the mean over phases, no mixing."""

    def forward(self, feats: torch.Tensor, times_s: torch.Tensor):
        b, p = feats.shape[:2]
        uniform = feats.new_full((b, p), 1.0 / p, dtype=torch.float32)
        return feats, feats.mean(dim=1), {"phase_pool_weights": uniform}

"""Stochastic layer-wise token shuffle (ShuffleMamba, arXiv:2408.17081), a training-only regulariser.

During training, layer ``i`` of a plain (non-hierarchical) Mamba backbone runs, with probability ``p_i``, on a
randomly permuted token sequence, and its output is put back in the original order. ``p_i`` rises linearly with
depth from 0 (first layer, never shuffled) to ``layer_shuffle_prob`` (last layer). One Bernoulli draw and one
permutation per layer per forward call, shared by the whole batch, as in the official code. Every token is
permuted, class tokens included; they return to their slot afterwards, so heads read fixed positions. In eval
mode nothing happens: no parameters, no effect on checkpoints or inference.

The official blocks carry two streams (mixer output and residual) and permute both; our blocks carry their sum
(``x = residual + h``), and permuting the sum is the same as permuting both terms.
"""
from __future__ import annotations

from typing import Callable, List

import torch

__all__ = ['layer_shuffle_probs', 'token_shuffled_call']


def layer_shuffle_probs(max_prob: float, depth: int) -> List[float]:
    """Per-layer shuffle probabilities ``linspace(0, max_prob, depth)``."""
    if not 0. <= max_prob <= 1.:
        raise ValueError(f'layer_shuffle_prob must be in [0, 1], got {max_prob}')
    return [max_prob * i / (depth - 1) for i in range(depth)] if depth > 1 else [0.] * depth


def token_shuffled_call(
        layer: Callable[[torch.Tensor], torch.Tensor],
        x: torch.Tensor,
        prob: float,
) -> torch.Tensor:
    """Run ``layer`` on ``x`` with its tokens shuffled with probability ``prob``.

    Randomness (in this order): a Bernoulli draw ``torch.rand(()) < prob`` from the global CPU generator (no device
    sync); if it hits, ``torch.randperm(L)`` on ``x``'s device. Callers decide whether training is on.

    Args:
        layer: token-sequence layer, (batch, L, C) -> (batch, L, C).
        x: (batch, L, C).
        prob: shuffle probability of this layer.
    Returns:
        ``layer(x)`` or ``layer(x[:, perm])[:, argsort(perm)]`` (batch, L, C).
    """
    if prob <= 0. or float(torch.rand((), device='cpu')) >= prob:
        return layer(x)
    perm = torch.randperm(x.shape[1], device=x.device)
    out = layer(x[:, perm])
    return out[:, torch.argsort(perm)]

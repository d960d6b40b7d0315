"""Helpers shared by the families' ``checkpoint_filter_fn``: container unwrapping and regex key renaming."""
from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Sequence, Tuple

import torch

__all__ = ['unwrap_state_dict', 'rename_key']


def unwrap_state_dict(
        checkpoint: Mapping[str, Any],
        container_keys: Sequence[str] = ('model', 'state_dict'),
) -> Dict[str, torch.Tensor]:
    """The tensors of an official checkpoint, with any ``module.`` prefixes (DDP, ``module.module.``) removed.

    Args:
        checkpoint: a training container (the first of ``container_keys`` that holds a dict is taken; optimizer,
            config, EMA entries are ignored) or a bare state dict.
        container_keys: the container entries to look for, in order of preference.
    Returns:
        ``{key: tensor}`` (non-tensor entries dropped).
    """
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f'expected a checkpoint dict, got {type(checkpoint).__name__}')
    state_dict = checkpoint
    for key in container_keys:
        if key in checkpoint and isinstance(checkpoint[key], Mapping):
            state_dict = checkpoint[key]
            break
    tensors = {_strip_module_prefix(k): v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(
            f'no weights found: the checkpoint has no tensors and none of the entries {list(container_keys)} '
            f'(keys: {sorted(checkpoint)}). The released numbers use the non-EMA weights; pass '
            f"checkpoint['model_ema'] yourself to load the EMA weights")
    return tensors


def _strip_module_prefix(key: str) -> str:
    while key.startswith('module.'):
        key = key[len('module.'):]
    return key


def rename_key(key: str, renames: Sequence[Tuple[str, str]]) -> str:
    """Apply every ``(pattern, replacement)`` of ``renames`` to ``key`` with ``re.sub``, in order."""
    for pattern, repl in renames:
        key = re.sub(pattern, repl, key)
    return key

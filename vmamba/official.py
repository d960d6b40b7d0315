"""Build our models from the official repositories' constructor kwargs and load official checkpoints strictly.

People who trained custom variants with the official code can bring them over::

    model = vmamba.from_official('vmamba', official_kwargs, checkpoint='ckpt_epoch_300.pth')

Each family registers ``(build_fn, checkpoint_filter_fn)`` with :func:`register_official`; ``build_fn`` maps the
official kwargs to our model and raises ``ValueError`` naming unknown or unsupported kwargs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Union

import torch
from torch import nn

from .pretrained import load_official_checkpoint

__all__ = ['register_official', 'from_official', 'official_families', 'load_state_dict_strict']


@dataclass(frozen=True)
class _OfficialFamily:
    build: Callable[[Dict[str, Any]], nn.Module]
    checkpoint_filter_fn: Callable[..., Dict[str, torch.Tensor]]


_FAMILIES: Dict[str, _OfficialFamily] = {}


def register_official(family: str, build_fn: Callable[[Dict[str, Any]], nn.Module],
                      checkpoint_filter_fn: Callable[..., Dict[str, torch.Tensor]]) -> None:
    """Register how to build ``family`` from official kwargs and how to convert its checkpoints."""
    _FAMILIES[family] = _OfficialFamily(build_fn, checkpoint_filter_fn)


def official_families() -> list[str]:
    return sorted(_FAMILIES)


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = 'checkpoint') -> None:
    """``model.load_state_dict(strict=True)`` with one error message listing missing, unexpected and
    shape-mismatched keys (with both shapes)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [f'{k}: {source} {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}'
                  for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        lines = [f'{source} does not match {type(model).__name__}:']
        for title, items in (('missing keys', missing), ('unexpected keys', unexpected), ('shape mismatches', mismatched)):
            if items:
                shown = ', '.join(items[:20]) + (f' ... (+{len(items) - 20} more)' if len(items) > 20 else '')
                lines.append(f'  {len(items)} {title}: {shown}')
        raise RuntimeError('\n'.join(lines))
    model.load_state_dict(state_dict, strict=True)


def from_official(
        family: str,
        official_kwargs: Mapping[str, Any],
        checkpoint: Union[None, str, os.PathLike, Mapping[str, Any]] = None,
) -> nn.Module:
    """Build a ``family`` model from the official constructor kwargs and optionally load an official checkpoint.

    Args:
        family: ``'vmamba'``, ``'vim'``, ``'efficientvmamba'``, ... (see :func:`official_families`).
        official_kwargs: the kwargs the official model class was constructed with.
        checkpoint: path of an official checkpoint file, an official container dict, or a state dict. Loaded with
            ``weights_only=True`` (allow-listed config objects only) and converted by the family's filter; the
            load is strict and fails with the offending key names and shapes.
    Returns:
        The model (eval mode is left to the caller).
    """
    if family not in _FAMILIES:
        # Families register themselves when their module is imported.
        from . import models  # noqa: F401
    if family not in _FAMILIES:
        raise ValueError(f'unknown family {family!r}; known: {official_families()}')
    entry = _FAMILIES[family]
    model = entry.build(dict(official_kwargs))
    if checkpoint is not None:
        source = 'checkpoint'
        if isinstance(checkpoint, (str, os.PathLike)):
            source = str(checkpoint)
            checkpoint = load_official_checkpoint(checkpoint)
        state_dict = entry.checkpoint_filter_fn(checkpoint, model)
        load_state_dict_strict(model, state_dict, source=source)
    return model

"""Official VMamba / EfficientVMamba seg and det checkpoints (mmengine format) -> our backbone names.

The released UperNet / Mask R-CNN files hold ``state_dict`` with ``backbone.`` (official ``Backbone_VSSM`` names:
``patch_embed.*``, ``layers.i.blocks.j.op.*``, ``outnorm{i}.*``), ``decode_head.`` / ``auxiliary_head.`` or
``neck.`` / ``rpn_head.`` / ``roi_head.`` keys. The heads are mmseg / mmdet modules with the same names here; the
backbone keys go through the family's ``checkpoint_filter_fn`` and move under ``backbone.model.`` (and
``outnorm{i}`` to ``backbone.out_norms.{i}``).
"""
from __future__ import annotations

import os
import re
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch

from .backbone import _family_filter_fn, load_weights_file, unwrap_state_dict

__all__ = ['convert_official_mm_checkpoint', 'split_official_out_norms']

_OUTNORM = re.compile(r'^outnorm(\d+)\.(.+)$')
_CLASSIFIER = re.compile(r'^(head|norm)\.')  # classifier / final norm left in a backbone dict: not used


def split_official_out_norms(state_dict: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """Split the official per-output norms ``outnorm{i}.*`` off a backbone state dict: (rest, ``out_norms.{i}.*``)."""
    rest, norms = {}, {}
    for key, value in state_dict.items():
        match = _OUTNORM.match(key)
        if match:
            norms[f'out_norms.{match.group(1)}.{match.group(2)}'] = value
        else:
            rest[key] = value
    return rest, norms


def convert_official_mm_checkpoint(
        checkpoint: Union[str, os.PathLike, Mapping[str, Any]],
        family: str,
        output: Optional[Union[str, os.PathLike]] = None,
) -> Dict[str, torch.Tensor]:
    """Convert an official seg/det checkpoint so it loads into our configs (``load_from=...``).

    Args:
        checkpoint: path (read tensors-only) or a loaded container / state dict.
        family: ``'vmamba'``, ``'efficientvmamba'``, ... or a backbone type / timm model name
            (see :func:`vmamba.adapters.family_of`).
        output: optional path to save ``{'state_dict': converted}`` (``.safetensors``: the bare state dict).
    Returns:
        The converted state dict (non-backbone keys unchanged; idempotent on converted dicts).
    """
    from .families import family_of

    spec = family_of(family)
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = load_weights_file(checkpoint)
    state_dict = unwrap_state_dict(checkpoint)
    state_dict = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state_dict.items()}
    backbone = {k[len('backbone.'):]: v for k, v in state_dict.items() if k.startswith('backbone.')}
    converted = {k: v for k, v in state_dict.items() if not k.startswith('backbone.')}
    if backbone and not any(k.startswith(('model.', 'out_norms.', 'pyramid.')) for k in backbone):
        backbone, norms = split_official_out_norms(backbone)
        backbone = _family_filter_fn(spec.module)(backbone, None)
        backbone = {f'model.{k}': v for k, v in backbone.items() if not _CLASSIFIER.match(k)}
        backbone.update(norms)
    converted.update({f'backbone.{k}': v for k, v in backbone.items()})
    if output is not None:
        output = os.fspath(output)
        if output.endswith('.safetensors'):
            from safetensors.torch import save_file
            save_file({k: v.contiguous() for k, v in converted.items()}, output)
        else:
            torch.save({'state_dict': converted}, output)
    return converted

"""Official pretrained weights through timm's pretrained machinery, loaded safely and cached as safetensors.

Every family builds its models with :func:`build_model`, a drop-in for ``timm.models.build_model_with_cfg``:

1. resolve the pretrained cfg (tag, ``pretrained_cfg_overlay=dict(file=...)`` for a local file, else the
   ``hf_hub_id``/``hf_hub_filename`` or ``url`` of the official release);
2. fetch the official file (Hugging Face hub or timm's URL cache), load it with ``torch.load(weights_only=True)``
   and an explicit allow-list of the config objects official files pickle (``argparse.Namespace``, yacs ``CfgNode``);
3. convert it with the family's ``checkpoint_filter_fn(state_dict, model=None)`` and cache the result as
   ``<cache>/<variant>-<hash>.safetensors`` (atomic write) — later loads are fast and pickle-free;
4. let timm load that file (classifier/in_chans adaptation, filter with the real model, strict load).

The cache lives in ``$VMAMBA_CACHE`` (default ``<torch hub dir>/vmamba``).
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import logging
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Mapping

import torch

__all__ = ['build_model', 'load_official_checkpoint', 'convert_official_weights', 'cache_dir']

_logger = logging.getLogger(__name__)

# Bump when a filter's output format changes, so stale caches are not reused.
_CACHE_FORMAT = 1


class _ConfigAsOrderedDict:
    """Stand-in for config objects (yacs ``CfgNode``, a dict subclass) pickled into official checkpoints.

    Unpickling "creates" one by returning a plain ``OrderedDict`` (which torch's weights-only unpickler may fill
    with items and attributes), so the config is read as inert data and no code of the original class runs.
    """

    def __new__(cls, *args, **kwargs):
        return collections.OrderedDict()


# Objects the official checkpoints are known to pickle besides tensors (Vim: argparse.Namespace in 'args';
# VMamba: a yacs CfgNode in 'config'). Everything else is refused by torch's weights_only unpickler.
_SAFE_GLOBALS = [
    argparse.Namespace,
    (_ConfigAsOrderedDict, 'yacs.config.CfgNode'),
]


def cache_dir() -> Path:
    path = os.environ.get('VMAMBA_CACHE') or os.path.join(torch.hub.get_dir(), 'vmamba')
    return Path(path)


def load_official_checkpoint(path: str | os.PathLike) -> Any:
    """Load an official checkpoint file (``.pth``/``.ckpt``/``.safetensors``) without unpickling arbitrary objects.

    Returns whatever the file holds (usually a dict container such as ``{'model': state_dict, ...}``).
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint file not found: {path}')
    if path.endswith('.safetensors'):
        import safetensors.torch
        return safetensors.torch.load_file(path, device='cpu')
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as err:
        raise RuntimeError(
            f'{path} pickles objects outside vmamba\'s allow-list (argparse.Namespace, yacs CfgNode), so it was '
            f'not loaded: vmamba never unpickles arbitrary objects. If you trust this file, load it yourself with '
            f'torch.load(..., weights_only=False) and pass the state dict instead. Details: {err}') from None


def _source_of(cfg: Mapping[str, Any]) -> tuple[str, str]:
    """(kind, location) of the official file named by a resolved pretrained cfg."""
    if cfg.get('file'):
        return 'file', str(cfg['file'])
    if cfg.get('hf_hub_id'):
        filename = cfg.get('hf_hub_filename')
        if not filename:
            raise ValueError(f"pretrained cfg has hf_hub_id={cfg['hf_hub_id']!r} but no hf_hub_filename")
        return 'hf-hub', f"{cfg['hf_hub_id']}::{filename}"
    if cfg.get('url'):
        return 'url', str(cfg['url'])
    raise RuntimeError(
        f"no pretrained weights are defined for {cfg.get('architecture')}.{cfg.get('tag')}; pass "
        f"pretrained_cfg_overlay=dict(file='/path/to/official_checkpoint.pth') to load a local file")


def _fetch(kind: str, location: str) -> str:
    if kind == 'file':
        return location
    if kind == 'hf-hub':
        from huggingface_hub import hf_hub_download
        repo_id, filename = location.split('::', 1)
        return hf_hub_download(repo_id, filename)
    from timm.models._hub import download_cached_file
    return download_cached_file(location, check_hash=False, progress=True)


def _cache_key(variant: str, kind: str, location: str, filter_fn: Callable) -> str:
    ident = [str(_CACHE_FORMAT), variant, kind, location, getattr(filter_fn, '__module__', ''),
             getattr(filter_fn, '__qualname__', '')]
    if kind == 'file':
        stat = os.stat(location)
        ident += [os.path.abspath(location), str(stat.st_size), str(stat.st_mtime_ns)]
    return hashlib.sha256('\n'.join(ident).encode()).hexdigest()[:16]


def convert_official_weights(
        variant: str,
        pretrained_cfg: Mapping[str, Any],
        checkpoint_filter_fn: Callable[..., Dict[str, torch.Tensor]],
) -> Path:
    """Fetch, safely load, convert and cache the official weights of a resolved pretrained cfg.

    Returns the path of the converted ``.safetensors`` file (created on first use).
    """
    import safetensors.torch
    kind, location = _source_of(pretrained_cfg)
    target = cache_dir() / f'{variant}-{_cache_key(variant, kind, location, checkpoint_filter_fn)}.safetensors'
    if target.is_file():
        return target
    path = _fetch(kind, location)
    _logger.info('converting official weights %s (%s) for %s', location, kind, variant)
    state_dict = checkpoint_filter_fn(load_official_checkpoint(path), None)
    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise TypeError(f'checkpoint filter for {variant} returned non-tensor entries: {bad[:5]}')
    tensors = {k: v.detach().contiguous().clone() for k, v in state_dict.items()}
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix='.tmp')
    os.close(fd)
    try:
        safetensors.torch.save_file(tensors, tmp, metadata={'source': location, 'variant': variant})
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def build_model(
        model_cls: Callable[..., torch.nn.Module],
        variant: str,
        pretrained: bool = False,
        *,
        checkpoint_filter_fn: Callable[..., Dict[str, torch.Tensor]],
        **kwargs,
) -> torch.nn.Module:
    """``timm.models.build_model_with_cfg`` with safe loading + safetensors caching of official weights.

    Args:
        model_cls: the model class.
        variant: the registered model name (without tag).
        pretrained: load the pretrained weights of the (tagged) cfg.
        checkpoint_filter_fn: ``fn(state_dict_or_container, model=None) -> state_dict`` converting official
            checkpoints to our key names (idempotent on converted weights).
        **kwargs: everything ``build_model_with_cfg`` takes (``pretrained_cfg``, ``pretrained_cfg_overlay``,
            ``feature_cfg``, ``features_only``, model kwargs ...).
    """
    from timm.models import build_model_with_cfg, resolve_pretrained_cfg

    if pretrained:
        cfg = resolve_pretrained_cfg(
            variant,
            pretrained_cfg=kwargs.get('pretrained_cfg'),
            pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'),
        ).to_dict()
        cached = convert_official_weights(variant, cfg, checkpoint_filter_fn)
        overlay = dict(kwargs.get('pretrained_cfg_overlay') or {})
        overlay['file'] = str(cached)
        kwargs['pretrained_cfg_overlay'] = overlay
    kwargs.setdefault('pretrained_strict', True)
    return build_model_with_cfg(
        model_cls, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **kwargs)

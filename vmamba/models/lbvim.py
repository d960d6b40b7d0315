"""LBVim: plain vision Mamba with LBMamba's locally bidirectional scan.

Paper: `LBMamba: Locally Bi-directional Mamba` - https://arxiv.org/abs/2506.15976
Original code: https://github.com/cvlab-stonybrook/LBMamba (``classification/models_mamba_bi.py::BiVisionMamba``).

LBVim is Vim (``vmamba/models/vim.py``) with three changes:
    * every block's mixer is a single-direction Mamba whose scan adds, inside windows of ``W`` tokens, a backward
      scan with the same parameters (``MambaMixer(scan='local_bidirectional')``; same keys as vanilla Mamba);
    * the token sequence (hidden states and residual) is reversed after every block, so consecutive blocks scan in
      opposite directions. Here odd blocks scan from the end instead (the kernel's ``reverse``), which computes the
      same thing without copying the activations; outputs are always in raster order;
    * no class token; the features are the mean of the final-norm tokens.

The window ``W`` of the official CUDA kernel is the number of items per thread of its launch configuration and so
depends on the sequence length ``L``: ``W = 4`` for ``L <= 128``, ``8`` for ``129..256``, ``16`` above (LBVim at
224x224, ``L = 196``: ``W = 8``). That table is the default here (recomputed for every input size); pass
``local_window=`` to fix it.

Weights: the official README points to a GitHub release whose file names were not verified, so no pretrained tags
are defined; load a downloaded file with ``pretrained=True, pretrained_cfg_overlay=dict(file=...)`` or
``vmamba.from_official('lbvim', kwargs, checkpoint)``.
"""
from __future__ import annotations

from typing import Any, Dict

from timm.models import generate_default_cfgs, register_model

from vmamba.official import register_official

from .vim import (
    _OFFICIAL_VIM_DEFAULTS, _PLAIN_CFG, VisionMamba, _create_vim, checkpoint_filter_fn, vim_kwargs_from_official,
)

__all__ = ['lbvim_kwargs_from_official']

# BiVisionMamba.__init__ (LBMamba classification/models_mamba_bi.py @ 5215551) = Vim's kwargs without if_bimamba,
# plus these.
_OFFICIAL_LB_DEFAULTS: Dict[str, Any] = dict(
    use_thread_head_cls_token=False, thread_head_cls_token_len=8, layerwise_reverse_sq=False,
    layerwise_reverse_cls=True, return_cls_token=True, lbm=True, last_n_layer_vim=0, head_type=None, head_n_heads=3,
)
_OFFICIAL_VIM_PART_DEFAULTS = {k: v for k, v in _OFFICIAL_VIM_DEFAULTS.items() if k != 'if_bimamba'}


def lbvim_kwargs_from_official(official_kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Map official ``BiVisionMamba`` kwargs to :class:`~vmamba.models.vim.VisionMamba` kwargs.

    Raises ``ValueError`` naming unknown or unsupported kwargs (attention heads, thread-head class tokens, trailing
    Vim layers, class-token pooling variants that have no equivalent here).
    """
    lb = {**_OFFICIAL_LB_DEFAULTS, **{k: v for k, v in official_kwargs.items() if k in _OFFICIAL_LB_DEFAULTS}}
    rest = {k: v for k, v in official_kwargs.items() if k not in _OFFICIAL_LB_DEFAULTS}
    bimamba_type = rest.get('bimamba_type', _OFFICIAL_VIM_PART_DEFAULTS['bimamba_type'])
    class_token = rest.get('if_cls_token', _OFFICIAL_VIM_PART_DEFAULTS['if_cls_token'])
    middle_cls = rest.get('use_middle_cls_token', _OFFICIAL_VIM_PART_DEFAULTS['use_middle_cls_token'])

    unsupported = []
    if lb['head_type'] is not None:
        unsupported.append(f"head_type={lb['head_type']!r} (attention-pooling heads are not implemented)")
    if lb['use_thread_head_cls_token']:
        unsupported.append('use_thread_head_cls_token=True (not implemented)')
    if lb['last_n_layer_vim']:
        unsupported.append(f"last_n_layer_vim={lb['last_n_layer_vim']} (mixed LB/Vim stacks are not implemented)")
    if lb['lbm'] and bimamba_type != 'none':
        unsupported.append(f"lbm=True with bimamba_type={bimamba_type!r} (the LB mixer is single-direction: 'none')")
    if lb['layerwise_reverse_sq'] and not lb['lbm'] and bimamba_type == 'v2':
        unsupported.append('layerwise_reverse_sq=True with the bidirectional v2 mixer (not implemented)')
    if lb['layerwise_reverse_sq'] and class_token and not middle_cls and not lb['layerwise_reverse_cls']:
        unsupported.append('layerwise_reverse_cls=False (a front class token pinned while the patches flip)')
    if class_token and not lb['return_cls_token']:
        unsupported.append('return_cls_token=False with a class token (pooling that mixes in the class token)')
    if unsupported:
        raise ValueError('unsupported official LBVim kwargs: ' + '; '.join(unsupported))

    kwargs = vim_kwargs_from_official(
        rest, defaults=_OFFICIAL_VIM_PART_DEFAULTS, mixer_scan='local_bidirectional' if lb['lbm'] else None)
    kwargs['alternate_directions'] = bool(lb['layerwise_reverse_sq'])
    return kwargs


def _build_from_official(official_kwargs: Dict[str, Any]) -> VisionMamba:
    return VisionMamba(**lbvim_kwargs_from_official(official_kwargs))


register_official('lbvim', _build_from_official, checkpoint_filter_fn)


def _cfg(**kwargs) -> Dict[str, Any]:
    return {
        **_PLAIN_CFG,
        'paper_ids': 'arXiv:2506.15976', 'paper_name': 'LBMamba: Locally Bi-directional Mamba',
        'origin_url': 'https://github.com/cvlab-stonybrook/LBMamba',
        **kwargs,
    }


# No pretrained tags: the released files' names and containers are not verified (see the module docstring).
default_cfgs = generate_default_cfgs({
    'lbvim_tiny_patch16_224': _cfg(),
    'lbvim_small_patch16_224': _cfg(),
    'test_lbvim': _cfg(input_size=(3, 64, 64)),
})

_LBVIM_ARGS = dict(
    mixer_scan='local_bidirectional', alternate_directions=True, class_token=False, global_pool='avg')


@register_model
def lbvim_tiny_patch16_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """LBVim-T: D=192, depth 24, LB mixers alternating direction per block, mean pooling (6.4M params)."""
    model_args = dict(_LBVIM_ARGS, embed_dim=192, depth=24)
    return _create_vim('lbvim_tiny_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def lbvim_small_patch16_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """LBVim-S: D=384, depth 24, LB mixers alternating direction per block, mean pooling (23.9M params)."""
    model_args = dict(_LBVIM_ARGS, embed_dim=384, depth=24)
    return _create_vim('lbvim_small_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def test_lbvim(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Tiny LBVim for tests: D=64, depth 4, 64x64 input (16 tokens, window 4)."""
    model_args = dict(_LBVIM_ARGS, img_size=64, embed_dim=64, depth=4)
    return _create_vim('test_lbvim', pretrained=pretrained, **dict(model_args, **kwargs))

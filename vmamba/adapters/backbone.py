"""A timm model as an mmsegmentation / mmdetection backbone.

:class:`MambaBackbone` wraps ``timm.create_model(model_name, ...)``: the classifier (and final norm) are pruned with
``prune_intermediate_layers``, the multi-scale maps come from ``forward_intermediates``, and an optional LayerNorm is
applied to each output (the official ``outnorm{i}`` of the VMamba / EfficientVMamba / LBVim dense backbones).

Plain (single-resolution) models such as Vim and LBVim give stride-16 maps; like their official dense-prediction
code they can take the *mixer output* of the chosen blocks (``feature_source='mixer'``) and turn four same-stride
maps into a 4/8/16/32 pyramid (``pyramid='deconv'``: 2x(ConvT 2x2) / ConvT 2x2 / identity / max-pool 2, as Vim's
UperNet backbone does) or keep them at stride 16 (``pyramid=None``, LBVim's UperNet backbone).

Parameter names: the timm model lives under ``model.`` with its own names (``backbone.model.stages.2.blocks.3...``),
the output norms under ``out_norms.<layer index>`` and the pyramid under ``pyramid.<k>``. ``frozen_stages`` and
:meth:`MambaBackbone.layer_id` (for layer-wise lr decay) follow the model's ``feature_info`` / ``group_matcher``.

The family subclasses (``VMambaBackbone``, ``VimBackbone``, ...) and their registration in the mmseg / mmdet
registries are in :mod:`vmamba.adapters.families`.
"""
from __future__ import annotations

import importlib
import logging
import os
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import timm
import torch
from mmengine.model import BaseModule
from torch import nn

from vmamba.layers.norm import LayerNorm2d

__all__ = ['MambaBackbone', 'PlainPyramid', 'load_weights_file']

_logger = logging.getLogger(__name__)

OUT_NORMS = (None, 'layernorm')
PYRAMIDS = (None, 'deconv')
FEATURE_SOURCES = ('block', 'mixer')


def load_weights_file(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Load a weights file without running pickled code.

    ``.safetensors`` files are read with safetensors; anything else with ``torch.load(weights_only=True)`` plus the
    allow-list of config objects that official checkpoints pickle (:func:`vmamba.pretrained.load_official_checkpoint`).
    Returns the loaded container (a state dict, or a dict holding one under ``'state_dict'`` / ``'model'``).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'weights file not found: {path}')
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        return load_file(path, device='cpu')
    from vmamba.pretrained import load_official_checkpoint
    try:
        return load_official_checkpoint(path)
    except Exception as err:  # torch raises UnpicklingError / RuntimeError for refused globals
        raise RuntimeError(
            f'{path} could not be loaded tensors-only ({type(err).__name__}: {err}). Pretrained weights are never '
            f'unpickled fully: save its tensors once, e.g. with vmamba.adapters.convert_official_mm_checkpoint(..., '
            f'output=...), or use a .safetensors file.') from err


def unwrap_state_dict(container: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    """The tensors of a checkpoint container: its ``'state_dict'`` (mmengine) or ``'model'`` (official classifiers)
    entry, or the container itself; non-tensor entries are dropped."""
    for key in ('state_dict', 'model'):
        if isinstance(container.get(key), Mapping):
            container = container[key]
            break
    return {k: v for k, v in container.items() if isinstance(v, torch.Tensor)}


class PlainPyramid(nn.Module):
    """Four same-stride maps -> strides x4, x2, x1, x0.5 (Vim's UperNet backbone, after BEiT).

    Level 0: ConvT(2, 2) -> norm -> GELU -> ConvT(2, 2); level 1: ConvT(2, 2); level 2: identity; level 3: max-pool 2.

    Args:
        channels: channels of every input (and output) map.
        norm_cfg: mmcv norm config of level 0 (official: SyncBN).
    """

    def __init__(self, channels: int, norm_cfg: Optional[Dict[str, Any]] = None):
        super().__init__()
        from mmcv.cnn import build_norm_layer

        norm_cfg = dict(norm_cfg or dict(type='BN'))
        self.levels = nn.ModuleList([
            nn.Sequential(
                nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2),
                build_norm_layer(norm_cfg, channels)[1],
                nn.GELU(),
                nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2),
            ),
            nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2),
            nn.Identity(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        ])
        self.scales = (4., 2., 1., .5)

    def forward(self, maps: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """4 maps (B, C, H, W) -> [(B, C, 4H, 4W), (B, C, 2H, 2W), (B, C, H, W), (B, C, H/2, W/2)]."""
        if len(maps) != len(self.levels):
            raise ValueError(f'PlainPyramid needs {len(self.levels)} maps, got {len(maps)}')
        return [level(x) for level, x in zip(self.levels, maps)]


def _family_filter_fn(module_name: str) -> Callable[..., Dict[str, torch.Tensor]]:
    """The ``checkpoint_filter_fn`` of a timm model module (identity when it has none)."""
    module = importlib.import_module(module_name)
    return getattr(module, 'checkpoint_filter_fn', lambda state_dict, model=None: dict(state_dict))


class MambaBackbone(BaseModule):
    """Backbone for mmseg / mmdet built from a timm model (see the module docstring).

    Args:
        model_name: timm model name (``import vmamba`` registers ours), e.g. ``'vmamba_tiny_s1l8'``.
        out_indices: stages (hierarchical) or blocks (plain) to output; None = all 4 stages, or for plain models
            the last block of each quarter of the depth (``(5, 11, 17, 23)`` for 24 blocks, the official Vim /
            LBVim seg choice).
        out_norm: ``'layernorm'`` (a fresh LayerNorm over channels per output, official ``outnorm{i}``) or None.
        feature_source: plain models only: ``'mixer'`` (the block's mixer output, official Vim / LBVim seg) or
            ``'block'`` (the residual stream after the block, what ``forward_intermediates`` returns).
        pyramid: plain models only: ``'deconv'`` (see :class:`PlainPyramid`; needs 4 outputs) or None.
        pyramid_norm_cfg: norm config of the pyramid's first level.
        frozen_stages: -1 = train everything; 0 = freeze the stem (patch / position embeddings); k >= 1 = also
            freeze everything up to and including the layer of output k - 1.
        pretrained: path of converted classification weights (``.safetensors`` or a tensors-only ``.pth``) or of an
            official classification checkpoint; shorthand for ``init_cfg=dict(type='Pretrained', checkpoint=...)``.
        init_cfg: mmengine init config; only ``type='Pretrained'`` (``checkpoint``, optional ``prefix``) is
            meaningful, the timm model initialises itself.
        **model_kwargs: passed to ``timm.create_model`` (``drop_path_rate``, ``img_size``, ...).
    """

    family_module: Optional[str] = None  # set by family subclasses: the module with the family's checkpoint filter
    model_prefixes: Tuple[str, ...] = ()  # set by family subclasses: timm names this backbone accepts
    plain: Optional[bool] = None  # set by family subclasses; None = infer from the model
    default_model_kwargs: Dict[str, Any] = {}
    default_out_norm: Optional[str] = 'layernorm'
    default_feature_source: str = 'block'
    default_pyramid: Optional[str] = None

    def __init__(
            self,
            model_name: str,
            out_indices: Optional[Sequence[int]] = None,
            out_norm: Union[str, None] = 'default',
            feature_source: Optional[str] = None,
            pyramid: Union[str, None] = 'default',
            pyramid_norm_cfg: Optional[Dict[str, Any]] = None,
            frozen_stages: int = -1,
            pretrained: Optional[str] = None,
            init_cfg: Optional[Dict[str, Any]] = None,
            **model_kwargs,
    ):
        if pretrained is not None:
            if init_cfg is not None:
                raise ValueError('give either pretrained or init_cfg, not both')
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        super().__init__(init_cfg=init_cfg)
        import vmamba  # noqa: F401  (registers our models in timm)

        if self.model_prefixes and not model_name.startswith(self.model_prefixes):
            raise ValueError(f'{type(self).__name__} builds {self.model_prefixes} models, got {model_name!r}')
        out_norm = self.default_out_norm if out_norm == 'default' else out_norm
        pyramid = self.default_pyramid if pyramid == 'default' else pyramid
        feature_source = feature_source or self.default_feature_source
        if out_norm not in OUT_NORMS:
            raise ValueError(f'out_norm must be one of {OUT_NORMS}, got {out_norm!r}')
        if pyramid not in PYRAMIDS:
            raise ValueError(f'pyramid must be one of {PYRAMIDS}, got {pyramid!r}')
        if feature_source not in FEATURE_SOURCES:
            raise ValueError(f'feature_source must be one of {FEATURE_SOURCES}, got {feature_source!r}')

        self.model_name = model_name
        model = timm.create_model(model_name, pretrained=False, **{**self.default_model_kwargs, **model_kwargs})
        num_layers = len(model.feature_info)
        self.is_plain = self.plain if self.plain is not None else len({f['reduction'] for f in model.feature_info}) == 1
        if out_indices is None:
            out_indices = ([num_layers * (k + 1) // 4 - 1 for k in range(4)] if self.is_plain
                           else list(range(num_layers)))
        out_indices = [int(i) for i in out_indices]
        normalized = [i % num_layers if -num_layers <= i < num_layers else None for i in out_indices]
        if None in normalized or normalized != sorted(set(normalized)):
            raise ValueError(f'out_indices {out_indices} must be distinct, increasing layer indices of {model_name} '
                             f'({num_layers} layers)')
        self.out_indices = tuple(normalized)
        if not self.is_plain and (pyramid is not None or feature_source != 'block'):
            raise ValueError(f'{model_name} is hierarchical: pyramid and feature_source apply to plain models only')
        if pyramid is not None and len(self.out_indices) != 4:
            raise ValueError(f"pyramid={pyramid!r} needs 4 out_indices, got {self.out_indices}")

        model.prune_intermediate_layers(list(self.out_indices), prune_norm=True, prune_head=True)
        self.model = model
        self.feature_source = feature_source
        self._filter_module = self.family_module or type(model).__module__
        channels = [model.feature_info[i]['num_chs'] for i in self.out_indices]
        reductions = [model.feature_info[i]['reduction'] for i in self.out_indices]

        self.out_norms = nn.ModuleDict(
            {str(i): LayerNorm2d(c, eps=1e-5) for i, c in zip(self.out_indices, channels)}) if out_norm else None
        self.pyramid = PlainPyramid(channels[0], pyramid_norm_cfg) if pyramid == 'deconv' else None
        if self.pyramid is not None:
            reductions = [int(r / s) for r, s in zip(reductions, self.pyramid.scales)]
        self.out_channels = channels
        self.out_strides = reductions

        self._mixer_outputs: Dict[int, torch.Tensor] = {}
        if feature_source == 'mixer':
            self._hook_mixers()
        self.frozen_stages = frozen_stages
        self._freeze()

    # ---- features -------------------------------------------------------------------------------------------------

    def _hook_mixers(self) -> None:
        blocks = getattr(self.model, 'blocks', None)
        if blocks is None or not all(hasattr(blocks[i], 'mixer') for i in self.out_indices):
            raise ValueError(f"feature_source='mixer' needs a model with blocks[i].mixer; {self.model_name} has none")
        for i in self.out_indices:
            blocks[i].mixer.register_forward_hook(self._store_mixer_output(i))

    def _store_mixer_output(self, index: int) -> Callable:
        def hook(module, args, output):
            self._mixer_outputs[index] = output
        return hook

    def _tokens_to_map(self, tokens: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        """(B, L, D) tokens with the model's prefix (class) tokens -> (B, D, H', W') patch map."""
        num_patches = grid[0] * grid[1]
        num_prefix = tokens.shape[1] - num_patches
        if num_prefix:
            from vmamba.models.vim import class_token_index
            start = class_token_index(num_patches, getattr(self.model, 'class_token_position', 'front'))
            tokens = torch.cat([tokens[:, :start], tokens[:, start + num_prefix:]], dim=1)
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, grid[0], grid[1])

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """(B, 3, H, W) images -> tuple of (B, C_k, H / s_k, W / s_k) maps (``out_channels``, ``out_strides``)."""
        self._mixer_outputs.clear()
        maps = self.model.forward_intermediates(
            x, indices=list(self.out_indices), norm=False, stop_early=True, intermediates_only=True)
        if self.feature_source == 'mixer':
            maps = [self._tokens_to_map(self._mixer_outputs[i], tuple(m.shape[-2:]))
                    for i, m in zip(self.out_indices, maps)]
            self._mixer_outputs.clear()
        if self.out_norms is not None:
            maps = [self.out_norms[str(i)](m) for i, m in zip(self.out_indices, maps)]
        if self.pyramid is not None:
            maps = self.pyramid(maps)
        return tuple(maps)

    # ---- freezing / layer ids -------------------------------------------------------------------------------------

    def _stem_pattern(self) -> re.Pattern:
        stem = self.model.group_matcher(coarse=True)['stem']
        return re.compile(stem if isinstance(stem, str) else '|'.join(stem))

    def _layer_modules(self) -> List[str]:
        """Module name (within ``model``) of every layer of ``feature_info`` up to the last output."""
        return [self.model.feature_info[i]['module'] for i in range(self.out_indices[-1] + 1)]

    def layer_id(self, param_name: str) -> int:
        """Depth of a parameter for layer-wise lr decay: 0 = stem, i + 1 = layer i of ``feature_info`` (stage or
        block), ``num_layers + 1`` = added heads (out norms, pyramid, and anything outside the backbone)."""
        name = param_name[len('backbone.'):] if param_name.startswith('backbone.') else param_name
        layers = self._layer_modules()
        if name.startswith('model.'):
            name = name[len('model.'):]
            if self._stem_pattern().match(name):
                return 0
            for i, module in enumerate(layers):
                if name.startswith(module + '.'):
                    return i + 1
        return len(layers) + 1

    def _frozen(self) -> Tuple[List[nn.Module], List[nn.Parameter]]:
        """Modules and loose top-level parameters (``cls_token``, ``pos_embed``) frozen by ``frozen_stages``."""
        if self.frozen_stages < 0:
            return [], []
        if self.frozen_stages > len(self.out_indices):
            raise ValueError(f'frozen_stages={self.frozen_stages} exceeds the {len(self.out_indices)} outputs')
        pattern = self._stem_pattern()
        modules = [m for n, m in self.model.named_children() if pattern.match(n)]
        params = [p for n, p in self.model.named_parameters(recurse=False) if pattern.match(n)]
        if self.frozen_stages > 0:
            last = self.out_indices[self.frozen_stages - 1]
            modules += [self.model.get_submodule(m) for m in self._layer_modules()[:last + 1]]
        return modules, params

    def _freeze(self) -> None:
        modules, params = self._frozen()
        for module in modules:
            module.eval()
            params += list(module.parameters())
        for param in params:
            param.requires_grad = False

    def train(self, mode: bool = True) -> 'MambaBackbone':
        super().train(mode)
        if mode:
            for module in self._frozen()[0]:
                module.eval()
        return self

    # ---- pretrained weights ---------------------------------------------------------------------------------------

    def init_weights(self) -> None:
        """Load ``init_cfg=dict(type='Pretrained', checkpoint=...)`` into the timm model (tensors only).

        Other init types are left to mmengine; the timm model and the new layers initialise at construction."""
        cfg = self.init_cfg
        if isinstance(cfg, Mapping) and cfg.get('type') == 'Pretrained':
            self.load_pretrained(cfg['checkpoint'], prefix=cfg.get('prefix'))
            self._is_init = True
        elif cfg is not None:
            super().init_weights()

    def load_pretrained(
            self,
            checkpoint: Union[str, os.PathLike, Mapping[str, Any]],
            prefix: Optional[str] = None,
    ) -> Tuple[List[str], List[str]]:
        """Load classification weights into the timm model.

        Accepts our converted weights (``.safetensors`` / tensors-only ``.pth``), an official classification
        checkpoint (converted by the family's ``checkpoint_filter_fn``), or a seg/det checkpoint whose backbone is
        taken (``prefix``, default ``'backbone.'`` when present; official names are converted). The classifier and
        final norm of the checkpoint are ignored. Returns (missing, unexpected) model keys.
        Raises on shape mismatches or when no key matches.
        """
        source = str(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else 'checkpoint'
        container = load_weights_file(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
        state_dict = unwrap_state_dict(container)
        if prefix is None and any(k.startswith('backbone.') for k in state_dict):
            prefix = 'backbone.'
        if prefix:
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        own_extra = {k: v for k, v in state_dict.items() if k.startswith(('out_norms.', 'pyramid.'))}
        if any(k.startswith('model.') for k in state_dict):  # saved from this backbone
            state_dict = {k[len('model.'):]: v for k, v in state_dict.items() if k.startswith('model.')}
        else:
            from .convert import split_official_out_norms
            state_dict, official_norms = split_official_out_norms(state_dict)
            own_extra.update(official_norms)
            state_dict = _family_filter_fn(self._filter_module)(state_dict, self.model)

        own = self.model.state_dict()
        mismatched = [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}'
                      for k, v in state_dict.items() if k in own and v.shape != own[k].shape]
        if mismatched:
            raise RuntimeError(f'{source}: shape mismatches for {self.model_name}: ' + '; '.join(mismatched[:20]))
        matched = [k for k in state_dict if k in own]
        if not matched:
            raise RuntimeError(f'{source}: no key matches {self.model_name} (first checkpoint keys: '
                               f'{list(state_dict)[:5]})')
        incompatible = self.model.load_state_dict({k: state_dict[k] for k in matched}, strict=False)
        extra_loaded = []
        own_backbone = self.state_dict()
        for key, value in own_extra.items():
            if key in own_backbone and own_backbone[key].shape == value.shape:
                extra_loaded.append(key)
        if extra_loaded:
            self.load_state_dict({k: own_extra[k] for k in extra_loaded}, strict=False)
        unexpected = sorted(set(state_dict) - set(own))
        missing = list(incompatible.missing_keys)
        _logger.info('%s: loaded %d tensors into %s (+%d output-norm / pyramid tensors); missing %d: %s; '
                     'ignored %d: %s', source, len(matched), self.model_name, len(extra_loaded), len(missing),
                     missing[:10], len(unexpected), unexpected[:10])
        return missing, unexpected

"""VMamba: Visual State Space Model (cross-scan SS2D backbones) for timm.

Paper: `VMamba: Visual State Space Model` - https://arxiv.org/abs/2401.10166 (NeurIPS 2024)
Official code and weights: https://github.com/MzeroMiko/VMamba (MIT); this is an independent implementation that
loads the official ImageNet-1k checkpoints (``checkpoint_filter_fn`` converts them; ``vmamba.from_official('vmamba',
kwargs, ckpt)`` builds from the official ``VSSM`` constructor kwargs).

Released models and their names here:

=====================  =====================  =====================================  =======
ours                   official ckpt stem     paper name                             top-1
=====================  =====================  =====================================  =======
vmamba_tiny_s1l8       vssm1_tiny_0230s       VMamba-T (final paper model)           82.6
vmamba_small_s1l20     vssm1_small_0229s      VMamba-S[s1l20]                        83.3
vmamba_base_s1l20      vssm1_base_0229s       VMamba-B[s1l20]                        83.8
vmamba_tiny_s2l5       vssm_tiny_0230         VMamba-T[s2l5]                         82.5
vmamba_small_s2l15     vssm_small_0229        VMamba-S (final paper model)           83.6
vmamba_base_s2l15      vssm_base_0229         VMamba-B (final paper model)           83.9
vmamba_tiny_v0         vssmtiny_dp01          Vanilla-VMamba-T                       82.2
vmamba_small_v0        vssmsmall_dp03         Vanilla-VMamba-S                       83.5
vmamba_base_v0         vssmbase_dp06          Vanilla-VMamba-B                       83.7
=====================  =====================  =====================================  =======

Name clash note: the six v2 names are the same as the timm names registered by the official one-file
``vmamba.py`` (which also registers ``vanilla_vmamba_*``); importing both in one process makes timm warn about
overwritten entrypoints, and the one imported last wins. Our v0 models are ``vmamba_*_v0``.

Architecture: stem -> 4 stages (stage i > 0 starts with a stride-2 downsample) -> LayerNorm -> avg pool -> fc.
A block is ``x + drop_path(SS2D(norm1(x)))`` then, if ``mlp_ratio > 0``, ``x + drop_path(mlp(norm2(x)))``.
Layout: the model's inputs, stage outputs and features are NCHW; inside a stage the blocks run channels-last on
(B, H, W, C) tensors (the official ``channel_first=False`` layout: native LayerNorms and linears, one memory layout
per block, the scan reads and writes it through the route gather / merge kernels). The stage's NCHW output is a
view of the channels-last memory (``channels_last`` memory format), so no copies are made between stages.
v2 models: overlapping conv stem (two 3x3 stride-2 convs), 3x3 stride-2 conv downsample, ungated SS2D with
d_state 1, MLP ratio 4. v0 models: 4x4 patch stem, Swin patch merging, gated SS2D with d_state 16, no MLP.
Features (``features_only`` / ``forward_intermediates``) are the stage outputs before the next downsample, the tap
of the official detection / segmentation ``Backbone_VSSM``; build with ``feature_norms=True`` to add its per-output
LayerNorms (``outnorm{i}``), applied by ``forward_intermediates(norm=True)``.
"""
from __future__ import annotations

import logging
import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Type, Union

import torch
from torch import nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, get_act_layer
from timm.models import generate_default_cfgs, register_model

from vmamba.layers.mlp import RecomputeActMlp
from vmamba.layers.norm import LayerNorm2d, LayerNormLastDim, add_layer_norm
from vmamba.layers.patch import PatchMerging, PatchStem
from vmamba.layers.ss2d import SS2D
from vmamba.official import register_official
from vmamba.pretrained import build_model
from vmamba.scans import ScanPattern

from ._checkpoint import rename_key, unwrap_state_dict
from ._hierarchical import HierarchicalMixin, HierarchicalStage, hierarchical_feature_cfg, resolve_stage_dims

__all__ = ['VMamba', 'checkpoint_filter_fn', 'build_from_official_kwargs']

_logger = logging.getLogger(__name__)


class ConvStem(nn.Module):
    """Overlapping stem (official ``patchembed_version='v2'``): two 3x3 stride-2 convs, stride 4 in total.

    (B, in_chans, H, W) -> (B, dim, ceil(ceil(H/2)/2), ceil(ceil(W/2)/2)).
    """

    def __init__(self, in_chans: int, dim: int, act_layer: Type[nn.Module] = nn.GELU, norm_eps: float = 1e-5,
                 device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, dim // 2, 3, stride=2, padding=1, **dd)
        self.norm1 = LayerNorm2d(dim // 2, eps=norm_eps, **dd)
        self.act = act_layer()
        self.conv2 = nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1, **dd)
        self.norm2 = LayerNorm2d(dim, eps=norm_eps, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.conv1(x)))
        return self.norm2(self.conv2(x))


class ConvDownsample(nn.Module):
    """3x3 stride-2 conv + LayerNorm (official ``downsample_version='v3'``).

    (B, C, H, W) -> (B, C_out, ceil(H/2), ceil(W/2)).
    """

    def __init__(self, dim: int, dim_out: int, norm_eps: float = 1e-5, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.conv = nn.Conv2d(dim, dim_out, 3, stride=2, padding=1, **dd)
        self.norm = LayerNorm2d(dim_out, eps=norm_eps, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class VMambaBlock(nn.Module):
    """VSS block: ``x + drop_path(mixer(norm1(x)))`` and, if ``mlp_ratio > 0``, ``x + drop_path(mlp(norm2(x)))``.

    Channels-last: (B, H, W, C) -> (B, H, W, C). ``ssm_kwargs`` go to :class:`~vmamba.layers.ss2d.SS2D`. With an
    MLP, the first residual add and ``norm2`` run as one op (:func:`~vmamba.layers.norm.add_layer_norm`, one Triton
    kernel on CUDA): ``norm2`` keeps its parameters but is not called as a module (its forward hooks do not run).
    :class:`VMambaStage` chains its blocks through :meth:`forward_deferred`, which also moves each block's last
    residual add into the next block's ``norm1`` (called as a module only by a stage's first block).
    """

    def __init__(
            self,
            dim: int,
            mlp_ratio: float = 4.0,
            drop_path: float = 0.,
            mlp_drop: float = 0.,
            act_layer: Type[nn.Module] = nn.GELU,
            norm_eps: float = 1e-5,
            ssm_kwargs: Optional[Dict[str, Any]] = None,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.norm1 = LayerNormLastDim(dim, eps=norm_eps, **dd)
        self.mixer = SS2D(dim, norm_eps=norm_eps, channel_first=False, **(ssm_kwargs or {}), **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if mlp_ratio > 0:
            self.norm2 = LayerNormLastDim(dim, eps=norm_eps, **dd)
            self.mlp = RecomputeActMlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=mlp_drop, **dd)
        else:
            self.norm2 = None
            self.mlp = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, pending = self.forward_deferred(x)
        return x + pending

    def forward_deferred(self, x: torch.Tensor, pending: Optional[torch.Tensor] = None,
                         ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The block on ``x + pending`` (the previous block's last residual branch, not yet added) without its own
        last residual add: returns (residual, branch) with block output = residual + branch. Each add runs inside
        the next LayerNorm (:func:`~vmamba.layers.norm.add_layer_norm`): x, pending (B, H, W, C)."""
        if pending is None:
            y = self.norm1(x)
        else:
            x, y = add_layer_norm(x, pending, self.norm1)
        branch = self.drop_path(self.mixer(y))
        if self.mlp is None:
            return x, branch
        x, y = add_layer_norm(x, branch, self.norm2)  # x + branch and norm2 of it in one pass
        return x, self.drop_path(self.mlp(y))


class VMambaStage(HierarchicalStage):
    """Optional stride-2 downsample (``'conv'`` or ``'patch_merging'``; ``''`` = none) followed by ``depth`` blocks.

    (B, C, H, W) -> (B, C_out, H', W'); the blocks run on the channels-last view (B, H', W', C_out) and the output is
    its NCHW view (no copy).
    """

    def __init__(
            self,
            dim: int,
            dim_out: int,
            depth: int,
            downsample: str = '',
            drop_path: Sequence[float] = (),
            norm_eps: float = 1e-5,
            block_kwargs: Optional[Dict[str, Any]] = None,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        if downsample == 'conv':
            downsample_layer = ConvDownsample(dim, dim_out, norm_eps=norm_eps, **dd)
        elif downsample == 'patch_merging':
            downsample_layer = PatchMerging(dim, dim_out, norm_eps=norm_eps, **dd)
        elif downsample == '':
            if dim != dim_out:
                raise ValueError(f'a stage without downsample keeps its width, got dim={dim}, dim_out={dim_out}')
            downsample_layer = nn.Identity()
        else:
            raise ValueError(f"downsample must be 'conv', 'patch_merging' or '', got {downsample!r}")
        drop_path = list(drop_path) or [0.] * depth
        blocks = [VMambaBlock(dim_out, drop_path=drop_path[j], norm_eps=norm_eps, **(block_kwargs or {}), **dd)
                  for j in range(depth)]
        super().__init__(downsample_layer, blocks, channels_last_blocks=True)

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """The blocks chained with each residual add inside the next block's first LayerNorm
        (:meth:`VMambaBlock.forward_deferred`): (B, H, W, C) -> (B, H, W, C), the same values as one block after
        the other."""
        pending = None
        for block in self.blocks:
            x, pending = block.forward_deferred(x, pending)
        return x if pending is None else x + pending


class VMamba(HierarchicalMixin, nn.Module):
    """VMamba image classifier / backbone (NCHW).

    The timm API (``forward_features``, ``forward_intermediates``, ``prune_intermediate_layers``,
    ``reset_classifier``, ...) and ``init_weights`` come from :class:`~vmamba.models._hierarchical.HierarchicalMixin`.

    Args:
        in_chans: input image channels.
        num_classes: classifier classes (0 = no classifier, pooled features out).
        global_pool: ``'avg'`` (official), ``'max'``, ``'avgmax'``, ... or ``''`` (no pooling).
        depths: blocks per stage.
        dims: channels per stage, or an int ``d`` meaning ``(d, 2d, 4d, 8d)``.
        stem_type: ``'overlap'`` (two 3x3 stride-2 convs, v2) or ``'patch'`` (patch_size conv, v0).
        patch_size: stem stride (``'overlap'`` supports only 4).
        downsample_type: ``'conv'`` (3x3 stride-2 conv + LN, v2) or ``'patch_merging'`` (Swin, v0).
        mlp_ratio: MLP hidden ratio per block; 0 = no MLP (v0).
        d_state, ssm_ratio, dt_rank, d_conv, conv_bias, gated: SS2D options (see
            :class:`~vmamba.layers.ss2d.SS2D`).
        scan: scan pattern name or :class:`~vmamba.scans.ScanPattern` used by every SS2D (released weights:
            ``'cross'``; the number of routes sets the shape of the per-route parameters).
        feature_norms: add one LayerNorm per stage output (official ``Backbone_VSSM`` ``outnorm{i}``), applied by
            ``forward_intermediates(norm=True)`` and by ``features_only`` models.
        act_layer: MLP and stem activation.
        ssm_act_layer: SS2D activation (after the depthwise conv, and on the gate).
        norm_eps: eps of every LayerNorm.
        drop_rate: dropout before the classifier.
        ssm_drop_rate: dropout after each SS2D out_proj.
        mlp_drop_rate: dropout inside / after each MLP.
        drop_path_rate: stochastic depth, increasing linearly over all blocks from 0 to this value.
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            depths: Sequence[int] = (2, 2, 8, 2),
            dims: Union[int, Sequence[int]] = (96, 192, 384, 768),
            stem_type: str = 'overlap',
            patch_size: int = 4,
            downsample_type: str = 'conv',
            mlp_ratio: float = 4.0,
            d_state: int = 1,
            ssm_ratio: float = 1.0,
            dt_rank: Union[int, str] = 'auto',
            d_conv: int = 3,
            conv_bias: bool = False,
            gated: bool = False,
            scan: Union[str, ScanPattern] = 'cross',
            feature_norms: bool = False,
            act_layer: Union[str, Type[nn.Module]] = 'gelu',
            ssm_act_layer: Union[str, Type[nn.Module]] = 'silu',
            norm_eps: float = 1e-5,
            drop_rate: float = 0.,
            ssm_drop_rate: float = 0.,
            mlp_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        dims, depths = resolve_stage_dims(dims, depths)
        act_layer = get_act_layer(act_layer)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.output_fmt = 'NCHW'

        if stem_type == 'overlap':
            if patch_size != 4:
                raise ValueError(f"stem_type='overlap' has stride 4; patch_size={patch_size} needs stem_type='patch'")
            self.stem = ConvStem(in_chans, dims[0], act_layer=act_layer, norm_eps=norm_eps, **dd)
        elif stem_type == 'patch':
            self.stem = PatchStem(in_chans, dims[0], patch_size=patch_size, norm_eps=norm_eps, **dd)
        else:
            raise ValueError(f"stem_type must be 'overlap' or 'patch', got {stem_type!r}")
        if downsample_type not in ('conv', 'patch_merging'):
            raise ValueError(f"downsample_type must be 'conv' or 'patch_merging', got {downsample_type!r}")

        block_kwargs = dict(
            mlp_ratio=mlp_ratio,
            mlp_drop=mlp_drop_rate,
            act_layer=act_layer,
            ssm_kwargs=dict(
                d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank, d_conv=d_conv, conv_bias=conv_bias,
                gated=gated, scan=scan, act_layer=ssm_act_layer,
                proj_drop=ssm_drop_rate,
            ),
        )
        num_blocks = sum(depths)
        drop_path_rates = [drop_path_rate * i / max(num_blocks - 1, 1) for i in range(num_blocks)]  # linear 0 -> max
        self.stages = nn.Sequential()
        self.feature_info = []
        reduction = patch_size
        for i, depth in enumerate(depths):
            if i > 0:
                reduction *= 2
            self.stages.append(VMambaStage(
                dims[max(i - 1, 0)],
                dims[i],
                depth,
                downsample=downsample_type if i > 0 else '',
                drop_path=drop_path_rates[sum(depths[:i]):sum(depths[:i + 1])],
                norm_eps=norm_eps,
                block_kwargs=block_kwargs,
                **dd,
            ))
            self.feature_info.append(dict(num_chs=dims[i], reduction=reduction, module=f'stages.{i}'))

        self.init_norms_and_head(dims, num_classes, global_pool, drop_rate, norm_eps, feature_norms, **dd)
        self.init_weights()


# ----------------------------------------------------------------------------------------------------------------
# Official checkpoints -> our names

# Block-level renames (official current names and Jan-2024 v0 legacy names).
_BLOCK_RENAMES = (
    (r'^(ln_1|norm)\.', 'norm1.'),
    (r'^(self_attention|op)\.', 'mixer.'),
)
# SS2D parameter renames, applied after the block rename.
_MIXER_RENAMES = (
    (r'^mixer\.dt_projs_weight$', 'mixer.dt_proj_weight'),
    (r'^mixer\.dt_projs_bias$', 'mixer.dt_bias'),
    (r'^mixer\.A_logs$', 'mixer.A_log'),
    (r'^mixer\.Ds$', 'mixer.D'),
    (r'^mixer\.conv2d\.', 'mixer.conv.'),
)
_TOP_RENAMES = (
    (r'^patch_embed\.(proj|0)\.', 'stem.conv1.'),
    (r'^patch_embed\.(norm|2)\.', 'stem.norm1.'),
    (r'^patch_embed\.5\.', 'stem.conv2.'),
    (r'^patch_embed\.7\.', 'stem.norm2.'),
    (r'^classifier\.norm\.', 'norm.'),
    (r'^classifier\.head\.', 'head.fc.'),
    (r'^head\.(weight|bias)$', r'head.fc.\1'),  # v0 legacy
    (r'^outnorm(\d+)\.', r'feature_norms.\1.'),  # official Backbone_VSSM per-output norms
)
# Official Linear2d weights may be stored 4-D (out, in, 1, 1); ours are 2-D.
_LINEAR2D_WEIGHT = re.compile(r'(in_proj|out_proj|fc1|fc2|reduction)\.weight$')


def _rename_downsample(rest: str, layout: str) -> str:
    """Official ``layers.i.downsample.<rest>`` -> ours (the module that follows stage i starts stage i+1)."""
    if layout == 'conv':  # v3: 0 permute / 1 conv / 2 permute / 3 norm
        return re.sub(r'^1\.', 'conv.', re.sub(r'^3\.', 'norm.', rest))
    if layout == 'merging_numbered':  # one-file PatchMerging: 1 norm / 2 reduction
        return re.sub(r'^1\.', 'norm.', re.sub(r'^2\.', 'reduction.', rest))
    return rest  # classification / legacy PatchMerging: 'norm.' and 'reduction.' already match


def _downsample_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    for key, value in state_dict.items():
        if re.match(r'^layers\.\d+\.downsample\.3\.', key):
            return 'conv'
        if re.match(r'^layers\.\d+\.downsample\.2\.weight$', key) and value.ndim == 2:
            return 'merging_numbered'
    return 'named'


def checkpoint_filter_fn(
        state_dict: Mapping[str, Any],
        model: Optional[nn.Module] = None,
) -> Dict[str, torch.Tensor]:
    """Convert an official VMamba checkpoint to our parameter names.

    Accepts the official training container (``{'model': ...}``; optimizer / config / EMA entries are ignored, the
    official loaders read ``'model'``), a bare official state dict (current v2 names or the Jan-2024 v0 legacy
    names ``patch_embed.proj``, ``ln_1``, ``self_attention``, ``head``), the official ``Backbone_VSSM``
    ``outnorm{i}`` norms, 4-D (out, in, 1, 1) 1x1 weights, and already converted state dicts (returned unchanged).
    Pure renaming: ``model`` is not needed (and not used).
    """
    state_dict = unwrap_state_dict(state_dict)
    if any(k.startswith(('stem.', 'stages.')) for k in state_dict):
        return state_dict  # already ours

    layout = _downsample_layout(state_dict)
    out = {}
    for key, value in state_dict.items():
        block = re.match(r'^layers\.(\d+)\.blocks\.(\d+)\.(.+)$', key)
        downsample = re.match(r'^layers\.(\d+)\.downsample\.(.+)$', key)
        if block:
            stage, index, rest = block.groups()
            key = f'stages.{stage}.blocks.{index}.{rename_key(rest, _BLOCK_RENAMES + _MIXER_RENAMES)}'
        elif downsample:
            stage, rest = downsample.groups()
            key = f'stages.{int(stage) + 1}.downsample.{_rename_downsample(rest, layout)}'
        else:
            key = rename_key(key, _TOP_RENAMES)
        if _LINEAR2D_WEIGHT.search(key) and value.ndim == 4:
            if value.shape[2:] != (1, 1):
                raise ValueError(f'{key}: expected a 1x1 weight, got shape {tuple(value.shape)}')
            value = value[:, :, 0, 0]
        out[key] = value
    return out


# ----------------------------------------------------------------------------------------------------------------
# Official VSSM constructor kwargs -> our model

# Defaults of the official VSSM constructor (classification/models/vmamba.py at 2ed52ea).
_OFFICIAL_DEFAULTS = dict(
    patch_size=4, in_chans=3, num_classes=1000, depths=[2, 2, 9, 2], dims=[96, 192, 384, 768],
    ssm_d_state=16, ssm_ratio=2.0, ssm_dt_rank='auto', ssm_act_layer='silu', ssm_conv=3, ssm_conv_bias=True,
    ssm_drop_rate=0.0, ssm_init='v0', forward_type='v2', mlp_ratio=4.0, mlp_act_layer='gelu', mlp_drop_rate=0.0,
    gmlp=False, drop_path_rate=0.1, patch_norm=True, norm_layer='LN', downsample_version='v2',
    patchembed_version='v1', use_checkpoint=False, posembed=False, imgsize=224,
)
# SS2D forward types whose math we implement (the released ones and their documented equivalents).
_OFFICIAL_FORWARD_TYPES = {
    'v0': dict(gated=True),  # Vanilla-VMamba (SS2Dv0; its fp32 cast of the scan inputs is exact, see SS2D)
    'v05': dict(gated=True),
    'v05_noz': dict(gated=False),  # released v2 models
    'v3_noz': dict(gated=False),  # what v2 was trained as: same math, einsum projections
}
_OFFICIAL_ACTS = ('silu', 'gelu', 'relu')
_OFFICIAL_ONLY_VALUES = dict(gmlp=False, patch_norm=True, posembed=False, ssm_init='v0')


def build_from_official_kwargs(official_kwargs: Mapping[str, Any]) -> VMamba:
    """Build :class:`VMamba` from the kwargs of the official ``VSSM`` constructor.

    Supports the released configurations: ``forward_type`` in ``v0 / v05 / v05_noz / v3_noz``, ``norm_layer``
    ``ln`` / ``ln2d`` (same math; our blocks always run channels-last), ``patchembed_version`` ``v1`` / ``v2`` and
    ``downsample_version`` ``v1`` / ``v3``. Raises ``ValueError`` naming unknown kwargs or unsupported values.
    """
    unknown = sorted(set(official_kwargs) - set(_OFFICIAL_DEFAULTS))
    if unknown:
        raise ValueError(f'unknown official VSSM kwargs: {unknown}; known: {sorted(_OFFICIAL_DEFAULTS)}')
    kw = {**_OFFICIAL_DEFAULTS, **official_kwargs}

    problems = []
    forward_type = kw['forward_type']
    if forward_type not in _OFFICIAL_FORWARD_TYPES:
        problems.append(f'forward_type={forward_type!r} (supported: {sorted(_OFFICIAL_FORWARD_TYPES)}; '
                        f'other official forward types have no released weights)')
    norm_layer = str(kw['norm_layer']).lower()
    if norm_layer not in ('ln', 'ln2d'):
        problems.append(f"norm_layer={kw['norm_layer']!r} (supported: 'ln', 'ln2d')")
    stem_types = {'v1': 'patch', 'v2': 'overlap'}
    if kw['patchembed_version'] not in stem_types:
        problems.append(f"patchembed_version={kw['patchembed_version']!r} (supported: 'v1', 'v2')")
    downsample_types = {'v1': 'patch_merging', 'v3': 'conv'}
    if kw['downsample_version'] not in downsample_types:
        problems.append(f"downsample_version={kw['downsample_version']!r} (supported: 'v1', 'v3')")
    for name in ('ssm_act_layer', 'mlp_act_layer'):
        if str(kw[name]).lower() not in _OFFICIAL_ACTS:
            problems.append(f'{name}={kw[name]!r} (supported: {list(_OFFICIAL_ACTS)})')
    for name, value in _OFFICIAL_ONLY_VALUES.items():
        if kw[name] != value:
            problems.append(f'{name}={kw[name]!r} (only {value!r} is supported)')
    conv = kw['ssm_conv']
    if not isinstance(conv, int) or conv < 3 or conv % 2 == 0:
        problems.append(f'ssm_conv={conv!r} (an odd kernel size >= 3 is required)')
    if kw['patchembed_version'] == 'v2' and kw['patch_size'] != 4:
        problems.append(f"patch_size={kw['patch_size']!r} with patchembed_version='v2' (only 4 is supported)")
    if problems:
        raise ValueError('unsupported official VSSM kwargs: ' + '; '.join(problems))

    model = VMamba(
        in_chans=kw['in_chans'],
        num_classes=kw['num_classes'],
        depths=list(kw['depths']),
        dims=kw['dims'] if isinstance(kw['dims'], int) else list(kw['dims']),
        stem_type=stem_types[kw['patchembed_version']],
        patch_size=kw['patch_size'],
        downsample_type=downsample_types[kw['downsample_version']],
        mlp_ratio=kw['mlp_ratio'],
        d_state=kw['ssm_d_state'],
        ssm_ratio=kw['ssm_ratio'],
        dt_rank=kw['ssm_dt_rank'],
        d_conv=conv,
        conv_bias=kw['ssm_conv_bias'],
        act_layer=str(kw['mlp_act_layer']).lower(),
        ssm_act_layer=str(kw['ssm_act_layer']).lower(),
        ssm_drop_rate=kw['ssm_drop_rate'],
        mlp_drop_rate=kw['mlp_drop_rate'],
        drop_path_rate=kw['drop_path_rate'],
        **_OFFICIAL_FORWARD_TYPES[forward_type],
    )
    if kw['use_checkpoint']:
        model.set_grad_checkpointing(True)
    return model


register_official('vmamba', build_from_official_kwargs, checkpoint_filter_fn)


# ----------------------------------------------------------------------------------------------------------------
# Pretrained configs and entrypoints

_RELEASE_URL = 'https://github.com/MzeroMiko/VMamba/releases/download/'


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    return {
        'url': url,
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'pool_size': (7, 7),
        'crop_pct': 0.875,
        'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.conv1',
        'classifier': 'head.fc',
        'license': 'mit',
        'paper_ids': 'arXiv:2401.10166',
        'paper_name': 'VMamba: Visual State Space Model',
        'origin_url': 'https://github.com/MzeroMiko/VMamba',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'vmamba_tiny_s1l8.in1k': _cfg(url=_RELEASE_URL + '%23v2cls/vssm1_tiny_0230s_ckpt_epoch_264.pth'),
    'vmamba_small_s1l20.in1k': _cfg(url=_RELEASE_URL + '%23v2cls/vssm1_small_0229s_ckpt_epoch_240.pth'),
    'vmamba_base_s1l20.in1k': _cfg(url=_RELEASE_URL + '%23v2cls/vssm1_base_0229s_ckpt_epoch_225.pth'),
    'vmamba_tiny_s2l5.in1k': _cfg(url=_RELEASE_URL + '%23v2cls/vssm_tiny_0230_ckpt_epoch_262.pth'),
    'vmamba_small_s2l15.in1k': _cfg(url=_RELEASE_URL + '%23v2cls/vssm_small_0229_ckpt_epoch_222.pth'),
    'vmamba_base_s2l15.in1k': _cfg(url=_RELEASE_URL + '%23v2cls/vssm_base_0229_ckpt_epoch_237.pth'),
    'vmamba_tiny_v0.in1k': _cfg(url=_RELEASE_URL + '%23v0cls/vssmtiny_dp01_ckpt_epoch_292.pth'),
    'vmamba_small_v0.in1k': _cfg(url=_RELEASE_URL + '%23v0cls/vssmsmall_dp03_ckpt_epoch_238.pth'),
    'vmamba_base_v0.in1k': _cfg(url=_RELEASE_URL + '%23v0cls/vssmbase_dp06_ckpt_epoch_241.pth'),
    'test_vmamba': _cfg(input_size=(3, 64, 64), pool_size=(2, 2), license=None),
    'test_vmamba_v0': _cfg(input_size=(3, 64, 64), pool_size=(2, 2), license=None),
})


def _create_vmamba(variant: str, pretrained: bool = False, **kwargs) -> VMamba:
    scan = kwargs.get('scan', 'cross')
    if pretrained and getattr(scan, 'name', scan) != 'cross':
        _logger.warning('%s: the released weights were trained with the cross scan, not %r; they load only if the '
                        'route count matches and are not calibrated for the new pattern', variant, scan)
    return build_model(
        VMamba, variant, pretrained,
        checkpoint_filter_fn=checkpoint_filter_fn,
        feature_cfg=hierarchical_feature_cfg(bool(kwargs.get('feature_norms'))),
        **kwargs,
    )


# Official v2 block design ("v05_noz", ln2d, patchembed v2, downsample v3): d_state 1, no gate, MLP 4.
_V2_ARGS = dict(stem_type='overlap', downsample_type='conv', mlp_ratio=4.0, d_state=1, d_conv=3, conv_bias=False,
                gated=False)
# Official v0 ("Vanilla-VMamba"): patch stem, patch merging, gated SS2D with d_state 16, no MLP.
_V0_ARGS = dict(stem_type='patch', downsample_type='patch_merging', mlp_ratio=0.0, d_state=16, ssm_ratio=2.0,
                d_conv=3, conv_bias=True, gated=True)


@register_model
def vmamba_tiny_s1l8(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-T[s1l8] (the paper's VMamba-T), official ``vssm1_tiny_0230s``, 30.2M params, 82.6% top-1."""
    model_args = dict(_V2_ARGS, dims=96, depths=(2, 2, 8, 2), ssm_ratio=1.0)
    return _create_vmamba('vmamba_tiny_s1l8', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vmamba_small_s1l20(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-S[s1l20], official ``vssm1_small_0229s``, 49.0M params, 83.3% top-1."""
    model_args = dict(_V2_ARGS, dims=96, depths=(2, 2, 20, 2), ssm_ratio=1.0)
    return _create_vmamba('vmamba_small_s1l20', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vmamba_base_s1l20(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-B[s1l20], official ``vssm1_base_0229s``, 86.6M params, 83.8% top-1."""
    model_args = dict(_V2_ARGS, dims=128, depths=(2, 2, 20, 2), ssm_ratio=1.0)
    return _create_vmamba('vmamba_base_s1l20', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vmamba_tiny_s2l5(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-T[s2l5], official ``vssm_tiny_0230``, 30.7M params, 82.5% top-1."""
    model_args = dict(_V2_ARGS, dims=96, depths=(2, 2, 5, 2), ssm_ratio=2.0)
    return _create_vmamba('vmamba_tiny_s2l5', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vmamba_small_s2l15(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-S[s2l15] (the paper's VMamba-S), official ``vssm_small_0229``, 50.2M params, 83.6% top-1."""
    model_args = dict(_V2_ARGS, dims=96, depths=(2, 2, 15, 2), ssm_ratio=2.0)
    return _create_vmamba('vmamba_small_s2l15', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vmamba_base_s2l15(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-B[s2l15] (the paper's VMamba-B), official ``vssm_base_0229``, 88.6M params, 83.9% top-1."""
    model_args = dict(_V2_ARGS, dims=128, depths=(2, 2, 15, 2), ssm_ratio=2.0)
    return _create_vmamba('vmamba_base_s2l15', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vmamba_tiny_v0(pretrained: bool = False, **kwargs) -> VMamba:
    """Vanilla-VMamba-T, official ``vssmtiny_dp01`` (``vanilla_vmamba_tiny``), 22.9M params, 82.2% top-1."""
    model_args = dict(_V0_ARGS, dims=96, depths=(2, 2, 9, 2))
    return _create_vmamba('vmamba_tiny_v0', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vmamba_small_v0(pretrained: bool = False, **kwargs) -> VMamba:
    """Vanilla-VMamba-S, official ``vssmsmall_dp03`` (``vanilla_vmamba_small``), 44.4M params, 83.5% top-1."""
    model_args = dict(_V0_ARGS, dims=96, depths=(2, 2, 27, 2))
    return _create_vmamba('vmamba_small_v0', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vmamba_base_v0(pretrained: bool = False, **kwargs) -> VMamba:
    """Vanilla-VMamba-B, official ``vssmbase_dp06`` (``vanilla_vmamba_base``), 76.2M params, 83.7% top-1."""
    model_args = dict(_V0_ARGS, dims=128, depths=(2, 2, 27, 2))
    return _create_vmamba('vmamba_base_v0', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def test_vmamba(pretrained: bool = False, **kwargs) -> VMamba:
    """Tiny v2-style VMamba for tests (the ``tiny_v3`` parity fixture's architecture, 1000 classes)."""
    model_args = dict(_V2_ARGS, dims=24, depths=(1, 1, 2, 1), ssm_ratio=1.0)
    return _create_vmamba('test_vmamba', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def test_vmamba_v0(pretrained: bool = False, **kwargs) -> VMamba:
    """Tiny v0-style VMamba for tests (patch stem, patch merging, gated SS2D, no MLP)."""
    model_args = dict(_V0_ARGS, dims=16, depths=(1, 1, 1, 1), d_state=4)
    return _create_vmamba('test_vmamba_v0', pretrained=pretrained, **dict(model_args, **kwargs))

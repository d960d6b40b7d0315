"""EfficientVMamba: atrous selective scan (ES2D) backbones for timm.

Paper: `EfficientVMamba: Atrous Selective Scan for Light Weight Visual Mamba` - https://arxiv.org/abs/2403.09977
Official code and weights: https://github.com/TerryPei/EfficientVMamba (README / Hugging Face: Apache-2.0); this is an
independent implementation that loads the official ImageNet-1k checkpoints (``checkpoint_filter_fn`` converts
them; ``vmamba.from_official('efficientvmamba', kwargs, ckpt)`` builds from the official ``EfficientVSSM``
constructor kwargs).

=============================  ===============================  ====  =========  =======  =====
ours                           official file (Hugging Face)     dims  depths     params   top-1
=============================  ===============================  ====  =========  =======  =====
efficientvmamba_tiny.in1k      ``efficient_vmamba_tiny.ckpt``   48    2, 2, 4, 2  6.49M   76.5
efficientvmamba_small.in1k     ``efficient_vmamba_small.ckpt``  64    2, 2, 4, 2  11.27M  78.7
efficientvmamba_base.in1k      ``efficient_vmamba_base.ckpt``   96    2, 2, 9, 2  33.72M  81.8
=============================  ===============================  ====  =========  =======  =====

(The official ``vssm_efficient_small.yaml`` says ``EMBED_DIM: 96``; the released S was trained with 64.)

Architecture (NCHW between stages; the EVSS blocks run channels-last on (B, H, W, C), the inverted residuals NCHW):
4x4 patch stem + LayerNorm -> 4 stages (stage i > 0 starts with Swin patch
merging) -> LayerNorm -> avg pool -> fc. Stages 0-1 ("global" stages) use EVSS blocks::

    xn = norm(x);  x = x + drop_path(se(ES2D(xn)) + se(conv_branch(xn)))     (one SE module, used twice)

where ES2D is the gated SS2D mixer with the ``atrous`` scan (the map is zero-padded to even size after the
depthwise conv + SiLU and split into its 2x2 phase lattice, one dilated route per phase, d_state 16). Stages 2-3
("local" stages) use MobileNetV2 inverted residuals with squeeze-excitation. Every LayerNorm has eps 1e-5.

Features (``features_only`` / ``forward_intermediates``) are the stage outputs before the next downsample, the taps
of the official detection backbone ``Backbone_EfficientVSSM``; build with ``feature_norms=True`` to add its
per-output LayerNorms (``outnorm{i}``), applied by ``forward_intermediates(norm=True)``.
"""
from __future__ import annotations

import re
import warnings
from typing import Any, Dict, Mapping, Optional, Sequence, Type, Union

import torch
from torch import nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ConvNormAct, DropPath, SEModule
from timm.models import generate_default_cfgs, register_model

from vmamba.layers.norm import LayerNormLastDim
from vmamba.layers.patch import PatchMerging, PatchStem
from vmamba.layers.ss2d import SS2D
from vmamba.official import register_official
from vmamba.pretrained import build_model

from ._checkpoint import rename_key, unwrap_state_dict
from ._hierarchical import HierarchicalMixin, HierarchicalStage, hierarchical_feature_cfg, resolve_stage_dims

__all__ = ['EfficientVMamba', 'checkpoint_filter_fn', 'build_from_official_kwargs']


class ChannelAttention(nn.Module):
    """Squeeze-excitation gate of the EVSS block (official ``BiAttn``), channels-last.

    The gate is computed from the LayerNorm-ed map (normalised per position, then averaged over H, W), but it scales
    the un-normalised input: ``x * sigmoid(select(act(reduce(mean_hw(norm(x))))))``. (B, H, W, C) -> (B, H, W, C).
    """

    def __init__(
            self,
            dim: int,
            rd_ratio: float = 0.125,
            act_layer: Type[nn.Module] = nn.GELU,
            norm_eps: float = 1e-5,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        rd_dim = int(dim * rd_ratio)
        if rd_dim < 1:
            raise ValueError(f'ChannelAttention: rd_ratio={rd_ratio} leaves no channels for dim={dim}')
        self.norm = LayerNormLastDim(dim, eps=norm_eps, **dd)
        self.global_reduce = nn.Linear(dim, rd_dim, **dd)
        self.act = act_layer()
        self.channel_select = nn.Linear(rd_dim, dim, **dd)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.norm(x).mean((1, 2), keepdim=True)
        gate = self.gate(self.channel_select(self.act(self.global_reduce(gate))))
        return x * gate


class ConvBranch(nn.Module):
    """Local branch of the EVSS block: depthwise 3x3 -> BatchNorm -> GELU -> 1x1 (both convs with bias).

    Channels-last: (B, H, W, C) -> (B, H, W, C) (the convs run on the NCHW view, a channels-last convolution).
    """

    def __init__(self, dim: int, act_layer: Type[nn.Module] = nn.GELU, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, **dd)
        self.norm = nn.BatchNorm2d(dim, **dd)
        self.act = act_layer()
        self.conv_pw = nn.Conv2d(dim, dim, 1, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)
        return self.conv_pw(self.act(self.norm(self.conv_dw(x)))).permute(0, 2, 3, 1)


class EfficientVSSBlock(nn.Module):
    """EVSS block: a global ES2D branch and a local conv branch on the same normalised input, each gated by one
    shared :class:`ChannelAttention`, summed and added to the residual. Channels-last: (B, H, W, C) -> (B, H, W, C).

    ``ssm_kwargs`` go to :class:`~vmamba.layers.ss2d.SS2D` (the EfficientVMamba defaults: gated, d_state 16,
    conv bias, ``scan='atrous'``).
    """

    def __init__(
            self,
            dim: int,
            drop_path: float = 0.,
            se_ratio: float = 0.125,
            norm_eps: float = 1e-5,
            ssm_kwargs: Optional[Dict[str, Any]] = None,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        ssm_kwargs = {
            'd_state': 16, 'ssm_ratio': 2.0, 'dt_rank': 'auto', 'd_conv': 3, 'conv_bias': True, 'gated': True,
            'scan': 'atrous', 'act_layer': nn.SiLU, **(ssm_kwargs or {}),
        }
        self.norm = LayerNormLastDim(dim, eps=norm_eps, **dd)
        self.mixer = SS2D(dim, norm_eps=norm_eps, channel_first=False, **ssm_kwargs, **dd)
        self.conv_branch = ConvBranch(dim, **dd)
        self.se = ChannelAttention(dim, rd_ratio=se_ratio, norm_eps=norm_eps, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = self.norm(x)
        return x + self.drop_path(self.se(self.mixer(normed)) + self.se(self.conv_branch(normed)))


class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual with squeeze-excitation (EfficientVMamba stages 2-3), stride 1, width kept.

    1x1 expand (C -> expand_ratio * C) + BN + ReLU -> 3x3 depthwise + BN + ReLU -> SE (reduction to
    ``int(se_ratio * expand_ratio * C)``, ReLU, sigmoid) -> 1x1 project + BN, then ``x + drop_path(.)``.
    (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(
            self,
            dim: int,
            expand_ratio: float = 4.0,
            se_ratio: float = 0.125,
            drop_path: float = 0.,
            act_layer: Type[nn.Module] = nn.ReLU,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        mid_dim = int(dim * expand_ratio)
        self.conv_pw = ConvNormAct(dim, mid_dim, 1, act_layer=act_layer, **dd)
        self.conv_dw = ConvNormAct(mid_dim, mid_dim, 3, groups=mid_dim, act_layer=act_layer, **dd)
        self.se = SEModule(mid_dim, rd_channels=int(mid_dim * se_ratio), act_layer=act_layer, **dd)
        self.conv_pwl = ConvNormAct(mid_dim, dim, 1, apply_act=False, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.conv_pwl(self.se(self.conv_dw(self.conv_pw(x)))))


class EfficientVMambaStage(HierarchicalStage):
    """Optional patch-merging downsample (``dim -> dim_out``) followed by ``depth`` blocks of ``block_type``
    (``'evss'``, run channels-last, or ``'inverted_residual'``, run NCHW). (B, dim, H, W) -> (B, dim_out, H', W')."""

    def __init__(
            self,
            dim: int,
            dim_out: int,
            depth: int,
            block_type: str = 'evss',
            downsample: bool = False,
            drop_path: Sequence[float] = (),
            norm_eps: float = 1e-5,
            block_kwargs: Optional[Dict[str, Any]] = None,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        if downsample:
            downsample_layer = PatchMerging(dim, dim_out, norm_eps=norm_eps, **dd)
        elif dim != dim_out:
            raise ValueError(f'a stage without downsample keeps its width, got dim={dim}, dim_out={dim_out}')
        else:
            downsample_layer = nn.Identity()
        drop_path = list(drop_path) or [0.] * depth
        if len(drop_path) != depth:
            raise ValueError(f'expected {depth} drop path rates, got {len(drop_path)}')
        block_kwargs = block_kwargs or {}
        if block_type == 'evss':
            blocks = [EfficientVSSBlock(dim_out, drop_path=p, norm_eps=norm_eps, **block_kwargs, **dd)
                      for p in drop_path]
        elif block_type == 'inverted_residual':
            blocks = [InvertedResidual(dim_out, drop_path=p, **block_kwargs, **dd) for p in drop_path]
        else:
            raise ValueError(f"block_type must be 'evss' or 'inverted_residual', got {block_type!r}")
        super().__init__(downsample_layer, blocks, channels_last_blocks=block_type == 'evss')


class EfficientVMamba(HierarchicalMixin, nn.Module):
    """EfficientVMamba image classifier / backbone (NCHW).

    The timm API (``forward_features``, ``forward_intermediates``, ``prune_intermediate_layers``,
    ``reset_classifier``, ...) and ``init_weights`` come from :class:`~vmamba.models._hierarchical.HierarchicalMixin`.

    Args:
        in_chans: input image channels.
        num_classes: classifier classes (0 = no classifier, pooled features out).
        global_pool: ``'avg'`` (official), ``'max'``, ``'avgmax'``, ... or ``''`` (no pooling).
        depths: blocks per stage.
        dims: channels per stage, or an int ``d`` meaning ``(d, 2d, 4d, 8d)``.
        patch_size: stride of the patch stem.
        num_ssm_stages: the first ``num_ssm_stages`` stages use EVSS blocks, the others inverted residuals
            (official: 2).
        d_state, ssm_ratio, dt_rank: ES2D (atrous SS2D) options; the official models use 16, 2.0, ``'auto'``.
        se_ratio: reduction ratio of the EVSS block's channel attention.
        ir_expand_ratio: expansion of the inverted residual blocks.
        ir_se_ratio: SE reduction ratio of the inverted residuals, relative to the expanded width.
        feature_norms: add one LayerNorm per stage output (official ``Backbone_EfficientVSSM`` ``outnorm{i}``),
            applied by ``forward_intermediates(norm=True)`` and by ``features_only`` models.
        norm_eps: eps of every LayerNorm (official 1e-5).
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, increasing linearly over all blocks from 0 to this value.
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            depths: Sequence[int] = (2, 2, 4, 2),
            dims: Union[int, Sequence[int]] = (48, 96, 192, 384),
            patch_size: int = 4,
            num_ssm_stages: int = 2,
            d_state: int = 16,
            ssm_ratio: float = 2.0,
            dt_rank: Union[int, str] = 'auto',
            se_ratio: float = 0.125,
            ir_expand_ratio: float = 4.0,
            ir_se_ratio: float = 0.125,
            feature_norms: bool = False,
            norm_eps: float = 1e-5,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        dims, depths = resolve_stage_dims(dims, depths)
        if not 0 <= num_ssm_stages <= len(depths):
            raise ValueError(f'num_ssm_stages must be in [0, {len(depths)}], got {num_ssm_stages}')
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.output_fmt = 'NCHW'

        self.stem = PatchStem(in_chans, dims[0], patch_size=patch_size, norm_eps=norm_eps, **dd)
        evss_kwargs = dict(
            se_ratio=se_ratio,
            ssm_kwargs=dict(d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank),
        )
        ir_kwargs = dict(expand_ratio=ir_expand_ratio, se_ratio=ir_se_ratio)
        drop_path_rates = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()
        self.stages = nn.Sequential()
        self.feature_info = []
        reduction = patch_size
        for i, depth in enumerate(depths):
            if i > 0:
                reduction *= 2
            is_ssm_stage = i < num_ssm_stages
            self.stages.append(EfficientVMambaStage(
                dims[max(i - 1, 0)],
                dims[i],
                depth,
                block_type='evss' if is_ssm_stage else 'inverted_residual',
                downsample=i > 0,
                drop_path=drop_path_rates[sum(depths[:i]):sum(depths[:i + 1])],
                norm_eps=norm_eps,
                block_kwargs=evss_kwargs if is_ssm_stage else ir_kwargs,
                **dd,
            ))
            self.feature_info.append(dict(num_chs=dims[i], reduction=reduction, module=f'stages.{i}'))

        self.init_norms_and_head(dims, num_classes, global_pool, drop_rate, norm_eps, feature_norms, **dd)
        self.init_weights()


# ----------------------------------------------------------------------------------------------------------------
# Official checkpoints -> our names
#
# Official layout (classification/models/vmamba_efficient.py): ``layers.{0,1}`` = Sequential(blocks, downsample);
# ``layers.{2,3}`` = Sequential(Permute, IR_1 .. IR_d, Permute, downsample). The downsample after stage i is the
# first module of our stage i + 1.

# EVSS block parts, applied to the key remainder after ``layers.i.blocks.j.``.
_EVSS_RENAMES = (
    (r'^op\.conv2d\.', 'mixer.conv.'),
    (r'^op\.dt_projs_weight$', 'mixer.dt_proj_weight'),
    (r'^op\.dt_projs_bias$', 'mixer.dt_bias'),
    (r'^op\.A_logs$', 'mixer.A_log'),
    (r'^op\.Ds$', 'mixer.D'),
    (r'^op\.', 'mixer.'),
    (r'^conv_branch\.0\.', 'conv_branch.conv_dw.'),
    (r'^conv_branch\.1\.', 'conv_branch.norm.'),
    (r'^conv_branch\.3\.', 'conv_branch.conv_pw.'),
)
# Inverted residual parts, applied to the key remainder after ``layers.i.n.``.
_IR_RENAMES = (
    (r'^conv_pw\.0\.', 'conv_pw.conv.'),
    (r'^conv_pw\.1\.', 'conv_pw.bn.'),
    (r'^conv_dw\.0\.', 'conv_dw.conv.'),
    (r'^conv_dw\.1\.', 'conv_dw.bn.'),
    (r'^se\.conv_reduce\.', 'se.fc1.'),
    (r'^se\.conv_expand\.', 'se.fc2.'),
    (r'^conv_pw2\.0\.', 'conv_pwl.conv.'),
    (r'^conv_pw2\.1\.', 'conv_pwl.bn.'),
)
_TOP_RENAMES = (
    (r'^patch_embed\.0\.', 'stem.conv1.'),
    (r'^patch_embed\.2\.', 'stem.norm1.'),
    (r'^classifier\.norm\.', 'norm.'),
    (r'^classifier\.head\.', 'head.fc.'),
    (r'^outnorm(\d+)\.', r'feature_norms.\1.'),  # official Backbone_EfficientVSSM per-output norms
)


def _convert_key(key: str) -> str:
    """One official key -> ours (keys that match no official pattern are returned unchanged)."""
    block = re.match(r'^layers\.(\d+)\.blocks\.(\d+)\.(.+)$', key)
    if block:
        stage, index, rest = block.groups()
        return f'stages.{stage}.blocks.{index}.{rename_key(rest, _EVSS_RENAMES)}'
    downsample = re.match(r'^layers\.(\d+)\.downsample\.(.+)$', key)
    if downsample:
        stage, rest = downsample.groups()
        return f'stages.{int(stage) + 1}.downsample.{rest}'
    numbered = re.match(r'^layers\.(\d+)\.(\d+)\.(.+)$', key)
    if numbered:  # inverted-residual stage: index 0 is a Permute, IR blocks are 1..d, then Permute, downsample
        stage, index, rest = numbered.groups()
        if rest.startswith(('norm.', 'reduction.')):  # the PatchMerging at the end of the stage
            return f'stages.{int(stage) + 1}.downsample.{rest}'
        return f'stages.{stage}.blocks.{int(index) - 1}.{rename_key(rest, _IR_RENAMES)}'
    return rename_key(key, _TOP_RENAMES)


def checkpoint_filter_fn(
        state_dict: Mapping[str, Any],
        model: Optional[nn.Module] = None,
) -> Dict[str, torch.Tensor]:
    """Convert an official EfficientVMamba checkpoint to our parameter names.

    Accepts the released container (``{'state_dict': OrderedDict}``), a ``{'model': ...}`` container, a bare
    official state dict (also with ``module.`` / ``module.module.`` prefixes), the official detection backbone's
    ``outnorm{i}`` norms, and already converted state dicts (returned unchanged). Pure renaming when ``model`` is
    None. With a ``model`` that has no classifier (``num_classes=0``), the checkpoint's classifier is dropped.
    """
    state_dict = unwrap_state_dict(state_dict, container_keys=('state_dict', 'model'))
    if not any(k.startswith(('stem.', 'stages.')) for k in state_dict):
        state_dict = {_convert_key(k): v for k, v in state_dict.items()}
    if model is not None and 'head.fc.weight' not in model.state_dict():
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith('head.fc.')}
    return state_dict


# ----------------------------------------------------------------------------------------------------------------
# Official EfficientVSSM constructor kwargs -> our model

# Defaults of the official EfficientVSSM constructor (classification/models/vmamba_efficient.py).
_OFFICIAL_DEFAULTS = dict(
    patch_size=4, in_chans=3, num_classes=1000, depths=[2, 2, 9, 2], dims=[96, 192, 384, 768], d_state=16,
    dt_rank='auto', ssm_ratio=2.0, attn_drop_rate=0., shared_ssm=False, softmax_version=False, drop_rate=0.,
    drop_path_rate=0.1, mlp_ratio=4.0, patch_norm=True, norm_layer=nn.LayerNorm, downsample_version='v2',
    use_checkpoint=False, step_size=2, window_size=2,
)
# Kwargs the official class accepts but never uses (it passes d_state / dt_rank to its layers under names they do
# not read, and swallows the rest in **kwargs): the released models always have d_state 16, dt_rank
# ceil(dim / 16) and no dropout. Non-default values are reported with a warning and ignored, exactly as the official
# model ignores them, so that checkpoints trained with such configs still load. (``step_size`` is not in this list:
# it is ignored at the spec's commit but reaches the scan in other revisions, so only the released 2 is accepted.)
_OFFICIAL_IGNORED = ('d_state', 'dt_rank', 'attn_drop_rate', 'shared_ssm', 'softmax_version', 'drop_rate',
                     'window_size')


def build_from_official_kwargs(official_kwargs: Mapping[str, Any]) -> EfficientVMamba:
    """Build :class:`EfficientVMamba` from the kwargs of the official ``EfficientVSSM`` constructor.

    Supported: the released configuration (``mlp_ratio=0``, ``downsample_version='v1'``, ``patch_norm=True``,
    LayerNorm) with any ``patch_size``, ``in_chans``, ``num_classes``, ``depths``, ``dims``, ``ssm_ratio``,
    ``drop_path_rate`` and ``use_checkpoint``. Kwargs the official class silently ignores (``d_state``,
    ``dt_rank``, ``attn_drop_rate``, ``shared_ssm``, ``softmax_version``, ``drop_rate``, ``window_size``) are
    ignored here too, with a warning when they differ from the value the official model really uses; ``step_size``
    must be 2. Raises ``ValueError`` naming unknown kwargs or unsupported values.
    """
    unknown = sorted(set(official_kwargs) - set(_OFFICIAL_DEFAULTS))
    if unknown:
        raise ValueError(f'unknown official EfficientVSSM kwargs: {unknown}; known: {sorted(_OFFICIAL_DEFAULTS)}')
    kw = {**_OFFICIAL_DEFAULTS, **official_kwargs}

    problems = []
    if kw['mlp_ratio'] != 0:
        problems.append(f"mlp_ratio={kw['mlp_ratio']!r} (only 0: the released models have no MLP branch)")
    if kw['downsample_version'] != 'v1':
        problems.append(f"downsample_version={kw['downsample_version']!r} (only 'v1' patch merging, as released)")
    if kw['step_size'] != 2:
        problems.append(f"step_size={kw['step_size']!r} (only the atrous step 2 of the released models)")
    if kw['patch_norm'] is not True:
        problems.append(f"patch_norm={kw['patch_norm']!r} (only True)")
    norm_layer = kw['norm_layer']
    if not (norm_layer is nn.LayerNorm or (isinstance(norm_layer, str) and norm_layer.lower() == 'ln')):
        problems.append(f'norm_layer={norm_layer!r} (only nn.LayerNorm / "ln")')
    if len(kw['depths']) < 2:
        problems.append(f"depths={kw['depths']!r} (the official model has 2 EVSS stages, so at least 2 stages)")
    if not isinstance(kw['dims'], int) and len(kw['dims']) != len(kw['depths']):
        problems.append(f"dims={kw['dims']!r} (one width per stage of depths={kw['depths']!r})")
    if problems:
        raise ValueError('unsupported official EfficientVSSM kwargs: ' + '; '.join(problems))

    ignored = [f'{name}={kw[name]!r}' for name in _OFFICIAL_IGNORED if kw[name] != _OFFICIAL_DEFAULTS[name]]
    if ignored:
        warnings.warn(
            f'official EfficientVSSM ignores {", ".join(ignored)} (it always builds d_state=16, dt_rank=ceil(dim/16), '
            f'no dropout); the model is built the same way', UserWarning, stacklevel=2)

    model = EfficientVMamba(
        in_chans=kw['in_chans'],
        num_classes=kw['num_classes'],
        depths=list(kw['depths']),
        dims=kw['dims'] if isinstance(kw['dims'], int) else list(kw['dims']),
        patch_size=kw['patch_size'],
        num_ssm_stages=2,
        ssm_ratio=kw['ssm_ratio'],
        drop_path_rate=kw['drop_path_rate'],
    )
    if kw['use_checkpoint']:
        model.set_grad_checkpointing(True)
    return model


register_official('efficientvmamba', build_from_official_kwargs, checkpoint_filter_fn)


# ----------------------------------------------------------------------------------------------------------------
# Pretrained configs and entrypoints

def _cfg(**kwargs) -> Dict[str, Any]:
    return {
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'pool_size': (7, 7),
        'crop_pct': 0.875,
        'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.conv1',
        'classifier': 'head.fc',
        'license': 'apache-2.0',
        'paper_ids': 'arXiv:2403.09977',
        'paper_name': 'EfficientVMamba: Atrous Selective Scan for Light Weight Visual Mamba',
        'origin_url': 'https://github.com/TerryPei/EfficientVMamba',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'efficientvmamba_tiny.in1k': _cfg(
        hf_hub_id='TerryPei/EfficientVMamba-Tiny', hf_hub_filename='efficient_vmamba_tiny.ckpt'),
    'efficientvmamba_small.in1k': _cfg(
        hf_hub_id='TerryPei/EfficientVMamba-Small', hf_hub_filename='efficient_vmamba_small.ckpt'),
    'efficientvmamba_base.in1k': _cfg(
        hf_hub_id='TerryPei/EfficientVMamba-Base', hf_hub_filename='efficient_vmamba_base.ckpt'),
    'test_efficientvmamba': _cfg(input_size=(3, 64, 64), pool_size=(2, 2), license=None),
})


def _create_efficientvmamba(variant: str, pretrained: bool = False, **kwargs) -> EfficientVMamba:
    return build_model(
        EfficientVMamba, variant, pretrained,
        checkpoint_filter_fn=checkpoint_filter_fn,
        feature_cfg=hierarchical_feature_cfg(bool(kwargs.get('feature_norms'))),
        **kwargs,
    )


@register_model
def efficientvmamba_tiny(pretrained: bool = False, **kwargs) -> EfficientVMamba:
    """EfficientVMamba-T, official ``efficient_vmamba_tiny``, 6.49M params, 76.5% top-1."""
    model_args = dict(dims=48, depths=(2, 2, 4, 2))
    return _create_efficientvmamba('efficientvmamba_tiny', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def efficientvmamba_small(pretrained: bool = False, **kwargs) -> EfficientVMamba:
    """EfficientVMamba-S, official ``efficient_vmamba_small`` (dims 64, not the yaml's 96), 11.27M params, 78.7%."""
    model_args = dict(dims=64, depths=(2, 2, 4, 2))
    return _create_efficientvmamba('efficientvmamba_small', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def efficientvmamba_base(pretrained: bool = False, **kwargs) -> EfficientVMamba:
    """EfficientVMamba-B, official ``efficient_vmamba_base``, 33.72M params, 81.8% top-1."""
    model_args = dict(dims=96, depths=(2, 2, 9, 2))
    return _create_efficientvmamba('efficientvmamba_base', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def test_efficientvmamba(pretrained: bool = False, **kwargs) -> EfficientVMamba:
    """Tiny EfficientVMamba for tests (the architecture of the ``tiny`` parity fixture, with 1000 classes)."""
    model_args = dict(dims=16, depths=(2, 2, 2, 2))
    return _create_efficientvmamba('test_efficientvmamba', pretrained=pretrained, **dict(model_args, **kwargs))

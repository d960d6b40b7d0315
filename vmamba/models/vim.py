"""Vision Mamba (Vim): plain bidirectional-Mamba backbones with a middle class token.

Paper: `Vision Mamba: Efficient Visual Representation Learning with Bidirectional State Space Model`
    - https://arxiv.org/abs/2401.09417
Original code and weights: https://github.com/hustvl/Vim (``vim/models_mamba.py``), Hugging Face
``hustvl/Vim-{tiny,small,base}-midclstok``.

The released models: patch embedding (conv 16x16, stride 16, or 8 for the fine-tuned "+" models), a learned class
token inserted in the *middle* of the raster-ordered patch sequence, absolute position embeddings, ``depth``
pre-norm blocks (RMSNorm -> bidirectional "v2" Mamba mixer with separate backward-branch parameters, the two
directions summed and divided by two), the residual stream kept in fp32, a final RMSNorm and a linear head on the
class token.

The same class also builds the LBVim models (``vmamba/models/lbvim.py``: LBMamba mixers, no class token, mean
pooling, scan direction alternating per block) and takes ShuffleMamba's stochastic layer-wise shuffle as an option
(``layer_shuffle_prob``) for any of them.

Differences from the official code (outputs equal in eval mode; checked against the official model):
    * Blocks carry one residual stream ``x = x + drop_path(mixer(norm(x)))`` instead of the (hidden, residual) pair
      of the fused add+norm code; block ``i`` drops its own output with rate ``linspace(0, drop_path_rate,
      depth)[i]`` (the official code drops the same tensor one block later with the same rate). The model still
      runs each residual add inside the next norm (:meth:`VimBlock.forward_deferred`, one kernel on CUDA), with the
      values of the one-stream form.
    * Position embeddings are resampled for other input sizes (the official code asserts the training size), with
      the class token's row kept out of the interpolation and re-inserted in the middle of the new grid.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    DropPath, lecun_normal_, register_notrace_function, register_notrace_module, resample_abs_pos_embed, to_2tuple,
    trunc_normal_,
)
from timm.models import checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
try:  # timm >= 1.0.31 records input-size changes so the model can be re-created with them
    from timm.models._input import update_model_input_size
except ImportError:  # older timm (e.g. on a GPU image): nothing to record
    def update_model_input_size(model: nn.Module, img_size, **model_args) -> None:
        pass
from timm.models._manipulate import checkpoint

from vmamba.layers.layer_shuffle import layer_shuffle_probs, token_shuffled_call
from vmamba.layers.mamba_mixer import MIXER_SCANS, MambaMixer
from vmamba.layers.packing import autocast_dtype
from vmamba.layers.rms_norm import RmsNormFp32, add_rms_norm
from vmamba.official import register_official
from vmamba.pretrained import build_model

from ._checkpoint import rename_key, unwrap_state_dict

__all__ = ['VisionMamba', 'VimPatchEmbed', 'VimBlock', 'resample_pos_embed', 'add_class_token_and_pos_embed',
           'checkpoint_filter_fn', 'vim_kwargs_from_official']

_CLASS_TOKEN_POSITIONS = ('middle', 'front')


def class_token_index(num_patches: int, position: str) -> int:
    """Index of the class token in a sequence of ``num_patches`` patch tokens plus the class token."""
    return num_patches // 2 if position == 'middle' else 0


def resample_pos_embed(
        pos_embed: torch.Tensor,
        new_size: Sequence[int],
        old_size: Optional[Sequence[int]] = None,
        class_token_position: Optional[str] = 'middle',
        interpolation: str = 'bicubic',
        antialias: bool = False,
) -> torch.Tensor:
    """Resample Vim position embeddings to another patch grid, keeping the class token's row.

    The official resize (``vim/utils.py``) treats row 0 as the class token and assumes a square grid, which is wrong
    for the middle class token. Here the class row is taken out at ``M // 2`` (``class_token_position='middle'``)
    or 0 (``'front'``), the (H, W) patch grid is interpolated (bicubic, ``align_corners=False``, like the official
    resize), and the class row is re-inserted at the matching index of the new grid.

    Args:
        pos_embed: (1, M [+ 1], D) for a grid with M = H * W patches.
        new_size: new grid (H', W').
        old_size: current grid (H, W); None -> square.
        class_token_position: 'middle', 'front' or None (no class token row).
    Returns:
        (1, H' * W' [+ 1], D).
    """
    num_extra = 0 if class_token_position is None else 1
    num_patches = pos_embed.shape[1] - num_extra
    if old_size is None:
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            raise ValueError(
                f'cannot infer the patch grid of a position embedding with {num_patches} patch rows (not a square); '
                f'pass old_size')
        old_size = (side, side)
    if old_size[0] * old_size[1] != num_patches:
        raise ValueError(f'pos_embed has {num_patches} patch rows, which does not match the grid {tuple(old_size)}')
    new_size = tuple(int(s) for s in new_size)
    if tuple(old_size) == new_size:
        return pos_embed
    if num_extra:
        idx = class_token_index(num_patches, class_token_position)
        class_row = pos_embed[:, idx:idx + 1]
        patch_rows = torch.cat([pos_embed[:, :idx], pos_embed[:, idx + 1:]], dim=1)
    else:
        patch_rows = pos_embed
    patch_rows = resample_abs_pos_embed(
        patch_rows, new_size=list(new_size), old_size=list(old_size), num_prefix_tokens=0,
        interpolation=interpolation, antialias=antialias)
    if not num_extra:
        return patch_rows
    idx = class_token_index(new_size[0] * new_size[1], class_token_position)
    return torch.cat([patch_rows[:, :idx], class_row, patch_rows[:, idx:]], dim=1)


@register_notrace_module  # input-size checks; a leaf for torch.fx feature extraction
class VimPatchEmbed(nn.Module):
    """Image to patch tokens: Conv2d(kernel ``patch_size``, stride ``stride``), flattened in raster order.

    A grid side is ``(size - patch) // stride + 1``; sizes where ``(size - patch) % stride != 0`` would silently drop
    border pixels and are rejected, unless ``dynamic_img_pad`` pads the bottom/right edge up to the next valid size.

    Args:
        img_size: nominal input size (H, W); with ``strict_img_size`` inputs must have exactly this size.
        patch_size: conv kernel.
        stride: conv stride (default ``patch_size``; Vim "+" models use 8 with patch 16).
        strict_img_size: reject inputs whose size differs from ``img_size``.
        dynamic_img_pad: pad inputs to a valid size instead of raising.
    """

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: Union[int, Tuple[int, int]] = 16,
            stride: Optional[Union[int, Tuple[int, int]]] = None,
            in_chans: int = 3,
            embed_dim: int = 192,
            strict_img_size: bool = True,
            dynamic_img_pad: bool = False,
            device=None,
            dtype=None,
    ):
        super().__init__()
        self.patch_size = to_2tuple(patch_size)
        self.stride = to_2tuple(stride if stride is not None else patch_size)
        self.strict_img_size = strict_img_size
        self.dynamic_img_pad = dynamic_img_pad
        self.img_size = to_2tuple(img_size)
        self.grid_size = self.feat_size(self.img_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, self.patch_size, self.stride, device=device, dtype=dtype)

    def _padded_size(self, img_size: Sequence[int]) -> Tuple[int, int]:
        padded = []
        for name, size, patch, stride in zip(('height', 'width'), img_size, self.patch_size, self.stride):
            excess = (size - patch) % stride if size >= patch else None
            if excess is None or excess:
                if not self.dynamic_img_pad:
                    raise ValueError(
                        f'input {name} {size} does not fit patch_size {patch} with stride {stride} '
                        f'(needs size >= {patch} and (size - {patch}) % {stride} == 0); resize the input or build the '
                        f'model with dynamic_img_pad=True')
                size = patch + math.ceil(max(size - patch, 0) / stride) * stride
            padded.append(size)
        return padded[0], padded[1]

    def feat_size(self, img_size: Sequence[int]) -> Tuple[int, int]:
        """Token grid (H', W') for an input of size (H, W)."""
        h, w = self._padded_size(img_size)
        return (h - self.patch_size[0]) // self.stride[0] + 1, (w - self.patch_size[1]) // self.stride[1] + 1

    def set_input_size(self, img_size: Union[int, Tuple[int, int]]) -> None:
        self.img_size = to_2tuple(img_size)
        self.grid_size = self.feat_size(self.img_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """x: (B, C, H, W) -> tokens (B, H' * W', D) in raster order, grid (H', W')."""
        height, width = x.shape[-2:]
        if self.strict_img_size and (height, width) != self.img_size:
            raise ValueError(
                f'input size ({height}, {width}) does not match the model img_size {self.img_size}; build the model '
                f'with img_size=({height}, {width}) (pretrained position embeddings are resampled on load) or with '
                f'dynamic_img_size=True')
        pad_h, pad_w = self._padded_size((height, width))
        if (pad_h, pad_w) != (height, width):
            x = F.pad(x, (0, pad_w - width, 0, pad_h - height))
        if self.stride == self.patch_size:
            return patch_tokens(x, self.proj.weight, self.proj.bias)
        x = self.proj(x)
        grid = (x.shape[-2], x.shape[-1])
        return x.flatten(2).transpose(1, 2), grid


def patch_tokens(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 ) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """A non-overlapping patch convolution (stride = kernel) as one GEMM over the image's patches, giving tokens
    directly: x (B, C, H, W) with H, W multiples of the kernel, weight (D, C, kh, kw), bias (D,) or None -> tokens
    (B, H/kh * W/kw, D) in raster order, grid (H/kh, W/kw). The same sums as the convolution; on H100 cuDNN ran
    Vim's 16x16 patch convolution at batch 128 with an implicit-GEMM kernel in 0.84 ms (v12/run7 profile) for
    ~80 MB of traffic."""
    batch, channels, height, width = x.shape
    dim, _, kh, kw = weight.shape
    grid = (height // kh, width // kw)
    patches = x.reshape(batch, channels, grid[0], kh, grid[1], kw).permute(0, 2, 4, 1, 3, 5)
    patches = patches.reshape(batch, grid[0] * grid[1], channels * kh * kw)
    return F.linear(patches, weight.reshape(dim, channels * kh * kw), bias), grid


@register_notrace_function  # data-dependent token layout; a leaf for torch.fx feature extraction
def add_class_token_and_pos_embed(
        x: torch.Tensor,
        grid: Tuple[int, int],
        pos_embed: torch.Tensor,
        cls_token: Optional[torch.Tensor],
        pos_embed_grid: Tuple[int, int],
        class_token_position: str,
) -> torch.Tensor:
    """Insert the class token (if any) and add the position embeddings, resampled if ``grid`` differs from
    ``pos_embed_grid``. x: (B, H' * W', D) -> (B, L, D)."""
    if tuple(grid) != tuple(pos_embed_grid):
        position = class_token_position if cls_token is not None else None
        pos_embed = resample_pos_embed(pos_embed, grid, old_size=pos_embed_grid, class_token_position=position)
    if cls_token is not None:
        idx = class_token_index(x.shape[1], class_token_position)
        x = torch.cat([x[:, :idx], cls_token.expand(x.shape[0], -1, -1), x[:, idx:]], dim=1)
    return x + pos_embed


@register_notrace_function  # reads the autocast state: a leaf for torch.fx (a public name: fx skips `_` globals)
def mixer_input_norm(x: torch.Tensor, pending: Optional[torch.Tensor],
                 norm: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """(x + pending, norm(x + pending)) with the add inside the norm (:func:`~vmamba.layers.rms_norm.add_rms_norm`):
    x (B, L, D) stream, pending (B, L, D) or None -> stream (B, L, D), the mixer's input (B, L, D). Under autocast
    the norm writes the autocast dtype, the dtype the mixer's input projection casts to (the same rounding, one
    pass less); else ``norm.weight``'s dtype."""
    dtype = autocast_dtype(x.device.type)
    if pending is None:
        return x, norm(x, out_dtype=dtype)
    return add_rms_norm(x, pending, norm, dtype)


class VimBlock(nn.Module):
    """Pre-norm residual Mamba block: ``x + drop_path(mixer(RMSNorm(x)))`` on a (B, L, D) token stream.

    :class:`VisionMamba` chains its blocks through :meth:`forward_deferred`, which moves each block's residual add
    into the next block's ``norm`` (and the last one into the model's final norm): one add + RMSNorm op
    (:func:`~vmamba.layers.rms_norm.add_rms_norm`, one Triton kernel on CUDA), the same values. On that path
    ``norm`` keeps its parameters but is called as a module only by the first block (its forward hooks do not run
    for the others); ``mixer`` is always called as a module.

    Args:
        dim: token width.
        mixer_kwargs: :class:`~vmamba.layers.mamba_mixer.MambaMixer` kwargs.
        norm_eps: RMSNorm epsilon.
        drop_path: stochastic depth rate of the mixer output.
        shuffle_prob: ShuffleMamba probability of running the mixer on shuffled tokens (training only).
    """

    def __init__(
            self,
            dim: int,
            mixer_kwargs: Dict[str, Any],
            norm_eps: float = 1e-5,
            drop_path: float = 0.,
            shuffle_prob: float = 0.,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.norm = RmsNormFp32(dim, eps=norm_eps, **dd)
        self.mixer = MambaMixer(dim, **mixer_kwargs, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.shuffle_prob = shuffle_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, L, D) residual stream (fp32 with ``residual_in_fp32``) -> (B, L, D) same dtype."""
        x, branch = self.forward_deferred(x)
        return x + branch

    def forward_deferred(self, x: torch.Tensor, pending: Optional[torch.Tensor] = None,
                         ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The block on ``x + pending`` (the previous block's residual branch, not yet added) without its own
        residual add: returns (residual, branch) with block output = residual + branch. The add of ``pending``
        runs inside ``norm`` (:func:`~vmamba.layers.rms_norm.add_rms_norm`): x (B, L, D) residual stream, pending
        (B, L, D) or None -> residual (B, L, D) in their promoted dtype, branch (B, L, D) in the mixer's dtype."""
        x, y = mixer_input_norm(x, pending, self.norm)
        if self.training and self.shuffle_prob > 0.:  # RMSNorm is per token: shuffling its output = its input
            h = token_shuffled_call(self.mixer, y, self.shuffle_prob)
        else:
            h = self.mixer(y)
        return x, self.drop_path(h)


class VisionMamba(nn.Module):
    """Plain (single-resolution) Mamba backbone: Vim, LBVim, and ShuffleMamba-style training.

    Args:
        img_size: input size the position embeddings are built for.
        patch_size: patch embedding kernel.
        patch_stride: patch embedding stride (default ``patch_size``).
        in_chans: input channels.
        num_classes: classifier classes (0 -> no classifier).
        global_pool: ``'token'`` (class token), ``'avg'`` (mean of the patch tokens) or ``''`` (no pooling).
        embed_dim: token width ``D``.
        depth: number of blocks.
        d_state, d_conv, expand, dt_rank: Mamba mixer sizes (``dt_rank=None`` -> ``ceil(D / 16)``).
        mixer_scan: ``'bidirectional'`` (Vim v2), ``'local_bidirectional'`` (LBMamba) or ``'forward'``.
        divide_out: divide the sum of the two Vim directions by two.
        local_window: LBMamba window (None -> official CUDA table of the sequence length).
        alternate_directions: odd blocks scan the token sequence from the end (LBVim's sequence flip after every
            block, done inside the scan instead of by copying the activations).
        mixer_cfg: further mixer kwargs (``dt_min``, ``dt_max``, ``dt_init``, ``dt_scale``, ``dt_init_floor``,
            ``conv_bias``, ``bias``).
        class_token: use a class token.
        class_token_position: ``'middle'`` (Vim: index M // 2 of the M patches) or ``'front'``.
        norm_eps: RMSNorm epsilon.
        residual_in_fp32: keep the residual stream in fp32.
        pos_drop_rate: dropout after adding the position embeddings (the official ``drop_rate``).
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, linear in depth up to this rate.
        layer_shuffle_prob: ShuffleMamba's stochastic layer-wise token shuffle; the last block's probability
            (linear in depth from 0); training only.
        dynamic_img_size: accept any input size, resampling the position embeddings in every forward.
        dynamic_img_pad: pad inputs whose size does not fit the patch stride.

    Without gradient checkpointing the blocks run chained (:meth:`run_blocks`): each residual add runs inside the
    next RMSNorm, the last one inside the final ``norm`` (:meth:`VimBlock.forward_deferred`). The norms of blocks
    after the first and the final ``norm`` are then not called as modules (their forward hooks do not run); with
    gradient checkpointing every block runs on its own (``VimBlock.forward``), the same values.
    """

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 16,
            patch_stride: Optional[int] = None,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'token',
            embed_dim: int = 192,
            depth: int = 24,
            d_state: int = 16,
            d_conv: int = 4,
            expand: int = 2,
            dt_rank: Optional[int] = None,
            mixer_scan: str = 'bidirectional',
            divide_out: bool = True,
            local_window: Optional[int] = None,
            alternate_directions: bool = False,
            mixer_cfg: Optional[Dict[str, Any]] = None,
            class_token: bool = True,
            class_token_position: str = 'middle',
            norm_eps: float = 1e-5,
            residual_in_fp32: bool = True,
            pos_drop_rate: float = 0.,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            layer_shuffle_prob: float = 0.,
            dynamic_img_size: bool = False,
            dynamic_img_pad: bool = False,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        if global_pool not in ('', 'token', 'avg'):
            raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
        if global_pool == 'token' and not class_token:
            raise ValueError("global_pool='token' needs class_token=True; use global_pool='avg' without a class token")
        if class_token_position not in _CLASS_TOKEN_POSITIONS:
            raise ValueError(f'class_token_position must be one of {_CLASS_TOKEN_POSITIONS}, got '
                             f'{class_token_position!r}')
        if mixer_scan not in MIXER_SCANS:
            raise ValueError(f'mixer_scan must be one of {MIXER_SCANS}, got {mixer_scan!r}')
        if alternate_directions and mixer_scan == 'bidirectional':
            raise ValueError("alternate_directions needs a single-direction mixer_scan ('forward' or "
                             "'local_bidirectional'); 'bidirectional' already scans both ways")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.embed_dim = self.num_features = self.head_hidden_size = embed_dim
        self.num_prefix_tokens = 1 if class_token else 0
        self.class_token_position = class_token_position
        self.residual_in_fp32 = residual_in_fp32
        self.dynamic_img_size = dynamic_img_size
        self.grad_checkpointing = False

        self.patch_embed = VimPatchEmbed(
            img_size=img_size, patch_size=patch_size, stride=patch_stride, in_chans=in_chans, embed_dim=embed_dim,
            strict_img_size=not dynamic_img_size, dynamic_img_pad=dynamic_img_pad, **dd)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim, **dd)) if class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + self.num_prefix_tokens, embed_dim, **dd))
        self.pos_drop = nn.Dropout(pos_drop_rate)

        mixer_kwargs = dict(
            d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank, scan=mixer_scan, divide_out=divide_out,
            **(mixer_cfg or {}))
        if mixer_scan == 'local_bidirectional':
            mixer_kwargs['local_window'] = local_window
        elif local_window is not None:
            raise ValueError(f"local_window is only used with mixer_scan='local_bidirectional', got {mixer_scan!r}")
        drop_path_rates = [drop_path_rate * i / (depth - 1) if depth > 1 else 0. for i in range(depth)]
        shuffle_probs = layer_shuffle_probs(layer_shuffle_prob, depth)
        self.blocks = nn.Sequential(*[
            VimBlock(
                embed_dim,
                dict(mixer_kwargs, reverse=alternate_directions and i % 2 == 1),
                norm_eps=norm_eps,
                drop_path=drop_path_rates[i],
                shuffle_prob=shuffle_probs[i],
                **dd,
            )
            for i in range(depth)])
        reduction = self.patch_embed.stride[0]
        self.feature_info = [dict(module=f'blocks.{i}', num_chs=embed_dim, reduction=reduction) for i in range(depth)]
        self.norm = RmsNormFp32(embed_dim, eps=norm_eps, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()

        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """The official Vim init: lecun-normal patch conv, trunc-normal(0.02) embeddings and classifier, Mamba's init
        of the mixers, zero linear biases except dt_proj's, out_proj scaled by 1/sqrt(depth) (GPT-2 scheme)."""
        lecun_normal_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)
        trunc_normal_(self.pos_embed, std=.02)
        if self.cls_token is not None:
            trunc_normal_(self.cls_token, std=.02)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=.02)
            nn.init.zeros_(self.head.bias)
        if isinstance(self.norm, RmsNormFp32):
            self.norm.reset_parameters()
        depth = len(self.blocks)
        for block in self.blocks:
            block.norm.reset_parameters()
            mixer = block.mixer
            mixer.reset_parameters()
            for linear in (mixer.in_proj, mixer.out_proj):
                if linear.bias is not None:
                    nn.init.zeros_(linear.bias)
            nn.init.kaiming_uniform_(mixer.out_proj.weight, a=math.sqrt(5))
            mixer.out_proj.weight.div_(math.sqrt(depth))

    # ---- timm API -------------------------------------------------------------------------------------------------

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        names = {'pos_embed', '*.A_log', '*.D'}
        if self.cls_token is not None:
            names.add('cls_token')
        if any(block.mixer.scan == 'bidirectional' for block in self.blocks):
            names |= {'*.A_b_log', '*.D_b'}
        return names

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^cls_token|^pos_embed|^patch_embed',
            blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool is not None:
            if global_pool not in ('', 'token', 'avg'):
                raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
            if global_pool == 'token' and self.cls_token is None:
                raise ValueError("global_pool='token' needs a class token; this model has none")
            self.global_pool = global_pool
        self.num_classes = num_classes
        weight = self.pos_embed
        self.head = (nn.Linear(self.embed_dim, num_classes, device=weight.device, dtype=weight.dtype)
                     if num_classes > 0 else nn.Identity())
        self.head.train(self.training)

    def set_input_size(self, img_size: Union[int, Tuple[int, int]]) -> None:
        """Change the input size the model expects, resampling the position embeddings to the new grid."""
        old_grid = self.patch_embed.grid_size
        new_grid = self.patch_embed.feat_size(to_2tuple(img_size))
        if new_grid != old_grid:
            self.pos_embed = nn.Parameter(
                self._resampled_pos_embed(new_grid).detach(), requires_grad=self.pos_embed.requires_grad)
        self.patch_embed.set_input_size(img_size)
        update_model_input_size(self, self.patch_embed.img_size)

    # ---- forward --------------------------------------------------------------------------------------------------

    def _class_token_index(self, num_patches: int) -> int:
        return class_token_index(num_patches, self.class_token_position)

    def _resampled_pos_embed(self, grid: Tuple[int, int]) -> torch.Tensor:
        return resample_pos_embed(
            self.pos_embed, grid, old_size=self.patch_embed.grid_size,
            class_token_position=self.class_token_position if self.cls_token is not None else None)

    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Image (B, C, H, W) -> token stream (B, L, D) with class token and position embeddings, grid (H', W')."""
        x, grid = self.patch_embed(x)
        x = add_class_token_and_pos_embed(
            x, grid, self.pos_embed, self.cls_token, self.patch_embed.grid_size, self.class_token_position)
        x = self.pos_drop(x)
        if self.residual_in_fp32:
            x = x.float()
        return x, grid

    def run_blocks(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The blocks chained with each residual add inside the next block's norm
        (:meth:`VimBlock.forward_deferred`): (B, L, D) residual stream -> (residual, pending) with the stream after
        the last block = residual + pending (pending: the last block's branch, None without blocks)."""
        pending = None
        for block in self.blocks:
            x, pending = block.forward_deferred(x, pending)
        return x, pending

    def _add_and_norm(self, x: torch.Tensor, pending: Optional[torch.Tensor],
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
        """x + pending (x when pending is None) and its final norm, in one op where possible: (B, L, D) ->
        stream (B, L, D), final-norm tokens (B, L, D)."""
        if pending is None:
            return x, self.norm(x)
        return add_rms_norm(x, pending, self.norm)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> final-norm tokens (B, L, D), raster order, class token (if any) at its index."""
        x, _ = self._embed(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self.norm(checkpoint_seq(self.blocks, x))
        return self._add_and_norm(*self.run_blocks(x))[1]

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.global_pool == 'token':
            return x[:, self._class_token_index(x.shape[1] - 1)]
        if self.global_pool == 'avg':
            if self.cls_token is None:
                return x.mean(dim=1)
            cls = x[:, self._class_token_index(x.shape[1] - 1)]
            return (x.sum(dim=1) - cls) / (x.shape[1] - 1)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Final-norm tokens (B, L, D) -> logits (B, num_classes), or the pooled (B, D) with ``pre_logits``."""
        x = self.head_drop(self._pool(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            return_prefix_tokens: bool = False,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward that also returns the token maps after chosen blocks.

        Args:
            x: (B, C, H, W).
            indices: None (all blocks), n (last n blocks) or a list of block indices (negatives allowed).
            return_prefix_tokens: return (map, class token (B, 1, D)) pairs (class-token models only).
            norm: apply the final norm to every map.
            stop_early: skip blocks after the last requested one.
            output_fmt: ``'NCHW'`` (B, D, H', W') or ``'NLC'`` (B, H' * W', D); the class token is removed.
            intermediates_only: return only the maps.
        Returns:
            maps, or (forward_features output, maps).
        """
        if output_fmt not in ('NCHW', 'NLC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        batch = x.shape[0]
        out_dtype = self.pos_embed.dtype
        x, grid = self._embed(x)
        blocks = self.blocks if torch.jit.is_scripting() or not stop_early else self.blocks[:max_index + 1]
        intermediates = []
        pending = None  # the last block's residual branch, added inside the next norm (see run_blocks)
        for i, block in enumerate(blocks):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x)
            else:
                x, pending = block.forward_deferred(x, pending)
            if i in take_indices:
                if norm:
                    x, y = self._add_and_norm(x, pending)
                else:
                    x = x if pending is None else x + pending
                    y = x.to(out_dtype)
                pending = None
                intermediates.append(y)

        prefix_tokens = None
        if self.cls_token is not None:
            idx = self._class_token_index(grid[0] * grid[1])
            prefix_tokens = [y[:, idx:idx + 1] for y in intermediates]
            intermediates = [torch.cat([y[:, :idx], y[:, idx + 1:]], dim=1) for y in intermediates]
        if output_fmt == 'NCHW':
            intermediates = [y.reshape(batch, grid[0], grid[1], -1).permute(0, 3, 1, 2).contiguous()
                             for y in intermediates]
        if return_prefix_tokens and prefix_tokens is not None:
            intermediates = list(zip(intermediates, prefix_tokens))
        if intermediates_only:
            return intermediates
        return self._add_and_norm(x, pending)[1], intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the blocks after the last of ``indices`` (and the final norm / head); returns the kept indices."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        self.feature_info = self.feature_info[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices


# ---- checkpoints ---------------------------------------------------------------------------------------------------

_KEY_RENAMES = (
    (r'^layers\.(\d+)\.', r'blocks.\1.'),
    (r'^norm_f\.', 'norm.'),
)


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: Optional[VisionMamba] = None) -> Dict[str, torch.Tensor]:
    """Convert an official Vim / LBVim checkpoint (or container) to this implementation's keys.

    ``layers.{i}.`` -> ``blocks.{i}.``, ``norm_f.`` -> ``norm.``; everything else keeps its name (the mixer keys are
    the official ones). Takes ``checkpoint['model']`` from official containers (not ``'model_ema'``), strips
    ``module.``, and is idempotent on converted weights. With ``model`` given, ``pos_embed`` is resampled to the
    model's grid (the checkpoint's grid is taken to be square) keeping the class-token row in place.
    """
    out = {}
    for key, value in unwrap_state_dict(state_dict).items():
        key = rename_key(key, _KEY_RENAMES)
        if model is not None and key == 'pos_embed' and value.shape != model.pos_embed.shape:
            value = resample_pos_embed(
                value, model.patch_embed.grid_size,
                class_token_position=model.class_token_position if model.cls_token is not None else None)
        out[key] = value
    return out


# ---- official constructor kwargs ----------------------------------------------------------------------------------

# Defaults of hustvl/Vim ``VisionMamba.__init__`` (vim/models_mamba.py @ dd0358a).
_OFFICIAL_VIM_DEFAULTS: Dict[str, Any] = dict(
    img_size=224, patch_size=16, stride=16, depth=24, embed_dim=192, d_state=16, channels=3, num_classes=1000,
    ssm_cfg=None, drop_rate=0., drop_path_rate=0.1, norm_epsilon=1e-5, rms_norm=True, initializer_cfg=None,
    fused_add_norm=True, residual_in_fp32=True, device=None, dtype=None, ft_seq_len=None, pt_hw_seq_len=14,
    if_bidirectional=False, final_pool_type='none', if_abs_pos_embed=True, if_rope=False, if_rope_residual=False,
    flip_img_sequences_ratio=-1., if_bimamba=False, bimamba_type='v2', if_cls_token=True, if_divide_out=True,
    init_layer_scale=None, use_double_cls_token=False, use_middle_cls_token=True,
)
# Swallowed by the official ``**kwargs`` and without effect (the Vim-B registration misspells if_divide_out).
_OFFICIAL_IGNORED = ('if_devide_out',)
# ssm_cfg keys (Mamba kwargs) -> our mixer kwargs.
_SSM_CFG_KEYS = ('d_conv', 'expand', 'dt_rank', 'dt_min', 'dt_max', 'dt_init', 'dt_scale', 'dt_init_floor',
                 'conv_bias', 'bias', 'use_fast_path')


def vim_kwargs_from_official(
        official_kwargs: Mapping[str, Any],
        defaults: Mapping[str, Any] = _OFFICIAL_VIM_DEFAULTS,
        mixer_scan: Optional[str] = None,
) -> Dict[str, Any]:
    """Map official ``VisionMamba`` constructor kwargs to :class:`VisionMamba` kwargs.

    Raises ``ValueError`` naming kwargs that are unknown or set to values this implementation does not support
    (RoPE, LayerNorm blocks, double class tokens, layer scale, random sequence flips, the v1 mixer, and
    ``ssm_cfg={'use_fast_path': False}``, whose official forward silently ignores the backward branch).

    Args:
        official_kwargs: the kwargs as passed to the official class (missing ones take its defaults).
        defaults: the official signature defaults.
        mixer_scan: overrides the mixer chosen from ``bimamba_type`` (LBVim).
    """
    unknown = sorted(k for k in official_kwargs if k not in defaults and k not in _OFFICIAL_IGNORED)
    if unknown:
        raise ValueError(f'unknown official Vim kwargs: {unknown}')
    kw = {**defaults, **{k: v for k, v in official_kwargs.items() if k not in _OFFICIAL_IGNORED}}

    unsupported = []

    def require(name: str, ok: Callable[[Any], bool], why: str) -> None:
        if name in kw and not ok(kw[name]):
            unsupported.append(f'{name}={kw[name]!r} ({why})')

    require('rms_norm', lambda v: v is True, 'only RMSNorm blocks are implemented')
    require('if_abs_pos_embed', lambda v: v is True, 'absolute position embeddings are required')
    require('if_rope', lambda v: not v, 'RoPE is not implemented')
    require('if_bidirectional', lambda v: not v, 'paired-layer mode is not implemented')
    require('flip_img_sequences_ratio', lambda v: v is None or v <= 0, 'random sequence flips are not implemented')
    require('if_bimamba', lambda v: not v, 'the v1 mixer is not implemented')
    require('bimamba_type', lambda v: v in ('v2', 'none'), "only 'v2' and 'none' are implemented")
    require('init_layer_scale', lambda v: v is None, 'layer scale is not implemented')
    require('use_double_cls_token', lambda v: not v, 'double class tokens are not implemented')
    require('initializer_cfg', lambda v: not v, 'custom initializer_cfg is not supported')
    ssm_cfg = dict(kw['ssm_cfg'] or {})
    unknown_ssm = sorted(k for k in ssm_cfg if k not in _SSM_CFG_KEYS)
    if unknown_ssm:
        unsupported.append(f'ssm_cfg keys {unknown_ssm} (unknown)')
    if ssm_cfg.pop('use_fast_path', True) is not True:
        unsupported.append("ssm_cfg['use_fast_path']=False (the official slow path drops the backward branch)")

    class_token = bool(kw['if_cls_token'])
    if class_token:
        global_pool = 'token'  # the official forward returns the class token whatever final_pool_type says
    elif kw['final_pool_type'] == 'mean':
        global_pool = 'avg'
    else:
        global_pool = ''
        unsupported.append(f"final_pool_type={kw['final_pool_type']!r} without a class token (only 'mean')")
    if unsupported:
        raise ValueError('unsupported official Vim kwargs: ' + '; '.join(unsupported))

    dt_rank = ssm_cfg.pop('dt_rank', 'auto')
    return dict(
        img_size=kw['img_size'],
        patch_size=kw['patch_size'],
        patch_stride=kw['stride'],
        in_chans=kw['channels'],
        num_classes=kw['num_classes'],
        global_pool=global_pool,
        embed_dim=kw['embed_dim'],
        depth=kw['depth'],
        d_state=kw['d_state'],
        d_conv=ssm_cfg.pop('d_conv', 4),
        expand=ssm_cfg.pop('expand', 2),
        dt_rank=None if dt_rank == 'auto' else int(dt_rank),
        mixer_scan=mixer_scan or ('bidirectional' if kw['bimamba_type'] == 'v2' else 'forward'),
        divide_out=bool(kw['if_divide_out']),
        mixer_cfg=ssm_cfg or None,
        class_token=class_token,
        class_token_position='middle' if kw['use_middle_cls_token'] else 'front',
        norm_eps=kw['norm_epsilon'],
        residual_in_fp32=bool(kw['residual_in_fp32']),
        pos_drop_rate=kw['drop_rate'],
        drop_path_rate=kw['drop_path_rate'],
        device=kw['device'],
        dtype=kw['dtype'],
    )


def _build_from_official(official_kwargs: Dict[str, Any]) -> VisionMamba:
    return VisionMamba(**vim_kwargs_from_official(official_kwargs))


register_official('vim', _build_from_official, checkpoint_filter_fn)


# ---- registry -------------------------------------------------------------------------------------------------------

def _create_vim(variant: str, pretrained: bool = False, **kwargs) -> VisionMamba:
    """Build a :class:`VisionMamba` variant (Vim or LBVim) through :func:`vmamba.pretrained.build_model`."""
    return build_model(
        VisionMamba, variant, pretrained,
        checkpoint_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=3, feature_cls='getter'),
        **kwargs,
    )


# Input / head fields of every VisionMamba cfg (Vim and LBVim).
_PLAIN_CFG: Dict[str, Any] = {
    'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None, 'fixed_input_size': True,
    'crop_pct': .875, 'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
    'first_conv': 'patch_embed.proj', 'classifier': 'head',
}


def _cfg(**kwargs) -> Dict[str, Any]:
    return {
        **_PLAIN_CFG,
        'paper_ids': 'arXiv:2401.09417', 'paper_name': 'Vision Mamba: Efficient Visual Representation Learning '
                                                      'with Bidirectional State Space Model',
        'origin_url': 'https://github.com/hustvl/Vim',
        # The HF repo metadata says apache-2.0; the model card text says "Non-commercial license".
        'license': 'apache-2.0', 'notes': ('HF model card text: "License: Non-commercial license"',),
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'vim_tiny_patch16_224.in1k': _cfg(
        hf_hub_id='hustvl/Vim-tiny-midclstok', hf_hub_filename='vim_t_midclstok_76p1acc.pth'),
    'vim_tiny_patch16_stride8_224.in1k': _cfg(
        hf_hub_id='hustvl/Vim-tiny-midclstok', hf_hub_filename='vim_t_midclstok_ft_78p3acc.pth'),
    'vim_small_patch16_224.in1k': _cfg(
        hf_hub_id='hustvl/Vim-small-midclstok', hf_hub_filename='vim_s_midclstok_80p5acc.pth'),
    'vim_small_patch16_stride8_224.in1k': _cfg(
        hf_hub_id='hustvl/Vim-small-midclstok', hf_hub_filename='vim_s_midclstok_ft_81p6acc.pth'),
    # File name seen in a third-party README, not listed on the HF page.
    'vim_base_patch16_224.in1k': _cfg(
        hf_hub_id='hustvl/Vim-base-midclstok', hf_hub_filename='vim_b_midclstok_81p9acc.pth'),
    'test_vim': _cfg(input_size=(3, 64, 64), license=None, notes=None),
})


@register_model
def vim_tiny_patch16_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-Ti (7.1M params, 76.1% top-1): D=192, depth 24, middle class token."""
    model_args = dict(embed_dim=192, depth=24)
    return _create_vim('vim_tiny_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vim_tiny_patch16_stride8_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-Ti+ (78.3%): Vim-Ti with patch stride 8 (27x27 tokens), fine-tuned from Vim-Ti."""
    model_args = dict(embed_dim=192, depth=24, patch_stride=8)
    return _create_vim('vim_tiny_patch16_stride8_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vim_small_patch16_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-S (25.8M params, 80.5% top-1): D=384, depth 24, middle class token."""
    model_args = dict(embed_dim=384, depth=24)
    return _create_vim('vim_small_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vim_small_patch16_stride8_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-S+ (81.6%): Vim-S with patch stride 8 (27x27 tokens), fine-tuned from Vim-S."""
    model_args = dict(embed_dim=384, depth=24, patch_stride=8)
    return _create_vim('vim_small_patch16_stride8_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vim_base_patch16_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-B (97.6M params, 81.9% top-1): D=768, depth 24, middle class token."""
    model_args = dict(embed_dim=768, depth=24)
    return _create_vim('vim_base_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def test_vim(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Tiny Vim for tests: D=64, depth 4, 64x64 input (4x4 patches + middle class token)."""
    model_args = dict(img_size=64, embed_dim=64, depth=4)
    return _create_vim('test_vim', pretrained=pretrained, **dict(model_args, **kwargs))

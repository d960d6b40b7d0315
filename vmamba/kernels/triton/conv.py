"""Triton kernels of the fused depthwise conv + SiLU over token-major sequences (Vim's bidirectional mixer).

``x`` is ``(batch, L, E)`` with unit channel stride (any batch / position strides); ``weight`` is ``(G*E, W)`` with
``W = 2P + 1``; output channel ``o = g*E + c`` reads input channel ``c = o % E``::

    pre[b, t, o] = bias[o] + sum_k weight[o, k] * x[b, t + k - P, o % E]     (zeros outside [0, L))
    y = silu(pre)                                                            (batch, L, G*E) contiguous

All math is fp32 in registers; tensors in memory have the dtypes below. Tiles are ``(BLOCK_T positions, BLOCK_C
channels)`` with channels the contiguous axis.

* ``_conv_silu_fwd_kernel``: program = (position block, output-channel block, batch). ``y`` in x's dtype.
* ``_conv_silu_bwd_dpre_kernel``: program = (position block, output-channel block, group of ``batch_per_program``
  batch entries, the last one ragged), looping over its batch entries. Recomputes ``pre`` and stores
  ``dpre = dy * silu'(pre)`` ``(batch, L, G*E)`` in **x's dtype** (fp16 / bf16 / fp32: for fp16 / bf16 the rounding
  autograd applies between silu's backward and the conv's backward; fp32 keeps fp32). Its partial ``dweight`` /
  ``dbias`` sums use the unrounded fp32 ``dpre`` and accumulate in fp32 registers over the program's positions and
  batch entries: one fp32 row per (batch group, position block), ``(cdiv(batch, batch_per_program) * position
  blocks, G*E, W)`` / ``(..., G*E)``, row ``batch group * position blocks + position block`` (no atomics:
  deterministic); the launcher sums the rows and casts to weight's / bias's dtype.
* ``_conv_silu_bwd_dx_kernel``: program = (position block, input-channel block, batch); reads ``dpre`` (x's dtype),
  sums in fp32, writes ``dx`` in x's dtype.
  ``dx[b, s, c] = sum_g sum_k weight[gE+c, k] * dpre[b, s - k + P, gE+c]``.

Launch configurations are the module constants ``_FWD_CONFIG`` / ``_DPRE_CONFIG`` / ``_DX_CONFIG``; each launcher
takes an explicit one as a keyword (benchmarks sweep them: ``benchmarks/bench_conv.py``).

The PyTorch twin is ``depthwise_conv_silu_ref`` in ``vmamba/kernels/conv.py``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .host import cdiv, interpreting, next_power_of_2

__all__ = ['depthwise_conv_silu_fwd', 'depthwise_conv_silu_bwd']


@triton.jit
def _shifted_input(x_base, offs_t, offs_in, mask_c, length, stride_xt, shift):
    """fp32 (BLOCK_T, BLOCK_C) tile of x at positions ``offs_t + shift`` and input channels ``offs_in`` (zeros
    outside [0, L) and where ``mask_c`` is off)."""
    pos = offs_t + shift
    m = ((pos >= 0) & (pos < length))[:, None] & mask_c[None, :]
    return tl.load(x_base + pos.to(tl.int64)[:, None] * stride_xt + offs_in[None, :], mask=m,
                   other=0.0).to(tl.float32)


@triton.jit
def _conv_pre(acc, x_base, w_ptr, offs_t, offs_o, offs_in, mask_o, length, stride_xt, WIDTH: tl.constexpr):
    """``acc`` (the bias rows) + the "same"-padded depthwise conv of x for output channels ``offs_o``:
    the (BLOCK_T, BLOCK_C) pre-activation, fp32."""
    pad: tl.constexpr = (WIDTH - 1) // 2
    for k in tl.static_range(WIDTH):
        wv = tl.load(w_ptr + offs_o * WIDTH + k, mask=mask_o, other=0.0).to(tl.float32)
        acc += _shifted_input(x_base, offs_t, offs_in, mask_o, length, stride_xt, k - pad) * wv[None, :]
    return acc


@triton.jit
def _conv_silu_fwd_kernel(
        x_ptr, w_ptr, b_ptr, y_ptr,
        length, channels, out_channels,
        stride_xb, stride_xt,
        HAS_BIAS: tl.constexpr, WIDTH: tl.constexpr,
        BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_c = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)

    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_o = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_o = offs_o < out_channels
    offs_in = offs_o % channels
    x_base = x_ptr + batch * stride_xb

    acc = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_o, mask=mask_o, other=0.0).to(tl.float32)[None, :]
    acc = _conv_pre(acc, x_base, w_ptr, offs_t, offs_o, offs_in, mask_o, length, stride_xt, WIDTH)

    y = acc * tl.sigmoid(acc)
    out_offs = (batch * length + offs_t.to(tl.int64)[:, None]) * out_channels + offs_o[None, :]
    tl.store(y_ptr + out_offs, y.to(y_ptr.dtype.element_ty), mask=(offs_t < length)[:, None] & mask_o[None, :])


@triton.jit
def _conv_silu_bwd_dpre_kernel(
        x_ptr, w_ptr, b_ptr, dy_ptr, dpre_ptr, dw_part_ptr, db_part_ptr,
        batch, length, channels, out_channels, batch_per_program,
        stride_xb, stride_xt,
        HAS_BIAS: tl.constexpr, WIDTH: tl.constexpr, WIDTH_P2: tl.constexpr,
        BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_b = tl.program_id(2)
    # One partial dweight / dbias row per (batch group, position block).
    row = pid_b.to(tl.int64) * tl.num_programs(0) + pid_t
    pad: tl.constexpr = (WIDTH - 1) // 2

    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_o = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_k = tl.arange(0, WIDTH_P2)
    mask_o = offs_o < out_channels
    mask = (offs_t < length)[:, None] & mask_o[None, :]
    offs_in = offs_o % channels
    bias = tl.zeros([BLOCK_C], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_o, mask=mask_o, other=0.0).to(tl.float32)

    # fp32 partial sums over this program's batch entries and positions: dbias per channel, dweight as (tap,
    # channel) with the taps padded to a power of two (row k: tap k). Channels along the second axis like the tiles:
    # with the default launch each thread then owns whole columns and ``offs_k == k`` is known per register.
    dw_acc = tl.zeros([WIDTH_P2, BLOCK_C], dtype=tl.float32)
    db_acc = tl.zeros([BLOCK_C], dtype=tl.float32)
    batch_start = pid_b.to(tl.int64) * batch_per_program
    for i in range(0, tl.minimum(batch_per_program, batch - pid_b * batch_per_program)):
        b = batch_start + i
        x_base = x_ptr + b * stride_xb
        tile_offs = (b * length + offs_t.to(tl.int64)[:, None]) * out_channels + offs_o[None, :]

        pre = _conv_pre(tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32) + bias[None, :], x_base, w_ptr, offs_t, offs_o,
                        offs_in, mask_o, length, stride_xt, WIDTH)
        sig = tl.sigmoid(pre)
        dy = tl.load(dy_ptr + tile_offs, mask=mask, other=0.0).to(tl.float32)
        dpre = dy * sig * (1.0 + pre * (1.0 - sig))
        # Stored in x's dtype (the rounding autograd applies between silu's and the conv's backward); the partial
        # sums below use the fp32 values. Masked-out positions / channels hold dpre = 0 (dy loads as 0).
        tl.store(dpre_ptr + tile_offs, dpre.to(dpre_ptr.dtype.element_ty), mask=mask)

        # Sums over this block's positions. With the default launch (1 warp, all positions of a channel in one
        # thread) the reductions over axis 0 stay in registers.
        if HAS_BIAS:
            db_acc += tl.sum(dpre, axis=0)
        for k in tl.static_range(WIDTH):
            tap = tl.sum(dpre * _shifted_input(x_base, offs_t, offs_in, mask_o, length, stride_xt, k - pad), axis=0)
            dw_acc += tl.where(offs_k[:, None] == k, tap[None, :], 0.0)

    part = row * out_channels + offs_o
    if HAS_BIAS:
        tl.store(db_part_ptr + part, db_acc, mask=mask_o)
    tl.store(dw_part_ptr + part[None, :] * WIDTH + offs_k[:, None], dw_acc,
             mask=(offs_k < WIDTH)[:, None] & mask_o[None, :])


@triton.jit
def _conv_silu_bwd_dx_kernel(
        dpre_ptr, w_ptr, dx_ptr,
        length, channels, groups_out,
        WIDTH: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_c = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    pad: tl.constexpr = (WIDTH - 1) // 2
    out_channels = channels * groups_out

    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < channels
    acc = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32)
    for g in range(groups_out):
        offs_o = g * channels + offs_c
        for k in tl.static_range(WIDTH):
            pos = offs_t + (pad - k)
            m = ((pos >= 0) & (pos < length))[:, None] & mask_c[None, :]
            d = tl.load(dpre_ptr + (batch * length + pos.to(tl.int64)[:, None]) * out_channels + offs_o[None, :],
                        mask=m, other=0.0)
            wv = tl.load(w_ptr + offs_o * WIDTH + k, mask=mask_c, other=0.0).to(tl.float32)
            acc += d.to(tl.float32) * wv[None, :]
    out_offs = (batch * length + offs_t.to(tl.int64)[:, None]) * channels + offs_c[None, :]
    tl.store(dx_ptr + out_offs, acc.to(dx_ptr.dtype.element_ty), mask=(offs_t < length)[:, None] & mask_c[None, :])


# ----------------------------------------------------------------------------------------------------------------
# Launchers

# Launch configurations: (BLOCK_T, BLOCK_C, num_warps) for the forward and dx kernels, (BLOCK_T, BLOCK_C,
# num_warps, batch_per_program) for the dpre kernel; ``benchmarks/bench_conv.py --sweep`` times candidates.
# Forward / dx tiles from an H100 sweep at Vim-S sizes (batch 8-64, L = 197, G*E = 1536). The dpre kernel wants
# 1 warp (its reductions over positions then stay inside threads) and small tiles (larger ones spill registers:
# 4-20x slower). Each of its programs covers ``batch_per_program`` batch entries: the partial dweight / dbias rows
# shrink by that factor (Vim-S, batch 128: 16 x 7 rows instead of 128 x 13). H100 sweep (v13/run7, whole backward):
# dpre 32 x 32, 8 batch entries: Vim-S 0.371 -> 0.335 ms (16 x 32: 0.371; v12's 16 x 64 without batch loop and
# fp32 dpre: ~0.375 in-model), Vim-T 0.205 -> 0.183 ms.
_FWD_CONFIG = (16, 128, 4)
_DPRE_CONFIG = (32, 32, 1, 8)
_DX_CONFIG = (16, 128, 4)

# Under the interpreter: tiny tiles and 2 batch entries per dpre program, so that the tests' small shapes cover
# several blocks, ragged position / channel edges and (odd batch) a ragged last batch group.
_INTERPRET_CONFIG = (4, 8, 1)
_INTERPRET_DPRE_CONFIG = (4, 8, 1, 2)


def _tiles(channels: int, config: Optional[Tuple[int, ...]], default: Tuple[int, ...],
           interpret_default: Tuple[int, ...]) -> Tuple[int, ...]:
    """``config`` (None: the module default, tiny under the interpreter) with BLOCK_C capped at ``channels``
    rounded up to a power of two (at least 16)."""
    if config is None:
        config = interpret_default if interpreting() else default
    config = tuple(int(v) for v in config)
    if len(config) != len(default) or min(config) < 1:
        raise ValueError(f'launch config must be {len(default)} positive ints, got {config}')
    block_t, block_c, *rest = config
    return (block_t, min(block_c, max(16, next_power_of_2(channels))), *rest)


def _check_x(x: torch.Tensor) -> None:
    if x.stride(2) != 1:
        raise ValueError(f'x must have unit channel stride, got strides {tuple(x.stride())}')


def depthwise_conv_silu_fwd(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                            groups_out: int, *, config: Optional[Tuple[int, int, int]] = None) -> torch.Tensor:
    """x (batch, L, E) unit channel stride, weight (G*E, W) contiguous, bias (G*E,) or None
    -> silu(conv) (batch, L, G*E) contiguous in x's dtype.

    ``config``: (BLOCK_T, BLOCK_C, num_warps); None: ``_FWD_CONFIG``."""
    _check_x(x)
    batch, length, channels = x.shape
    out_channels, width = weight.shape
    y = x.new_empty((batch, length, out_channels))
    if y.numel() == 0:
        return y
    block_t, block_c, num_warps = _tiles(out_channels, config, _FWD_CONFIG, _INTERPRET_CONFIG)
    grid = (cdiv(length, block_t), cdiv(out_channels, block_c), batch)
    _conv_silu_fwd_kernel[grid](
        x, weight, y if bias is None else bias, y,
        length, channels, out_channels, x.stride(0), x.stride(1),
        HAS_BIAS=bias is not None, WIDTH=width, BLOCK_T=block_t, BLOCK_C=block_c, num_warps=num_warps)
    return y


def depthwise_conv_silu_bwd(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                            bias: Optional[torch.Tensor], groups_out: int, *,
                            dpre_config: Optional[Tuple[int, int, int, int]] = None,
                            dx_config: Optional[Tuple[int, int, int]] = None,
                            ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """grad_out (batch, L, G*E) contiguous; x, weight, bias as for the forward
    -> dx (batch, L, E) contiguous in x's dtype, dweight (G*E, W) in weight's dtype, dbias (G*E,) or None.

    ``dpre_config``: (BLOCK_T, BLOCK_C, num_warps, batch_per_program), None: ``_DPRE_CONFIG``; ``dx_config``:
    (BLOCK_T, BLOCK_C, num_warps), None: ``_DX_CONFIG``."""
    _check_x(x)
    batch, length, channels = x.shape
    out_channels, width = weight.shape
    dx = x.new_empty((batch, length, channels))
    if dx.numel() == 0 or out_channels == 0:
        dweight = torch.zeros_like(weight, memory_format=torch.contiguous_format)
        dbias = None if bias is None else torch.zeros_like(bias, memory_format=torch.contiguous_format)
        return dx.zero_(), dweight, dbias

    # Kernel 1: dpre in x's dtype + one fp32 partial dweight / dbias row per (batch group, position block).
    block_t, block_c, num_warps, batch_per_program = _tiles(out_channels, dpre_config, _DPRE_CONFIG,
                                                            _INTERPRET_DPRE_CONFIG)
    num_blocks_t = cdiv(length, block_t)
    num_rows = cdiv(batch, batch_per_program) * num_blocks_t
    dpre = torch.empty((batch, length, out_channels), device=x.device, dtype=x.dtype)
    dw_part = torch.empty((num_rows, out_channels, width), device=x.device, dtype=torch.float32)
    db_part = dw_part if bias is None else torch.empty((num_rows, out_channels), device=x.device, dtype=torch.float32)
    grid = (num_blocks_t, cdiv(out_channels, block_c), cdiv(batch, batch_per_program))
    _conv_silu_bwd_dpre_kernel[grid](
        x, weight, dpre if bias is None else bias, grad_out, dpre, dw_part, db_part,
        batch, length, channels, out_channels, batch_per_program, x.stride(0), x.stride(1),
        HAS_BIAS=bias is not None, WIDTH=width, WIDTH_P2=next_power_of_2(width),
        BLOCK_T=block_t, BLOCK_C=block_c, num_warps=num_warps)

    # Kernel 2: dx, summing the G groups and W taps.
    block_t, block_c, num_warps = _tiles(channels, dx_config, _DX_CONFIG, _INTERPRET_CONFIG)
    grid = (cdiv(length, block_t), cdiv(channels, block_c), batch)
    _conv_silu_bwd_dx_kernel[grid](
        dpre, weight, dx, length, channels, groups_out,
        WIDTH=width, BLOCK_T=block_t, BLOCK_C=block_c, num_warps=num_warps)

    dweight = dw_part.sum(0).to(weight.dtype)
    dbias = None if bias is None else db_part.sum(0).to(bias.dtype)
    return dx, dweight, dbias

"""Triton kernels of the fused depthwise conv + SiLU over token-major sequences (Vim's bidirectional mixer).

``x`` is ``(batch, L, E)`` with unit channel stride (any batch / position strides); ``weight`` is ``(G*E, W)`` with
``W = 2P + 1``; output channel ``o = g*E + c`` reads input channel ``c = o % E``::

    pre[b, t, o] = bias[o] + sum_k weight[o, k] * x[b, t + k - P, o % E]     (zeros outside [0, L))
    y = silu(pre)                                                            (batch, L, G*E) contiguous

All math is fp32. Tiles are ``(BLOCK_T positions, BLOCK_C channels)`` with channels the contiguous axis.

* ``_conv_silu_fwd_kernel``: program = (position block, output-channel block, batch).
* ``_conv_silu_bwd_dpre_kernel``: program = (position block, output-channel block, batch). Recomputes ``pre``,
  stores ``dpre = dy * silu'(pre)`` (fp32) and the block's partial ``dweight`` / ``dbias`` rows, fp32
  ``(batch * position blocks, G*E, W)`` / ``(batch * position blocks, G*E)`` (no atomics); the launcher sums them.
* ``_conv_silu_bwd_dx_kernel``: program = (position block, input-channel block, batch).
  ``dx[b, s, c] = sum_g sum_k weight[gE+c, k] * dpre[b, s - k + P, gE+c]``.

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
    pad: tl.constexpr = (WIDTH - 1) // 2

    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_o = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_o = offs_o < out_channels
    offs_in = offs_o % channels
    x_base = x_ptr + batch * stride_xb

    acc = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_o, mask=mask_o, other=0.0).to(tl.float32)[None, :]
    for k in tl.static_range(WIDTH):
        pos = offs_t + (k - pad)
        m = ((pos >= 0) & (pos < length))[:, None] & mask_o[None, :]
        xv = tl.load(x_base + pos.to(tl.int64)[:, None] * stride_xt + offs_in[None, :], mask=m, other=0.0)
        wv = tl.load(w_ptr + offs_o * WIDTH + k, mask=mask_o, other=0.0).to(tl.float32)
        acc += xv.to(tl.float32) * wv[None, :]

    y = acc * tl.sigmoid(acc)
    out_offs = (batch * length + offs_t.to(tl.int64)[:, None]) * out_channels + offs_o[None, :]
    tl.store(y_ptr + out_offs, y.to(y_ptr.dtype.element_ty), mask=(offs_t < length)[:, None] & mask_o[None, :])


@triton.jit
def _conv_silu_bwd_dpre_kernel(
        x_ptr, w_ptr, b_ptr, dy_ptr, dpre_ptr, dw_part_ptr, db_part_ptr,
        length, channels, out_channels,
        stride_xb, stride_xt,
        HAS_BIAS: tl.constexpr, WIDTH: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_c = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    row = batch * tl.num_programs(0) + pid_t  # one partial dweight / dbias row per (batch, position block)
    pad: tl.constexpr = (WIDTH - 1) // 2

    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_o = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_o = offs_o < out_channels
    mask = (offs_t < length)[:, None] & mask_o[None, :]
    offs_in = offs_o % channels
    x_base = x_ptr + batch * stride_xb
    tile_offs = (batch * length + offs_t.to(tl.int64)[:, None]) * out_channels + offs_o[None, :]

    pre = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32)
    if HAS_BIAS:
        pre += tl.load(b_ptr + offs_o, mask=mask_o, other=0.0).to(tl.float32)[None, :]
    for k in tl.static_range(WIDTH):
        pos = offs_t + (k - pad)
        m = ((pos >= 0) & (pos < length))[:, None] & mask_o[None, :]
        xv = tl.load(x_base + pos.to(tl.int64)[:, None] * stride_xt + offs_in[None, :], mask=m, other=0.0)
        wv = tl.load(w_ptr + offs_o * WIDTH + k, mask=mask_o, other=0.0).to(tl.float32)
        pre += xv.to(tl.float32) * wv[None, :]
    sig = tl.sigmoid(pre)
    dy = tl.load(dy_ptr + tile_offs, mask=mask, other=0.0).to(tl.float32)
    dpre = dy * sig * (1.0 + pre * (1.0 - sig))
    tl.store(dpre_ptr + tile_offs, dpre, mask=mask)

    # Partial sums over this block's positions. With the default launch (1 warp, all positions of a channel in
    # one thread) the reductions over axis 0 stay in registers.
    part = row * out_channels + offs_o
    if HAS_BIAS:
        tl.store(db_part_ptr + part, tl.sum(dpre, axis=0), mask=mask_o)
    for k in tl.static_range(WIDTH):
        pos = offs_t + (k - pad)
        m = ((pos >= 0) & (pos < length))[:, None] & mask_o[None, :]
        xv = tl.load(x_base + pos.to(tl.int64)[:, None] * stride_xt + offs_in[None, :], mask=m, other=0.0)
        tl.store(dw_part_ptr + part * WIDTH + k, tl.sum(dpre * xv.to(tl.float32), axis=0), mask=mask_o)


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
            acc += d * wv[None, :]
    out_offs = (batch * length + offs_t.to(tl.int64)[:, None]) * channels + offs_c[None, :]
    tl.store(dx_ptr + out_offs, acc.to(dx_ptr.dtype.element_ty), mask=(offs_t < length)[:, None] & mask_c[None, :])


# ----------------------------------------------------------------------------------------------------------------
# Launchers

# (BLOCK_T, BLOCK_C, num_warps) per kernel, from an H100 sweep at Vim-S sizes (batch 8-64, L = 197, G*E = 1536).
# The dpre kernel wants 1 warp (its reductions over positions then stay inside threads) and small tiles (larger
# ones spill registers: 4-20x slower).
_FWD_CONFIG = (16, 128, 4)
_DPRE_CONFIG = (16, 64, 1)
_DX_CONFIG = (16, 128, 4)


def _config(channels: int, config: Tuple[int, int, int]) -> Tuple[int, int, int]:
    """Tile sizes for ``channels``; tiny under the interpreter (tests then cover several blocks and ragged edges)."""
    if interpreting():
        return 4, 8, 1
    block_t, block_c, num_warps = config
    return block_t, min(block_c, max(16, next_power_of_2(channels))), num_warps


def _check_x(x: torch.Tensor) -> None:
    if x.stride(2) != 1:
        raise ValueError(f'x must have unit channel stride, got strides {tuple(x.stride())}')


def depthwise_conv_silu_fwd(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                            groups_out: int) -> torch.Tensor:
    """x (batch, L, E) unit channel stride, weight (G*E, W) contiguous, bias (G*E,) or None
    -> silu(conv) (batch, L, G*E) contiguous in x's dtype."""
    _check_x(x)
    batch, length, channels = x.shape
    out_channels, width = weight.shape
    y = x.new_empty((batch, length, out_channels))
    if y.numel() == 0:
        return y
    block_t, block_c, num_warps = _config(out_channels, _FWD_CONFIG)
    grid = (cdiv(length, block_t), cdiv(out_channels, block_c), batch)
    _conv_silu_fwd_kernel[grid](
        x, weight, y if bias is None else bias, y,
        length, channels, out_channels, x.stride(0), x.stride(1),
        HAS_BIAS=bias is not None, WIDTH=width, BLOCK_T=block_t, BLOCK_C=block_c, num_warps=num_warps)
    return y


def depthwise_conv_silu_bwd(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                            bias: Optional[torch.Tensor], groups_out: int
                            ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """grad_out (batch, L, G*E) contiguous; x, weight, bias as for the forward
    -> dx (batch, L, E) contiguous in x's dtype, dweight (G*E, W) in weight's dtype, dbias (G*E,) or None."""
    _check_x(x)
    batch, length, channels = x.shape
    out_channels, width = weight.shape
    dx = x.new_empty((batch, length, channels))
    if dx.numel() == 0 or out_channels == 0:
        dweight = torch.zeros_like(weight, memory_format=torch.contiguous_format)
        dbias = None if bias is None else torch.zeros_like(bias, memory_format=torch.contiguous_format)
        return dx.zero_(), dweight, dbias

    # Kernel 1: dpre + one partial dweight / dbias row per (batch, position block).
    block_t, block_c, num_warps = _config(out_channels, _DPRE_CONFIG)
    num_blocks_t = cdiv(length, block_t)
    dpre = torch.empty((batch, length, out_channels), device=x.device, dtype=torch.float32)
    dw_part = torch.empty((batch * num_blocks_t, out_channels, width), device=x.device, dtype=torch.float32)
    db_part = dw_part if bias is None else torch.empty((batch * num_blocks_t, out_channels), device=x.device,
                                                        dtype=torch.float32)
    grid = (num_blocks_t, cdiv(out_channels, block_c), batch)
    _conv_silu_bwd_dpre_kernel[grid](
        x, weight, dpre if bias is None else bias, grad_out, dpre, dw_part, db_part,
        length, channels, out_channels, x.stride(0), x.stride(1),
        HAS_BIAS=bias is not None, WIDTH=width, BLOCK_T=block_t, BLOCK_C=block_c, num_warps=num_warps)

    # Kernel 2: dx, summing the G groups and W taps.
    block_t, block_c, num_warps = _config(channels, _DX_CONFIG)
    grid = (cdiv(length, block_t), cdiv(channels, block_c), batch)
    _conv_silu_bwd_dx_kernel[grid](
        dpre, weight, dx, length, channels, groups_out,
        WIDTH=width, BLOCK_T=block_t, BLOCK_C=block_c, num_warps=num_warps)

    dweight = dw_part.sum(0).to(weight.dtype)
    dbias = None if bias is None else db_part.sum(0).to(bias.dtype)
    return dx, dweight, dbias

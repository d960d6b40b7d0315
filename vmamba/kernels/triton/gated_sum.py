"""Triton kernels of the gated group sum closing Vim's bidirectional mixer (token-major sequences).

``y`` is ``(batch, L, G*E)``, ``z`` is ``(batch, L, E)``; both have unit channel stride and any batch / position
strides (e.g. ``z = xz[..., E:]``). With ``sig = sigmoid(z)`` and all math in fp32::

    s[b, t, e]   = sum_g y[b, t, g*E + e]                            (batch, L, E) contiguous, y's dtype
    out[b, t, e] = s * scale * z * sig                               (batch, L, E) contiguous, y's dtype
    dy[b, t, g*E + e] = dout * scale * z * sig           (every g)   (batch, L, G*E) contiguous, s's dtype
    dz[b, t, e]  = dout * scale * s * sig * (1 + z * (1 - sig))      (batch, L, E) contiguous, z's dtype

``s`` is the forward's second output, saved for the backward instead of the G times wider ``y``; the backward
reads it rounded to y's dtype.

* ``_gated_sum_fwd_kernel`` / ``_gated_sum_bwd_kernel``: program = (row block, channel block), a
  ``(BLOCK_R rows, BLOCK_E channels)`` tile with channels the contiguous axis; a row is one ``(b, t)`` pair
  (``b = row // L``, ``t = row % L``, so any batch / position strides are read in place). The G groups are a
  ``static_range`` loop. Every element is read or written once: memory-bound.

The PyTorch twin is ``gated_group_sum_ref`` in ``vmamba/kernels/gated_sum.py``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .host import cdiv, interpreting, next_power_of_2

__all__ = ['gated_group_sum_fwd', 'gated_group_sum_bwd']


@triton.jit
def _tile(num_rows, length, channels, BLOCK_R: tl.constexpr, BLOCK_E: tl.constexpr):
    """This program's (BLOCK_R rows, BLOCK_E channels) tile: rows (int64), channels, mask, and each row's (b, t)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    mask = (rows < num_rows)[:, None] & (offs_e < channels)[None, :]
    batch = rows // length
    return rows, offs_e, mask, batch, rows - batch * length


@triton.jit
def _load_z(z_ptr, batch, pos, offs_e, mask, stride_zb, stride_zt):
    return tl.load(z_ptr + (batch * stride_zb + pos * stride_zt)[:, None] + offs_e[None, :],
                   mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _gated_sum_fwd_kernel(
        y_ptr, z_ptr, out_ptr, s_ptr,
        num_rows, length, channels, scale,
        stride_yb, stride_yt, stride_zb, stride_zt,
        GROUPS: tl.constexpr, STORE_SUM: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_E: tl.constexpr,
):
    rows, offs_e, mask, batch, pos = _tile(num_rows, length, channels, BLOCK_R, BLOCK_E)
    y_rows = y_ptr + (batch * stride_yb + pos * stride_yt)[:, None]

    s = tl.zeros([BLOCK_R, BLOCK_E], dtype=tl.float32)
    for g in tl.static_range(GROUPS):
        s += tl.load(y_rows + (g * channels + offs_e)[None, :], mask=mask, other=0.0).to(tl.float32)
    zv = _load_z(z_ptr, batch, pos, offs_e, mask, stride_zb, stride_zt)
    out = s * scale * (zv * tl.sigmoid(zv))

    tile_offs = rows[:, None] * channels + offs_e[None, :]
    tl.store(out_ptr + tile_offs, out.to(out_ptr.dtype.element_ty), mask=mask)
    if STORE_SUM:
        tl.store(s_ptr + tile_offs, s.to(s_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gated_sum_bwd_kernel(
        dout_ptr, z_ptr, s_ptr, dy_ptr, dz_ptr,
        num_rows, length, channels, scale,
        stride_zb, stride_zt,
        GROUPS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_E: tl.constexpr,
):
    rows, offs_e, mask, batch, pos = _tile(num_rows, length, channels, BLOCK_R, BLOCK_E)
    tile_offs = rows[:, None] * channels + offs_e[None, :]
    g = tl.load(dout_ptr + tile_offs, mask=mask, other=0.0).to(tl.float32) * scale
    sv = tl.load(s_ptr + tile_offs, mask=mask, other=0.0).to(tl.float32)
    zv = _load_z(z_ptr, batch, pos, offs_e, mask, stride_zb, stride_zt)
    sig = tl.sigmoid(zv)

    dz = g * sv * (sig * (1.0 + zv * (1.0 - sig)))
    tl.store(dz_ptr + tile_offs, dz.to(dz_ptr.dtype.element_ty), mask=mask)

    dy = (g * (zv * sig)).to(dy_ptr.dtype.element_ty)
    dy_rows = dy_ptr + rows[:, None] * (GROUPS * channels)
    for k in tl.static_range(GROUPS):
        tl.store(dy_rows + (k * channels + offs_e)[None, :], dy, mask=mask)


# ----------------------------------------------------------------------------------------------------------------
# Launchers

_TILE_ELEMENTS = 2048  # BLOCK_R * BLOCK_E per program (per tensor): 16 elements a thread at 4 warps
_MAX_BLOCK_E = 256
_NUM_WARPS = 4


def _config(channels: int) -> Tuple[int, int, int]:
    """(BLOCK_R, BLOCK_E, num_warps) for ``channels``; tiny under the interpreter (tests then cover several row and
    channel blocks and ragged edges).

    BLOCK_E is the largest of 256 / 128 / 64 dividing E (no masked lanes: E = 384, 768, 1536 of Vim), else
    ``next_pow2(E)`` capped at 256; rows fill the tile. Not tuned on a GPU yet."""
    if interpreting():
        return 4, 8, 1
    block_e = next((b for b in (256, 128, 64) if channels % b == 0),
                   min(_MAX_BLOCK_E, max(16, next_power_of_2(channels))))
    return max(1, _TILE_ELEMENTS // block_e), block_e, _NUM_WARPS


def _launch(num_rows: int, channels: int) -> Tuple[Tuple[int, int], int, int, int]:
    """(grid, BLOCK_R, BLOCK_E, num_warps) covering ``num_rows`` x ``channels`` with :func:`_config`'s tiles."""
    block_r, block_e, num_warps = _config(channels)
    return (cdiv(num_rows, block_r), cdiv(channels, block_e)), block_r, block_e, num_warps


def _check_unit_channel_stride(name: str, t: torch.Tensor) -> None:
    if t.shape[2] > 1 and t.stride(2) != 1:
        raise ValueError(f'{name} must have unit channel stride, got strides {tuple(t.stride())}')


def gated_group_sum_fwd(y: torch.Tensor, z: torch.Tensor, scale: float,
                        store_sum: bool = True) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """y (batch, L, G*E), z (batch, L, E), same dtype, unit channel strides
    -> (out, s), both (batch, L, E) contiguous in y's dtype: ``s = sum_g y``, ``out = s * scale * silu(z)``.
    ``store_sum=False`` (no backward to come): s is not written and None is returned in its place."""
    _check_unit_channel_stride('y', y)
    _check_unit_channel_stride('z', z)
    batch, length, channels = z.shape
    groups = y.shape[2] // channels
    out = y.new_empty((batch, length, channels))
    s = y.new_empty((batch, length, channels)) if store_sum else None
    if out.numel() == 0:
        return out, s
    num_rows = batch * length
    grid, block_r, block_e, num_warps = _launch(num_rows, channels)
    _gated_sum_fwd_kernel[grid](
        y, z, out, s if store_sum else out, num_rows, length, channels, float(scale),
        y.stride(0), y.stride(1), z.stride(0), z.stride(1),
        GROUPS=groups, STORE_SUM=store_sum, BLOCK_R=block_r, BLOCK_E=block_e, num_warps=num_warps)
    return out, s


def gated_group_sum_bwd(grad_out: torch.Tensor, z: torch.Tensor, s: torch.Tensor, scale: float,
                        groups: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """grad_out (batch, L, E) contiguous, z (batch, L, E) unit channel stride, s (batch, L, E) contiguous (the
    forward's group sum) -> dy (batch, L, G*E) contiguous in s's dtype, dz (batch, L, E) contiguous in z's dtype."""
    _check_unit_channel_stride('z', z)
    if not (grad_out.is_contiguous() and s.is_contiguous()):
        raise ValueError('grad_out and s must be contiguous')
    batch, length, channels = z.shape
    dy = s.new_empty((batch, length, groups * channels))
    dz = z.new_empty((batch, length, channels))
    if dz.numel() == 0:
        return dy, dz
    num_rows = batch * length
    grid, block_r, block_e, num_warps = _launch(num_rows, channels)
    _gated_sum_bwd_kernel[grid](
        grad_out, z, s, dy, dz, num_rows, length, channels, float(scale),
        z.stride(0), z.stride(1),
        GROUPS=groups, BLOCK_R=block_r, BLOCK_E=block_e, num_warps=num_warps)
    return dy, dz

"""Triton kernels that move token-major maps into scan routes and back (the layout change around the scan).

A token-major map is ``(batch, P, C)`` with channels contiguous (an NHWC map viewed as tokens). The selective scan
reads routes ``(batch, K, C, L)`` with positions contiguous. Both kernels are gathers (no atomics) driven by the
route index maps of :class:`vmamba.scans.ScanRoutes`:

* ``gather``: ``routes[b, k, c, l] = tokens[b, index[k, l], c]``. A program loads a (BLOCK_L, BLOCK_C) tile whose
  rows are contiguous channel vectors (coalesced for any route order) and stores it transposed along ``l``.
* ``merge``: ``tokens[b, p, c] = sum_m routes_flat[b, c, inverse[m, p]]`` with ``routes_flat[b, c, k * L + l] =
  routes[b, k, c, l]``: the sum of all visits of position ``p``, accumulated in fp32, stored channel-contiguous.
* ``merge + LayerNorm``: the merge of whole channel rows, normalised over the channels before the store (SS2D's
  ``out_norm``, fused for calls without autograd: the merged fp32 map is neither written nor read back).

Plain PyTorch twins of both live in ``vmamba/kernels/routes.py`` (the CPU path and the tests' reference).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .host import cdiv, interpreting, next_power_of_2

__all__ = ['gather_routes_triton', 'merge_routes_triton', 'merge_routes_norm_triton', 'NORM_MAX_CHANNELS']

NORM_MAX_CHANNELS = 4096  # the fused merge + LayerNorm holds whole (BLOCK_C = next_pow2(C)) channel rows


@triton.jit
def _gather_routes_kernel(
        tokens_ptr, index_ptr, out_ptr,
        num_positions, channels, num_routes, length,
        stride_tb, stride_tp,
        BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_l = tl.program_id(0)
    pid_c = tl.program_id(1)
    batch_route = tl.program_id(2).to(tl.int64)
    batch = batch_route // num_routes
    route = batch_route % num_routes

    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_l = offs_l < length
    mask = mask_l[:, None] & (offs_c < channels)[None, :]
    position = tl.load(index_ptr + route * length + offs_l, mask=mask_l, other=0).to(tl.int64)
    tile = tl.load(tokens_ptr + batch * stride_tb + position[:, None] * stride_tp + offs_c[None, :], mask=mask)
    out_offs = (batch_route * channels + offs_c[None, :]) * length + offs_l[:, None]
    tl.store(out_ptr + out_offs, tile.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _sum_visits(routes_ptr, inverse_ptr, batch, offs_p, offs_c, mask_p, mask,
                num_positions, channels, num_routes, length, num_visits,
                BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """(BLOCK_C, BLOCK_P) fp32 tile: for positions ``offs_p`` and channels ``offs_c`` the sum of all their visits
    in the routes (flat visit ``k * L + l`` -> routes[batch, k, c, l])."""
    acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    for visit in range(num_visits):
        flat = tl.load(inverse_ptr + visit * num_positions + offs_p, mask=mask_p, other=0).to(tl.int64)
        route = flat // length
        step = flat - route * length
        offs = ((batch * num_routes + route[None, :]) * channels + offs_c[:, None]) * length + step[None, :]
        acc += tl.load(routes_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    return acc


@triton.jit
def _merge_routes_kernel(
        routes_ptr, inverse_ptr, out_ptr,
        num_positions, channels, num_routes, length, num_visits,
        BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)

    # Tiles are (BLOCK_C, BLOCK_P): positions along the fast axis, so the loads of a route that walks the map in
    # row-major order are contiguous; the store is transposed to channel-contiguous rows by the compiler.
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = offs_p < num_positions
    mask = (offs_c < channels)[:, None] & mask_p[None, :]
    acc = _sum_visits(routes_ptr, inverse_ptr, batch, offs_p, offs_c, mask_p, mask,
                      num_positions, channels, num_routes, length, num_visits, BLOCK_P, BLOCK_C)
    out_offs = (batch * num_positions + offs_p[None, :]) * channels + offs_c[:, None]
    tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _merge_routes_norm_kernel(
        routes_ptr, inverse_ptr, w_ptr, b_ptr, out_ptr,
        num_positions, channels, num_routes, length, num_visits, inv_channels, eps,
        HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """The merge of :func:`_merge_routes_kernel` with all channels of BLOCK_P positions in one (BLOCK_C, BLOCK_P)
    tile, followed by the LayerNorm of each position over its channels (same math as the LayerNorm kernel: fp32,
    biased variance, ``1 / sqrt(var + eps)``); the merged map is never stored."""
    pid_p = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.arange(0, BLOCK_C)
    mask_p = offs_p < num_positions
    mask_c = offs_c < channels
    mask = mask_c[:, None] & mask_p[None, :]
    acc = _sum_visits(routes_ptr, inverse_ptr, batch, offs_p, offs_c, mask_p, mask,
                      num_positions, channels, num_routes, length, num_visits, BLOCK_P, BLOCK_C)
    mean = tl.sum(acc, axis=0) * inv_channels
    centred = tl.where(mask, acc - mean[None, :], 0.0)
    var = tl.sum(centred * centred, axis=0) * inv_channels
    y = centred * (1.0 / tl.sqrt(var + eps))[None, :]
    if HAS_WEIGHT:
        y = y * tl.load(w_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)[:, None]
    if HAS_BIAS:
        y = y + tl.load(b_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)[:, None]
    out_offs = (batch * num_positions + offs_p[None, :]) * channels + offs_c[:, None]
    tl.store(out_ptr + out_offs, y.to(out_ptr.dtype.element_ty), mask=mask)


def _block_c(channels: int) -> int:
    return min(64, max(16, next_power_of_2(channels)))


def gather_routes_triton(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(batch, P, C) with unit channel stride, (K, L) int positions -> (batch, K, C, L) contiguous."""
    batch, num_positions, channels = tokens.shape
    num_routes, length = index.shape
    out = tokens.new_empty((batch, num_routes, channels, length))
    if out.numel() == 0:
        return out
    block_l, block_c = 64, _block_c(channels)
    grid = (cdiv(length, block_l), cdiv(channels, block_c), batch * num_routes)
    _gather_routes_kernel[grid](
        tokens, index, out, num_positions, channels, num_routes, length, tokens.stride(0), tokens.stride(1),
        BLOCK_L=block_l, BLOCK_C=block_c, num_warps=4)
    return out


def merge_routes_triton(routes: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """(batch, K, C, L) contiguous, (M, P) int flat visits -> (batch, P, C) contiguous, in the routes' dtype."""
    batch, num_routes, channels, length = routes.shape
    num_visits, num_positions = inverse.shape
    out = routes.new_empty((batch, num_positions, channels))
    if out.numel() == 0:
        return out
    block_p, block_c = 64, _block_c(channels)
    grid = (cdiv(num_positions, block_p), cdiv(channels, block_c), batch)
    _merge_routes_kernel[grid](
        routes, inverse, out, num_positions, channels, num_routes, length, num_visits,
        BLOCK_P=block_p, BLOCK_C=block_c, num_warps=4)
    return out


def merge_routes_norm_triton(routes: torch.Tensor, inverse: torch.Tensor, weight: Optional[torch.Tensor],
                             bias: Optional[torch.Tensor], eps: float, out_dtype: torch.dtype) -> torch.Tensor:
    """LayerNorm over the channels of the merged map, fused: (batch, K, C, L) contiguous routes, (M, P) int flat
    visits, weight / bias (C,) contiguous or None -> (batch, P, C) contiguous in ``out_dtype`` (C <=
    ``NORM_MAX_CHANNELS``)."""
    batch, num_routes, channels, length = routes.shape
    num_visits, num_positions = inverse.shape
    if channels > NORM_MAX_CHANNELS:
        raise ValueError(f'the fused merge + LayerNorm handles C <= {NORM_MAX_CHANNELS}, got C = {channels}')
    out = routes.new_empty((batch, num_positions, channels), dtype=out_dtype)
    if out.numel() == 0:
        return out
    block_c = max(16, next_power_of_2(channels))
    block_p = 4 if interpreting() else max(1, min(64, 4096 // block_c))
    grid = (cdiv(num_positions, block_p), batch)
    _merge_routes_norm_kernel[grid](
        routes, inverse, out if weight is None else weight, out if bias is None else bias, out,
        num_positions, channels, num_routes, length, num_visits, 1.0 / channels, float(eps),
        HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, BLOCK_P=block_p, BLOCK_C=block_c,
        num_warps=4 if block_c * block_p <= 2048 else 8)
    return out

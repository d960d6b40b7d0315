"""Triton kernels that move token-major maps into scan routes and back (the layout change around the scan).

A token-major map is ``(batch, P, C)`` with channels contiguous (an NHWC map viewed as tokens). The selective scan
reads routes ``(batch, K, C, L)`` with positions contiguous. Both kernels are gathers (no atomics) driven by the
route index maps of :class:`vmamba.scans.ScanRoutes`:

* ``gather``: ``routes[b, k, c, l] = tokens[b, index[k, l], c]``. A program loads a (BLOCK_L, BLOCK_C) tile whose
  rows are contiguous channel vectors (coalesced for any route order) and stores it transposed along ``l``.
* ``merge``: ``tokens[b, p, c] = sum_m routes_flat[b, c, inverse[m, p]]`` with ``routes_flat[b, c, k * L + l] =
  routes[b, k, c, l]``: the sum of all visits of position ``p``, accumulated in fp32, stored channel-contiguous.
  Given the map's width, a program takes a ``TILE_H x TILE_W`` block of the map: every route that walks rows or
  columns then reads runs of ``TILE_W`` or ``TILE_H`` consecutive steps (whole 32-byte sectors), where a strip of
  consecutive positions of one row would give a column-major route one sector per element.

Plain PyTorch twins of both live in ``vmamba/kernels/routes.py`` (the CPU path and the tests' reference).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .host import cdiv, next_power_of_2

__all__ = ['gather_routes_triton', 'merge_routes_triton']


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
def _tile_positions(pid, height, width, tiles_w, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    """Row-major positions (and their mask) of the program's TILE_H x TILE_W block of a (height, width) map."""
    i = tl.arange(0, TILE_H * TILE_W)
    row = (pid // tiles_w) * TILE_H + i // TILE_W
    col = (pid % tiles_w) * TILE_W + i % TILE_W
    return row * width + col, (row < height) & (col < width)


@triton.jit
def _merge_routes_kernel(
        routes_ptr, inverse_ptr, out_ptr,
        num_positions, channels, num_routes, length, num_visits, height, width, tiles_w,
        TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    BLOCK_P: tl.constexpr = TILE_H * TILE_W
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)

    # Tiles are (BLOCK_C, BLOCK_P): positions along the fast axis, so the loads of a route are runs of consecutive
    # steps; the store is transposed to channel-contiguous rows by the compiler.
    offs_p, mask_p = _tile_positions(pid_p, height, width, tiles_w, TILE_H, TILE_W)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (offs_c < channels)[:, None] & mask_p[None, :]
    acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    for visit in range(num_visits):  # flat visit k * L + l -> routes[batch, k, c, l]
        flat = tl.load(inverse_ptr + visit * num_positions + offs_p, mask=mask_p, other=0).to(tl.int64)
        route = flat // length
        step = flat - route * length
        offs = ((batch * num_routes + route[None, :]) * channels + offs_c[:, None]) * length + step[None, :]
        acc += tl.load(routes_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    out_offs = (batch * num_positions + offs_p[None, :]) * channels + offs_c[:, None]
    tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


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


def _map_tiles(num_positions: int, width: int, tile: Optional[Tuple[int, int]]):
    """(height, width, (TILE_H, TILE_W), tiles per map row, tiles per map): 8 x 8 blocks of a map of known ``width``
    (> 0; a 32-byte sector holds 8 fp32), else strips of 64 consecutive positions (a 1 x P map)."""
    if width <= 0:
        width, tile = num_positions, tile or (1, 64)
    elif num_positions % width:
        raise ValueError(f'width {width} does not divide the {num_positions} positions of the map')
    tile = tile or (8, 8)
    height = num_positions // width
    tiles_w = cdiv(width, tile[1])
    return height, width, tile, tiles_w, cdiv(height, tile[0]) * tiles_w


def merge_routes_triton(routes: torch.Tensor, inverse: torch.Tensor, width: int = 0, *,
                        tile: Optional[Tuple[int, int]] = None, block_c: Optional[int] = None,
                        num_warps: int = 4) -> torch.Tensor:
    """(batch, K, C, L) contiguous, (M, P) int flat visits -> (batch, P, C) contiguous, in the routes' dtype.

    ``width``: the map's width (P = height * width; 0 = unknown: strips of 64 consecutive positions x up to 64
    channels, the layout before map blocks). With a width the default tile is 8 x 8 positions x 16 channels, the
    fastest or within 8% of it at all four VMamba-T stage shapes in fp32 and fp16 (``bench_scan.py
    --routes-sweep``, ``benchmarks/results/v10``). ``tile`` (TILE_H, TILE_W; powers of two) / ``block_c`` /
    ``num_warps``: other launch configurations (benchmarks)."""
    batch, num_routes, channels, length = routes.shape
    num_visits, num_positions = inverse.shape
    out = routes.new_empty((batch, num_positions, channels))
    if out.numel() == 0:
        return out
    block_c = block_c or (_block_c(channels) if width <= 0 else 16)
    height, width, tile, tiles_w, programs = _map_tiles(num_positions, width, tile)
    grid = (programs, cdiv(channels, block_c), batch)
    _merge_routes_kernel[grid](
        routes, inverse, out, num_positions, channels, num_routes, length, num_visits, height, width, tiles_w,
        TILE_H=tile[0], TILE_W=tile[1], BLOCK_C=block_c, num_warps=num_warps)
    return out

"""Triton kernels of the LayerNorm and RMSNorm over the last dim (channels-last maps, token sequences).

``x`` is viewed as ``(M, C)`` rows: unit column stride, one row stride (e.g. ``x_wide[..., :C]`` is read in place).
A program owns a ``(BLOCK_M, BLOCK_C)`` tile, ``BLOCK_C = next_pow2(C)`` (a whole row per tile row, masked past C),
so the per-row reductions stay in registers and one program normalises many short rows (PyTorch's CUDA kernel
spends one thread block per row). All math is fp32; means multiply by ``1/C`` from the host (Triton's fp32 ``/``
is approximate, and for C = 1 the backward amplifies its ulp by rstd = 1/sqrt(eps))::

    mean = sum_C(x) / C;  var = sum_C((x - mean)^2) / C;  rstd = 1 / sqrt(var + eps)
    y = (x - mean) * rstd * weight + bias                                   (M, C) contiguous, out dtype
    xhat = (x - mean) * rstd;  g = dy * weight
    dx = rstd * (g - mean_C(g) - xhat * mean_C(g * xhat))                   (M, C) contiguous, x's dtype
    dweight = sum_M(dy * xhat);  dbias = sum_M(dy)

With ``RMS`` (a compile-time flag of every kernel) the same kernels compute RMSNorm, as ``F.rms_norm``: mean := 0
(no centring), so ``rstd = 1 / sqrt(mean_C(x^2) + eps)``, ``y = x * rstd * weight``, and the backward loses its
``mean_C(g)`` term: ``dx = rstd * (g - xhat * mean_C(g * xhat))``. The mean is then neither stored nor read.

* ``_layer_norm_fwd_kernel``: program = one row block; stores y and the row statistics mean (LayerNorm only),
  rstd (M,) fp32.
* ``_layer_norm_bwd_kernel``: ``P = min(row blocks, 2 * SMs)`` programs, program p visits row blocks p, p + P, ...;
  stores dx and accumulates dy * xhat, dy in tile-shaped fp32 registers, reduced once into its partial dweight /
  dbias rows (P, C) fp32 (no atomics), which the launcher sums.
* ``_add_layer_norm_fwd_kernel``: the residual add in front of the LayerNorm of a pre-norm block. Reads residual
  and branch rows, stores ``s = residual + branch`` (their promoted dtype, rounded once as PyTorch's add does) and
  y = LayerNorm(s) (the statistics of s as stored): 2 reads and 2 writes per element instead of the add's 2 reads
  and 1 write plus the LayerNorm's 1 read and 1 write.
* ``_add_layer_norm_bwd_kernel``: the LayerNorm backward of s (as ``_layer_norm_bwd_kernel``, s rows contiguous)
  plus ds, the gradient of s from its later uses: stores ``d_s = ds + dx`` in residual's dtype and, when that
  differs, in branch's dtype (the two input gradients of the add).

``C`` is limited to :data:`MAX_CHANNELS` (larger rows would spill registers; the caller, ``vmamba/kernels/
layer_norm.py``, runs PyTorch's per-row kernel for them). The PyTorch twins are ``layer_norm_last_dim_ref``,
``add_layer_norm_last_dim_ref``, ``rms_norm_last_dim_ref`` and ``add_rms_norm_last_dim_ref`` there.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .host import cdiv, interpreting, next_power_of_2, num_sms

__all__ = ['MAX_CHANNELS', 'layer_norm_fwd', 'layer_norm_bwd', 'add_layer_norm_fwd', 'add_layer_norm_bwd']

MAX_CHANNELS = 8192


@triton.jit
def _row_offsets(rows, pixels, stride_i, stride_p):
    """Offset of row m = (image m // pixels, pixel m % pixels); int64."""
    rows64 = rows.to(tl.int64)
    image = rows64 // pixels
    return image * stride_i + (rows64 - image * pixels) * stride_p


@triton.jit
def _normalize(x, mask, w_ptr, b_ptr, cols, mask_c, inv_channels, eps,
               HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, RMS: tl.constexpr):
    """x (BLOCK_M, BLOCK_C) fp32, 0 where masked -> y = (x - mean) * rstd * weight + bias (fp32), mean, rstd
    (BLOCK_M,); mean = 0 with ``RMS``."""
    if RMS:
        xc = x
    else:
        mean = tl.sum(x, axis=1) * inv_channels
        xc = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.sum(xc * xc, axis=1) * inv_channels  # the mean square with RMS
    rstd = 1.0 / tl.sqrt(var + eps)
    if RMS:
        mean = tl.zeros_like(rstd)
    y = xc * rstd[:, None]
    if HAS_WEIGHT:
        y = y * tl.load(w_ptr + cols, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        y = y + tl.load(b_ptr + cols, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    return y, mean, rstd


@triton.jit
def _tile_backward(x, dy, w, mask, mask_m, mean_ptr, rstd_ptr, rows, inv_channels,
                   HAS_WEIGHT: tl.constexpr, RMS: tl.constexpr):
    """One row block of a norm's backward from the stored row statistics: x, dy (BLOCK_M, BLOCK_C) fp32, 0 where
    masked; w (BLOCK_C,) fp32 or None -> dx (fp32) and xhat = (x - mean) * rstd (x * rstd with ``RMS``), 0 where
    masked. With g = dy * weight: dx = rstd * (g - mean_C(g) - xhat * mean_C(g * xhat)), without the mean_C(g)
    term with ``RMS``."""
    rstd = tl.load(rstd_ptr + rows, mask=mask_m, other=0.0)
    if RMS:
        xc = x
    else:
        xc = x - tl.load(mean_ptr + rows, mask=mask_m, other=0.0)[:, None]
    xhat = tl.where(mask, xc * rstd[:, None], 0.0)
    if HAS_WEIGHT:
        g = dy * w[None, :]
    else:
        g = dy
    mean_gx = tl.sum(g * xhat, axis=1) * inv_channels
    if RMS:
        centred = g - xhat * mean_gx[:, None]
    else:
        mean_g = tl.sum(g, axis=1) * inv_channels
        centred = g - mean_g[:, None] - xhat * mean_gx[:, None]
    return centred * rstd[:, None], xhat


@triton.jit
def _store_param_grad_partials(acc_dw, acc_db, dw_part_ptr, db_part_ptr, pid, channels, cols, mask_c,
                               HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr):
    """A program's tile-shaped dweight / dbias accumulators, reduced over rows into its partial rows (P, C)."""
    if HAS_WEIGHT:
        tl.store(dw_part_ptr + pid * channels + cols, tl.sum(acc_dw, axis=0), mask=mask_c)
    if HAS_BIAS:
        tl.store(db_part_ptr + pid * channels + cols, tl.sum(acc_db, axis=0), mask=mask_c)


@triton.jit
def _layer_norm_fwd_kernel(
        x_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr,
        num_rows, channels, pixels, stride_xi, stride_xp, stride_xc, stride_yi, stride_yp, stride_yc,
        inv_channels, eps,
        HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, STORE_STATS: tl.constexpr, RMS: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_C)
    mask_m = rows < num_rows
    mask_c = cols < channels
    mask = mask_m[:, None] & mask_c[None, :]

    x_offs = _row_offsets(rows, pixels, stride_xi, stride_xp)[:, None] + cols[None, :] * stride_xc
    x = tl.load(x_ptr + x_offs, mask=mask, other=0.0).to(tl.float32)
    y, mean, rstd = _normalize(x, mask, w_ptr, b_ptr, cols, mask_c, inv_channels, eps, HAS_WEIGHT, HAS_BIAS, RMS)
    y_offs = _row_offsets(rows, pixels, stride_yi, stride_yp)[:, None] + cols[None, :] * stride_yc
    tl.store(y_ptr + y_offs, y.to(y_ptr.dtype.element_ty), mask=mask)
    if STORE_STATS:
        if not RMS:
            tl.store(mean_ptr + rows, mean, mask=mask_m)
        tl.store(rstd_ptr + rows, rstd, mask=mask_m)


@triton.jit
def _layer_norm_bwd_kernel(
        x_ptr, dy_ptr, w_ptr, mean_ptr, rstd_ptr, dx_ptr, dw_part_ptr, db_part_ptr,
        num_rows, channels, pixels, stride_xi, stride_xp, stride_xc, stride_yi, stride_yp, stride_yc,
        stride_dxi, stride_dxp, stride_dxc, inv_channels, num_programs, blocks_per_program,
        HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, RMS: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_C)
    mask_c = cols < channels
    if HAS_WEIGHT:
        w = tl.load(w_ptr + cols, mask=mask_c, other=0.0).to(tl.float32)
    else:
        w = None
    # Tile-shaped accumulators: elementwise adds per row block, one cross-row reduction at the end.
    acc_dw = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    acc_db = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)

    for i in range(0, blocks_per_program):
        rows = (pid + i * num_programs) * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = rows < num_rows
        mask = mask_m[:, None] & mask_c[None, :]
        x_offs = _row_offsets(rows, pixels, stride_xi, stride_xp)[:, None] + cols[None, :] * stride_xc
        x = tl.load(x_ptr + x_offs, mask=mask, other=0.0).to(tl.float32)
        tile_offs = _row_offsets(rows, pixels, stride_yi, stride_yp)[:, None] + cols[None, :] * stride_yc
        dy = tl.load(dy_ptr + tile_offs, mask=mask, other=0.0).to(tl.float32)
        dx, xhat = _tile_backward(x, dy, w, mask, mask_m, mean_ptr, rstd_ptr, rows, inv_channels, HAS_WEIGHT, RMS)
        dx_offs = _row_offsets(rows, pixels, stride_dxi, stride_dxp)[:, None] + cols[None, :] * stride_dxc
        tl.store(dx_ptr + dx_offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        if HAS_WEIGHT:
            acc_dw += dy * xhat
        if HAS_BIAS:
            acc_db += dy

    _store_param_grad_partials(acc_dw, acc_db, dw_part_ptr, db_part_ptr, pid, channels, cols, mask_c, HAS_WEIGHT,
                               HAS_BIAS)


@triton.jit
def _add_layer_norm_fwd_kernel(
        r_ptr, b_ptr, w_ptr, bias_ptr, s_ptr, y_ptr, mean_ptr, rstd_ptr,
        num_rows, channels, stride_rm, stride_bm, inv_channels, eps,
        HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, STORE_STATS: tl.constexpr, RMS: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_C)
    mask_m = rows < num_rows
    mask_c = cols < channels
    mask = mask_m[:, None] & mask_c[None, :]

    rows64 = rows.to(tl.int64)
    r = tl.load(r_ptr + rows64[:, None] * stride_rm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + rows64[:, None] * stride_bm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    # s is rounded to its dtype once (as ``residual + branch`` is) and normalised as stored.
    s = (r + b).to(s_ptr.dtype.element_ty)
    dense_offs = rows64[:, None] * channels + cols[None, :]
    tl.store(s_ptr + dense_offs, s, mask=mask)
    y, mean, rstd = _normalize(s.to(tl.float32), mask, w_ptr, bias_ptr, cols, mask_c, inv_channels, eps,
                               HAS_WEIGHT, HAS_BIAS, RMS)
    tl.store(y_ptr + dense_offs, y.to(y_ptr.dtype.element_ty), mask=mask)
    if STORE_STATS:
        if not RMS:
            tl.store(mean_ptr + rows, mean, mask=mask_m)
        tl.store(rstd_ptr + rows, rstd, mask=mask_m)


@triton.jit
def _add_layer_norm_bwd_kernel(
        s_ptr, dy_ptr, ds_ptr, w_ptr, mean_ptr, rstd_ptr, dr_ptr, db_ptr, dw_part_ptr, dbias_part_ptr,
        num_rows, channels, inv_channels, num_programs, blocks_per_program,
        HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, STORE_BRANCH_GRAD: tl.constexpr, RMS: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_C)
    mask_c = cols < channels
    if HAS_WEIGHT:
        w = tl.load(w_ptr + cols, mask=mask_c, other=0.0).to(tl.float32)
    else:
        w = None
    acc_dw = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    acc_dbias = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)

    for i in range(0, blocks_per_program):
        rows = (pid + i * num_programs) * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = rows < num_rows
        mask = mask_m[:, None] & mask_c[None, :]
        offs = rows.to(tl.int64)[:, None] * channels + cols[None, :]
        s = tl.load(s_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        ds = tl.load(ds_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dx, xhat = _tile_backward(s, dy, w, mask, mask_m, mean_ptr, rstd_ptr, rows, inv_channels, HAS_WEIGHT, RMS)
        d_sum = ds + dx
        tl.store(dr_ptr + offs, d_sum.to(dr_ptr.dtype.element_ty), mask=mask)
        if STORE_BRANCH_GRAD:
            tl.store(db_ptr + offs, d_sum.to(db_ptr.dtype.element_ty), mask=mask)
        if HAS_WEIGHT:
            acc_dw += dy * xhat
        if HAS_BIAS:
            acc_dbias += dy

    _store_param_grad_partials(acc_dw, acc_dbias, dw_part_ptr, dbias_part_ptr, pid, channels, cols, mask_c,
                               HAS_WEIGHT, HAS_BIAS)


# ----------------------------------------------------------------------------------------------------------------
# Launchers

def _tile(channels: int, backward: bool = False) -> Tuple[int, int, int]:
    """(BLOCK_M, BLOCK_C, num_warps): 4K-element tiles on GPU (8K for C > 4096), 8 warps for the forward, 4 for the
    backward up to 4K (H100 sweep over C = 48..4096, fp16: forward 1.3x its memory floor at C = 48, 1x at 96; the
    backward ~1.6x at C = 48); 4-row tiles in the interpreter, so that tests cover several programs and ragged row
    counts."""
    block_c = next_power_of_2(channels)
    if interpreting():
        return 4, block_c, 4
    block_m = max(1, 4096 // block_c)
    return block_m, block_c, 8 if not backward or block_m * block_c > 4096 else 4


def _geometry(x: torch.Tensor):
    """(num_rows, channels, pixels, x strides, strides of the (rows, C) result, strides of a dense tensor of x's
    shape) in (image, pixel, channel) terms. x: (M, C) rows with unit channel stride (one image of M pixels), or
    (B, C, P) channels-first maps with unit pixel stride (rows = the B * P pixels in (b, p) order; channel stride
    e.g. H * W of an NCHW map)."""
    if x.dim() == 2 and (x.shape[1] <= 1 or x.stride(1) == 1):
        num_rows, channels = x.shape
        dense = (0, channels, 1)
        return num_rows, channels, max(num_rows, 1), (0, x.stride(0), 1), dense, dense
    if x.dim() == 3 and (x.shape[2] <= 1 or x.stride(2) == 1):
        batch, channels, pixels = x.shape
        return (batch * pixels, channels, max(pixels, 1), (x.stride(0), 1, x.stride(1)),
                (pixels * channels, channels, 1), (channels * pixels, 1, pixels))
    raise ValueError(f'x must be (M, C) rows with unit column stride or (B, C, P) maps with unit pixel stride, '
                     f'got shape {tuple(x.shape)} strides {tuple(x.stride())}')


def _check_channels(channels: int) -> None:
    if channels > MAX_CHANNELS:
        raise ValueError(f'the Triton LayerNorm handles C <= {MAX_CHANNELS}, got C = {channels}')


def _check_rows(name: str, t: torch.Tensor) -> None:
    if t.dim() != 2 or (t.shape[1] > 1 and t.stride(1) != 1):
        raise ValueError(f'{name} must be (M, C) rows with unit column stride, got shape {tuple(t.shape)} '
                         f'strides {tuple(t.stride())}')


def _program_count(num_blocks: int, device: torch.device) -> int:
    """Programs of a backward launch: one per row block up to 2 per SM (3 in the interpreter)."""
    return min(num_blocks, 3 if interpreting() else 2 * num_sms(device))


def layer_norm_fwd(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], eps: float,
                   out_dtype: Optional[torch.dtype] = None, store_stats: bool = True, rms: bool = False,
                   ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """x (M, C) unit column stride, any row stride, or (B, C, P) unit pixel stride (normalised over C); weight,
    bias (C,) contiguous or None -> y (rows, C) contiguous in ``out_dtype`` (default x's dtype; for (B, C, P) maps
    that is channels-last memory), mean and rstd (rows,) fp32 (rows: M, or B * P in (b, p) order); with
    ``store_stats=False`` (no backward to come) mean and rstd are neither allocated nor written (None). ``rms``:
    RMSNorm instead of LayerNorm (no mean: None)."""
    num_rows, channels, pixels, x_strides, y_strides, _ = _geometry(x)
    _check_channels(channels)
    y = x.new_empty((num_rows, channels), dtype=out_dtype or x.dtype)
    mean = x.new_empty((num_rows,), dtype=torch.float32) if store_stats and not rms else None
    rstd = x.new_empty((num_rows,), dtype=torch.float32) if store_stats else None
    if y.numel() == 0:
        return y, mean, rstd
    block_m, block_c, num_warps = _tile(channels)
    grid = (cdiv(num_rows, block_m),)
    _layer_norm_fwd_kernel[grid](
        x, y if weight is None else weight, y if bias is None else bias, y,
        y if mean is None else mean, rstd if store_stats else y,
        num_rows, channels, pixels, *x_strides, *y_strides, 1.0 / channels, float(eps),
        HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, STORE_STATS=store_stats, RMS=rms,
        BLOCK_M=block_m, BLOCK_C=block_c, num_warps=num_warps)
    return y, mean, rstd


def layer_norm_bwd(grad_out: torch.Tensor, x: torch.Tensor, weight: Optional[torch.Tensor],
                   bias: Optional[torch.Tensor], mean: Optional[torch.Tensor], rstd: torch.Tensor, rms: bool = False,
                   ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """grad_out (rows, C) contiguous like y (any float dtype); x, weight, bias, ``rms`` as for the forward; mean
    (unread with ``rms``: may be None), rstd (rows,) fp32 from the forward -> dx of x's shape, contiguous, in x's
    dtype, dweight (C,) in weight's dtype or None, dbias likewise."""
    num_rows, channels, pixels, x_strides, y_strides, dx_strides = _geometry(x)
    _check_channels(channels)
    if grad_out.shape != (num_rows, channels) or not grad_out.is_contiguous():
        raise ValueError(f'grad_out must be contiguous {(num_rows, channels)}, got shape {tuple(grad_out.shape)} '
                         f'strides {tuple(grad_out.stride())}')
    dx = x.new_empty(x.shape)
    if dx.numel() == 0:
        dweight = None if weight is None else torch.zeros_like(weight, memory_format=torch.contiguous_format)
        dbias = None if bias is None else torch.zeros_like(bias, memory_format=torch.contiguous_format)
        return dx, dweight, dbias
    block_m, block_c, num_warps = _tile(channels, backward=True)
    num_blocks = cdiv(num_rows, block_m)
    num_programs = _program_count(num_blocks, x.device)
    blocks_per_program = cdiv(num_blocks, num_programs)
    # Partial dweight / dbias rows of every program, (2, P, C) fp32 (one allocation).
    parts = x.new_empty((2, num_programs, channels), dtype=torch.float32)
    _layer_norm_bwd_kernel[(num_programs,)](
        x, grad_out, dx if weight is None else weight, rstd if mean is None else mean, rstd, dx, parts[0], parts[1],
        num_rows, channels, pixels, *x_strides, *y_strides, *dx_strides, 1.0 / channels, num_programs,
        blocks_per_program,
        HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, RMS=rms,
        BLOCK_M=block_m, BLOCK_C=block_c, num_warps=num_warps)
    dweight = None if weight is None else parts[0].sum(0).to(weight.dtype)
    dbias = None if bias is None else parts[1].sum(0).to(bias.dtype)
    return dx, dweight, dbias


def add_layer_norm_fwd(residual: torch.Tensor, branch: torch.Tensor, weight: Optional[torch.Tensor],
                       bias: Optional[torch.Tensor], eps: float, out_dtype: Optional[torch.dtype] = None,
                       store_stats: bool = True, rms: bool = False,
                       ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """residual, branch (M, C) unit column stride, any row strides (each its own); weight, bias (C,) contiguous or
    None -> s = residual + branch (M, C) contiguous in their promoted dtype, y = LayerNorm(s) (RMSNorm(s) with
    ``rms``) (M, C) contiguous in ``out_dtype`` (default s's dtype), mean and rstd (M,) fp32 of s (None with
    ``store_stats=False``; mean None with ``rms``)."""
    _check_rows('residual', residual)
    _check_rows('branch', branch)
    if branch.shape != residual.shape:
        raise ValueError(f'residual and branch must have one shape, got {tuple(residual.shape)} and '
                         f'{tuple(branch.shape)}')
    num_rows, channels = residual.shape
    _check_channels(channels)
    s = residual.new_empty((num_rows, channels), dtype=torch.promote_types(residual.dtype, branch.dtype))
    y = residual.new_empty((num_rows, channels), dtype=out_dtype or s.dtype)
    mean = residual.new_empty((num_rows,), dtype=torch.float32) if store_stats and not rms else None
    rstd = residual.new_empty((num_rows,), dtype=torch.float32) if store_stats else None
    if y.numel() == 0:
        return s, y, mean, rstd
    block_m, block_c, num_warps = _tile(channels)
    _add_layer_norm_fwd_kernel[(cdiv(num_rows, block_m),)](
        residual, branch, y if weight is None else weight, y if bias is None else bias, s, y,
        y if mean is None else mean, rstd if store_stats else y,
        num_rows, channels, residual.stride(0), branch.stride(0), 1.0 / channels, float(eps),
        HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, STORE_STATS=store_stats, RMS=rms,
        BLOCK_M=block_m, BLOCK_C=block_c, num_warps=num_warps)
    return s, y, mean, rstd


def add_layer_norm_bwd(grad_y: torch.Tensor, grad_s: torch.Tensor, s: torch.Tensor, weight: Optional[torch.Tensor],
                       bias: Optional[torch.Tensor], mean: Optional[torch.Tensor], rstd: torch.Tensor,
                       residual_dtype: torch.dtype, branch_dtype: torch.dtype, rms: bool = False,
                       ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """grad_y, grad_s, s (M, C) contiguous (any float dtypes); weight, bias, ``rms`` as for the forward; mean (unread
    with ``rms``: may be None), rstd (M,) fp32 from the forward -> d_residual = grad_s + LayerNorm (RMSNorm) backward
    of grad_y (M, C) in ``residual_dtype``, d_branch
    (the same sum in ``branch_dtype``; None when that is ``residual_dtype``: d_residual is d_branch), dweight (C,)
    in weight's dtype or None, dbias likewise."""
    num_rows, channels = s.shape
    _check_channels(channels)
    for name, t in (('grad_y', grad_y), ('grad_s', grad_s), ('s', s)):
        if t.shape != (num_rows, channels) or not t.is_contiguous():
            raise ValueError(f'{name} must be contiguous {(num_rows, channels)}, got shape {tuple(t.shape)} '
                             f'strides {tuple(t.stride())}')
    d_residual = s.new_empty((num_rows, channels), dtype=residual_dtype)
    d_branch = None if branch_dtype == residual_dtype else s.new_empty((num_rows, channels), dtype=branch_dtype)
    if d_residual.numel() == 0:
        dweight = None if weight is None else torch.zeros_like(weight, memory_format=torch.contiguous_format)
        dbias = None if bias is None else torch.zeros_like(bias, memory_format=torch.contiguous_format)
        return d_residual, d_branch, dweight, dbias
    block_m, block_c, num_warps = _tile(channels, backward=True)
    num_blocks = cdiv(num_rows, block_m)
    num_programs = _program_count(num_blocks, s.device)
    parts = s.new_empty((2, num_programs, channels), dtype=torch.float32)
    _add_layer_norm_bwd_kernel[(num_programs,)](
        s, grad_y, grad_s, s if weight is None else weight, rstd if mean is None else mean, rstd, d_residual,
        d_residual if d_branch is None else d_branch, parts[0], parts[1],
        num_rows, channels, 1.0 / channels, num_programs, cdiv(num_blocks, num_programs),
        HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, STORE_BRANCH_GRAD=d_branch is not None, RMS=rms,
        BLOCK_M=block_m, BLOCK_C=block_c, num_warps=num_warps)
    dweight = None if weight is None else parts[0].sum(0).to(weight.dtype)
    dbias = None if bias is None else parts[1].sum(0).to(bias.dtype)
    return d_residual, d_branch, dweight, dbias

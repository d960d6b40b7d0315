"""Triton kernel of the GELU recomputation in an MLP's backward (``RecomputeActMlp``, ``vmamba/layers/mlp.py``).

``h`` is fc1's output and ``grad_a`` the gradient of ``a = gelu(h)`` (fc2's input), both viewed as ``(M, H)`` rows
with unit column stride and any row stride. All math is fp32::

    erf GELU:   Phi(h) = 0.5 * (1 + erf(h / sqrt(2))),  a = h * Phi(h),
                gelu'(h) = Phi(h) + h * exp(-h^2 / 2) / sqrt(2 pi)
    tanh GELU:  t = tanh(sqrt(2 / pi) * (h + 0.044715 h^3)),  a = 0.5 * h * (1 + t),
                gelu'(h) = 0.5 * (1 + t) + 0.5 * h * (1 - t^2) * sqrt(2 / pi) * (1 + 3 * 0.044715 h^2)
    grad_h = grad_a * gelu'(h);  grad_bias = sum_M(grad_h)   (fc1's bias gradient)

* ``_gelu_recompute_bwd_kernel``: program = (p, column block), ``p < P``; visits row blocks p, p + P, ... of its
  ``BLOCK_H`` columns, stores ``a`` (fc2's weight gradient needs it) and ``grad_h`` (h's dtype), and accumulates
  grad_h as stored in a tile-shaped fp32 register, reduced once into its partial bias row (P, H) fp32 (no atomics),
  which the launcher sums. One read of h and grad_a and one write of a and grad_h per element, where PyTorch runs
  three passes (GELU recompute, GELU backward, bias reduction over grad_h).

The PyTorch twin is ``gelu_recompute_backward_ref`` in ``vmamba/kernels/gelu.py``.
"""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from .host import cdiv, interpreting, next_power_of_2, num_sms

__all__ = ['gelu_recompute_bwd']


@triton.jit
def _gelu_and_derivative(x, APPROXIMATE_TANH: tl.constexpr):
    """x fp32 -> (gelu(x), gelu'(x)) fp32."""
    if APPROXIMATE_TANH:
        sqrt_2_over_pi = 0.7978845608028654
        inner = sqrt_2_over_pi * (x + 0.044715 * x * x * x)
        e = tl.exp(-2.0 * tl.abs(inner))  # in (0, 1]: no overflow
        t = tl.where(inner >= 0, 1.0, -1.0) * (1.0 - e) / (1.0 + e)  # tanh(inner)
        a = 0.5 * x * (1.0 + t)
        derivative = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * sqrt_2_over_pi * (1.0 + 3.0 * 0.044715 * x * x)
    else:
        cdf = 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476))  # 1 / sqrt(2)
        a = x * cdf
        derivative = cdf + x * tl.exp(-0.5 * x * x) * 0.3989422804014327  # 1 / sqrt(2 pi)
    return a, derivative


@triton.jit
def _gelu_recompute_bwd_kernel(
        h_ptr, grad_a_ptr, a_ptr, grad_h_ptr, bias_part_ptr,
        num_rows, hidden, stride_hm, stride_gm, num_row_programs, blocks_per_program,
        APPROXIMATE_TANH: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_c = cols < hidden
    acc_bias = tl.zeros([BLOCK_M, BLOCK_H], dtype=tl.float32)

    for i in range(0, blocks_per_program):
        rows = ((pid + i * num_row_programs) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        mask = (rows < num_rows)[:, None] & mask_c[None, :]
        h = tl.load(h_ptr + rows[:, None] * stride_hm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        grad_a = tl.load(grad_a_ptr + rows[:, None] * stride_gm + cols[None, :], mask=mask,
                         other=0.0).to(tl.float32)
        a, derivative = _gelu_and_derivative(h, APPROXIMATE_TANH)
        grad_h = (grad_a * derivative).to(grad_h_ptr.dtype.element_ty)  # 0 where masked (grad_a = 0)
        dense_offs = rows[:, None] * hidden + cols[None, :]
        tl.store(a_ptr + dense_offs, a.to(a_ptr.dtype.element_ty), mask=mask)
        tl.store(grad_h_ptr + dense_offs, grad_h, mask=mask)
        acc_bias += grad_h.to(tl.float32)

    tl.store(bias_part_ptr + pid * hidden + cols, tl.sum(acc_bias, axis=0), mask=mask_c)


def _tile(hidden: int) -> Tuple[int, int]:
    """(BLOCK_M, BLOCK_H): 32 x 128 tiles on GPU (VMamba's hidden sizes 4C = 384..3072 are multiples of 128; not
    tuned on hardware); 4 x 16 in the interpreter, so that tests cover several row and column blocks."""
    if interpreting():
        return 4, min(next_power_of_2(hidden), 16)
    return 32, min(next_power_of_2(hidden), 128)


def _check_rows(name: str, t: torch.Tensor) -> None:
    if t.dim() != 2 or (t.shape[1] > 1 and t.stride(1) != 1):
        raise ValueError(f'{name} must be (M, H) rows with unit column stride, got shape {tuple(t.shape)} '
                         f'strides {tuple(t.stride())}')


def gelu_recompute_bwd(h: torch.Tensor, grad_a: torch.Tensor, approximate: str = 'none',
                       ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """h (M, H) fp32/fp16/bf16, grad_a (M, H) any float dtype, both with unit column stride and any row stride;
    ``approximate`` 'none' (erf GELU) or 'tanh' -> a = gelu(h) (M, H) contiguous in h's dtype, grad_h =
    grad_a * gelu'(h) (M, H) contiguous in h's dtype, grad_bias = sum_M(grad_h as stored) (H,) fp32."""
    _check_rows('h', h)
    _check_rows('grad_a', grad_a)
    if grad_a.shape != h.shape:
        raise ValueError(f'grad_a must have the shape of h {tuple(h.shape)}, got {tuple(grad_a.shape)}')
    if approximate not in ('none', 'tanh'):
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    num_rows, hidden = h.shape
    a = h.new_empty((num_rows, hidden))
    grad_h = h.new_empty((num_rows, hidden))
    if a.numel() == 0:
        return a, grad_h, h.new_zeros((hidden,), dtype=torch.float32)
    block_m, block_h = _tile(hidden)
    num_blocks, col_blocks = cdiv(num_rows, block_m), cdiv(hidden, block_h)
    # ~4 programs per SM in all (3 row programs in the interpreter, so that tests sum several partial rows).
    num_row_programs = min(num_blocks, 3 if interpreting() else max(1, 4 * num_sms(h.device) // col_blocks))
    bias_parts = h.new_empty((num_row_programs, hidden), dtype=torch.float32)
    _gelu_recompute_bwd_kernel[(num_row_programs, col_blocks)](
        h, grad_a, a, grad_h, bias_parts,
        num_rows, hidden, h.stride(0), grad_a.stride(0), num_row_programs, cdiv(num_blocks, num_row_programs),
        APPROXIMATE_TANH=approximate == 'tanh', BLOCK_M=block_m, BLOCK_H=block_h, num_warps=4)
    return a, grad_h, bias_parts.sum(0)

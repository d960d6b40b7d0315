"""Triton kernels of the fused causal depthwise conv + SiLU over token-major sequences (Vim's bidirectional mixer).

``x`` is ``(batch, L, E)`` with unit channel stride (any batch / position strides); ``weight`` is ``(G*E, K)``;
output channel ``o = g*E + c`` reads input channel ``c``; group ``g`` runs over the sequence forwards (causal) or,
with bit ``g`` of ``reverse_bits``, over the reversed sequence (anti-causal in the original order)::

    forward group:  pre[b, t, o] = bias[o] + sum_k weight[o, k] * x[b, t - (K-1) + k, c]     (zeros outside [0, L))
    reverse group:  pre[b, t, o] = bias[o] + sum_k weight[o, k] * x[b, t + (K-1) - k, c]
    y = silu(pre)                                                                           (batch, L, G*E)

Both kernels slide one window of K rows along the positions (each thread owns ``BLOCK_C / (32 * num_warps)``
channels and keeps the window in registers), so every x element is loaded and converted once per program instead
of once per tap, and each group multiplies only its own K taps. At loop position ``p`` the window holds
``x[p-K+1 .. p]``: forward groups emit position ``p``, reverse groups position ``p-K+1`` (the same window with the
taps flipped). A program covers ``CHUNK`` positions (plus a K-1 halo), the rows of ``STEPS`` positions loaded one
block ahead. All math is fp32 in registers.

* ``_causal_conv_silu_fwd_kernel``: program = (channel block, position chunk, batch); ``y`` in x's dtype.
* ``_causal_conv_silu_bwd_kernel``: program = (channel block, position chunk, group of ``batch_per_program`` batch
  entries, the last one ragged). One pass per batch entry: recomputes ``pre``, forms ``dpre = dy * silu'(pre)`` in
  fp32 registers (never stored), keeps the last K ``dpre`` of each group as a second window and emits
  ``dx[p-K+1] = sum_g sum_k weight[gE+c, k] * dpre_g[...]`` (in x's dtype). Partial ``dweight`` / ``dbias`` sums
  accumulate in fp32 registers over the program's positions and batch entries: one fp32 row per (batch group,
  position chunk), ``(rows, G*E, K)`` / ``(rows, G*E)``, row ``batch group * position chunks + chunk`` (no atomics:
  deterministic); the launcher sums the rows and casts to weight's / bias's dtype.

Launch configurations are the module constants ``_FWD_CONFIG`` / ``_BWD_CONFIG``; each launcher takes an explicit one
as a keyword (``benchmarks/bench_conv.py`` sweeps them).

The PyTorch twin is ``causal_conv_silu_ref`` in ``vmamba/kernels/conv.py``.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from .host import cdiv, interpreting

__all__ = ['causal_conv_silu_fwd', 'causal_conv_silu_bwd']


@triton.jit
def _group_vectors(ptr, offs_c, mask_c, channels, GROUPS: tl.constexpr, COUNT: tl.constexpr):
    """Tuple of GROUPS * COUNT fp32 (BLOCK_C,) vectors, entry ``g * COUNT + k = ptr[(g*E + c) * COUNT + k]``
    (weights: COUNT = K; biases: COUNT = 1)."""
    out = ()
    for g in tl.static_range(GROUPS):
        for k in tl.static_range(COUNT):
            out = out + (tl.load(ptr + (g * channels + offs_c) * COUNT + k, mask=mask_c, other=0.0).to(tl.float32),)
    return out


@triton.jit
def _row(ptr, pos, length, stride_t, mask_c):
    """The (BLOCK_C,) row at position ``pos`` (zeros outside [0, L)), in memory's dtype."""
    m = mask_c & (pos >= 0) & (pos < length)
    return tl.load(ptr + pos.to(tl.int64) * stride_t, mask=m, other=0.0)


@triton.jit
def _rows(ptr, first, length, stride_t, mask_c, STEPS: tl.constexpr):
    """Rows of positions ``first .. first + STEPS - 1``: a tuple of STEPS (BLOCK_C,) vectors."""
    out = ()
    for j in tl.static_range(STEPS):
        out = out + (_row(ptr, first + j, length, stride_t, mask_c),)
    return out


@triton.jit
def _x_history(x_base, start, length, stride_xt, mask_c, WIDTH: tl.constexpr):
    """The window's history before position ``start``: fp32 rows of ``start - K + 1 .. start - 1`` (K-1 entries)."""
    out = ()
    for k in tl.static_range(WIDTH - 1):
        out = out + (_row(x_base, start - (WIDTH - 1) + k, length, stride_xt, mask_c).to(tl.float32),)
    return out


@triton.jit
def _dy_rows(dy_base, first, length, out_channels, channels, mask_c, GROUPS: tl.constexpr,
             REVERSE_BITS: tl.constexpr, WIDTH: tl.constexpr, STEPS: tl.constexpr):
    """dy rows of each group for loop positions ``first .. first + STEPS - 1``: entry ``j * GROUPS + g`` is group g's
    row at the position the window emits (p for forward groups, p - K + 1 for reverse groups)."""
    out = ()
    for j in tl.static_range(STEPS):
        for g in tl.static_range(GROUPS):
            pos = first + j - (WIDTH - 1) * ((REVERSE_BITS >> g) & 1)
            out = out + (_row(dy_base + g * channels, pos, length, out_channels, mask_c),)
    return out


@triton.jit
def _window_dot(weights, window, g: tl.constexpr, REVERSE: tl.constexpr, WIDTH: tl.constexpr):
    """sum_k weights[g*K + k] * window[k] (forward group) or window[K-1-k] (reverse group): (BLOCK_C,) fp32."""
    acc = weights[g * WIDTH] * (window[WIDTH - 1] if REVERSE else window[0])
    for k in tl.static_range(1, WIDTH):
        acc += weights[g * WIDTH + k] * (window[WIDTH - 1 - k] if REVERSE else window[k])
    return acc


@triton.jit
def _sigmoid(pre):
    """1 / (1 + 2^(-x log2(e))) with a non-IEEE division (~2 ulp: the reciprocal on the MUFU and a multiply), fp32;
    tl.sigmoid's IEEE division costs ~14 instructions per element, a third of the forward's."""
    return tl.fdiv(1.0, 1.0 + tl.exp2(pre * -1.4426950408889634), ieee_rounding=False)


@triton.jit
def _newest(full, WIDTH: tl.constexpr):
    """The K-1 newest entries of a K-entry window: the next position's history."""
    out = ()
    for k in tl.static_range(1, WIDTH):
        out = out + (full[k],)
    return out


@triton.jit
def _causal_conv_silu_fwd_kernel(
        x_ptr, w_ptr, b_ptr, y_ptr,
        length, channels,
        stride_xb, stride_xt,
        HAS_BIAS: tl.constexpr, GROUPS: tl.constexpr, REVERSE_BITS: tl.constexpr, WIDTH: tl.constexpr,
        CHUNK: tl.constexpr, STEPS: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_c = tl.program_id(0)
    start = tl.program_id(1) * CHUNK
    batch = tl.program_id(2).to(tl.int64)
    end = tl.minimum(start + CHUNK, length)
    out_channels = GROUPS * channels
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < channels
    x_base = x_ptr + batch * stride_xb + offs_c
    y_base = y_ptr + batch * length * out_channels + offs_c

    weights = _group_vectors(w_ptr, offs_c, mask_c, channels, GROUPS, WIDTH)
    if HAS_BIAS:
        biases = _group_vectors(b_ptr, offs_c, mask_c, channels, GROUPS, 1)
    # Reverse groups emit K-1 positions behind the window's head: the walk runs K-1 positions past the chunk.
    TAIL: tl.constexpr = WIDTH - 1 if REVERSE_BITS != 0 else 0
    NUM_BLOCKS: tl.constexpr = (CHUNK + TAIL + STEPS - 1) // STEPS

    window = _x_history(x_base, start, length, stride_xt, mask_c, WIDTH)  # x[p-K+1 .. p-1], fp32
    block = _rows(x_base, start, length, stride_xt, mask_c, STEPS)
    for blk in range(NUM_BLOCKS):
        xs = block
        block = _rows(x_base, start + (blk + 1) * STEPS, length, stride_xt, mask_c, STEPS)
        for j in tl.static_range(STEPS):
            p = start + blk * STEPS + j
            full = window + (xs[j].to(tl.float32),)
            for g in tl.static_range(GROUPS):
                REVERSE = (REVERSE_BITS >> g) & 1  # constexpr
                pre = _window_dot(weights, full, g, REVERSE, WIDTH)
                if HAS_BIAS:
                    pre += biases[g]
                y = (pre * _sigmoid(pre)).to(y_ptr.dtype.element_ty)
                pos = p - (WIDTH - 1) * REVERSE  # the position this group emits
                tl.store(y_base + pos.to(tl.int64) * out_channels + g * channels, y,
                         mask=mask_c & (pos >= start) & (pos < end))
            window = _newest(full, WIDTH)


@triton.jit
def _causal_conv_silu_bwd_kernel(
        x_ptr, w_ptr, b_ptr, dy_ptr, dx_ptr, dw_part_ptr, db_part_ptr,
        batch, length, channels, batch_per_program,
        stride_xb, stride_xt,
        HAS_BIAS: tl.constexpr, GROUPS: tl.constexpr, REVERSE_BITS: tl.constexpr, WIDTH: tl.constexpr,
        CHUNK: tl.constexpr, STEPS: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_c = tl.program_id(0)
    pid_t = tl.program_id(1)
    pid_b = tl.program_id(2)
    start = pid_t * CHUNK
    end = tl.minimum(start + CHUNK, length)
    out_channels = GROUPS * channels
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < channels

    weights = _group_vectors(w_ptr, offs_c, mask_c, channels, GROUPS, WIDTH)
    if HAS_BIAS:
        biases = _group_vectors(b_ptr, offs_c, mask_c, channels, GROUPS, 1)
    # dx at position r needs the forward groups' dpre up to r + K - 1: every walk runs K-1 positions past the chunk.
    NUM_BLOCKS: tl.constexpr = (CHUNK + WIDTH - 1 + STEPS - 1) // STEPS

    dw = ()  # fp32 partial sums, entry g*K + k
    for i in tl.static_range(GROUPS * WIDTH):
        dw = dw + (tl.zeros([BLOCK_C], dtype=tl.float32),)
    db = ()
    for g in tl.static_range(GROUPS):
        db = db + (tl.zeros([BLOCK_C], dtype=tl.float32),)

    first_batch = pid_b.to(tl.int64) * batch_per_program
    for i in range(0, tl.minimum(batch_per_program, batch - pid_b * batch_per_program)):
        b = first_batch + i
        x_base = x_ptr + b * stride_xb + offs_c
        dy_base = dy_ptr + b * length * out_channels + offs_c
        dx_base = dx_ptr + b * length * channels + offs_c

        window = _x_history(x_base, start, length, stride_xt, mask_c, WIDTH)  # x[p-K+1 .. p-1]
        # Per group the K-1 newest dpre: forward groups dpre[p-K+1 .. p-1], reverse groups dpre[p-2K+2 .. p-K]
        # (entry g*(K-1) + k). Before the walk they are 0: the first K-1 positions emit no dx.
        dwin = ()
        for k in tl.static_range(GROUPS * (WIDTH - 1)):
            dwin = dwin + (tl.zeros([BLOCK_C], dtype=tl.float32),)
        xblock = _rows(x_base, start, length, stride_xt, mask_c, STEPS)
        dyblock = _dy_rows(dy_base, start, length, out_channels, channels, mask_c, GROUPS, REVERSE_BITS, WIDTH,
                           STEPS)
        for blk in range(NUM_BLOCKS):
            xs = xblock
            dys = dyblock
            first = start + (blk + 1) * STEPS
            xblock = _rows(x_base, first, length, stride_xt, mask_c, STEPS)
            dyblock = _dy_rows(dy_base, first, length, out_channels, channels, mask_c, GROUPS, REVERSE_BITS, WIDTH,
                               STEPS)
            for j in tl.static_range(STEPS):
                p = start + blk * STEPS + j
                full = window + (xs[j].to(tl.float32),)
                new_dw = ()
                new_db = ()
                new_dwin = ()
                dx = tl.zeros([BLOCK_C], dtype=tl.float32)
                for g in tl.static_range(GROUPS):
                    REVERSE = (REVERSE_BITS >> g) & 1  # constexpr
                    pre = _window_dot(weights, full, g, REVERSE, WIDTH)
                    if HAS_BIAS:
                        pre += biases[g]
                    sig = _sigmoid(pre)
                    # dy is 0 outside [0, L) and past the channels: so is dpre.
                    dpre = dys[j * GROUPS + g].to(tl.float32) * sig * (1.0 + pre * (1.0 - sig))
                    # The partial sums take this chunk's positions only (the halo belongs to the neighbours).
                    pos = p - (WIDTH - 1) * REVERSE
                    mine = tl.where((pos >= start) & (pos < end), dpre, 0.0)
                    for k in tl.static_range(WIDTH):
                        new_dw = new_dw + (dw[g * WIDTH + k] + mine * (full[WIDTH - 1 - k] if REVERSE else full[k]),)
                    new_db = new_db + (db[g] + mine,)
                    # This group's last K dpre. x[p-K+1] fed the forward outputs p-K+1 .. p (entries K-1-k) and
                    # the reverse outputs p-2K+2 .. p-K+1 (entries k).
                    dfull = ()
                    for k in tl.static_range(WIDTH - 1):
                        dfull = dfull + (dwin[g * (WIDTH - 1) + k],)
                    dfull = dfull + (dpre,)
                    dx += _window_dot(weights, dfull, g, 1 - REVERSE, WIDTH)
                    new_dwin = new_dwin + _newest(dfull, WIDTH)
                dw = new_dw
                db = new_db
                dwin = new_dwin
                r = p - (WIDTH - 1)
                tl.store(dx_base + r.to(tl.int64) * channels, dx.to(dx_ptr.dtype.element_ty),
                         mask=mask_c & (r >= start) & (r < end))
                window = _newest(full, WIDTH)

    row = pid_b.to(tl.int64) * tl.num_programs(1) + pid_t
    for g in tl.static_range(GROUPS):
        part = row * out_channels + g * channels + offs_c
        if HAS_BIAS:
            tl.store(db_part_ptr + part, db[g], mask=mask_c)
        for k in tl.static_range(WIDTH):
            tl.store(dw_part_ptr + part * WIDTH + k, dw[g * WIDTH + k], mask=mask_c)


# ----------------------------------------------------------------------------------------------------------------
# Launchers

# Launch configurations: (CHUNK, BLOCK_C, num_warps, STEPS) for the forward, (CHUNK, BLOCK_C, num_warps, STEPS,
# batch_per_program) for the backward; ``benchmarks/bench_conv.py --sweep`` times candidates. H100 sweep (v15/run2,
# batch 128, L 197, fp16): forward 100 x 128 channels (2 per thread), 2 warps, rows loaded 8 positions ahead:
# Vim-S 0.053 ms (73% of copy), Vim-T 0.032 ms. Backward 64 x 128, 2 warps, 4 positions ahead, one batch entry per
# program (more programs: ~210 registers a thread leave ~9 warps an SM): Vim-S 0.146 ms, Vim-T 0.098 ms.
_FWD_CONFIG = (100, 128, 2, 8)
_BWD_CONFIG = (64, 128, 2, 4, 1)

# Under the interpreter: tiny chunks / channel blocks and 2 batch entries per backward program, so that the tests'
# small shapes cover several chunks, ragged position / channel edges and (odd batch) a ragged last batch group.
_INTERPRET_FWD_CONFIG = (4, 8, 1, 2)
_INTERPRET_BWD_CONFIG = (4, 8, 1, 2, 2)


def _launch_config(config: Optional[Sequence[int]], default: Tuple[int, ...],
                   interpret_default: Tuple[int, ...]) -> Tuple[int, ...]:
    """``config`` (None: the module default, tiny under the interpreter) as checked positive ints; BLOCK_C must be
    a power of two."""
    if config is None:
        config = interpret_default if interpreting() else default
    config = tuple(int(v) for v in config)
    if len(config) != len(default) or min(config) < 1:
        raise ValueError(f'launch config must be {len(default)} positive ints, got {config}')
    block_c = config[1]
    if block_c & (block_c - 1):
        raise ValueError(f'launch config: BLOCK_C must be a power of two, got {block_c}')
    return config


def _reverse_bits(reverse: Sequence[bool]) -> int:
    return sum(1 << g for g, r in enumerate(reverse) if r)


def _check_x(x: torch.Tensor) -> None:
    if x.stride(2) != 1:
        raise ValueError(f'x must have unit channel stride, got strides {tuple(x.stride())}')


def causal_conv_silu_fwd(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                         reverse: Sequence[bool], *, config: Optional[Sequence[int]] = None) -> torch.Tensor:
    """x (batch, L, E) unit channel stride, weight (G*E, K) contiguous, bias (G*E,) contiguous or None, reverse G
    bools -> silu(conv) (batch, L, G*E) contiguous in x's dtype.

    ``config``: (CHUNK, BLOCK_C, num_warps, STEPS); None: ``_FWD_CONFIG``."""
    _check_x(x)
    batch, length, channels = x.shape
    out_channels, width = weight.shape
    y = x.new_empty((batch, length, out_channels))
    if y.numel() == 0:
        return y
    chunk, block_c, num_warps, steps = _launch_config(config, _FWD_CONFIG, _INTERPRET_FWD_CONFIG)
    grid = (cdiv(channels, block_c), cdiv(length, chunk), batch)
    _causal_conv_silu_fwd_kernel[grid](
        x, weight, y if bias is None else bias, y,
        length, channels, x.stride(0), x.stride(1),
        HAS_BIAS=bias is not None, GROUPS=len(reverse), REVERSE_BITS=_reverse_bits(reverse), WIDTH=width,
        CHUNK=chunk, STEPS=steps, BLOCK_C=block_c, num_warps=num_warps)
    return y


def causal_conv_silu_bwd(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                         bias: Optional[torch.Tensor], reverse: Sequence[bool], *,
                         config: Optional[Sequence[int]] = None,
                         ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """grad_out (batch, L, G*E) contiguous; x, weight, bias, reverse as for the forward
    -> dx (batch, L, E) contiguous in x's dtype, dweight (G*E, K) in weight's dtype, dbias (G*E,) or None.

    ``config``: (CHUNK, BLOCK_C, num_warps, STEPS, batch_per_program); None: ``_BWD_CONFIG``."""
    _check_x(x)
    batch, length, channels = x.shape
    out_channels, width = weight.shape
    dx = x.new_empty((batch, length, channels))
    if dx.numel() == 0:
        dweight = torch.zeros_like(weight, memory_format=torch.contiguous_format)
        dbias = None if bias is None else torch.zeros_like(bias, memory_format=torch.contiguous_format)
        return dx.zero_(), dweight, dbias
    chunk, block_c, num_warps, steps, batch_per_program = _launch_config(config, _BWD_CONFIG,
                                                                         _INTERPRET_BWD_CONFIG)
    num_chunks = cdiv(length, chunk)
    num_rows = cdiv(batch, batch_per_program) * num_chunks
    dw_part = torch.empty((num_rows, out_channels, width), device=x.device, dtype=torch.float32)
    db_part = dw_part if bias is None else torch.empty((num_rows, out_channels), device=x.device,
                                                      dtype=torch.float32)
    grid = (cdiv(channels, block_c), num_chunks, cdiv(batch, batch_per_program))
    _causal_conv_silu_bwd_kernel[grid](
        x, weight, dx if bias is None else bias, grad_out, dx, dw_part, db_part,
        batch, length, channels, batch_per_program, x.stride(0), x.stride(1),
        HAS_BIAS=bias is not None, GROUPS=len(reverse), REVERSE_BITS=_reverse_bits(reverse), WIDTH=width,
        CHUNK=chunk, STEPS=steps, BLOCK_C=block_c, num_warps=num_warps)
    dweight = dw_part.sum(0).to(weight.dtype)
    dbias = None if bias is None else db_part.sum(0).to(bias.dtype)
    return dx, dweight, dbias

"""Triton kernels of the selective scan (Mamba-1 S6), forward and backward, with grouped B/C, per-group reverse and
LBMamba's locally bidirectional windows.

Layout of the work: one program owns ``BLOCK_D`` channels of one B/C group for one batch element and all ``N``
states (padded to ``BLOCK_N``). It walks the sequence in chunks of ``CHUNK`` positions (a ``BLOCK_L``-wide tile;
``CHUNK < BLOCK_L`` only when LB windows need chunks aligned to the window) and scans each chunk over
``(decay, input)`` pairs, carrying the state from chunk to chunk in registers: ``tl.associative_scan`` along the
lanes, and against the lanes :func:`_suffix_scan_segments` (Triton's reverse scan flips the tile twice).

A reversed group keeps its tile in memory order (so loads stay contiguous and vectorised); only the chunk order and
the scan direction flip. The backward pass recomputes everything from the inputs: a forward pre-pass stores the
state at each chunk start (``(batch, channels, num_chunks, N)`` fp32, skipped when there is one chunk), then the
backward kernel walks the chunks in reverse scan order, recomputes the chunk's states and runs the adjoint scans.

N > 1 without LB window (Vim) runs step kernels instead: a (N, BLOCK_D) state tile walks the sequence one position
at a time (unrolled in blocks of STEPS positions), forward and backward; a reversed group is walked from the end.
Large token-major forwards run the step walk with one channel per lane instead (its N states in registers:
``ScanConfig.lane_states``).
See ``README.md`` next to this file for the recurrences.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from ..layout import empty_sequence_like, empty_states_like, is_token_major
from .host import cdiv, interpreting, next_power_of_2

__all__ = ['ScanConfig', 'selective_scan_fwd', 'selective_scan_bwd', 'default_config']

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------------------------------------------
# Scalar helpers (elementwise, fp32)

@triton.jit
def _linear_recurrence_combine(decay_first, value_first, decay_second, value_second):
    """Compose ``x -> decay_first * x + value_first`` then ``x -> decay_second * x + value_second``."""
    return decay_first * decay_second, decay_second * value_first + value_second


@triton.jit
def _split_positions(t, ROWS: tl.constexpr, WIDTH: tl.constexpr, SEGMENT: tl.constexpr):
    """(ROWS, WIDTH * SEGMENT) tile -> tuple of SEGMENT (ROWS, WIDTH) tiles, entry ``k`` holding positions
    ``s * SEGMENT + k`` (s < WIDTH). When each thread holds SEGMENT consecutive positions of a row (the layout of the
    chunked kernels' vectorised loads), this only renames registers (repeated ``tl.split``); otherwise Triton
    converts the layout (the 512-position tile holds 2 x 8 positions per thread: segments of 16 still compiled to
    fewer instructions than segments of 8)."""
    if SEGMENT == 1:
        return (t,)
    else:
        even, odd = tl.split(tl.reshape(t, (ROWS, WIDTH * SEGMENT // 2, 2)))
        evens = _split_positions(even, ROWS, WIDTH, SEGMENT // 2)
        odds = _split_positions(odd, ROWS, WIDTH, SEGMENT // 2)
        out = ()
        for k in tl.static_range(SEGMENT // 2):
            out = out + (evens[k], odds[k])
        return out


@triton.jit
def _join_positions(parts, ROWS: tl.constexpr, WIDTH: tl.constexpr, SEGMENT: tl.constexpr):
    """Inverse of :func:`_split_positions`: SEGMENT (ROWS, WIDTH) tiles -> one (ROWS, WIDTH * SEGMENT) tile."""
    if SEGMENT == 1:
        return parts[0]
    else:
        evens = ()
        odds = ()
        for k in tl.static_range(SEGMENT // 2):
            evens = evens + (parts[2 * k],)
            odds = odds + (parts[2 * k + 1],)
        even = _join_positions(evens, ROWS, WIDTH, SEGMENT // 2)
        odd = _join_positions(odds, ROWS, WIDTH, SEGMENT // 2)
        return tl.reshape(tl.join(even, odd), (ROWS, WIDTH * SEGMENT))


@triton.jit
def _suffix_scan_segments(decay, value, carry, ROWS: tl.constexpr, BLOCK_L: tl.constexpr, SEGMENT: tl.constexpr):
    """r_i = value_i + decay_i * r_{i+1} along the lanes of (ROWS, BLOCK_L) tiles, r_{BLOCK_L} = carry: (ROWS, 1),
    or (ROWS, BLOCK_L // SEGMENT) holding it per segment.

    Triton lowers ``associative_scan(reverse=True)`` as flip, scan, flip, and each flip of a tile costs a butterfly
    shuffle per register and lane bit (92 shuffles for a (decay, value) pair over 128 lanes in one warp, Triton 3.6
    sm_90; a forward scan takes 10). Here the lanes are cut into segments of SEGMENT consecutive positions: each
    segment runs its suffix inside the thread that holds it, the segments' composed maps are combined across
    segments by doubling (``tl.gather`` from segment s + d: one indexed shuffle each), and every position then
    applies the composition of the segments after its own: 12 shuffles for the same pair."""
    WIDTH: tl.constexpr = BLOCK_L // SEGMENT
    decays = _split_positions(decay, ROWS, WIDTH, SEGMENT)
    values = _split_positions(value, ROWS, WIDTH, SEGMENT)
    # Suffix inside each segment: the map from the state after the segment to the state at each of its positions.
    seg_decay = decays[SEGMENT - 1]
    seg_value = values[SEGMENT - 1]
    part_decays = (seg_decay,)
    part_values = (seg_value,)
    for k in tl.static_range(SEGMENT - 2, -1, -1):
        seg_value = values[k] + decays[k] * seg_value
        seg_decay = decays[k] * seg_decay
        part_decays = (seg_decay,) + part_decays
        part_values = (seg_value,) + part_values
    # Suffix over segments (Hillis-Steele): after round j, segment s holds the composition of segments s .. s + 2^j.
    seg = tl.arange(0, WIDTH)[None, :] + tl.zeros([ROWS, WIDTH], dtype=tl.int32)
    span = 1
    for _ in tl.static_range(WIDTH.bit_length() - 1):
        source = tl.minimum(seg + span, WIDTH - 1)
        later_decay = tl.gather(seg_decay, source, 1)
        later_value = tl.gather(seg_value, source, 1)
        inside = seg + span < WIDTH
        seg_value = tl.where(inside, seg_value + seg_decay * later_value, seg_value)
        seg_decay = tl.where(inside, seg_decay * later_decay, seg_decay)
        span *= 2
    # The state after each segment: the next segment's suffix applied to the carry (the carry after the last).
    source = tl.minimum(seg + 1, WIDTH - 1)
    after = tl.gather(seg_value, source, 1) + tl.gather(seg_decay, source, 1) * carry
    after = tl.where(seg + 1 < WIDTH, after, carry)
    out = ()
    for k in tl.static_range(SEGMENT):
        out = out + (part_values[k] + part_decays[k] * after,)
    return _join_positions(out, ROWS, WIDTH, SEGMENT)


@triton.jit
def _neighbour_lanes(t, fill, TOWARD_HIGHER: tl.constexpr, ROWS: tl.constexpr, BLOCK_L: tl.constexpr,
                     SEGMENT: tl.constexpr):
    """t[:, i + 1] (TOWARD_HIGHER) or t[:, i - 1] at lane i of a (ROWS, BLOCK_L) tile, ``fill`` past the tile's
    ends: inside a segment of SEGMENT positions the neighbour is in the same thread (register renaming, as in
    :func:`_suffix_scan_segments`); the lane that crosses into the next / previous segment takes one indexed
    shuffle."""
    WIDTH: tl.constexpr = BLOCK_L // SEGMENT
    parts = _split_positions(t, ROWS, WIDTH, SEGMENT)
    seg = tl.arange(0, WIDTH)[None, :] + tl.zeros([ROWS, WIDTH], dtype=tl.int32)
    if TOWARD_HIGHER:
        out = ()
        for k in tl.static_range(SEGMENT - 1):
            out = out + (parts[k + 1],)
        cross = tl.gather(parts[0], tl.minimum(seg + 1, WIDTH - 1), 1)
        out = out + (tl.where(seg + 1 < WIDTH, cross, fill),)
    else:
        cross = tl.gather(parts[SEGMENT - 1], tl.maximum(seg - 1, 0), 1)
        out = (tl.where(seg > 0, cross, fill),)
        for k in tl.static_range(1, SEGMENT):
            out = out + (parts[k - 1],)
    return _join_positions(out, ROWS, WIDTH, SEGMENT)


@triton.jit
def _lane_value(t, LANE: tl.constexpr, ROWS: tl.constexpr, BLOCK_L: tl.constexpr, SEGMENT: tl.constexpr,
                WIDE: tl.constexpr):
    """t[:, LANE] of a (ROWS, BLOCK_L) tile as a carry of the chunked kernels. WIDE (segments that are each one
    thread's consecutive registers): a (ROWS, BLOCK_L // SEGMENT) tile holding it in every element, from one indexed
    shuffle (the thread of segment LANE // SEGMENT holds it in register LANE % SEGMENT); otherwise the (ROWS,) value,
    from a masked lane reduction (a select per register and a butterfly reduction)."""
    if WIDE:
        WIDTH: tl.constexpr = BLOCK_L // SEGMENT
        REGISTER: tl.constexpr = LANE % SEGMENT
        parts = _split_positions(t, ROWS, WIDTH, SEGMENT)
        return tl.gather(parts[REGISTER], tl.full([ROWS, WIDTH], LANE // SEGMENT, tl.int32), 1)
    else:
        return tl.sum(tl.where(tl.arange(0, BLOCK_L)[None, :] == LANE, t, 0.0), axis=1)


@triton.jit
def _carry_form(value, ROWS: tl.constexpr, BLOCK_L: tl.constexpr, SEGMENT: tl.constexpr, WIDE: tl.constexpr):
    """(ROWS,) -> a carry as :func:`_lane_value` returns it."""
    if WIDE:
        return value[:, None] + tl.zeros([ROWS, BLOCK_L // SEGMENT], dtype=tl.float32)
    else:
        return value


@triton.jit
def _store_carry(ptrs, carry, mask, ROWS: tl.constexpr, BLOCK_L: tl.constexpr, SEGMENT: tl.constexpr,
                 WIDE: tl.constexpr):
    """Store a carry (:func:`_lane_value`) to ``ptrs`` (ROWS,), once per row."""
    if WIDE:
        WIDTH: tl.constexpr = BLOCK_L // SEGMENT
        first = tl.arange(0, WIDTH)[None, :] == 0
        tl.store(ptrs[:, None] + tl.zeros([ROWS, WIDTH], dtype=tl.int32), carry, mask=mask[:, None] & first)
    else:
        tl.store(ptrs, carry, mask=mask)


@triton.jit
def _carried_scan(decay, value, carry, REVERSE_LANES: tl.constexpr, ROWS: tl.constexpr, BLOCK_L: tl.constexpr,
                  SEGMENT: tl.constexpr, WIDE: tl.constexpr):
    """The linear recurrence r = decay * r_prev + value along the lanes of (ROWS, BLOCK_L) tiles, entered with
    ``carry`` (a carry as :func:`_lane_value` returns it): from the first lane up, or with REVERSE_LANES from the
    last lane down. Reversed with SEGMENT > 0: :func:`_suffix_scan_segments` (SEGMENT should be the positions each
    thread holds); otherwise Triton's ``associative_scan``."""
    if WIDE:
        carry_per_segment = carry
    else:
        carry_per_segment = carry[:, None]
    if REVERSE_LANES and SEGMENT > 0:
        return _suffix_scan_segments(decay, value, carry_per_segment, ROWS, BLOCK_L, SEGMENT)
    else:
        decay_cum, value_cum = tl.associative_scan((decay, value), 1, _linear_recurrence_combine,
                                                   reverse=REVERSE_LANES)
        if WIDE:  # the carry on every position: SEGMENT copies of its segment form (register renaming)
            copies = ()
            for _ in tl.static_range(SEGMENT):
                copies = copies + (carry,)
            return value_cum + decay_cum * _join_positions(copies, ROWS, BLOCK_L // SEGMENT, SEGMENT)
        else:
            return value_cum + decay_cum * carry[:, None]


@triton.jit
def _uncarried_scan(decay, value, REVERSE_LANES: tl.constexpr, ROWS: tl.constexpr, BLOCK_L: tl.constexpr,
                    SEGMENT: tl.constexpr):
    """:func:`_carried_scan` entered with a zero state (the LB window recursions)."""
    if REVERSE_LANES and SEGMENT > 0:
        return _suffix_scan_segments(decay, value, tl.zeros([ROWS, BLOCK_L // SEGMENT], dtype=tl.float32), ROWS,
                                     BLOCK_L, SEGMENT)
    else:
        _, value_cum = tl.associative_scan((decay, value), 1, _linear_recurrence_combine, reverse=REVERSE_LANES)
        return value_cum


@triton.jit
def _log1p_unit(e):
    """log(1 + e) for e in [0, 1], as e * P(e): P is a degree-8 fit of log1p(e) / e, relative error <= 2.1e-7
    evaluated in fp32 (8 FMAs, where an accurate log and Kahan's division took ~50 instructions)."""
    p = 0.005383701 * e - 0.030109072
    p = p * e + 0.079206824
    p = p * e - 0.13746206
    p = p * e + 0.19144872
    p = p * e - 0.24852866
    p = p * e + 0.33320332
    p = p * e - 0.49999553
    p = p * e + 1.0
    return p * e


@triton.jit
def _softplus_with_grad(x):
    """(softplus(x), its derivative sigmoid(x)) from one exp(-|x|); the derivative is 1 above 20, as softplus is x
    there. sigmoid(x) = 1 / (1 + e) for x >= 0, e / (1 + e) below, with e = exp(-|x|)."""
    e = tl.exp2(tl.abs(x) * -1.4426950408889634)
    r = tl.fdiv(1.0, 1.0 + e, ieee_rounding=False)
    sig = tl.where(x >= 0.0, r, e * r)
    above = x > 20.0
    return tl.where(above, x, tl.maximum(x, 0.0) + _log1p_unit(e)), tl.where(above, 1.0, sig)


@triton.jit
def _dt_with_grad(pre, mask, DELTA_SOFTPLUS: tl.constexpr):
    """dt = softplus(pre) (or pre) and d dt / d pre, both 0 where masked (the state then passes unchanged)."""
    if DELTA_SOFTPLUS:
        dt, grad = _softplus_with_grad(pre)
    else:
        dt = pre
        grad = tl.full(pre.shape, 1.0, tl.float32)
    return tl.where(mask, dt, 0.0), tl.where(mask, grad, 0.0)


@triton.jit
def _load_dt(delta_ptr, offsets, mask, delta_bias, HAS_DELTA_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr):
    """dt = softplus(delta + bias) (or without softplus) on a (BLOCK_D, BLOCK_L) tile and its derivative with
    respect to delta; both 0 where masked. (Callers that drop the derivative leave its code to dead-code
    elimination.)"""
    x = tl.load(delta_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if HAS_DELTA_BIAS:
        x = x + delta_bias[:, None]
    return _dt_with_grad(x, mask, DELTA_SOFTPLUS)


@triton.jit
def _step_dt(delta, mask, delta_bias, HAS_DELTA_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr):
    """delta of one position for a vector of channels (step kernels), fp32 -> dt = softplus(delta + bias) (or
    without softplus) and its derivative with respect to delta, both 0 where masked."""
    pre = delta
    if HAS_DELTA_BIAS:
        pre += delta_bias
    return _dt_with_grad(pre, mask, DELTA_SOFTPLUS)


# ----------------------------------------------------------------------------------------------------------------
# Forward kernel (also the backward's chunk-state pre-pass)

@triton.jit
def _sum_over_states(t, BLOCK_N: tl.constexpr):
    """(rows, L) -> per-channel (BLOCK_D, L): rows are channels when BLOCK_N == 1, else the states of one channel."""
    if BLOCK_N == 1:
        return t
    else:
        return tl.sum(t, axis=0, keep_dims=True)


@triton.jit
def _sum_over_channels(t, BLOCK_N: tl.constexpr):
    """(rows, L) -> per-state (BLOCK_N, L)."""
    if BLOCK_N == 1:
        return tl.sum(t, axis=0, keep_dims=True)
    else:
        return t


@triton.jit
def _fwd_chunked_program(
        u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, delta_bias_ptr,
        out_ptr, last_state_ptr, chunk_states_ptr,
        length, channels, channels_per_group, num_groups, num_states, num_chunks, group_offset,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr,
        REVERSE: tl.constexpr, LOCAL_WINDOW: tl.constexpr,
        WRITE_OUTPUT: tl.constexpr, WRITE_CHUNK_STATES: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr, CHUNK: tl.constexpr,
        STATE_CHUNK: tl.constexpr, ALIGN: tl.constexpr, SEGMENT: tl.constexpr,
):
    """One program: BLOCK_D channels (group program_id(1) + group_offset, batch program_id(2)) x all states.

    The state tile has BLOCK_D * BLOCK_N rows (one of the two is 1): channels when N == 1, else the states of one
    channel. Per-channel tensors are (BLOCK_D, BLOCK_L), per-state B/C tiles (BLOCK_N, BLOCK_L).
    WRITE_CHUNK_STATES: the state at every STATE_CHUNK-th step in scan order (STATE_CHUNK divides CHUNK: the
    backward's chunk starts, several per tile when the backward's chunks are shorter), cdiv(length, STATE_CHUNK) of
    them."""
    ROWS: tl.constexpr = BLOCK_D * BLOCK_N
    pid_d = tl.program_id(0)
    group = tl.program_id(1).to(tl.int64) + group_offset
    batch = tl.program_id(2).to(tl.int64)

    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < channels_per_group
    chan = group * channels_per_group + offs_d.to(tl.int64)  # (BLOCK_D,)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < num_states
    rows = tl.arange(0, ROWS)
    row_d = pid_d * BLOCK_D + rows // BLOCK_N  # channel (within the group) and state of each tile row
    row_n = rows % BLOCK_N
    mask_rows = (row_d < channels_per_group) & (row_n < num_states)
    row_seq = batch * channels + group * channels_per_group + row_d.to(tl.int64)  # (b, c) index of each row
    row_state = row_seq * num_states + row_n
    lane = tl.arange(0, BLOCK_L)

    # A in log2 units so that exp(dt * A) = exp2(dt * A2).
    A2 = tl.load(A_ptr + (group * channels_per_group + row_d) * num_states + row_n, mask=mask_rows,
                 other=0.0)[:, None] * 1.4426950408889634  # (ROWS, 1)
    if HAS_D:
        D = tl.load(D_ptr + chan, mask=mask_d, other=0.0)
    if HAS_DELTA_BIAS:
        delta_bias = tl.load(delta_bias_ptr + chan, mask=mask_d, other=0.0)
    else:
        delta_bias = tl.zeros([BLOCK_D], dtype=tl.float32)

    # Rows and chunk starts are multiples of ALIGN (which divides L and CHUNK): loads of ALIGN positions vectorise.
    seq_row = tl.multiple_of((batch * channels + chan) * length, ALIGN)  # (BLOCK_D,) start of each sequence
    bc_row = tl.multiple_of(((batch * num_groups + group) * num_states + offs_n) * length, ALIGN)  # (BLOCK_N,)
    CARRY_LANE: tl.constexpr = 0 if REVERSE else BLOCK_L - 1  # holds the state after the chunk's last scanned step
    # Carries one per segment (a shuffle to extract, no lane reduction) where each segment is one thread's run of
    # registers: at most one 16-byte load's positions (the 512-position tile holds two runs of 8 per thread).
    WIDE_CARRY: tl.constexpr = SEGMENT > 0 and SEGMENT * u_ptr.dtype.element_ty.primitive_bitwidth <= 128

    STATES_PER_CHUNK: tl.constexpr = CHUNK // STATE_CHUNK
    if STATES_PER_CHUNK == 1:
        num_state_chunks = num_chunks
    else:
        num_state_chunks = tl.cdiv(length, STATE_CHUNK)
    state = _carry_form(tl.zeros([ROWS], dtype=tl.float32), ROWS, BLOCK_L, SEGMENT, WIDE_CARRY)
    for chunk in range(num_chunks):
        if REVERSE:
            start = tl.multiple_of(length - (chunk + 1) * CHUNK, ALIGN)
        else:
            start = tl.multiple_of(chunk * CHUNK, ALIGN)
        pos = start + lane
        mask_l = (lane < CHUNK) & (pos >= 0) & (pos < length)
        if WRITE_CHUNK_STATES:
            _store_carry(chunk_states_ptr + (row_seq * num_state_chunks + chunk * STATES_PER_CHUNK) * num_states
                         + row_n, state, mask_rows, ROWS, BLOCK_L, SEGMENT, WIDE_CARRY)

        mask_dl = mask_d[:, None] & mask_l[None, :]
        seq_offs = seq_row[:, None] + pos[None, :]
        u = tl.load(u_ptr + seq_offs, mask=mask_dl, other=0.0).to(tl.float32)
        dt, _ = _load_dt(delta_ptr, seq_offs, mask_dl, delta_bias, HAS_DELTA_BIAS, DELTA_SOFTPLUS)
        mask_nl = mask_n[:, None] & mask_l[None, :]
        bc_offs = bc_row[:, None] + pos[None, :]
        Bv = tl.load(B_ptr + bc_offs, mask=mask_nl, other=0.0).to(tl.float32)

        decay = tl.exp2(dt * A2)  # (ROWS, L); 1 on masked lanes (dt = 0)
        x = (dt * u) * Bv  # (ROWS, L); 0 on masked lanes
        h_left = _carried_scan(decay, x, state, REVERSE, ROWS, BLOCK_L, SEGMENT, WIDE_CARRY)
        if WRITE_CHUNK_STATES:
            for part in tl.static_range(1, STATES_PER_CHUNK):  # the later state-chunk starts inside this tile
                index = chunk * STATES_PER_CHUNK + part
                # the state at the last scanned lane of the state chunk before
                tl.store(chunk_states_ptr + (row_seq * num_state_chunks + index) * num_states + row_n,
                         _lane_value(h_left, CHUNK - part * STATE_CHUNK if REVERSE else part * STATE_CHUNK - 1,
                                     ROWS, BLOCK_L, SEGMENT, False),
                         mask=mask_rows & (index < num_state_chunks))
        state = _lane_value(h_left, CARRY_LANE, ROWS, BLOCK_L, SEGMENT, WIDE_CARRY)

        if WRITE_OUTPUT:
            if LOCAL_WINDOW > 0:
                # In-window backward recursion: the decay out of the last token of a window is cut to 0.
                if REVERSE:
                    scan_index = length - 1 - pos
                else:
                    scan_index = pos
                window_end = (scan_index % LOCAL_WINDOW) == (LOCAL_WINDOW - 1)
                decay_local = tl.where(window_end[None, :], 0.0, decay)
                h_right = _uncarried_scan(decay_local, x, not REVERSE, ROWS, BLOCK_L, SEGMENT)
                h = h_left + h_right - x
            else:
                h = h_left
            Cv = tl.load(C_ptr + bc_offs, mask=mask_nl, other=0.0).to(tl.float32)
            y = _sum_over_states(h * Cv, BLOCK_N)  # (BLOCK_D, L)
            if HAS_D:
                y += D[:, None] * u
            if HAS_Z:
                zv = tl.load(z_ptr + seq_offs, mask=mask_dl, other=0.0).to(tl.float32)
                y *= zv * tl.sigmoid(zv)
            tl.store(out_ptr + seq_offs, y.to(out_ptr.dtype.element_ty), mask=mask_dl)

    if WRITE_OUTPUT:
        _store_carry(last_state_ptr + row_state, state, mask_rows, ROWS, BLOCK_L, SEGMENT, WIDE_CARRY)


@triton.jit
def _selective_scan_fwd_kernel(
        u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, delta_bias_ptr, out_ptr, last_state_ptr,
        chunk_states_ptr, length, channels, channels_per_group, num_groups, num_states, num_chunks,
        group_offset, reverse_bits, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
        HAS_DELTA_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr, HAS_FORWARD: tl.constexpr,
        HAS_REVERSE: tl.constexpr, LOCAL_WINDOW: tl.constexpr, WRITE_OUTPUT: tl.constexpr,
        WRITE_CHUNK_STATES: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
        CHUNK: tl.constexpr, STATE_CHUNK: tl.constexpr, ALIGN: tl.constexpr, SEGMENT: tl.constexpr,
):
    """Chunked forward, both directions in one launch: :func:`_runs_reverse` picks each program's
    :func:`_fwd_chunked_program`."""
    if _runs_reverse(reverse_bits, HAS_FORWARD, HAS_REVERSE):
        _fwd_chunked_program(
            u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, delta_bias_ptr, out_ptr, last_state_ptr,
            chunk_states_ptr, length, channels, channels_per_group, num_groups, num_states, num_chunks,
            group_offset, HAS_D, HAS_Z, HAS_DELTA_BIAS, DELTA_SOFTPLUS, True, LOCAL_WINDOW,
            WRITE_OUTPUT, WRITE_CHUNK_STATES, BLOCK_D, BLOCK_N, BLOCK_L, CHUNK, STATE_CHUNK, ALIGN, SEGMENT)
    else:
        _fwd_chunked_program(
            u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, delta_bias_ptr, out_ptr, last_state_ptr,
            chunk_states_ptr, length, channels, channels_per_group, num_groups, num_states, num_chunks,
            group_offset, HAS_D, HAS_Z, HAS_DELTA_BIAS, DELTA_SOFTPLUS, False, LOCAL_WINDOW,
            WRITE_OUTPUT, WRITE_CHUNK_STATES, BLOCK_D, BLOCK_N, BLOCK_L, CHUNK, STATE_CHUNK, ALIGN, SEGMENT)


@triton.jit
def _direction_bit(reverse_bits):
    """1 when this program's group (program_id(1) of the launch) scans from the end: its bit of ``reverse_bits``."""
    return (reverse_bits >> tl.program_id(1)) & 1


@triton.jit
def _runs_reverse(reverse_bits, HAS_FORWARD: tl.constexpr, HAS_REVERSE: tl.constexpr):
    """Whether this program runs the reversed program of a chunked kernel: its direction bit (run time) when the
    launch holds both directions, else the launch's one direction (compile time, so that only that program
    compiles)."""
    if HAS_FORWARD and HAS_REVERSE:
        return _direction_bit(reverse_bits) != 0
    else:
        return HAS_REVERSE


@triton.jit
def _step_program(group_offset, reverse_bits, channels_per_group, BLOCK_D: tl.constexpr):
    """This program's place in a step kernel's grid (channel block, group, batch entry): (group, reverse (1: the group
    scans from the end), batch, offs_d and mask_d (BLOCK_D,) channels within the group, chan (BLOCK_D,) int64
    channels)."""
    group = tl.program_id(1).to(tl.int64) + group_offset
    reverse = _direction_bit(reverse_bits)
    batch = tl.program_id(2).to(tl.int64)
    offs_d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < channels_per_group
    chan = group * channels_per_group + offs_d.to(tl.int64)
    return group, reverse, batch, offs_d, mask_d, chan


@triton.jit
def _step_position(i, length, reverse):
    """Sequence index of scan step ``i`` of a group that scans forward (``reverse`` 0) or from the end (1)."""
    return i + reverse * (length - 1 - 2 * i)


@triton.jit
def _step_block_loads(chunk, length, mask_d, mask_n, u_ptrs, delta_ptrs, B_ptrs, C_ptrs, z_ptrs,
                      su_l, sdt_l, sB_l, sC_l, sz_l,
                      reverse, HAS_Z: tl.constexpr, WITH_C: tl.constexpr, STEPS: tl.constexpr,
                      FULL_TILE: tl.constexpr):
    """Raw inputs of the STEPS positions of block ``chunk`` of a step kernel, in their storage dtypes:
    tuples (u, delta, B, C, z) of STEPS vectors ((BLOCK_D,) channels or (BLOCK_N,) states). C and z are empty
    tuples when not needed (``WITH_C`` False: the backward's pre-pass). ``reverse`` (0 or 1, run time): the group
    scans from the end. Positions outside the sequence load as 0, or, with ``FULL_TILE`` (no channel or state of the
    tile is masked), load the nearest position without a mask: the callers zero dt there, which is all that the
    kernels' math needs, and unpredicated loads save ~10% of the forward's instructions."""
    us = ()
    deltas = ()
    Bs = ()
    Cs = ()
    zs = ()
    for j in tl.static_range(STEPS):
        i = chunk * STEPS + j
        if FULL_TILE:
            t = _step_position(tl.maximum(tl.minimum(i, length - 1), 0), length, reverse)
            us = us + (tl.load(u_ptrs + t * su_l),)
            deltas = deltas + (tl.load(delta_ptrs + t * sdt_l),)
            Bs = Bs + (tl.load(B_ptrs + t * sB_l),)
            if WITH_C:
                Cs = Cs + (tl.load(C_ptrs + t * sC_l),)
                if HAS_Z:
                    zs = zs + (tl.load(z_ptrs + t * sz_l),)
        else:
            t = _step_position(i, length, reverse)
            valid = i < length
            mask = mask_d & valid
            us = us + (tl.load(u_ptrs + t * su_l, mask=mask, other=0.0),)
            deltas = deltas + (tl.load(delta_ptrs + t * sdt_l, mask=mask, other=0.0),)
            Bs = Bs + (tl.load(B_ptrs + t * sB_l, mask=mask_n & valid, other=0.0),)
            if WITH_C:
                Cs = Cs + (tl.load(C_ptrs + t * sC_l, mask=mask_n & valid, other=0.0),)
                if HAS_Z:
                    zs = zs + (tl.load(z_ptrs + t * sz_l, mask=mask, other=0.0),)
    return us, deltas, Bs, Cs, zs


@triton.jit
def _selective_scan_fwd_step_kernel(
        u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, delta_bias_ptr, out_ptr, last_state_ptr,
        chunk_states_ptr,
        length, channels, channels_per_group, num_groups, num_chunks, group_offset, reverse_bits,
        su_b, su_c, su_l, sdt_b, sdt_c, sdt_l, sz_b, sz_c, sz_l, so_b, so_c, so_l,
        sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr,
        WRITE_OUTPUT: tl.constexpr, WRITE_CHUNK_STATES: tl.constexpr,
        NUM_STATES: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, STEPS: tl.constexpr,
        FULL_TILE: tl.constexpr,
):
    """Step-by-step forward for N > 1 without LB window: a (BLOCK_N states, BLOCK_D channels) state tile walks the
    sequence one position at a time (no cross-lane scan). The walk is unrolled by STEPS positions, and the loads of
    the next block are issued before the current block's recurrence runs (software pipelining). Every group's
    direction is a bit of ``reverse_bits`` (run time), so both directions of a bidirectional scan share one launch;
    a reversed group visits the positions from the end by index arithmetic. A (channels, N) is read in place into
    the transposed (N, BLOCK_D) tile (once per program). NUM_STATES is a compile-time constant: with the state
    stride known, the state tile is read and written 16 bytes at a time, which makes Triton lay out 4 states per
    thread (the sum over states is then mostly in-thread).
    Sequence tensors are addressed through their strides (``s<name>_b/c/l``; B and C: ``_b/g/n/l``), so token-major
    views (memory (batch, L, channels), Vim) load a position's channels with one contiguous access.

    Also the backward's pre-pass (WRITE_OUTPUT False, WRITE_CHUNK_STATES True): stores the state before each block of
    STEPS scanned positions to ``chunk_states`` (batch, num_chunks, channels, N): contiguous along states like A
    and the state tile, so that the backward keeps one register layout."""
    group, reverse, batch, offs_d, mask_d, chan = _step_program(group_offset, reverse_bits, channels_per_group,
                                                                BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < NUM_STATES
    mask_nd = mask_n[:, None] & mask_d[None, :]
    row_seq = batch * channels + chan  # (BLOCK_D,) (b, c) index of each channel
    state_offs = row_seq[None, :] * NUM_STATES + offs_n[:, None]  # (BLOCK_N, BLOCK_D) into (batch, channels, N)

    A2 = tl.load(A_ptr + chan[None, :] * NUM_STATES + offs_n[:, None], mask=mask_nd, other=0.0) * 1.4426950408889634
    if HAS_D:
        D = tl.load(D_ptr + chan, mask=mask_d, other=0.0)
    if HAS_DELTA_BIAS:
        delta_bias = tl.load(delta_bias_ptr + chan, mask=mask_d, other=0.0)
    else:
        delta_bias = None
    u_row = batch * su_b + chan * su_c
    dt_row = batch * sdt_b + chan * sdt_c
    z_row = batch * sz_b + chan * sz_c
    out_row = batch * so_b + chan * so_c
    B_row = batch * sB_b + group * sB_g + offs_n * sB_n  # (BLOCK_N,)
    C_row = batch * sC_b + group * sC_g + offs_n * sC_n

    h = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    # Software pipelining: the raw inputs of block ``chunk + 1`` are loaded while block ``chunk`` runs (past the
    # last block they are masked off or clamped), so a program waits for memory once, not once per block.
    block = _step_block_loads(0, length, mask_d, mask_n, u_ptr + u_row, delta_ptr + dt_row, B_ptr + B_row,
                              C_ptr + C_row, z_ptr + z_row, su_l, sdt_l, sB_l, sC_l, sz_l,
                              reverse, HAS_Z, WRITE_OUTPUT, STEPS, FULL_TILE)
    for chunk in range(num_chunks):
        if WRITE_CHUNK_STATES:
            tl.store(chunk_states_ptr + ((batch * num_chunks + chunk) * channels + chan[None, :]) * NUM_STATES
                     + offs_n[:, None], h, mask=mask_nd)
        us, deltas, Bs, Cs, zs = block
        block = _step_block_loads(chunk + 1, length, mask_d, mask_n, u_ptr + u_row, delta_ptr + dt_row,
                                  B_ptr + B_row, C_ptr + C_row, z_ptr + z_row, su_l, sdt_l, sB_l, sC_l, sz_l,
                                  reverse, HAS_Z, WRITE_OUTPUT, STEPS, FULL_TILE)
        for j in tl.static_range(STEPS):
            i = chunk * STEPS + j
            mask = mask_d & (i < length)
            u = us[j].to(tl.float32)
            dt, _ = _step_dt(deltas[j].to(tl.float32), mask, delta_bias, HAS_DELTA_BIAS, DELTA_SOFTPLUS)
            h = tl.exp2(dt[None, :] * A2) * h + Bs[j].to(tl.float32)[:, None] * (dt * u)[None, :]
            if WRITE_OUTPUT:
                y = tl.sum(h * Cs[j].to(tl.float32)[:, None], axis=0)
                if HAS_D:
                    y += D * u
                if HAS_Z:
                    z = zs[j].to(tl.float32)
                    y *= z * tl.sigmoid(z)
                t = _step_position(i, length, reverse)
                tl.store(out_ptr + out_row + t * so_l, y.to(out_ptr.dtype.element_ty), mask=mask)
    if WRITE_OUTPUT:
        tl.store(last_state_ptr + state_offs, h, mask=mask_nd)


@triton.jit
def _scalars(v, COUNT: tl.constexpr):
    """A (COUNT,) vector that every thread holds whole -> a tuple of COUNT fp32 scalars, by register renaming
    (:func:`_split_positions` of the vector as one row; no data moves)."""
    parts = _split_positions(tl.reshape(v, (1, COUNT)), 1, 1, COUNT)
    out = ()
    for k in tl.static_range(COUNT):
        out = out + (tl.reshape(parts[k], ()).to(tl.float32),)
    return out


@triton.jit
def _load_state_scalars(ptr, NUM_STATES: tl.constexpr, VEC: tl.constexpr):
    """The NUM_STATES contiguous values at ``ptr`` (one position's B or C) as a tuple of fp32 scalars held by every
    thread, loaded VEC at a time (16 bytes when ``ptr`` and VEC are aligned: a broadcast load per 4 fp32 states)."""
    vals = ()
    for k in tl.static_range(NUM_STATES // VEC):
        vals = vals + _scalars(tl.load(ptr + VEC * k + tl.arange(0, VEC)), VEC)
    return vals


@triton.jit
def _store_state_vectors(ptrs, states, mask, NUM_STATES: tl.constexpr, BLOCK_D: tl.constexpr):
    """Store a tuple of NUM_STATES (BLOCK_D,) state vectors to ``ptrs + n`` (each channel's states contiguous), four
    states of a channel per 16-byte store where NUM_STATES allows (``tl.join`` keeps the four in one thread)."""
    if NUM_STATES % 4 == 0:
        quad_offs = tl.arange(0, 4)
        for q in tl.static_range(NUM_STATES // 4):
            quad = tl.join(tl.join(states[4 * q], states[4 * q + 2]), tl.join(states[4 * q + 1], states[4 * q + 3]))
            tl.store(ptrs[:, None] + (4 * q + quad_offs)[None, :], tl.reshape(quad, (BLOCK_D, 4)),
                     mask=mask[:, None])
    else:
        for n in tl.static_range(NUM_STATES):
            tl.store(ptrs + n, states[n], mask=mask)


@triton.jit
def _lane_block_loads(chunk, length, mask_d, u_ptrs, delta_ptrs, B_row, C_row, su_l, sdt_l, sB_l, sC_l, reverse,
                      WITH_C: tl.constexpr, NUM_STATES: tl.constexpr, BC_VEC: tl.constexpr, STEPS: tl.constexpr,
                      FULL_TILE: tl.constexpr):
    """Inputs of the STEPS positions of block ``chunk``: tuples (u, delta, B, C) of STEPS entries; u and delta
    (BLOCK_D,) vectors in their storage dtype, masked to 0 outside the sequence or, with ``FULL_TILE``, clamped to
    its ends (see :func:`_step_block_loads`); B and C tuples of NUM_STATES fp32 scalars, read at the nearest position
    of the sequence (dt is 0 outside it, so they do not count there). C is empty without ``WITH_C``."""
    us = ()
    deltas = ()
    Bs = ()
    Cs = ()
    for j in tl.static_range(STEPS):
        i = chunk * STEPS + j
        t_in = _step_position(tl.maximum(tl.minimum(i, length - 1), 0), length, reverse)
        if FULL_TILE:
            us = us + (tl.load(u_ptrs + t_in * su_l),)
            deltas = deltas + (tl.load(delta_ptrs + t_in * sdt_l),)
        else:
            t = _step_position(i, length, reverse)
            mask = mask_d & (i < length)
            us = us + (tl.load(u_ptrs + t * su_l, mask=mask, other=0.0),)
            deltas = deltas + (tl.load(delta_ptrs + t * sdt_l, mask=mask, other=0.0),)
        Bs = Bs + (_load_state_scalars(B_row + t_in * sB_l, NUM_STATES, BC_VEC),)
        if WITH_C:
            Cs = Cs + (_load_state_scalars(C_row + t_in * sC_l, NUM_STATES, BC_VEC),)
    return us, deltas, Bs, Cs


@triton.jit
def _selective_scan_fwd_lanes_kernel(
        u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, delta_bias_ptr, out_ptr, last_state_ptr,
        chunk_states_ptr,
        length, channels, channels_per_group, num_chunks, group_offset, reverse_bits,
        su_b, su_c, su_l, sdt_b, sdt_c, sdt_l, sz_b, sz_c, sz_l, so_b, so_c, so_l,
        sB_b, sB_g, sB_l, sC_b, sC_g, sC_l,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr,
        WRITE_OUTPUT: tl.constexpr, WRITE_CHUNK_STATES: tl.constexpr,
        NUM_STATES: tl.constexpr, BC_VEC: tl.constexpr, BLOCK_D: tl.constexpr, STEPS: tl.constexpr,
        FULL_TILE: tl.constexpr,
):
    """Step-by-step forward (N > 1, no LB window) with one channel per lane: each thread keeps its channel's N
    states as N register vectors (a tuple, unrolled), so the sum over states is in-thread, softplus runs once per
    channel and position, and a position's B and C (states contiguous: stride 1 along N) are broadcast loads
    of 16 bytes split into scalars. Per state and position that leaves one exp2 (MUFU) and four FP32 instructions,
    where the (N, BLOCK_D) tile of :func:`_selective_scan_fwd_step_kernel` spreads a channel's states over 4 lanes
    and repeats each channel's softplus and each state's B / C conversion on every lane that holds them.

    Same walk as :func:`_selective_scan_fwd_step_kernel` (blocks of STEPS positions, the next block's u / delta
    loaded while the current one runs, per-group direction bits, strided sequence tensors) and the same pre-pass
    mode (WRITE_OUTPUT False, WRITE_CHUNK_STATES True: the state before each block to (batch, num_chunks, channels,
    N))."""
    group, reverse, batch, offs_d, mask_d, chan = _step_program(group_offset, reverse_bits, channels_per_group,
                                                                BLOCK_D)

    A2 = ()  # A * log2(e), one (BLOCK_D,) vector per state
    h = ()
    for n in tl.static_range(NUM_STATES):
        A2 = A2 + (tl.load(A_ptr + chan * NUM_STATES + n, mask=mask_d, other=0.0) * 1.4426950408889634,)
        h = h + (tl.zeros([BLOCK_D], dtype=tl.float32),)
    if HAS_D:
        D = tl.load(D_ptr + chan, mask=mask_d, other=0.0)
    if HAS_DELTA_BIAS:
        delta_bias = tl.load(delta_bias_ptr + chan, mask=mask_d, other=0.0)
    else:
        delta_bias = None
    u_ptrs = u_ptr + batch * su_b + chan * su_c
    dt_ptrs = delta_ptr + batch * sdt_b + chan * sdt_c
    z_ptrs = z_ptr + batch * sz_b + chan * sz_c
    out_ptrs = out_ptr + batch * so_b + chan * so_c
    B_row = B_ptr + batch * sB_b + group * sB_g
    C_row = C_ptr + batch * sC_b + group * sC_g

    # Software pipelining as in the tile kernel: block ``chunk + 1``'s inputs, B and C included, load while block
    # ``chunk`` runs (past the sequence end they are clamped or masked).
    block = _lane_block_loads(0, length, mask_d, u_ptrs, dt_ptrs, B_row, C_row, su_l, sdt_l, sB_l, sC_l, reverse,
                              WRITE_OUTPUT, NUM_STATES, BC_VEC, STEPS, FULL_TILE)
    for chunk in range(num_chunks):
        if WRITE_CHUNK_STATES:
            _store_state_vectors(chunk_states_ptr + ((batch * num_chunks + chunk) * channels + chan) * NUM_STATES,
                                 h, mask_d, NUM_STATES, BLOCK_D)
        us, deltas, Bss, Css = block
        block = _lane_block_loads(chunk + 1, length, mask_d, u_ptrs, dt_ptrs, B_row, C_row, su_l, sdt_l, sB_l,
                                  sC_l, reverse, WRITE_OUTPUT, NUM_STATES, BC_VEC, STEPS, FULL_TILE)
        for j in tl.static_range(STEPS):
            i = chunk * STEPS + j
            mask = mask_d & (i < length)
            t = _step_position(i, length, reverse)
            Bs = Bss[j]
            u = us[j].to(tl.float32)
            dt, _ = _step_dt(deltas[j].to(tl.float32), mask, delta_bias, HAS_DELTA_BIAS, DELTA_SOFTPLUS)
            dtu = dt * u
            new_h = ()
            for n in tl.static_range(NUM_STATES):
                new_h = new_h + (tl.exp2(dt * A2[n]) * h[n] + Bs[n] * dtu,)
            h = new_h
            if WRITE_OUTPUT:
                Cs = Css[j]
                # two partial sums over the states: half the dependent chain
                y_even = tl.zeros([BLOCK_D], dtype=tl.float32)
                y_odd = tl.zeros([BLOCK_D], dtype=tl.float32)
                for n in tl.static_range(0, NUM_STATES - 1, 2):
                    y_even += Cs[n] * h[n]
                    y_odd += Cs[n + 1] * h[n + 1]
                if NUM_STATES % 2 == 1:
                    y_even += Cs[NUM_STATES - 1] * h[NUM_STATES - 1]
                y = y_even + y_odd
                if HAS_D:
                    y += D * u
                if HAS_Z:
                    z = tl.load(z_ptrs + t * sz_l, mask=mask, other=0.0).to(tl.float32)
                    y *= z * tl.sigmoid(z)
                tl.store(out_ptrs + t * so_l, y.to(out_ptr.dtype.element_ty), mask=mask)
    if WRITE_OUTPUT:
        _store_state_vectors(last_state_ptr + (batch * channels + chan) * NUM_STATES, h, mask_d, NUM_STATES, BLOCK_D)


# ----------------------------------------------------------------------------------------------------------------
# Backward kernel

@triton.jit
def _bwd_chunked_program(
        grad_out_ptr, grad_last_state_ptr, chunk_states_ptr,
        u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, delta_bias_ptr,
        du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dA_partial_ptr, dD_partial_ptr, ddelta_bias_partial_ptr,
        length, channels, channels_per_group, num_groups, num_states, num_chunks, group_offset,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr,
        REVERSE: tl.constexpr, LOCAL_WINDOW: tl.constexpr,
        HAS_GRAD_LAST_STATE: tl.constexpr, HAS_CHUNK_STATES: tl.constexpr,
        ATOMIC_BC: tl.constexpr, SINGLE_CHUNK: tl.constexpr, CHANNEL_BLOCKS: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr, CHUNK: tl.constexpr,
        SEGMENT: tl.constexpr,
):
    """One program: CHANNEL_BLOCKS x BLOCK_D channels of one group and batch element, one block after the other
    (tiles as in the forward kernel).

    dB/dC (shared by the group's channels) are summed over the program's channels, then added across programs
    (atomics when ATOMIC_BC); with SINGLE_CHUNK the sum over all channel blocks stays in registers."""
    ROWS: tl.constexpr = BLOCK_D * BLOCK_N
    pid_d = tl.program_id(0)
    group = tl.program_id(1).to(tl.int64) + group_offset
    batch = tl.program_id(2).to(tl.int64)

    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < num_states
    rows = tl.arange(0, ROWS)
    row_n = rows % BLOCK_N
    lane = tl.arange(0, BLOCK_L)
    # No alignment hints here (unlike the forward): with rows hinted 4-aligned the backward ran 2x slower at L 196
    # on H100 (benchmarks/results/v11/run4).
    bc_row = ((batch * num_groups + group) * num_states + offs_n) * length
    FIRST_LANE: tl.constexpr = CHUNK - 1 if REVERSE else 0  # the chunk's first scanned step (always a valid position)
    WIDE_CARRY: tl.constexpr = SEGMENT > 0 and SEGMENT * u_ptr.dtype.element_ty.primitive_bitwidth <= 128  # as forward
    if REVERSE:
        step = -1  # memory offset of the next position in scan order
    else:
        step = 1
    if SINGLE_CHUNK:
        dB_acc = tl.zeros([BLOCK_N, BLOCK_L], dtype=tl.float32)
        dC_acc = tl.zeros([BLOCK_N, BLOCK_L], dtype=tl.float32)

    for block in range(CHANNEL_BLOCKS):
        first_channel = (pid_d * CHANNEL_BLOCKS + block) * BLOCK_D
        offs_d = first_channel + tl.arange(0, BLOCK_D)
        mask_d = offs_d < channels_per_group
        chan = group * channels_per_group + offs_d.to(tl.int64)
        row_d = first_channel + rows // BLOCK_N
        mask_rows = (row_d < channels_per_group) & (row_n < num_states)
        row_seq = batch * channels + group * channels_per_group + row_d.to(tl.int64)
        row_state = row_seq * num_states + row_n

        A = tl.load(A_ptr + (group * channels_per_group + row_d) * num_states + row_n, mask=mask_rows,
                    other=0.0)[:, None]  # (ROWS, 1)
        A2 = A * 1.4426950408889634
        if HAS_D:
            D = tl.load(D_ptr + chan, mask=mask_d, other=0.0)
        if HAS_DELTA_BIAS:
            delta_bias = tl.load(delta_bias_ptr + chan, mask=mask_d, other=0.0)
        else:
            delta_bias = tl.zeros([BLOCK_D], dtype=tl.float32)
        seq_row = (batch * channels + chan) * length

        # Adjoint flowing into a chunk from the later chunk (in scan order): a_{t+1} * dL/dh_{t+1}.
        if HAS_GRAD_LAST_STATE:
            adj_carry = tl.load(grad_last_state_ptr + row_state, mask=mask_rows, other=0.0)
        else:
            adj_carry = tl.zeros([ROWS], dtype=tl.float32)
        adj_carry = _carry_form(adj_carry, ROWS, BLOCK_L, SEGMENT, WIDE_CARRY)
        # Per-position sums for dA / dD / ddelta_bias, reduced over positions once after the last chunk.
        dA_acc = tl.zeros([ROWS, BLOCK_L], dtype=tl.float32)
        dD_acc = tl.zeros([BLOCK_D, BLOCK_L], dtype=tl.float32)
        dbias_acc = tl.zeros([BLOCK_D, BLOCK_L], dtype=tl.float32)

        for i in range(num_chunks):
            chunk = num_chunks - 1 - i
            if REVERSE:
                start = length - (chunk + 1) * CHUNK
            else:
                start = chunk * CHUNK
            pos = start + lane
            mask_l = (lane < CHUNK) & (pos >= 0) & (pos < length)
            mask_dl = mask_d[:, None] & mask_l[None, :]
            mask_nl = mask_n[:, None] & mask_l[None, :]
            seq_offs = seq_row[:, None] + pos[None, :]
            bc_offs = bc_row[:, None] + pos[None, :]

            if HAS_CHUNK_STATES:
                state0 = tl.load(chunk_states_ptr + (row_seq * num_chunks + chunk) * num_states + row_n,
                                 mask=mask_rows, other=0.0)
            else:
                state0 = tl.zeros([ROWS], dtype=tl.float32)
            state0 = _carry_form(state0, ROWS, BLOCK_L, SEGMENT, WIDE_CARRY)

            u = tl.load(u_ptr + seq_offs, mask=mask_dl, other=0.0).to(tl.float32)
            dt, dt_grad = _load_dt(delta_ptr, seq_offs, mask_dl, delta_bias, HAS_DELTA_BIAS, DELTA_SOFTPLUS)
            Bv = tl.load(B_ptr + bc_offs, mask=mask_nl, other=0.0).to(tl.float32)
            Cv = tl.load(C_ptr + bc_offs, mask=mask_nl, other=0.0).to(tl.float32)
            dout = tl.load(grad_out_ptr + seq_offs, mask=mask_dl, other=0.0).to(tl.float32)

            # Recompute the chunk's forward states.
            decay = tl.exp2(dt * A2)
            dtu = dt * u
            x = dtu * Bv
            h_left = _carried_scan(decay, x, state0, REVERSE, ROWS, BLOCK_L, SEGMENT, WIDE_CARRY)
            if LOCAL_WINDOW > 0:
                if REVERSE:
                    scan_index = length - 1 - pos
                else:
                    scan_index = pos
                window_pos = scan_index % LOCAL_WINDOW
                decay_local = tl.where((window_pos == LOCAL_WINDOW - 1)[None, :], 0.0, decay)
                h_right = _uncarried_scan(decay_local, x, not REVERSE, ROWS, BLOCK_L, SEGMENT)
                h = h_left + h_right - x
            else:
                h = h_left

            # Output gate and skip term.
            y = _sum_over_states(h * Cv, BLOCK_N)
            if HAS_D:
                y_skip = y + D[:, None] * u
            else:
                y_skip = y
            if HAS_Z:
                zv = tl.load(z_ptr + seq_offs, mask=mask_dl, other=0.0).to(tl.float32)
                sig_z = tl.sigmoid(zv)
                dz = dout * y_skip * sig_z * (1.0 + zv * (1.0 - sig_z))
                tl.store(dz_ptr + seq_offs, dz.to(dz_ptr.dtype.element_ty), mask=mask_dl)
                dy = dout * zv * sig_z
            else:
                dy = dout
            if HAS_D:
                dD_acc += dy * u
                du = dy * D[:, None]
            else:
                du = tl.zeros([BLOCK_D, BLOCK_L], dtype=tl.float32)
            g = dy * Cv  # (ROWS, L): dL/dh_t through y_t only; 0 on masked lanes

            # Adjoint of the global forward scan: adj_t = g_t + a_{next} adj_{next}, backwards in scan order.
            # a_{next}: 1 where the next step is outside the chunk (the carry crosses chunks) or the sequence.
            if SEGMENT > 0:  # the chunk's decays moved by one lane (dt is 0, so the decay 1, on masked lanes)
                decay_next = _neighbour_lanes(decay, 1.0, not REVERSE, ROWS, BLOCK_L, SEGMENT)
            else:  # reloaded one step ahead
                lane_next = lane + step
                pos_next = pos + step
                mask_next = (lane_next >= 0) & (lane_next < CHUNK) & (pos_next >= 0) & (pos_next < length)
                dt_next, _ = _load_dt(delta_ptr, seq_row[:, None] + pos_next[None, :],
                                      mask_d[:, None] & mask_next[None, :], delta_bias, HAS_DELTA_BIAS,
                                      DELTA_SOFTPLUS)
                decay_next = tl.exp2(dt_next * A2)
            adj_left = _carried_scan(decay_next, g, adj_carry, not REVERSE, ROWS, BLOCK_L, SEGMENT, WIDE_CARRY)
            adj_carry = _lane_value(decay * adj_left, FIRST_LANE, ROWS, BLOCK_L, SEGMENT, WIDE_CARRY)

            if LOCAL_WINDOW > 0:
                # Adjoint of the in-window backward recursion: forward in scan order, reset at window starts.
                lane_prev = lane - step
                pos_prev = pos - step
                mask_prev = ((lane_prev >= 0) & (lane_prev < CHUNK) & (pos_prev >= 0) & (pos_prev < length)
                             & (window_pos != 0))
                dt_prev, _ = _load_dt(delta_ptr, seq_row[:, None] + pos_prev[None, :],
                                      mask_d[:, None] & mask_prev[None, :], delta_bias, HAS_DELTA_BIAS,
                                      DELTA_SOFTPLUS)
                decay_prev = tl.where(mask_prev[None, :], tl.exp2(dt_prev * A2), 0.0)
                adj_right = _uncarried_scan(decay_prev, g, REVERSE, ROWS, BLOCK_L, SEGMENT)
                dx = adj_left + adj_right - g
                # dL/d(dt A): adjoint * (state - input) (= decay * previous state), summed over both recursions.
                d_log_decay = adj_left * (h_left - x) + adj_right * (h_right - x)
            else:
                dx = adj_left
                d_log_decay = adj_left * (h_left - x)
            d_log_decay = tl.where(mask_l[None, :], d_log_decay, 0.0)

            dx_B = _sum_over_states(dx * Bv, BLOCK_N)  # (BLOCK_D, L)
            ddt = dx_B * u + _sum_over_states(d_log_decay * A, BLOCK_N)
            du += dx_B * dt
            dA_acc += d_log_decay * dt
            ddelta = ddt * dt_grad  # 0 where masked
            dbias_acc += ddelta
            tl.store(du_ptr + seq_offs, du.to(du_ptr.dtype.element_ty), mask=mask_dl)
            tl.store(ddelta_ptr + seq_offs, ddelta.to(ddelta_ptr.dtype.element_ty), mask=mask_dl)

            dB_part = _sum_over_channels(dx * dtu, BLOCK_N)  # (BLOCK_N, L), summed over this block's channels
            dC_part = _sum_over_channels(h * dy, BLOCK_N)
            if SINGLE_CHUNK:
                dB_acc += dB_part
                dC_acc += dC_part
            elif ATOMIC_BC:
                tl.atomic_add(dB_ptr + bc_offs, dB_part, mask=mask_nl, sem='relaxed')
                tl.atomic_add(dC_ptr + bc_offs, dC_part, mask=mask_nl, sem='relaxed')
            else:
                tl.store(dB_ptr + bc_offs, dB_part.to(dB_ptr.dtype.element_ty), mask=mask_nl)
                tl.store(dC_ptr + bc_offs, dC_part.to(dC_ptr.dtype.element_ty), mask=mask_nl)

        tl.store(dA_partial_ptr + row_state, tl.sum(dA_acc, axis=1), mask=mask_rows)
        if HAS_D:
            tl.store(dD_partial_ptr + batch * channels + chan, tl.sum(dD_acc, axis=1), mask=mask_d)
        if HAS_DELTA_BIAS:
            tl.store(ddelta_bias_partial_ptr + batch * channels + chan, tl.sum(dbias_acc, axis=1), mask=mask_d)

    if SINGLE_CHUNK:
        # The one chunk covers the whole sequence (CHUNK >= length).
        if REVERSE:
            pos = length - CHUNK + lane
        else:
            pos = lane
        mask_nl = mask_n[:, None] & ((lane < CHUNK) & (pos >= 0) & (pos < length))[None, :]
        bc_offs = bc_row[:, None] + pos[None, :]
        if ATOMIC_BC:
            tl.atomic_add(dB_ptr + bc_offs, dB_acc, mask=mask_nl, sem='relaxed')
            tl.atomic_add(dC_ptr + bc_offs, dC_acc, mask=mask_nl, sem='relaxed')
        else:
            tl.store(dB_ptr + bc_offs, dB_acc.to(dB_ptr.dtype.element_ty), mask=mask_nl)
            tl.store(dC_ptr + bc_offs, dC_acc.to(dC_ptr.dtype.element_ty), mask=mask_nl)


@triton.jit
def _selective_scan_bwd_kernel(
        grad_out_ptr, grad_last_state_ptr, chunk_states_ptr, u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr,
        delta_bias_ptr, du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dA_partial_ptr, dD_partial_ptr,
        ddelta_bias_partial_ptr, length, channels, channels_per_group, num_groups, num_states, num_chunks,
        group_offset, reverse_bits, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr,
        DELTA_SOFTPLUS: tl.constexpr, HAS_FORWARD: tl.constexpr, HAS_REVERSE: tl.constexpr,
        LOCAL_WINDOW: tl.constexpr, HAS_GRAD_LAST_STATE: tl.constexpr, HAS_CHUNK_STATES: tl.constexpr,
        ATOMIC_BC: tl.constexpr, SINGLE_CHUNK: tl.constexpr, CHANNEL_BLOCKS: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr, CHUNK: tl.constexpr, SEGMENT: tl.constexpr,
):
    """Chunked backward, both directions in one launch: :func:`_runs_reverse` picks each program's
    :func:`_bwd_chunked_program`."""
    if _runs_reverse(reverse_bits, HAS_FORWARD, HAS_REVERSE):
        _bwd_chunked_program(
            grad_out_ptr, grad_last_state_ptr, chunk_states_ptr, u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr,
            delta_bias_ptr, du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dA_partial_ptr, dD_partial_ptr,
            ddelta_bias_partial_ptr, length, channels, channels_per_group, num_groups, num_states, num_chunks,
            group_offset, HAS_D, HAS_Z, HAS_DELTA_BIAS, DELTA_SOFTPLUS, True, LOCAL_WINDOW,
            HAS_GRAD_LAST_STATE, HAS_CHUNK_STATES, ATOMIC_BC, SINGLE_CHUNK, CHANNEL_BLOCKS, BLOCK_D, BLOCK_N, BLOCK_L,
            CHUNK, SEGMENT)
    else:
        _bwd_chunked_program(
            grad_out_ptr, grad_last_state_ptr, chunk_states_ptr, u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr,
            delta_bias_ptr, du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dA_partial_ptr, dD_partial_ptr,
            ddelta_bias_partial_ptr, length, channels, channels_per_group, num_groups, num_states, num_chunks,
            group_offset, HAS_D, HAS_Z, HAS_DELTA_BIAS, DELTA_SOFTPLUS, False, LOCAL_WINDOW,
            HAS_GRAD_LAST_STATE, HAS_CHUNK_STATES, ATOMIC_BC, SINGLE_CHUNK, CHANNEL_BLOCKS, BLOCK_D, BLOCK_N, BLOCK_L,
            CHUNK, SEGMENT)


@triton.jit
def _selective_scan_bwd_step_kernel(
        grad_out_ptr, grad_last_state_ptr, chunk_states_ptr,
        u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, delta_bias_ptr,
        du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dA_partial_ptr, dD_partial_ptr, ddelta_bias_partial_ptr,
        length, channels, channels_per_group, num_groups, num_chunks, group_offset, reverse_bits,
        su_b, su_c, su_l, sdt_b, sdt_c, sdt_l, sz_b, sz_c, sz_l, sg_b, sg_c, sg_l,
        sdu_b, sdu_c, sdu_l, sddt_b, sddt_c, sddt_l, sdz_b, sdz_c, sdz_l,
        sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l, sdB_b, sdB_g, sdB_n, sdB_l, sdC_b, sdC_g, sdC_n, sdC_l,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr,
        HAS_GRAD_LAST_STATE: tl.constexpr, ATOMIC_BC: tl.constexpr,
        NUM_STATES: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, STEPS: tl.constexpr,
        FULL_TILE: tl.constexpr,
):
    """Step-by-step backward for N > 1 without LB window, on the (BLOCK_N, BLOCK_D) tile of the step forward.

    Blocks of STEPS scanned positions are visited last to first. For each block the kernel loads the state at the
    block start (stored by the step forward's pre-pass), recomputes the block's STEPS states in registers, then
    steps back through them with the adjoint ``adj_t = C_t dy_t + a_{t+1} adj_{t+1}``. dB/dC of each position are
    summed over the program's channels and added across programs (atomics when ATOMIC_BC). Sequence tensors are
    addressed through their strides, and each group's direction is a bit of ``reverse_bits``, as in the step
    forward; as there, the loads of the next block to visit (its start state and its recompute inputs) are issued
    before the current block runs."""
    group, reverse, batch, offs_d, mask_d, chan = _step_program(group_offset, reverse_bits, channels_per_group,
                                                                BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < NUM_STATES
    mask_nd = mask_n[:, None] & mask_d[None, :]
    row_seq = batch * channels + chan
    state_offs = row_seq[None, :] * NUM_STATES + offs_n[:, None]

    A = tl.load(A_ptr + chan[None, :] * NUM_STATES + offs_n[:, None], mask=mask_nd, other=0.0)  # (BLOCK_N, BLOCK_D)
    if HAS_D:
        D = tl.load(D_ptr + chan, mask=mask_d, other=0.0)
    if HAS_DELTA_BIAS:
        delta_bias = tl.load(delta_bias_ptr + chan, mask=mask_d, other=0.0)
    else:
        delta_bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    u_row = batch * su_b + chan * su_c
    dt_row = batch * sdt_b + chan * sdt_c
    z_row = batch * sz_b + chan * sz_c
    g_row = batch * sg_b + chan * sg_c
    du_row = batch * sdu_b + chan * sdu_c
    ddt_row = batch * sddt_b + chan * sddt_c
    dz_row = batch * sdz_b + chan * sdz_c
    B_row = batch * sB_b + group * sB_g + offs_n * sB_n  # (BLOCK_N,)
    C_row = batch * sC_b + group * sC_g + offs_n * sC_n
    dB_row = batch * sdB_b + group * sdB_g + offs_n * sdB_n
    dC_row = batch * sdC_b + group * sdC_g + offs_n * sdC_n

    # adj_carry = a_{t+1} * dL/dh_{t+1}: the adjoint flowing into step t from the later step (in scan order).
    if HAS_GRAD_LAST_STATE:
        adj_carry = tl.load(grad_last_state_ptr + state_offs, mask=mask_nd, other=0.0)
    else:
        adj_carry = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dA_acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)

    # Software pipelining, as in the step forward: the block-start state and the raw recompute inputs (u, delta, B)
    # of the next block to visit (the one before, in scan order) are loaded while the current block runs.
    states_base = chunk_states_ptr + (batch * num_chunks * channels + chan[None, :]) * NUM_STATES + offs_n[:, None]
    any_chunk = num_chunks > 0  # (an empty sequence has none)
    next_start = tl.load(states_base + (num_chunks - 1) * channels * NUM_STATES, mask=mask_nd & any_chunk,
                         other=0.0)
    next_block = _step_block_loads(num_chunks - 1, length, mask_d & any_chunk, mask_n & any_chunk,
                                   u_ptr + u_row, delta_ptr + dt_row,
                                   B_ptr + B_row, C_ptr, z_ptr, su_l, sdt_l, sB_l, 0, 0, reverse, HAS_Z, False, STEPS,
                                   FULL_TILE)
    for k in range(num_chunks):
        chunk = num_chunks - 1 - k
        h = next_start
        us, deltas, Bs, _, _ = next_block
        next_start = tl.load(states_base + (chunk - 1) * channels * NUM_STATES, mask=mask_nd & (chunk > 0),
                             other=0.0)
        next_block = _step_block_loads(chunk - 1, length, mask_d & (chunk > 0), mask_n & (chunk > 0),
                                       u_ptr + u_row, delta_ptr + dt_row, B_ptr + B_row, C_ptr, z_ptr,
                                       su_l, sdt_l, sB_l, 0, 0, reverse, HAS_Z, False, STEPS, FULL_TILE)
        # Recompute the block's states, kept in registers (positions past the end: dt = 0, dy = 0, so they change
        # nothing). Only the states are kept: the adjoint steps reload their inputs (L1 hits) and recompute dt and
        # the decay, which costs less than keeping them live (with the same values the compiler would merge the two
        # computations and keep them: 1.98 against 1.78 ms, v13/run2).
        hs = ()
        for j in tl.static_range(STEPS):
            i = chunk * STEPS + j
            mask = mask_d & (i < length)
            u = us[j].to(tl.float32)
            dt, _ = _step_dt(deltas[j].to(tl.float32), mask, delta_bias, HAS_DELTA_BIAS, DELTA_SOFTPLUS)
            h = tl.exp2((dt * 1.4426950408889634)[None, :] * A) * h + Bs[j].to(tl.float32)[:, None] * (dt * u)[None, :]
            hs = hs + (h,)

        # Adjoint steps, last position of the block first.
        for j in tl.static_range(STEPS - 1, -1, -1):
            i = chunk * STEPS + j
            t = _step_position(i, length, reverse)
            mask = mask_d & (i < length)
            mask_bc = mask_n & (i < length)
            u = tl.load(u_ptr + u_row + t * su_l, mask=mask, other=0.0).to(tl.float32)
            dt, dt_grad = _step_dt(tl.load(delta_ptr + dt_row + t * sdt_l, mask=mask, other=0.0).to(tl.float32),
                                   mask, delta_bias, HAS_DELTA_BIAS, DELTA_SOFTPLUS)
            Bv = tl.load(B_ptr + B_row + t * sB_l, mask=mask_bc, other=0.0).to(tl.float32)
            Cv = tl.load(C_ptr + C_row + t * sC_l, mask=mask_bc, other=0.0).to(tl.float32)
            dout = tl.load(grad_out_ptr + g_row + t * sg_l, mask=mask, other=0.0).to(tl.float32)
            h = hs[j]
            if HAS_Z:
                zv = tl.load(z_ptr + z_row + t * sz_l, mask=mask, other=0.0).to(tl.float32)
                y = tl.sum(h * Cv[:, None], axis=0)
                if HAS_D:
                    y += D * u
                sig_z = tl.sigmoid(zv)
                dz = dout * y * sig_z * (1.0 + zv * (1.0 - sig_z))
                tl.store(dz_ptr + dz_row + t * sdz_l, dz.to(dz_ptr.dtype.element_ty), mask=mask)
                dy = dout * zv * sig_z
            else:
                dy = dout
            dtu = dt * u
            adj = Cv[:, None] * dy[None, :] + adj_carry  # dL/dh_t, (BLOCK_N, BLOCK_D)
            # dL/d(dt A) = adj * a_t h_{t-1} = adj * (h_t - x_t)
            d_log_decay = adj * (h - Bv[:, None] * dtu[None, :])
            dx_B = tl.sum(adj * Bv[:, None], axis=0)  # (BLOCK_D,)
            ddt = dx_B * u + tl.sum(d_log_decay * A, axis=0)
            du = dx_B * dt
            if HAS_D:
                du += dy * D
                dD_acc += dy * u
            dA_acc += d_log_decay * dt[None, :]
            ddelta = ddt * dt_grad  # 0 where masked
            dbias_acc += ddelta
            tl.store(du_ptr + du_row + t * sdu_l, du.to(du_ptr.dtype.element_ty), mask=mask)
            tl.store(ddelta_ptr + ddt_row + t * sddt_l, ddelta.to(ddelta_ptr.dtype.element_ty), mask=mask)
            dB_t = tl.sum(adj * dtu[None, :], axis=1)  # (BLOCK_N,), summed over this program's channels
            dC_t = tl.sum(h * dy[None, :], axis=1)
            if ATOMIC_BC:
                tl.atomic_add(dB_ptr + dB_row + t * sdB_l, dB_t, mask=mask_bc, sem='relaxed')
                tl.atomic_add(dC_ptr + dC_row + t * sdC_l, dC_t, mask=mask_bc, sem='relaxed')
            else:
                tl.store(dB_ptr + dB_row + t * sdB_l, dB_t.to(dB_ptr.dtype.element_ty), mask=mask_bc)
                tl.store(dC_ptr + dC_row + t * sdC_l, dC_t.to(dC_ptr.dtype.element_ty), mask=mask_bc)
            adj_carry = tl.exp2((dt * 1.4426950408889634)[None, :] * A) * adj

    tl.store(dA_partial_ptr + state_offs, dA_acc, mask=mask_nd)
    if HAS_D:
        tl.store(dD_partial_ptr + row_seq, dD_acc, mask=mask_d)
    if HAS_DELTA_BIAS:
        tl.store(ddelta_bias_partial_ptr + row_seq, dbias_acc, mask=mask_d)


# ----------------------------------------------------------------------------------------------------------------
# Launch configuration

@dataclass(frozen=True)
class ScanConfig:
    """Tile sizes of one launch.

    Chunked-scan kernels ('fwd', 'bwd'): ``block_d`` channels (N == 1; one channel when N > 1) x next_pow2(N) states
    x ``block_l`` positions, run by ``num_warps`` warps. ``channel_blocks`` (backward only): channel blocks handled
    one after another by one program, which divides the number of programs that add into the shared dB/dC.

    Step kernels ('fwd_step', 'bwd_step', used for N > 1 without LB window): ``block_d`` channels x next_pow2(N)
    states per program, walking ``block_l`` positions per unrolled block (the backward stores one state per block).
    ``max_registers`` (step kernels): a cap on registers per thread (Triton's ``maxnreg``), trading spills for more
    resident warps. ``clamp_loads`` (step kernels): when no channel or state of a tile is masked, positions past the
    sequence load clamped to its ends instead of masked (unpredicated loads; dt is zeroed there either way).
    ``lane_states`` (the step forward, and in a 'bwd_step' config the backward's pre-pass): one channel per lane with
    its N states in registers (:func:`_selective_scan_fwd_lanes_kernel`) instead of an (N, block_d) tile spread over
    lanes. ``suffix_segment`` (chunked kernels): positions per segment of the scans that run against the lane order
    (:func:`_suffix_scan_segments`); None picks the positions that each thread holds (:func:`_suffix_segment`);
    0 (the default until the segmented scans are timed on a GPU: ``benchmarks/suffix_scan_gpu.py``) runs Triton's
    reverse ``associative_scan``. ``chunk_states_in_tile`` ('fwd' with ``save_chunk_states``): keep this tile and
    write the backward's chunk-start states from inside it (several per tile when the backward's chunks are shorter)
    instead of running the forward at the backward's tile (the default, False, until timed on a GPU:
    ``benchmarks/suffix_scan_gpu.py``)."""
    block_d: int
    block_l: int
    num_warps: int = 4
    channel_blocks: int = 1
    max_registers: Optional[int] = None
    clamp_loads: bool = True
    lane_states: bool = False
    suffix_segment: Optional[int] = 0
    chunk_states_in_tile: bool = False


# The one-channel-per-lane forward (64 channels per 1-warp program, ~168 registers: 12 warps per SM) needs this many
# programs to keep the GPU busy; below, the tile kernel's 32-channel programs run faster. H100, v14: Vim-S mixer
# (3072 programs) 0.335 -> 0.289 ms and +4.6% model inference; Vim-T (1536 programs) -9% model inference.
LANE_FORWARD_MIN_PROGRAMS = 2048


def default_config(kind: str, num_states: int, length: int, channels_per_group: int,
                   token_major: bool = False, sequences: int = 0) -> ScanConfig:
    """Tile sizes for ``kind``: 'fwd' / 'bwd' (chunked scan kernels) or 'fwd_step' / 'bwd_step' (step-by-step
    kernels for N > 1 without LB window). ``token_major``: the step kernels' sequence tensors are (batch, L,
    channels) memory (Vim), not contiguous rows (EfficientVMamba). ``sequences``: batch x groups, the number of
    channel rows' owners (0: unknown), which decides between the step forward's two kernels."""
    if kind not in ('fwd', 'bwd', 'fwd_step', 'bwd_step'):
        raise ValueError(f"kind must be 'fwd', 'bwd', 'fwd_step' or 'bwd_step', got {kind!r}")
    block_n = next_power_of_2(num_states)
    if interpreting():
        # Small tiles keep the interpreter fast and exercise the chunk carry and ragged last blocks.
        if kind in ('fwd_step', 'bwd_step'):
            return ScanConfig(block_d=4, block_l=4, num_warps=1)
        return ScanConfig(block_d=2, block_l=16, num_warps=1)
    # Fastest on H100 in benchmarks/bench_scan.py --sweep (benchmarks/results/scan.md).
    # Step kernels, 1 warp (v12/run4, run6; v13/run2..run5). Token-major rows (a position's channels contiguous):
    # 32 channels x 2 steps with registers capped, so that more warps are resident (both kernels wait on memory, not
    # on issue): Vim-S mixer forward 0.400 -> 0.372 ms (v12) -> 0.336 ms (v13: cheaper softplus, clamped loads,
    # cap 128), backward 2.50 -> 1.89 ms (v12, cap 128) -> 1.78 ms (v13: its loads software-pipelined, cap 168;
    # 2.14 ms at cap 128, 1.99 uncapped; 1.94 with clamped loads). Contiguous rows (each channel's positions
    # contiguous): no cap (the spills' traffic costs 2-4x there); forward 16 channels x 4 steps (EfficientVMamba-S
    # stage 2: 0.665 -> 0.467 ms (v12) -> 0.381 ms (v13)), backward 32 x 4 (1.94 -> 1.83 ms with clamped loads).
    # v14: token-major forwards with enough programs run one channel per lane, 64 channels x 2 steps (Vim-S mixer
    # 0.336 -> 0.289 ms); on contiguous rows it is 2x slower than the tile kernel, and as the backward's pre-pass
    # 1.4-2x slower (benchmarks/results/v14).
    if kind == 'fwd_step':
        if token_major:
            if sequences * cdiv(channels_per_group, 64) >= LANE_FORWARD_MIN_PROGRAMS:
                return ScanConfig(block_d=64, block_l=2, num_warps=1, lane_states=True)
            return ScanConfig(block_d=32, block_l=2, num_warps=1, max_registers=128)
        return ScanConfig(block_d=16, block_l=4, num_warps=1)
    if kind == 'bwd_step':
        if token_major:
            return ScanConfig(block_d=32, block_l=2, num_warps=1, max_registers=168, clamp_loads=False)
        return ScanConfig(block_d=32, block_l=4, num_warps=1)
    if kind == 'fwd':
        return ScanConfig(block_d=1, block_l=min(512, max(32, next_power_of_2(length) // block_n)), num_warps=1)
    if block_n == 1:  # 1 channel x 128 positions at L 3136; 2 x 64 at L 196 (rows not 16-aligned): v11/run2..run7
        if length % 16 == 0:
            return ScanConfig(block_d=1, block_l=128, num_warps=1)
        return ScanConfig(block_d=2, block_l=64, num_warps=1)
    return ScanConfig(block_d=1, block_l=max(16, 256 // block_n), num_warps=1)


def _resolve(config: ScanConfig, num_states: int, local_window: int, length: int) -> Tuple[int, int, int, int]:
    """(BLOCK_D, BLOCK_N, BLOCK_L, CHUNK): widen the tile to hold a whole LB window, align chunks to windows."""
    block_n = next_power_of_2(num_states)
    block_l = config.block_l
    if local_window:
        window = min(local_window, length)
        block_l = max(block_l, next_power_of_2(window))
        chunk = (block_l // window) * window
    else:
        chunk = block_l
    block_d = config.block_d if block_n == 1 else 1  # tile rows are channels (N == 1) or one channel's states
    return block_d, block_n, block_l, chunk


def _suffix_segment(config: ScanConfig, rows: int, block_l: int, aligned: int, element_size: int) -> int:
    """SEGMENT of the chunked kernels: ``config.suffix_segment`` if set, else the positions of the tile that each
    thread holds when the rows load as vectors (Triton can prove ``aligned`` >= 2 positions of alignment): one
    16-byte load's worth, or several (the 512-position tile holds 2 x 8 fp16 per thread: the reversed forward
    program took 1,048 instructions with segments of 16, 1,200 with segments of 8 and with Triton's reverse scan).
    Segments need a one-row tile (N = 1, ``block_d`` 1: Triton 3.6's layout pass fails on the segmented scans of
    (2, 64) and (16, 16) tiles, sm_90) and a thread holding at least 2 positions (segments of one position take an
    indexed shuffle per tile register and round: 96 for a (2, 64) pair against Triton's 90); otherwise, and without
    ``tl.gather`` (Triton < 3.3), 0: Triton's reverse scan. Under the interpreter (no layouts): 4 positions for
    one-row tiles."""
    if config.suffix_segment is not None:
        segment = config.suffix_segment
        if segment < 0 or (segment & (segment - 1)) or segment > block_l:
            raise ValueError(f'suffix_segment must be 0 or a power of two <= block_l ({block_l}), got {segment}')
        if segment and rows > 1:
            raise ValueError(f'suffix_segment={segment} needs a one-row tile (N == 1 and block_d == 1), got {rows} '
                             f'rows (Triton 3.6 fails to compile segmented scans of multi-row tiles)')
        return segment
    if rows > 1 or not hasattr(tl, 'gather'):
        return 0
    if interpreting():
        return min(4, block_l)
    if min(aligned, 16 // element_size) < 2:  # scalar loads: one position per thread and register
        return 0
    segment = min(max(1, block_l // (32 * config.num_warps)), block_l)
    segment = 1 << (segment.bit_length() - 1)  # a power of two
    return segment if segment >= 2 else 0


_MAX_GROUPS_PER_LAUNCH = 62  # a launch's per-group directions travel as the bits of one int64


def _direction_bits(reverse: Sequence[bool]) -> List[Tuple[int, int, int]]:
    """Launches of the scan kernels, which take every group's direction at run time: [(first_group, count,
    reverse_bits)], bit ``g`` of ``reverse_bits`` set when group ``first_group + g`` scans from the end. One launch
    holds both directions, so that the directions fill the GPU as one grid (Vim's two direction groups; the cross
    scan's (F, F, T, T): at VMamba-T stage 1, two launches of 1.5 waves each ran 1.3x slower than one)."""
    launches = []
    for first in range(0, len(reverse), _MAX_GROUPS_PER_LAUNCH):
        chunk = reverse[first:first + _MAX_GROUPS_PER_LAUNCH]
        launches.append((first, len(chunk), sum(1 << g for g, r in enumerate(chunk) if r)))
    return launches


def _chunked_launches(reverse: Sequence[bool], length: int) -> List[Tuple[int, int, int]]:
    """Launches of the chunked kernels, as :func:`_direction_bits`. Rows of 16-aligned length run both directions
    in one launch; other rows one launch per run of equal-direction groups, where a launch compiles one direction.
    H100, v16/run3 (cross scan (F, F, T, T)): one launch at stage 1 (L 3136) forward 0.168 -> 0.155 ms, backward
    0.516 -> 0.456 ms, stage 2 (L 784) 0.317 -> 0.293 / 0.925 -> 0.884 ms; at stage 3 (L 196) the program with both
    directions ran 6% slower (backward 0.831 -> 0.880 ms)."""
    if length % 16 == 0:
        return _direction_bits(reverse)
    runs = []
    for g, r in enumerate(reverse):
        if runs and runs[-1][2] == r:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1, r)
        else:
            runs.append((g, 1, r))
    return [(first, count, ((1 << count) - 1) if r else 0) for first, count, r in runs]


def _check_inputs(u, delta, A, B, C, D, z, delta_bias, reverse, local_window) -> None:
    if u.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f'triton selective scan: u must be fp32/fp16/bf16, got {u.dtype}')
    for name, t in (('delta', delta), ('B', B), ('C', C), ('z', z)):
        if t is not None and t.dtype != u.dtype:
            raise TypeError(f'triton selective scan: {name} has dtype {t.dtype}, expected {u.dtype} like u')
    for name, t in (('A', A), ('D', D), ('delta_bias', delta_bias)):
        if t is not None and t.dtype != torch.float32:
            raise TypeError(f'triton selective scan: {name} must be float32, got {t.dtype}')
    for name, t in (('A', A), ('D', D), ('delta_bias', delta_bias)):  # sequence tensors may have any strides
        if t is not None and not t.is_contiguous():
            raise ValueError(f'triton selective scan: {name} must be contiguous')
    if len(reverse) != B.shape[1]:
        raise ValueError(f'triton selective scan: reverse has {len(reverse)} entries for {B.shape[1]} groups')
    if local_window < 0:
        raise ValueError(f'triton selective scan: local_window must be >= 0, got {local_window}')


def _launch_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, local_window, config,
                out, last_state, chunk_states, state_chunk=None):
    """Run the forward kernel once per run of equal-direction groups (out/last_state None: pre-pass only).
    ``chunk_states`` receives the state at every ``state_chunk``-th step in scan order (default: the tile's chunk;
    a divisor of it otherwise)."""
    batch, channels, length = u.shape
    num_groups, num_states = B.shape[1], B.shape[2]
    per_group = channels // num_groups
    block_d, block_n, block_l, chunk = _resolve(config, num_states, local_window, length)
    num_chunks = cdiv(length, chunk)
    state_chunk = state_chunk or chunk
    if chunk % state_chunk:
        raise ValueError(f'triton selective scan: chunk states every {state_chunk} steps need a tile chunk that is a '
                         f'multiple of it, got {chunk}')
    write_output = out is not None
    align = math.gcd(length, chunk, 16)
    segment = _suffix_segment(config, block_d * block_n, block_l, align, u.element_size())
    dummy = u  # stands in for absent optional pointers (never dereferenced)
    for first_group, count, reverse_bits in _chunked_launches(reverse, length):
        grid = (cdiv(per_group, block_d), count, batch)
        _selective_scan_fwd_kernel[grid](
            u, delta, A, B, C, D if D is not None else dummy, z if z is not None else dummy,
            delta_bias if delta_bias is not None else dummy,
            out if write_output else dummy, last_state if write_output else dummy,
            chunk_states if chunk_states is not None else dummy,
            length, channels, per_group, num_groups, num_states, num_chunks, first_group, reverse_bits,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_DELTA_BIAS=delta_bias is not None,
            DELTA_SOFTPLUS=bool(delta_softplus), HAS_FORWARD=reverse_bits != (1 << count) - 1,
            HAS_REVERSE=reverse_bits != 0, LOCAL_WINDOW=int(local_window),
            WRITE_OUTPUT=write_output, WRITE_CHUNK_STATES=chunk_states is not None,
            BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_L=block_l, CHUNK=chunk, STATE_CHUNK=state_chunk, ALIGN=align,
            SEGMENT=segment, num_warps=config.num_warps,
        )


# Longest sequence whose N > 1 forward always runs the step kernel. H100, fp16, batch 128 (benchmarks/
# scan_path_gpu.py, benchmarks/results/v10): at L 196-197 (Vim-S, EfficientVMamba-S stage 2) the step forward is 2x
# faster, at L 784 (EfficientVMamba stage 1: channel-major rows, L % 16 == 0) the chunked forward is 1.5-1.9x
# faster. The backward keeps the step kernels at every length (2x faster at both).
STEP_FORWARD_MAX_LENGTH = 512


def _uses_step_kernels(num_states: int, local_window: int, length: int = 0,
                       forward_rows: Sequence[Optional[torch.Tensor]] = ()) -> bool:
    """N > 1 without LB window runs the step-by-step kernels (sequential over L, parallel over channels x states).
    Forwards (``forward_rows``: their sequence tensors) longer than ``STEP_FORWARD_MAX_LENGTH`` run the chunked
    scan kernel instead when their rows are contiguous and 8-aligned (``length % 8 == 0``): the case measured
    faster. Unaligned rows lose the chunked kernel's vectorised loads, and token-major views (Vim) would be copied
    for it."""
    chunked_forward = (bool(forward_rows) and length > STEP_FORWARD_MAX_LENGTH and length % 8 == 0
                       and all(t is None or t.is_contiguous() for t in forward_rows))
    return num_states > 1 and not local_window and not chunked_forward


def _launch_fwd_step(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, config, out, last_state,
                     chunk_states=None):
    """Forward with the step-by-step kernel (N > 1, no LB window). With ``out`` None it is the backward's pre-pass:
    it only stores the state before each block of ``config.block_l`` positions into ``chunk_states``."""
    if config.lane_states:
        _launch_fwd_lanes(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, config, out, last_state,
                          chunk_states)
        return
    batch, channels, length = u.shape
    num_groups, num_states = B.shape[1], B.shape[2]
    per_group = channels // num_groups
    num_chunks = cdiv(length, config.block_l)
    for first_group, count, reverse_bits in _direction_bits(reverse):
        grid = (cdiv(per_group, config.block_d), count, batch)
        _selective_scan_fwd_step_kernel[grid](
            *_fwd_step_pointers(u, delta, A, B, C, D, z, delta_bias, out, last_state, chunk_states),
            length, channels, per_group, num_groups, num_chunks, first_group, reverse_bits,
            *_strides(u), *_strides(delta), *_strides(z), *_strides(out), *_strides(B), *_strides(C),
            BLOCK_N=next_power_of_2(num_states),
            **_fwd_step_options(D, z, delta_bias, delta_softplus, out, chunk_states, per_group, num_states, length,
                                config),
        )


def _fwd_step_pointers(u, delta, A, B, C, D, z, delta_bias, out, last_state, chunk_states) -> tuple:
    """Pointer arguments of both step-forward kernels; an absent optional tensor is passed as ``u`` (never
    dereferenced: its flag is off)."""
    return (u, delta, A, B, C, *(t if t is not None else u for t in (D, z, delta_bias, out, last_state, chunk_states)))


def _fwd_step_options(D, z, delta_bias, delta_softplus, out, chunk_states, per_group: int, num_states: int,
                      length: int, config: ScanConfig) -> dict:
    """Compile-time flags and launch options shared by both step-forward kernels."""
    return dict(
        HAS_D=D is not None, HAS_Z=z is not None, HAS_DELTA_BIAS=delta_bias is not None,
        DELTA_SOFTPLUS=bool(delta_softplus), WRITE_OUTPUT=out is not None, WRITE_CHUNK_STATES=chunk_states is not None,
        NUM_STATES=num_states, BLOCK_D=config.block_d, STEPS=config.block_l,
        FULL_TILE=_full_tile(per_group, num_states, length, config),
        num_warps=config.num_warps, **_register_cap(config),
    )


def _state_rows(B: torch.Tensor, C: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """B, C (batch, G, N, L) as the lane kernel reads them, with stride 1 along N (a position's states in one
    16-byte load): the inputs themselves when they already are (Vim's token-major x_proj output), else views of one
    (batch, L, G, 2N) fp32 copy of both. The kernel computes in fp32 either way, so the values are the same."""
    if B.stride(2) == 1 and C.stride(2) == 1:
        return B, C
    batch, groups, num_states, length = B.shape
    packed = torch.empty((batch, length, groups, 2 * num_states), device=B.device, dtype=torch.float32)
    packed[..., :num_states].copy_(B.permute(0, 3, 1, 2))
    packed[..., num_states:].copy_(C.permute(0, 3, 1, 2))
    rows = packed.permute(0, 2, 3, 1)  # (batch, G, 2N, L)
    return rows[:, :, :num_states], rows[:, :, num_states:]


def _launch_fwd_lanes(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, config, out, last_state,
                      chunk_states):
    """:func:`_launch_fwd_step` with one channel per lane (``config.lane_states``)."""
    batch, channels, length = u.shape
    num_groups, num_states = B.shape[1], B.shape[2]
    per_group = channels // num_groups
    num_chunks = cdiv(length, config.block_l)
    if length == 0:  # the kernel reads B / C at the nearest position, and there is none: the state stays zero
        if last_state is not None:
            last_state.zero_()
        return
    B, C = _state_rows(B, C)
    for first_group, count, reverse_bits in _direction_bits(reverse):
        grid = (cdiv(per_group, config.block_d), count, batch)
        _selective_scan_fwd_lanes_kernel[grid](
            *_fwd_step_pointers(u, delta, A, B, C, D, z, delta_bias, out, last_state, chunk_states),
            length, channels, per_group, num_chunks, first_group, reverse_bits,
            *_strides(u), *_strides(delta), *_strides(z), *_strides(out),
            B.stride(0), B.stride(1), B.stride(3), C.stride(0), C.stride(1), C.stride(3),
            BC_VEC=math.gcd(num_states, 16 // B.element_size()),
            **_fwd_step_options(D, z, delta_bias, delta_softplus, out, chunk_states, per_group, num_states, length,
                                config),
        )


def _full_tile(channels_per_group: int, num_states: int, length: int, config: ScanConfig) -> bool:
    """Whether a step kernel runs its block loads clamped and unpredicated: the config asks for it, its (states,
    channels) tiles are never masked and the sequence has a position to clamp to."""
    return (config.clamp_loads and length > 0 and channels_per_group % config.block_d == 0
            and num_states == next_power_of_2(num_states))


def _register_cap(config: ScanConfig) -> dict:
    """Launch option capping registers per thread (Triton's ``maxnreg``) when the config sets one."""
    return {} if config.max_registers is None or interpreting() else {'maxnreg': config.max_registers}


def _strides(t: Optional[torch.Tensor]) -> Tuple[int, ...]:
    """Strides of a sequence tensor ((batch, channels, L) or (batch, G, N, L)); three zeros for an absent (z-like)
    one."""
    if t is None:
        return (0, 0, 0)
    return tuple(t.stride())


def _grad_buffers(u, delta, B, C, D, z, delta_bias, atomic_bc: bool):
    """Outputs of a backward kernel: du, ddelta, dz (input dtypes), dB / dC (fp32 zeros when programs add into them
    with atomics, else the input dtype), each in its input's memory order (:mod:`vmamba.kernels.layout`), and
    per-batch fp32 partials of dA, dD, ddelta_bias (None where absent)."""
    batch, channels, _ = u.shape
    num_states = B.shape[2]
    device = u.device
    if atomic_bc:
        dB = empty_states_like(B, torch.float32).zero_()
        dC = empty_states_like(C, torch.float32).zero_()
    else:
        dB = empty_states_like(B)
        dC = empty_states_like(C)
    dz = empty_sequence_like(z) if z is not None else None
    dA_partial = torch.empty((batch, channels, num_states), device=device, dtype=torch.float32)
    dD_partial = torch.empty((batch, channels), device=device, dtype=torch.float32) if D is not None else None
    dbias_partial = (torch.empty((batch, channels), device=device, dtype=torch.float32)
                     if delta_bias is not None else None)
    return (empty_sequence_like(u), empty_sequence_like(delta), dz, dB, dC, dA_partial, dD_partial,
            dbias_partial)


def _finish_grads(du, ddelta, dz, dB, dC, dA_partial, dD_partial, dbias_partial, bc_dtype: torch.dtype):
    """Sum the per-batch partials and cast dB / dC to the B / C dtype: (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias)."""
    dD = dD_partial.sum(0) if dD_partial is not None else None
    ddelta_bias = dbias_partial.sum(0) if dbias_partial is not None else None
    return du, ddelta, dA_partial.sum(0), dB.to(bc_dtype), dC.to(bc_dtype), dD, dz, ddelta_bias


def _selective_scan_bwd_step(grad_out, grad_last_state, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                             reverse, config):
    """Backward with the step-by-step kernels (N > 1, no LB window): pre-pass for the block-start states, then the
    backward kernel."""
    batch, channels, length = u.shape
    num_groups, num_states = B.shape[1], B.shape[2]
    per_group = channels // num_groups
    if config is None:
        config = default_config('bwd_step', num_states, length, per_group, is_token_major(u))
    device = u.device
    num_chunks = cdiv(length, config.block_l)
    chunk_states = torch.empty((batch, num_chunks, channels, num_states), device=device, dtype=torch.float32)
    _launch_fwd_step(u, delta, A, B, C, None, None, delta_bias, delta_softplus, reverse, config, None, None,
                     chunk_states)

    programs_per_group = cdiv(per_group, config.block_d)
    atomic_bc = programs_per_group > 1
    du, ddelta, dz, dB, dC, dA_partial, dD_partial, dbias_partial = _grad_buffers(u, delta, B, C, D, z, delta_bias,
                                                                                  atomic_bc)
    dummy = u
    for first_group, count, reverse_bits in _direction_bits(reverse):
        grid = (programs_per_group, count, batch)
        _selective_scan_bwd_step_kernel[grid](
            grad_out, grad_last_state if grad_last_state is not None else dummy, chunk_states,
            u, delta, A, B, C, D if D is not None else dummy, z if z is not None else dummy,
            delta_bias if delta_bias is not None else dummy,
            du, ddelta, dz if dz is not None else dummy, dB, dC, dA_partial,
            dD_partial if dD_partial is not None else dummy, dbias_partial if dbias_partial is not None else dummy,
            length, channels, per_group, num_groups, num_chunks, first_group, reverse_bits,
            *_strides(u), *_strides(delta), *_strides(z), *_strides(grad_out),
            *_strides(du), *_strides(ddelta), *_strides(dz),
            *_strides(B), *_strides(C), *_strides(dB), *_strides(dC),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_DELTA_BIAS=delta_bias is not None,
            DELTA_SOFTPLUS=bool(delta_softplus),
            HAS_GRAD_LAST_STATE=grad_last_state is not None, ATOMIC_BC=atomic_bc,
            NUM_STATES=num_states, BLOCK_D=config.block_d, BLOCK_N=next_power_of_2(num_states),
            STEPS=config.block_l, FULL_TILE=_full_tile(per_group, num_states, length, config),
            num_warps=config.num_warps, **_register_cap(config),
        )
    return _finish_grads(du, ddelta, dz, dB, dC, dA_partial, dD_partial, dbias_partial, B.dtype)


# ----------------------------------------------------------------------------------------------------------------
# Launchers (called by vmamba/kernels/interface.py for CUDA tensors)

def selective_scan_fwd(
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: Optional[torch.Tensor],
        z: Optional[torch.Tensor],
        delta_bias: Optional[torch.Tensor],
        delta_softplus: bool,
        reverse: Tuple[bool, ...],
        local_window: int,
        out_dtype: torch.dtype,
        *,
        config: Optional[ScanConfig] = None,
        save_chunk_states: bool = False,
):
    """Selective scan forward.

    Args:
        u, delta, z: (batch, channels, L), one dtype in {fp32, fp16, bf16}; z may be None. Any strides: the step
            kernels address them through their strides (token-major views stay uncopied), the chunked kernels
            copy non-contiguous ones.
        A: (channels, N) fp32. B, C: (batch, G, N, L), dtype of u, any strides. D, delta_bias: (channels,) fp32
            or None (A, D, delta_bias contiguous).
        reverse: G bools; group g (channels [g*ch/G, (g+1)*ch/G)) scans from the end, output in input order.
        local_window: 0 (off) or the LBMamba window W >= 1 (windows [kW, (k+1)W) in scan order).
        out_dtype: dtype of ``out``.
        config: tile sizes (default: :func:`default_config`; for N > 1 without LB window the step-by-step kernel
            runs, except for long aligned contiguous rows (:func:`_uses_step_kernels`), and ``config`` is its
            'fwd_step' config: ``block_d`` channels, ``block_l`` unrolled steps).
        save_chunk_states: also return what :func:`selective_scan_bwd` would recompute in its pre-pass (the state
            at each of its chunk starts), so that a backward of these inputs skips the pre-pass; None where that
            backward runs the step kernels or has one chunk. The forward then scans in the backward's chunks.
    Returns:
        out (batch, channels, L) in ``out_dtype`` and in u's memory order (:mod:`vmamba.kernels.layout`),
        last_state (batch, channels, N) fp32 (the forward state after the last scanned step), and with
        ``save_chunk_states`` chunk_states ((batch, channels, num_chunks, N) fp32 or None).
    """
    reverse = tuple(bool(r) for r in reverse)
    local_window = int(local_window or 0)
    _check_inputs(u, delta, A, B, C, D, z, delta_bias, reverse, local_window)
    batch, channels, length = u.shape
    num_states = A.shape[1]
    out = empty_sequence_like(u, out_dtype)
    last_state = torch.empty((batch, channels, num_states), device=u.device, dtype=torch.float32)
    per_group = channels // B.shape[1]
    chunk_states = None
    if _uses_step_kernels(num_states, local_window, length, forward_rows=(u, delta, B, C, z)):
        if config is None:
            config = default_config('fwd_step', num_states, length, per_group, is_token_major(u),
                                    sequences=batch * B.shape[1])
        _launch_fwd_step(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, config, out, last_state)
        return (out, last_state, chunk_states) if save_chunk_states else (out, last_state)
    if config is None:
        config = default_config('fwd', num_states, length, per_group)
    state_chunk = None  # the backward's chunk, where the backward takes chunk states
    if save_chunk_states and not _uses_step_kernels(num_states, local_window):
        backward_config = default_config('bwd', num_states, length, per_group)
        backward_chunk = _resolve(backward_config, num_states, local_window, length)[3]
        num_chunks = cdiv(length, backward_chunk)
        if num_chunks > 1:
            state_chunk = backward_chunk
            if not (config.chunk_states_in_tile
                    and _resolve(config, num_states, local_window, length)[3] % state_chunk == 0):
                config = replace(config, block_l=backward_config.block_l)
            chunk_states = torch.empty((batch, channels, num_chunks, num_states), device=u.device,
                                       dtype=torch.float32)
    # The chunked kernels read and write contiguous (batch, channels, L) rows.
    u, delta, B, C = u.contiguous(), delta.contiguous(), B.contiguous(), C.contiguous()
    z = z.contiguous() if z is not None else None
    flat_out = out if out.is_contiguous() else torch.empty((batch, channels, length), device=u.device, dtype=out_dtype)
    _launch_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, local_window, config,
                flat_out, last_state, chunk_states, state_chunk)
    if flat_out is not out:
        out.copy_(flat_out)
    return (out, last_state, chunk_states) if save_chunk_states else (out, last_state)


def selective_scan_bwd(
        grad_out: torch.Tensor,
        grad_last_state: Optional[torch.Tensor],
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: Optional[torch.Tensor],
        z: Optional[torch.Tensor],
        delta_bias: Optional[torch.Tensor],
        delta_softplus: bool,
        reverse: Tuple[bool, ...],
        local_window: int,
        *,
        config: Optional[ScanConfig] = None,
        chunk_states: Optional[torch.Tensor] = None,
) -> Tuple[Optional[torch.Tensor], ...]:
    """Selective scan backward by recomputation (inputs as in :func:`selective_scan_fwd`).

    Args:
        grad_out: (batch, channels, L), any float dtype. grad_last_state: (batch, channels, N) fp32 or None.
        config: tile sizes (default: :func:`default_config`; for N > 1 without LB window the step-by-step kernels
            run and ``config`` is their 'bwd_step' config: ``block_d`` channels, ``block_l`` steps per block).
        chunk_states: the forward's ``save_chunk_states`` result for these inputs (default config only), or None
            to recompute them.
    Returns:
        (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias): du/ddelta/dz/dB/dC in the dtype of the corresponding input
        (step kernels: also in its memory order; chunked kernels: contiguous), dA/dD/ddelta_bias fp32; None where
        the input was None.
    """
    reverse = tuple(bool(r) for r in reverse)
    local_window = int(local_window or 0)
    _check_inputs(u, delta, A, B, C, D, z, delta_bias, reverse, local_window)
    batch, channels, length = u.shape
    num_groups, num_states = B.shape[1], B.shape[2]
    per_group = channels // num_groups
    if grad_out.shape != u.shape:
        raise ValueError(f'triton selective scan: grad_out shape {tuple(grad_out.shape)} != {tuple(u.shape)}')
    if grad_last_state is not None:
        grad_last_state = grad_last_state.to(torch.float32).contiguous()
    if _uses_step_kernels(num_states, local_window):
        return _selective_scan_bwd_step(grad_out, grad_last_state, u, delta, A, B, C, D, z, delta_bias,
                                        delta_softplus, reverse, config)
    # The chunked kernels work on contiguous rows (and return contiguous gradients).
    grad_out, u, delta, B, C = (t.contiguous() for t in (grad_out, u, delta, B, C))
    z = z.contiguous() if z is not None else None
    if config is None:
        config = default_config('bwd', num_states, length, per_group)
    block_d, block_n, block_l, chunk = _resolve(config, num_states, local_window, length)
    num_chunks = cdiv(length, chunk)
    device = u.device

    if num_chunks == 1:
        chunk_states = None
    elif chunk_states is not None:
        expected = (batch, channels, num_chunks, num_states)
        if tuple(chunk_states.shape) != expected or chunk_states.dtype != torch.float32:
            raise ValueError(f'triton selective scan: chunk_states must be {expected} fp32 for this backward, got '
                             f'{tuple(chunk_states.shape)} {chunk_states.dtype}')
    else:
        chunk_states = torch.empty((batch, channels, num_chunks, num_states), device=device, dtype=torch.float32)
        _launch_fwd(u, delta, A, B, C, None, None, delta_bias, delta_softplus, reverse, local_window, config,
                    None, None, chunk_states)

    channel_blocks = max(1, min(config.channel_blocks, cdiv(per_group, block_d)))
    programs_per_group = cdiv(per_group, block_d * channel_blocks)
    # dB/dC: a plain store only when one program's one pass writes each position (several channel blocks of a
    # multi-chunk program add their chunks one block after the other).
    atomic_bc = programs_per_group > 1 or (channel_blocks > 1 and num_chunks > 1)
    du, ddelta, dz, dB, dC, dA_partial, dD_partial, dbias_partial = _grad_buffers(u, delta, B, C, D, z, delta_bias,
                                                                                  atomic_bc)

    # The backward's rows carry no alignment hints (with them it ran 2x slower at L 196, v11/run4): Triton proves 16
    # positions for 16-aligned lengths (its integer specialisation) and one otherwise.
    segment = _suffix_segment(config, block_d * block_n, block_l, 16 if length % 16 == 0 else 1, u.element_size())
    dummy = u
    for first_group, count, reverse_bits in _chunked_launches(reverse, length):
        grid = (programs_per_group, count, batch)
        _selective_scan_bwd_kernel[grid](
            grad_out, grad_last_state if grad_last_state is not None else dummy,
            chunk_states if chunk_states is not None else dummy,
            u, delta, A, B, C, D if D is not None else dummy, z if z is not None else dummy,
            delta_bias if delta_bias is not None else dummy,
            du, ddelta, dz if dz is not None else dummy, dB, dC, dA_partial,
            dD_partial if dD_partial is not None else dummy, dbias_partial if dbias_partial is not None else dummy,
            length, channels, per_group, num_groups, num_states, num_chunks, first_group, reverse_bits,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_DELTA_BIAS=delta_bias is not None,
            DELTA_SOFTPLUS=bool(delta_softplus), HAS_FORWARD=reverse_bits != (1 << count) - 1,
            HAS_REVERSE=reverse_bits != 0, LOCAL_WINDOW=local_window,
            HAS_GRAD_LAST_STATE=grad_last_state is not None, HAS_CHUNK_STATES=chunk_states is not None,
            ATOMIC_BC=atomic_bc, SINGLE_CHUNK=num_chunks == 1, CHANNEL_BLOCKS=channel_blocks,
            BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_L=block_l, CHUNK=chunk, SEGMENT=segment,
            num_warps=config.num_warps,
        )

    return _finish_grads(du, ddelta, dz, dB, dC, dA_partial, dD_partial, dbias_partial, B.dtype)

"""Triton selective-scan kernels vs the PyTorch reference (forward output, last state, gradients of every input).

Without CUDA the kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``, small shapes, small tiles so
that several chunks are scanned); on a CUDA machine the same cases run compiled, plus the ``gpu`` cases at real sizes.
"""
import math
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')  # before the kernels are decorated by triton.jit

import pytest  # noqa: E402

from vmamba.kernels.layout import is_token_major  # noqa: E402
from vmamba.kernels.reference import selective_scan_ref  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from vmamba.kernels.triton.selective_scan import (  # noqa: E402
    ScanConfig, _softplus_with_grad, selective_scan_bwd, selective_scan_fwd)

DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'
GRAD_NAMES = ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias')


def assert_close(name, actual, expected, rel_tol, abs_floor=1e-6):
    """Max-abs error <= abs_floor passes (exactly-zero references); otherwise relative-RMS error <= rel_tol and
    max-abs error <= 10 * rel_tol * max|expected|."""
    assert actual.shape == expected.shape, f'{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}'
    actual, expected = actual.double(), expected.double()
    assert torch.isfinite(actual).all(), f'{name}: non-finite values'
    err = actual - expected
    max_err = err.abs().max().item() if err.numel() else 0.0
    if max_err <= abs_floor:
        return
    rel_rms = (err.norm() / expected.norm().clamp_min(1e-30)).item()
    max_allowed = 10 * rel_tol * expected.abs().max().item()
    assert rel_rms <= rel_tol and max_err <= max_allowed, (
        f'{name}: relative RMS error {rel_rms:.2e} (tol {rel_tol:.0e}), max abs error {max_err:.2e} '
        f'(allowed {max_allowed:.2e})')


def make_inputs(batch, channels, length, num_states, groups, *, z=True, D=True, delta_bias=True,
                dtype=torch.float32, seed=0, device=DEVICE):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device)

    inputs = dict(
        u=randn(batch, channels, length).to(dtype),
        delta=randn(batch, channels, length, scale=0.5).to(dtype),
        A=-(torch.rand(channels, num_states, generator=gen) * 2 + 0.1).to(device),
        B=randn(batch, groups, num_states, length).to(dtype),
        C=randn(batch, groups, num_states, length).to(dtype),
        D=randn(channels) if D else None,
        z=randn(batch, channels, length).to(dtype) if z else None,
        delta_bias=randn(channels, scale=0.3) if delta_bias else None,
    )
    return inputs, gen


def as_token_major(inputs):
    """Same values as token-major strided views, the way Vim's mixer passes them: u / delta / z as (batch, L, ch)
    slices of wider token buffers seen as (batch, ch, L), B / C as slices of one (batch, L, G, 2N + 3) buffer seen
    as (batch, G, N, L)."""
    out = dict(inputs)
    for name in ('u', 'delta', 'z'):
        t = inputs[name]
        if t is not None:
            batch, channels, length = t.shape
            wide = torch.full((batch, length, channels + 5), float('nan'), dtype=t.dtype, device=t.device)
            wide[:, :, 2:2 + channels] = t.transpose(1, 2)
            out[name] = wide[:, :, 2:2 + channels].transpose(1, 2)
    batch, groups, states, length = inputs['B'].shape
    dbl = torch.full((batch, length, groups, 2 * states + 3), float('nan'), dtype=inputs['B'].dtype,
                     device=inputs['B'].device)
    dbl[..., 3:3 + states] = inputs['B'].permute(0, 3, 1, 2)
    dbl[..., 3 + states:] = inputs['C'].permute(0, 3, 1, 2)
    out['B'] = dbl[..., 3:3 + states].permute(0, 2, 3, 1)
    out['C'] = dbl[..., 3 + states:].permute(0, 2, 3, 1)
    for name in ('u', 'delta', 'z', 'B', 'C'):
        if out[name] is not None:
            assert torch.equal(out[name], inputs[name]), name
            assert is_token_major(out[name]) or (name in 'BC' and states == 1), name  # N = 1: no state dim
    return out


def reference_with_grads(inputs, grad_out, grad_last_state, delta_softplus, reverse, local_window):
    """Forward output, last state and the gradients of every input of the fp32 reference (autograd)."""
    leaves = {k: (v.float().clone().requires_grad_(True) if v is not None else None) for k, v in inputs.items()}
    out, last = selective_scan_ref(
        leaves['u'], leaves['delta'], leaves['A'], leaves['B'], leaves['C'], D=leaves['D'], z=leaves['z'],
        delta_bias=leaves['delta_bias'], delta_softplus=delta_softplus, reverse=reverse,
        local_window=local_window or None, return_last_state=True, out_dtype=torch.float32)
    loss = (out * grad_out.float()).sum()
    if grad_last_state is not None:
        loss = loss + (last * grad_last_state).sum()
    loss.backward()
    grads = {k: (v.grad if v is not None else None) for k, v in leaves.items()}
    return out.detach(), last.detach(), grads


def run_case(batch, channels, length, num_states, groups, *, reverse, local_window=0, z=True, D=True,
             delta_bias=True, delta_softplus=True, grad_last_state=True, dtype=torch.float32,
             out_dtype=torch.float32, rel_tol=1e-5, config=None, seed=0, token_major=False):
    inputs, gen = make_inputs(batch, channels, length, num_states, groups, z=z, D=D, delta_bias=delta_bias,
                              dtype=dtype, seed=seed)
    reverse = tuple(reverse) if isinstance(reverse, (tuple, list)) else (reverse,) * groups
    args = [(as_token_major(inputs) if token_major else inputs)[k] for k in GRAD_NAMES]
    out, last = selective_scan_fwd(*args, delta_softplus, reverse, local_window, out_dtype, config=config)
    assert out.dtype == out_dtype and last.dtype == torch.float32
    assert is_token_major(out) == token_major, 'out must follow the memory order of u'

    grad_out = torch.randn(batch, channels, length, generator=gen).to(DEVICE).to(out_dtype)
    grad_last = torch.randn(batch, channels, num_states, generator=gen).to(DEVICE) if grad_last_state else None
    ref_out, ref_last, ref_grads = reference_with_grads(inputs, grad_out, grad_last, delta_softplus, reverse,
                                                        local_window)
    assert_close('out', out, ref_out, rel_tol)
    assert_close('last_state', last, ref_last, rel_tol)

    if token_major:
        grad_out = grad_out.transpose(1, 2).contiguous().transpose(1, 2)
    grads = selective_scan_bwd(grad_out, grad_last, *args, delta_softplus, reverse, local_window, config=config)
    for name, grad, x in zip(GRAD_NAMES, grads, args):
        if x is None:
            assert grad is None, f'd{name} should be None for an absent input'
            continue
        if token_major and name in ('u', 'delta', 'z', 'B', 'C') and num_states > 1 and not local_window:
            assert is_token_major(grad), f'd{name}: the step kernels return gradients in the input memory order'
        expected_dtype = torch.float32 if name in ('A', 'D', 'delta_bias') else x.dtype
        assert grad.dtype == expected_dtype, f'd{name} dtype {grad.dtype}, expected {expected_dtype}'
        assert_close(f'd{name}', grad, ref_grads[name], rel_tol)


# --------------------------------------------------------------------------------------------------------------
# Small cases (CPU interpreter or GPU)

@pytest.mark.parametrize(
    'batch, channels, length, num_states, groups, reverse, local_window, z, D, delta_bias, delta_softplus', [
        pytest.param(2, 2, 33, 1, 1, False, 0, False, False, False, False, id='N1-G1-L33-plain'),
        pytest.param(2, 4, 7, 4, 2, (False, True), 0, True, True, True, True, id='N4-G2-L7-mixed-rev-z'),
        pytest.param(1, 2, 1, 16, 1, True, 0, True, True, True, True, id='N16-G1-L1-rev'),
        pytest.param(1, 3, 1, 4, 1, False, 3, True, False, True, True, id='N4-L1-W3'),
        pytest.param(1, 8, 37, 4, 4, (True, False, False, True), 3, True, True, True, True, id='N4-G4-L37-W3-mixed'),
        pytest.param(2, 4, 33, 1, 2, True, 4, False, True, True, True, id='N1-G2-L33-W4-rev'),
        pytest.param(1, 4, 21, 16, 2, (False, True), 4, True, True, False, True, id='N16-G2-L21-W4-nobias'),
        pytest.param(2, 6, 19, 3, 2, (True, False), 0, False, True, True, False, id='N3-G2-L19-nosoftplus'),
        pytest.param(1, 2, 45, 4, 1, False, 20, True, True, True, True, id='N4-L45-W20-wide-window'),
        pytest.param(1, 2, 13, 4, 1, True, 64, True, True, True, True, id='N4-L13-W64-window-covers-L'),
        # L % 4 == 0 (VMamba stage 3: 14 x 14): rows and chunk starts are hinted 4-aligned (vector loads on GPU)
        pytest.param(1, 4, 196, 1, 2, (False, True), 0, False, True, True, True, id='N1-G2-L196-align4'),
        pytest.param(1, 2, 100, 4, 1, True, 4, True, True, True, True, id='N4-L100-W4-align4'),
    ])
def test_fwd_bwd_fp32(batch, channels, length, num_states, groups, reverse, local_window, z, D, delta_bias,
                      delta_softplus):
    run_case(batch, channels, length, num_states, groups, reverse=reverse, local_window=local_window, z=z, D=D,
             delta_bias=delta_bias, delta_softplus=delta_softplus)


def test_without_grad_last_state():
    run_case(2, 4, 20, 4, 2, reverse=(True, False), local_window=3, grad_last_state=False)


@pytest.mark.parametrize('config, grad_last_state', [
    pytest.param(ScanConfig(block_d=2, block_l=4, num_warps=1), True, id='2ch-4steps-atomic-dBdC'),
    pytest.param(ScanConfig(block_d=8, block_l=8, num_warps=1), False, id='1program-per-group-8steps'),
    pytest.param(ScanConfig(block_d=4, block_l=1, num_warps=1), True, id='1step-per-block'),
    pytest.param(ScanConfig(block_d=4, block_l=4, num_warps=1, lane_states=True), True,
                 id='lane-states-4ch-4steps-ragged'),
    pytest.param(ScanConfig(block_d=8, block_l=1, num_warps=1, lane_states=True, clamp_loads=False), False,
                 id='lane-states-1step-masked-loads'),
])
def test_step_kernels_vim_like(config, grad_last_state):
    """Vim's call (N=16, both directions as two groups, no z) at an odd length that no block size divides: the
    step forward and the step backward with ragged last blocks, reversed groups walked by index arithmetic, and dB/dC
    added across programs (atomics) or stored by the only program of a group."""
    run_case(2, 12, 19, 16, 2, reverse=(False, True), z=False, config=config, grad_last_state=grad_last_state)


@pytest.mark.parametrize('clamp_loads, lane_states', [(True, False), (False, False), (True, True)],
                         ids=['clamped-loads', 'masked-loads', 'lane-states'])
def test_step_kernels_empty_sequence(clamp_loads, lane_states):
    """L = 0 through the step kernels, with a tile that would otherwise load clamped positions (there is none to
    clamp to): empty outputs, the initial (zero) state as last state, zero parameter gradients."""
    inputs, _ = make_inputs(1, 8, 0, 4, 2, z=False)
    args = [inputs[k] for k in GRAD_NAMES]
    config = ScanConfig(block_d=4, block_l=2, num_warps=1, clamp_loads=clamp_loads, lane_states=lane_states)
    out, last_state = selective_scan_fwd(*args, True, (False, True), 0, torch.float32, config=config)
    assert out.shape == (1, 8, 0) and torch.equal(last_state, torch.zeros_like(last_state))
    grads = selective_scan_bwd(out, torch.ones_like(last_state), *args, True, (False, True), 0, config=config)
    for name, grad, value in zip(GRAD_NAMES, grads, args):
        if value is not None:
            assert grad.shape == value.shape and not grad.any(), name


@pytest.mark.parametrize('num_states, config', [
    (4, ScanConfig(block_d=2, block_l=4, num_warps=1)),  # step kernels
    (1, ScanConfig(block_d=2, block_l=4, num_warps=1)),  # chunked kernels, 3 chunks
], ids=['step', 'chunked'])
def test_split_directions_over_launches(monkeypatch, num_states, config):
    """The scan kernels take each group's direction as a bit of one launch argument; more groups than a launch
    holds go to further launches (here 3 per launch, 7 groups with mixed directions: bits 0b101, 0b010, 0b1; the
    last launch holds one direction only)."""
    from vmamba.kernels.triton import selective_scan as scan
    monkeypatch.setattr(scan, '_MAX_GROUPS_PER_LAUNCH', 3)
    reverse = (True, False, True, False, True, False, True)
    assert scan._direction_bits(reverse) == [(0, 3, 0b101), (3, 3, 0b010), (6, 1, 0b1)]
    run_case(1, 14, 9, num_states, 7, reverse=reverse, config=config)


@pytest.mark.parametrize('length, launches_per_call', [(32, 1), (20, 2)], ids=['L32-aligned', 'L20-unaligned'])
def test_chunked_kernels_launches_per_direction(monkeypatch, length, launches_per_call):
    """The cross scan's (F, F, T, T): one launch of each chunked kernel for rows of 16-aligned length (both
    directions in one grid), one per direction otherwise."""
    from vmamba.kernels.triton import selective_scan as scan
    launches = {}
    for name in ('_selective_scan_fwd_kernel', '_selective_scan_bwd_kernel'):
        kernel = getattr(scan, name)

        class Recorder:
            def __getitem__(self, grid, _kernel=kernel, _name=name):
                launches.setdefault(_name, []).append(grid)
                return _kernel[grid]
        monkeypatch.setattr(scan, name, Recorder())
    run_case(2, 8, length, 1, 4, reverse=(False, False, True, True),
             config=ScanConfig(block_d=2, block_l=8, num_warps=1))
    grid = [(1, 4, 2)] if launches_per_call == 1 else [(1, 2, 2), (1, 2, 2)]
    # forward, the backward's pre-pass (a forward launch), backward
    assert launches == {'_selective_scan_fwd_kernel': grid * 2, '_selective_scan_bwd_kernel': grid}


@pytest.mark.parametrize('num_states, states_per_load, z, D, delta_bias, delta_softplus', [
    pytest.param(8, 4, True, False, True, True, id='N8-16-byte-loads-z-noD'),
    pytest.param(6, 2, False, True, False, False, id='N6-8-byte-loads-nobias-nosoftplus'),
    pytest.param(3, 1, True, True, True, True, id='N3-scalar-loads-ragged-channels'),
])
def test_lane_states_kernel_state_counts(num_states, states_per_load, z, D, delta_bias, delta_softplus):
    """The one-channel-per-lane forward (and pre-pass) at state counts that split B / C into 16-, 8- and 4-byte
    loads, with channel blocks that do not divide the group (10 channels per group, 4 per program) and the
    optional inputs switched on and off."""
    assert math.gcd(num_states, 4) == states_per_load  # BC_VEC of the launch
    config = ScanConfig(block_d=4, block_l=2, num_warps=1, lane_states=True)
    run_case(2, 20, 11, num_states, 2, reverse=(True, False), z=z, D=D, delta_bias=delta_bias,
             delta_softplus=delta_softplus, config=config)


def test_lane_states_bc_rows():
    """B / C reach the lane kernel with stride 1 along N: token-major views like Vim's (B and C inside one token
    buffer) pass through uncopied in their own dtype; other layouts become views of one (batch, L, G, 2N) fp32 copy.
    The values are unchanged."""
    from vmamba.kernels.triton.selective_scan import _state_rows
    inputs, _ = make_inputs(2, 8, 5, 4, 2, dtype=torch.float16)
    B, C = inputs['B'], inputs['C']  # (batch, G, N, L) contiguous: stride along N is L
    rows_B, rows_C = _state_rows(B, C)
    assert rows_B.dtype == rows_C.dtype == torch.float32 and rows_B.stride(2) == rows_C.stride(2) == 1
    assert torch.equal(rows_B, B.float()) and torch.equal(rows_C, C.float())
    assert rows_C.data_ptr() == rows_B.data_ptr() + 4 * 4  # one buffer, C after B at each position
    token = as_token_major(inputs)
    tok_B, tok_C = _state_rows(token['B'], token['C'])
    assert tok_B is token['B'] and tok_C is token['C']


def test_default_step_forward_kernel(monkeypatch):
    """The compiled default for the step forward: one channel per lane for token-major rows with enough 64-channel
    programs (Vim-S at batch 128: 3072), the tile kernel for fewer (Vim-T: 1536) and for contiguous rows."""
    from vmamba.kernels.triton import selective_scan as scan
    monkeypatch.setattr(scan, 'interpreting', lambda: False)
    vim_s = scan.default_config('fwd_step', 16, 197, 768, token_major=True, sequences=128 * 2)
    assert vim_s.lane_states and vim_s.block_d == 64
    assert not scan.default_config('fwd_step', 16, 197, 384, token_major=True, sequences=128 * 2).lane_states
    assert not scan.default_config('fwd_step', 16, 196, 256, token_major=False, sequences=128 * 4).lane_states
    assert not scan.default_config('bwd_step', 16, 197, 768, token_major=True, sequences=128 * 2).lane_states


@pytest.mark.parametrize('num_states, local_window, z', [
    pytest.param(16, 0, False, id='step-kernels-N16-vim'),
    pytest.param(4, 0, True, id='step-kernels-N4-z'),
    pytest.param(4, 3, True, id='chunked-kernels-W3-copies'),
    pytest.param(1, 0, True, id='chunked-kernels-N1-copies'),
])
def test_token_major_inputs(num_states, local_window, z):
    """Token-major strided views (Vim's layout): the step kernels read them through their strides and write out and
    the gradients token-major; the chunked kernels copy them and give the same numbers."""
    run_case(2, 12, 19, num_states, 2, reverse=(False, True), local_window=local_window, z=z, token_major=True,
             config=ScanConfig(block_d=4, block_l=4, num_warps=1) if num_states > 1 and not local_window else None)


def test_token_major_inputs_lane_states():
    """Vim's call through the one-channel-per-lane forward and pre-pass: token-major u / delta / out and B / C as
    views of one token buffer, read in place."""
    run_case(2, 12, 19, 16, 2, reverse=(False, True), z=False, token_major=True,
             config=ScanConfig(block_d=4, block_l=2, num_warps=1, lane_states=True))


def test_long_sequences_run_the_chunked_forward(monkeypatch):
    """N > 1 forwards longer than STEP_FORWARD_MAX_LENGTH with contiguous 8-aligned rows run the chunked kernel, their
    backward the step kernels; unaligned lengths and token-major views keep the step forward (all checked against
    the reference)."""
    from vmamba.kernels.triton import selective_scan as triton_scan
    monkeypatch.setattr(triton_scan, 'STEP_FORWARD_MAX_LENGTH', 16)
    calls = []
    for name in ('_launch_fwd', '_launch_fwd_step'):
        launcher = getattr(triton_scan, name)
        monkeypatch.setattr(triton_scan, name, lambda *a, _n=name, _f=launcher, **k: calls.append(
            (_n, a[-3] is not None if _n == '_launch_fwd' else a[-2] is not None)) or _f(*a, **k))
    run_case(1, 4, 32, 4, 2, reverse=(False, True), z=True)
    assert ('_launch_fwd', True) in calls and ('_launch_fwd_step', False) in calls  # chunked forward, step pre-pass
    assert ('_launch_fwd_step', True) not in calls
    for length, token_major in ((13, False), (29, False), (32, True)):  # short, unaligned, token-major: step forward
        calls.clear()
        run_case(1, 4, length, 4, 2, reverse=(False, True), token_major=token_major)
        assert ('_launch_fwd_step', True) in calls and not any(n == '_launch_fwd' for n, _ in calls), length


@pytest.mark.parametrize('config, local_window', [
    pytest.param(ScanConfig(block_d=1, block_l=8, num_warps=1), 3, id='chunk6-W3'),
    pytest.param(ScanConfig(block_d=4, block_l=8, num_warps=1), 0, id='chunk8'),
    pytest.param(ScanConfig(block_d=1, block_l=4, num_warps=1), 5, id='tile-widened-to-window'),
    pytest.param(ScanConfig(block_d=1, block_l=8, num_warps=1), 0, id='step-kernel-one-channel-per-program'),
])
def test_explicit_tiles(config, local_window):
    """Many chunks per sequence, chunk sizes that are not powers of two (LB windows); without a window the forward
    (N > 1) runs the step kernel with ``block_d`` channels per program."""
    run_case(1, 4, 29, 4, 2, reverse=(False, True), local_window=local_window, config=config)


@pytest.mark.parametrize('config, local_window', [
    pytest.param(ScanConfig(block_d=1, block_l=16, num_warps=1, suffix_segment=0), 0, id='triton-reverse-scan'),
    pytest.param(ScanConfig(block_d=1, block_l=16, num_warps=1, suffix_segment=None), 0, id='segment-auto'),
    pytest.param(ScanConfig(block_d=1, block_l=16, num_warps=1, suffix_segment=1), 0, id='segment1'),
    pytest.param(ScanConfig(block_d=1, block_l=16, num_warps=1, suffix_segment=2), 0, id='segment2'),
    pytest.param(ScanConfig(block_d=1, block_l=16, num_warps=1, suffix_segment=8), 0, id='segment8'),
    pytest.param(ScanConfig(block_d=1, block_l=16, num_warps=1, suffix_segment=16), 0, id='one-segment'),
    pytest.param(ScanConfig(block_d=1, block_l=8, num_warps=1, suffix_segment=4), 3, id='segment4-W3'),
])
def test_suffix_scan_segments(config, local_window):
    """The scans that run against the lane order (the reverse groups' forward and recompute, the forward groups'
    adjoint and its decays moved by one lane, both directions' LB window recursions) as segments of
    ``suffix_segment`` positions combined across segments (``_suffix_scan_segments``), and as Triton's reverse scan
    (0): both directions in one launch, many chunks (the carry into each chunk), a ragged last chunk, a grad into the
    last state."""
    run_case(2, 4, 45, 1, 2, reverse=(True, False), local_window=local_window, config=config)


def test_suffix_segment_choice(monkeypatch):
    """``suffix_segment=None`` picks the positions a thread holds in the compiled kernels' layout (its share of a
    one-row tile, when the rows load as vectors), 0 for scalar loads, below 2 positions and for multi-row tiles;
    explicit values are checked, multi-row tiles refused."""
    from vmamba.kernels.triton import selective_scan as scan
    assert ScanConfig(block_d=1, block_l=128).suffix_segment == 0  # Triton's reverse scan until timed on a GPU
    config = ScanConfig(block_d=1, block_l=128, num_warps=1, suffix_segment=None)
    monkeypatch.setattr(scan, 'interpreting', lambda: False)  # the compiled kernels' choice
    assert scan._suffix_segment(config, 1, 128, 16, 2) == 4  # VMamba stage 1 backward: 4 positions per thread
    assert scan._suffix_segment(config, 1, 512, 16, 2) == 16  # the forward's 512-wide tile: 2 x 8 fp16 loads
    assert scan._suffix_segment(config, 1, 512, 16, 4) == 16
    assert scan._suffix_segment(config, 1, 256, 4, 2) == 8  # rows 4-aligned (ALIGN hint): 2 x 4 fp16 loads
    assert scan._suffix_segment(ScanConfig(1, 256, 2, suffix_segment=None), 1, 256, 16, 2) == 4  # 2 warps
    assert scan._suffix_segment(config, 1, 128, 1, 2) == 0  # rows without proven alignment
    assert scan._suffix_segment(config, 1, 32, 16, 2) == 0  # one position per thread
    assert scan._suffix_segment(config, 2, 64, 16, 2) == 0  # two channels per tile
    assert scan._suffix_segment(config, 16, 16, 16, 2) == 0  # N = 16
    assert scan._suffix_segment(ScanConfig(1, 128, 1, suffix_segment=0), 1, 128, 16, 2) == 0
    monkeypatch.undo()
    with pytest.raises(ValueError, match='suffix_segment'):
        scan._suffix_segment(ScanConfig(1, 16, 1, suffix_segment=3), 1, 16, 16, 2)
    with pytest.raises(ValueError, match='suffix_segment'):
        scan._suffix_segment(ScanConfig(1, 16, 1, suffix_segment=32), 1, 16, 16, 2)
    with pytest.raises(ValueError, match='one-row tile'):
        scan._suffix_segment(ScanConfig(2, 16, 1, suffix_segment=4), 2, 16, 16, 2)
    inputs, _ = make_inputs(1, 4, 20, 4, 2)
    with pytest.raises(ValueError, match='one-row tile'):  # N = 4 through the public launcher
        selective_scan_fwd(*[inputs[k] for k in GRAD_NAMES], True, (True, False), 3, torch.float32,
                           config=ScanConfig(block_d=1, block_l=8, num_warps=1, suffix_segment=4))


@pytest.mark.parametrize('channels, config, local_window, num_states', [
    pytest.param(10, ScanConfig(block_d=2, block_l=8, num_warps=1, channel_blocks=2), 0, 1,
                 id='N1-2-blocks-per-program-ragged-atomic'),
    pytest.param(6, ScanConfig(block_d=1, block_l=8, num_warps=1, channel_blocks=3), 0, 1,
                 id='N1-one-program-per-group'),
    pytest.param(6, ScanConfig(block_d=1, block_l=8, num_warps=1, channel_blocks=2), 3, 4,
                 id='N4-W3-2-blocks-per-program-ragged'),
])
def test_backward_channel_blocks(channels, config, local_window, num_states):
    """Backward programs that walk several channel blocks (``channel_blocks``): dB/dC of every block and chunk add
    up (a one-program group with many chunks once stored each block's dB/dC over the previous one's), ragged last
    block, one and several programs per group."""
    run_case(2, channels, 29, num_states, 2, reverse=(True, False), local_window=local_window, config=config)


@pytest.mark.parametrize('num_states, local_window, length', [(1, 0, 600), (4, 3, 300), (1, 0, 200)],
                         ids=['N1-3-chunks', 'N4-W3-chunks', 'N1-one-chunk'])
def test_backward_from_forward_chunk_states(monkeypatch, num_states, local_window, length):
    """``save_chunk_states``: the forward keeps the states at the backward's chunk starts, and the backward given
    them runs no pre-pass and returns the same gradients; a wrong shape is refused."""
    from vmamba.kernels.triton import selective_scan as scan
    monkeypatch.setattr(scan, 'interpreting', lambda: False)  # the GPU's tiles (N = 1: 256-position chunks)
    inputs, gen = make_inputs(1, 2, length, num_states, 2)
    args = [inputs[k] for k in GRAD_NAMES]
    reverse = (True, False)
    out, last, chunk_states = selective_scan_fwd(*args, True, reverse, local_window, torch.float32,
                                                 save_chunk_states=True)
    expected_out, _ = selective_scan_fwd(*args, True, reverse, local_window, torch.float32)
    torch.testing.assert_close(out, expected_out, rtol=1e-6, atol=1e-6)
    chunk = scan._resolve(scan.default_config('bwd', num_states, length, 1), num_states, local_window, length)[3]
    if length <= chunk:
        assert chunk_states is None
    else:
        assert chunk_states.shape == (1, 2, -(-length // chunk), num_states)
    grad_out = torch.randn(out.shape, generator=gen).to(DEVICE)
    expected = selective_scan_bwd(grad_out, None, *args, True, reverse, local_window)
    launches = []
    original = scan._launch_fwd
    monkeypatch.setattr(scan, '_launch_fwd', lambda *a, **k: launches.append(1) or original(*a, **k))
    grads = selective_scan_bwd(grad_out, None, *args, True, reverse, local_window, chunk_states=chunk_states)
    assert not launches, 'the backward ran its pre-pass although it was given the chunk states'
    for name, grad, ref in zip(GRAD_NAMES, grads, expected):
        torch.testing.assert_close(grad, ref, rtol=1e-5, atol=1e-6, msg=name)
    if chunk_states is not None:
        with pytest.raises(ValueError, match='chunk_states must be'):
            selective_scan_bwd(grad_out, None, *args, True, reverse, local_window, chunk_states=chunk_states[:, :, 1:])


@pytest.mark.parametrize('num_states, local_window, length, states_per_tile', [
    (1, 0, 600, 8), (1, 0, 608, 4), (4, 3, 300, 2), (1, 0, 200, 4), (1, 0, 60, 0)],
    ids=['N1-64-in-512', 'N1-128-in-512', 'N4-W3-63-in-126', 'N1-64-in-256', 'N1-one-chunk'])
@pytest.mark.parametrize('suffix_segment', [0, None], ids=['triton-reverse', 'segments'])
def test_chunk_states_from_the_inference_tile(monkeypatch, num_states, local_window, length, states_per_tile,
                                              suffix_segment):
    """``chunk_states_in_tile``: the forward keeps its own (longer) tile and writes several of the backward's
    chunk-start states per tile, in both directions and for ragged last tiles: the same states, output and last
    state as the forward run at the backward's tile (with Triton's reverse scans or segments, whose carries are
    per-segment tiles where a segment is one thread's registers)."""
    from dataclasses import replace
    from vmamba.kernels.triton import selective_scan as scan
    monkeypatch.setattr(scan, 'interpreting', lambda: False)  # the GPU's tiles
    inputs, _ = make_inputs(1, 2, length, num_states, 2)
    args = [inputs[k] for k in GRAD_NAMES]
    reverse = (True, False)
    launched = []
    original = scan._launch_fwd
    monkeypatch.setattr(scan, '_launch_fwd', lambda *a, **k: launched.append((a[11], a[15:])) or original(*a, **k))
    out, last, states = selective_scan_fwd(*args, True, reverse, local_window, torch.float32, save_chunk_states=True)
    fwd = scan.default_config('fwd', num_states, length, 1)
    in_tile = replace(fwd, chunk_states_in_tile=True, suffix_segment=suffix_segment)
    out_t, last_t, states_t = selective_scan_fwd(*args, True, reverse, local_window, torch.float32, config=in_tile,
                                                 save_chunk_states=True)
    (default_config, _), (tile_config, state_chunk) = launched
    bwd_chunk = scan._resolve(scan.default_config('bwd', num_states, length, 1), num_states, local_window, length)[3]
    if states_per_tile:
        assert default_config.block_l == scan.default_config('bwd', num_states, length, 1).block_l
        assert tile_config is in_tile and state_chunk == (bwd_chunk,)
        assert scan._resolve(in_tile, num_states, local_window, length)[3] == states_per_tile * bwd_chunk
        torch.testing.assert_close(states_t, states, rtol=1e-6, atol=1e-6)
    else:
        assert states is None and states_t is None
    torch.testing.assert_close(out_t, out, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(last_t, last, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('dtype, out_dtype', [
    (torch.bfloat16, torch.float32), (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16)])
def test_low_precision(dtype, out_dtype):
    """Low-precision inputs: the scan runs in fp32, so only rounding of inputs/outputs/grads is left."""
    run_case(2, 4, 23, 4, 2, reverse=(True, False), local_window=4, dtype=dtype, out_dtype=out_dtype, rel_tol=1e-2)


def test_rejects_mismatched_dtypes():
    inputs, _ = make_inputs(1, 2, 5, 2, 1)
    inputs['B'] = inputs['B'].half()
    with pytest.raises(TypeError, match='B has dtype'):
        selective_scan_fwd(*[inputs[k] for k in GRAD_NAMES], True, (False,), 0, torch.float32)


@triton.jit
def _softplus_probe_kernel(x_ptr, softplus_ptr, grad_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    value, grad = _softplus_with_grad(x)
    tl.store(softplus_ptr + offs, value, mask=mask)
    tl.store(grad_ptr + offs, grad, mask=mask)


def test_softplus_helpers_match_torch():
    """The kernels' softplus (a degree-8 log1p fit) and its derivative, against torch in fp64, elementwise over
    -60..60 (both sides of the threshold 20, values down to exp(-60)): relative error <= 1e-6 + 1e-7 |x| each (exp
    through exp2 rounds x * log2(e), ~6e-8 |x| relative, as the scan kernels always have)."""
    x = torch.cat([torch.linspace(-60, 60, 4001, dtype=torch.float64),
                   torch.tensor([0.0, 20.0, 20.000002, -20.0, 1e-8, -1e-8], dtype=torch.float64)])
    x32 = x.float().to(DEVICE)
    value, grad = torch.empty_like(x32), torch.empty_like(x32)
    _softplus_probe_kernel[(triton.cdiv(x.numel(), 1024),)](x32, value, grad, x.numel(), BLOCK=1024)
    xd = x32.double().cpu()
    expected = torch.where(xd > 20, xd, torch.nn.functional.softplus(xd))
    expected_grad = torch.where(xd > 20, torch.ones_like(xd), torch.sigmoid(xd))
    for name, got, want in (('softplus', value, expected), ('derivative', grad, expected_grad)):
        excess = (got.double().cpu() - want).abs() / want.abs() - (1e-6 + 1e-7 * xd.abs())
        worst = excess.argmax()
        assert excess[worst] <= 0, (f'{name}({xd[worst].item():.6g}) = {got[worst].item():.9g}, expected '
                                    f'{want[worst].item():.9g}')


# --------------------------------------------------------------------------------------------------------------
# Real sizes (GPU only)

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('dtype, rel_tol', [(torch.float32, 1e-4), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize('name, shape, kwargs', [
    ('vmamba_ss2d', (2, 384, 3136, 1, 4), dict(reverse=(False, False, True, True), z=False)),
    ('vim_s', (2, 768, 197, 16, 1), dict(reverse=False)),
    ('vim_s_mixer', (2, 1536, 197, 16, 2), dict(reverse=(False, True), z=False)),
    ('lbvim_w8', (2, 384, 196, 16, 1), dict(reverse=True, local_window=8)),
    ('lb_w16_long', (1, 64, 1030, 16, 2), dict(reverse=(False, True), local_window=16)),
])
def test_real_sizes_gpu(name, shape, kwargs, dtype, rel_tol):
    out_dtype = torch.float32 if name == 'vmamba_ss2d' else dtype
    run_case(*shape, dtype=dtype, out_dtype=out_dtype, rel_tol=rel_tol, **kwargs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('dtype, rel_tol', [(torch.float32, 1e-4), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize('name, shape, block_l, kwargs', [
    ('vmamba_stage1', (2, 384, 3136, 1, 4), 128, dict(reverse=(False, False, True, True), z=False)),
    ('vmamba_stage1_fwd512', (2, 384, 3136, 1, 4), 512, dict(reverse=(False, False, True, True), z=False)),
    ('lb_w16_n1', (1, 64, 1024, 1, 2), 128, dict(reverse=(False, True), local_window=16)),
])
def test_suffix_scan_segments_real_sizes_gpu(name, shape, block_l, kwargs, dtype, rel_tol):
    """The compiled segmented suffix scans (``suffix_segment=None``: the positions each thread holds) at real sizes,
    forward and backward, against the reference."""
    config = ScanConfig(block_d=1, block_l=block_l, num_warps=1, suffix_segment=None)
    out_dtype = torch.float32 if name.startswith('vmamba') else dtype
    run_case(*shape, dtype=dtype, out_dtype=out_dtype, rel_tol=rel_tol, config=config, **kwargs)

"""The chunked PyTorch reference against the step-by-step float64 oracle, and its gradients (gradcheck)."""
import pytest
import torch

from vmamba.kernels import reference
from vmamba.kernels.reference import selective_scan_ref

from .oracle import selective_scan_loop


def make_inputs(batch, channels, length, states, groups, dtype=torch.float64, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).requires_grad_(requires_grad)

    A = (-(torch.rand(channels, states, generator=g, dtype=torch.float64) + 0.1)).to(dtype).requires_grad_(requires_grad)
    return dict(
        u=rnd(batch, channels, length), delta=rnd(batch, channels, length, scale=0.5), A=A,
        B=rnd(batch, groups, states, length), C=rnd(batch, groups, states, length),
        D=rnd(channels), z=rnd(batch, channels, length), delta_bias=rnd(channels, scale=0.5))


CASES = [
    # (batch, channels, L, N, G, use_D, use_z, use_bias, softplus, reverse, window)
    (2, 4, 37, 4, 2, True, True, True, True, False, None),
    (2, 4, 37, 4, 2, True, False, True, True, True, None),
    (1, 6, 1, 1, 3, False, False, False, False, False, None),  # L = 1
    (1, 6, 1, 1, 3, True, True, True, True, True, 4),  # L = 1 with a window
    (2, 8, 130, 1, 4, True, False, True, True, (False, False, True, True), None),  # VMamba-like, > one chunk
    (2, 4, 50, 16, 1, True, True, True, True, False, 5),  # window does not divide L
    (2, 4, 50, 16, 2, False, True, False, False, (False, True), 4),  # per-group direction + window
    (1, 3, 300, 4, 1, True, True, True, True, True, 16),  # several chunks, reversed windows
    (2, 4, 33, 4, 1, True, False, False, True, False, 1),  # W = 1 -> plain forward scan
]


@pytest.mark.parametrize('grad_mode', [True, False], ids=['autograd', 'no_grad'])
@pytest.mark.parametrize('case', CASES, ids=lambda c: 'B{}-D{}-L{}-N{}-G{}-D{}-z{}-b{}-sp{}-rev{}-W{}'.format(*c))
def test_reference_matches_loop_oracle(case, grad_mode):
    """Both code paths: out-of-place under autograd, in place in the reused scratch buffers without it."""
    batch, channels, length, states, groups, use_D, use_z, use_bias, softplus, reverse, window = case
    x = make_inputs(batch, channels, length, states, groups)
    kwargs = dict(D=x['D'] if use_D else None, z=x['z'] if use_z else None,
                  delta_bias=x['delta_bias'] if use_bias else None, delta_softplus=softplus,
                  reverse=reverse, local_window=window, return_last_state=True)
    with torch.set_grad_enabled(grad_mode):
        out, last = selective_scan_ref(x['u'], x['delta'], x['A'], x['B'], x['C'], **kwargs)
    out_ref, last_ref = selective_scan_loop(x['u'], x['delta'], x['A'], x['B'], x['C'], **kwargs)
    torch.testing.assert_close(out, out_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, last_ref, rtol=1e-10, atol=1e-10)


def test_window_one_equals_plain_scan():
    x = make_inputs(2, 4, 29, 4, 2)
    args = (x['u'], x['delta'], x['A'], x['B'], x['C'], x['D'], x['z'], x['delta_bias'], True)
    torch.testing.assert_close(selective_scan_ref(*args, local_window=1), selective_scan_ref(*args))


def test_reverse_equals_flipped_scan():
    x = make_inputs(2, 4, 45, 4, 2)
    flipped = {k: (v.flip(-1) if k in ('u', 'delta', 'B', 'C', 'z') else v) for k, v in x.items()}
    out_rev = selective_scan_ref(**x, delta_softplus=True, reverse=True)
    out_flip = selective_scan_ref(**flipped, delta_softplus=True).flip(-1)
    torch.testing.assert_close(out_rev, out_flip, rtol=1e-12, atol=1e-12)


def test_low_precision_inputs_accumulate_in_fp32():
    x = make_inputs(2, 8, 200, 4, 2, dtype=torch.float32)
    xb = {k: (v.bfloat16() if k in ('u', 'delta', 'B', 'C', 'z') else v) for k, v in x.items()}
    out_bf = selective_scan_ref(**xb, delta_softplus=True)
    assert out_bf.dtype == torch.bfloat16
    out_f = selective_scan_ref(**xb, delta_softplus=True, out_dtype=torch.float32)
    assert out_f.dtype == torch.float32
    ref = selective_scan_loop(**{k: v.double() for k, v in xb.items()}, delta_softplus=True)
    rel = (out_f.double() - ref).norm() / ref.norm()
    assert rel < 1e-5  # bf16 inputs, fp32 state: only the output cast is lossy
    assert (out_bf.double() - ref).norm() / ref.norm() < 1e-2


@pytest.mark.parametrize('reverse,window', [(False, None), ((False, True), 3), (True, 4)])
def test_gradcheck(reverse, window):
    x = make_inputs(1, 4, 11, 2, 2, requires_grad=True)
    names = list(x)

    def fn(*tensors):
        kw = dict(zip(names, tensors))
        return selective_scan_ref(**kw, delta_softplus=True, reverse=reverse, local_window=window,
                                  return_last_state=True)

    assert torch.autograd.gradcheck(fn, tuple(x.values()))


def test_token_major_inputs_and_output_layout():
    """Token-major views (the models' layout) give the same numbers, and the output keeps u's memory order."""
    x = make_inputs(2, 6, 70, 4, 3)
    token_major = {k: (v.transpose(1, 2).contiguous().transpose(1, 2) if k in ('u', 'delta', 'z') else
                       v.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1) if k in ('B', 'C') else v)
                   for k, v in x.items()}
    kwargs = dict(delta_softplus=True, reverse=(True, False, True), return_last_state=True)
    out, last = selective_scan_ref(**x, **kwargs)
    out_t, last_t = selective_scan_ref(**token_major, **kwargs)
    assert out.is_contiguous() and out_t.transpose(1, 2).is_contiguous()
    torch.testing.assert_close(out_t, out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last_t, last, rtol=1e-12, atol=1e-12)


def test_no_grad_scratch_buffers_are_not_aliased(monkeypatch):
    """Outputs of a no-grad call survive the next call (which rewrites the scratch buffers); batch slices (scratch
    capped below one batch) give the same numbers; release_workspace frees the buffers."""
    monkeypatch.setattr(reference, '_WORKSPACE', reference._Workspace())
    x = make_inputs(5, 8, 50, 16, 2, dtype=torch.float32)
    y = make_inputs(5, 8, 50, 16, 2, dtype=torch.float32, seed=1)
    kwargs = dict(delta_softplus=True, reverse=(False, True), local_window=4, return_last_state=True)
    with torch.enable_grad():
        ref_out, ref_last = selective_scan_ref(**x, **kwargs)
    with torch.no_grad():
        out, last = selective_scan_ref(**x, **kwargs)
        selective_scan_ref(**y, **kwargs)  # rewrites the scratch buffers
        assert reference._WORKSPACE.buffers
        torch.testing.assert_close(out, ref_out, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(last, ref_last, rtol=1e-6, atol=1e-6)
        per_sample = 56 * 8 * 16 * 4  # 7 chunks of 8 steps (2 windows), 8 channels, 16 states, fp32
        monkeypatch.setattr(reference, 'WORKSPACE_BYTES', 2 * per_sample)  # slices of 2, 2 and 1 samples
        reference.release_workspace()
        sliced_out, sliced_last = selective_scan_ref(**x, **kwargs)
        assert max(b.numel() for b in reference._WORKSPACE.buffers.values()) * 4 == 2 * per_sample
    torch.testing.assert_close(sliced_out, out, rtol=0, atol=0)
    torch.testing.assert_close(sliced_last, last, rtol=0, atol=0)
    reference.release_workspace()
    assert not reference._WORKSPACE.buffers

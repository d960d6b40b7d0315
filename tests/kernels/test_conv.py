"""Fused causal depthwise conv + SiLU (token-major, per-group direction): reference vs a per-element loop and vs
the official formulation (nn.Conv1d on the flipped sequence for reverse groups), Triton vs reference (forward and
backward; chunk edges, batch groups, the partial dweight buffers, explicit launch configs), gradients, custom-op
checks, input errors. Without CUDA the Triton kernels run in the interpreter."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

import pytest  # noqa: E402

from vmamba.kernels.conv import causal_conv_silu, causal_conv_silu_ref  # noqa: E402
from vmamba.kernels.triton.conv import causal_conv_silu_bwd, causal_conv_silu_fwd  # noqa: E402

DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'
BIDIRECTIONAL = (False, True)


def _inputs(batch, length, channels, reverse, width, dtype=torch.float32, wdtype=None, bias=True, strided=False,
            device=DEVICE, seed=0):
    """x (batch, L, E) (a slice of a (batch, L, 2E + 3) buffer if ``strided``), weight (G*E, K), bias (G*E,)."""
    gen = torch.Generator().manual_seed(seed)
    groups = len(reverse)
    if strided:
        buf = torch.randn(batch, length, 2 * channels + 3, generator=gen).to(device=device, dtype=dtype)
        x = buf[..., 1:channels + 1]
    else:
        x = torch.randn(batch, length, channels, generator=gen).to(device=device, dtype=dtype)
    wdtype = wdtype or dtype
    weight = (torch.randn(groups * channels, width, generator=gen) / width ** 0.5).to(device=device, dtype=wdtype)
    b = torch.randn(groups * channels, generator=gen).to(device=device, dtype=wdtype) if bias else None
    return x, weight, b


def _loop(x, weight, bias, reverse):
    """Element by element: forward groups read x[t-K+1 .. t], reverse groups x[t .. t+K-1] (tap k at t+K-1-k)."""
    batch, length, channels = x.shape
    width = weight.shape[1]
    out = torch.zeros(batch, length, len(reverse) * channels, dtype=x.dtype)
    for b in range(batch):
        for t in range(length):
            for o in range(len(reverse) * channels):
                acc = bias[o].item() if bias is not None else 0.0
                for k in range(width):
                    src = t + (width - 1) - k if reverse[o // channels] else t - (width - 1) + k
                    if 0 <= src < length:
                        acc += weight[o, k].item() * x[b, src, o % channels].item()
                out[b, t, o] = acc
    return out * torch.sigmoid(out)


PATTERNS = [(False,), (True,), BIDIRECTIONAL, (True, False, True)]


@pytest.mark.parametrize('length', [1, 2, 9])
@pytest.mark.parametrize('reverse', PATTERNS)
@pytest.mark.parametrize('width', [1, 3, 4])
def test_reference_matches_loop(length, reverse, width):
    x, weight, bias = _inputs(2, length, 3, reverse, width, dtype=torch.float64, device='cpu')
    for b in (bias, None):
        torch.testing.assert_close(causal_conv_silu_ref(x, weight, b, reverse), _loop(x, weight, b, reverse),
                                   rtol=1e-12, atol=1e-12)


def test_reverse_group_is_the_official_flipped_conv():
    """Vim's backward branch: ``conv1d_b`` (nn.Conv1d, padding K-1, first L outputs) on the flipped sequence, its
    output flipped back; the forward branch: the same on the sequence as is. Group g of the op is exactly that."""
    x, weight, bias = _inputs(2, 11, 6, BIDIRECTIONAL, 4, dtype=torch.float64, device='cpu', seed=13)
    convs = []
    for g in range(2):
        conv = torch.nn.Conv1d(6, 6, 4, groups=6, padding=3, dtype=torch.float64)
        with torch.no_grad():
            conv.weight.copy_(weight[g * 6:(g + 1) * 6, None])
            conv.bias.copy_(bias[g * 6:(g + 1) * 6])
        convs.append(conv)
    xt = x.transpose(1, 2)
    fwd = torch.nn.functional.silu(convs[0](xt)[..., :11])
    bwd = torch.nn.functional.silu(convs[1](xt.flip(-1))[..., :11]).flip(-1)
    expected = torch.cat([fwd, bwd], 1).transpose(1, 2)
    torch.testing.assert_close(causal_conv_silu(x, weight, bias, BIDIRECTIONAL), expected, rtol=1e-12, atol=1e-12)


FWD_TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('length,channels,reverse,width', [
    (13, 10, BIDIRECTIONAL, 4), (1, 10, BIDIRECTIONAL, 4), (3, 10, BIDIRECTIONAL, 4), (6, 5, (False,), 3),
    (9, 5, (True,), 2), (8, 12, (True, False, True), 1)])
@pytest.mark.parametrize('bias', [True, False])
def test_triton_forward_matches_reference(length, channels, reverse, width, dtype, bias):
    """Under the interpreter chunks are 4 positions and channel blocks 8: several chunks (8 = two full ones),
    sequences shorter than the taps, ragged channel blocks."""
    x, weight, b = _inputs(2, length, channels, reverse, width, dtype=dtype, bias=bias, strided=True)
    assert x.stride(1) == 2 * channels + 3
    y = causal_conv_silu_fwd(x, weight, b, reverse)
    assert y.shape == (2, length, len(reverse) * channels) and y.is_contiguous() and y.dtype == dtype
    expected = causal_conv_silu_ref(x.double(), weight.double(), None if b is None else b.double(), reverse)
    torch.testing.assert_close(y, expected.to(dtype), rtol=FWD_TOL[dtype], atol=FWD_TOL[dtype])


def test_triton_forward_mixed_dtypes():
    """fp16 x with fp32 weight / bias (autocast callers): fp32 math, fp16 output."""
    x, weight, b = _inputs(2, 13, 10, BIDIRECTIONAL, 4, dtype=torch.float16, wdtype=torch.float32, strided=True)
    y = causal_conv_silu_fwd(x, weight, b, BIDIRECTIONAL)
    assert y.dtype == torch.float16
    expected = causal_conv_silu_ref(x.double(), weight.double(), b.double(), BIDIRECTIONAL)
    torch.testing.assert_close(y, expected.half(), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(causal_conv_silu_ref(x, weight, b, BIDIRECTIONAL), expected.half(), rtol=1e-2,
                               atol=1e-2)


def _autograd_ref(x, weight, bias, reverse, grad):
    """Gradients of the fp64 reference (same values as the inputs) by autograd."""
    leaves = [t.detach().double().requires_grad_(True) for t in (x, weight) + ((bias,) if bias is not None else ())]
    y = causal_conv_silu_ref(leaves[0], leaves[1], leaves[2] if bias is not None else None, reverse)
    grads = torch.autograd.grad(y, leaves, grad.double())
    return grads if bias is not None else grads + (None,)


BWD_TOL = {torch.float32: (1e-4, 1e-5), torch.float16: (2e-2, 2e-2), torch.bfloat16: (2e-2, 2e-2)}


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('length,channels,reverse,width', [
    (13, 10, BIDIRECTIONAL, 4), (1, 10, BIDIRECTIONAL, 4), (3, 10, BIDIRECTIONAL, 4), (9, 6, (False,), 3),
    (9, 6, (True,), 4), (8, 12, (True, False, True), 1)])
@pytest.mark.parametrize('bias', [True, False])
def test_triton_backward_matches_autograd(length, channels, reverse, width, dtype, bias):
    x, weight, b = _inputs(2, length, channels, reverse, width, dtype=dtype, bias=bias, strided=True, seed=1)
    grad = torch.randn(2, length, len(reverse) * channels, generator=torch.Generator().manual_seed(2))
    grad = grad.to(DEVICE, dtype)
    dx, dweight, dbias = causal_conv_silu_bwd(grad, x, weight, b, reverse)
    ex, ew, eb = _autograd_ref(x, weight, b, reverse, grad)
    rtol, atol = BWD_TOL[dtype]
    assert dx.shape == x.shape and dx.dtype == dtype and dx.is_contiguous()
    assert dweight.shape == weight.shape and dweight.dtype == weight.dtype
    torch.testing.assert_close(dx, ex.to(dtype), rtol=rtol, atol=atol)
    torch.testing.assert_close(dweight, ew.to(dtype), rtol=rtol, atol=atol * 4)
    if bias:
        assert dbias.dtype == b.dtype
        torch.testing.assert_close(dbias, eb.to(dtype), rtol=rtol, atol=atol * 4)
    else:
        assert dbias is None


# The backward's programs each cover a group of batch_per_program batch entries (the last group ragged when the
# batch is not a multiple); under the interpreter: (CHUNK, BLOCK_C, num_warps, STEPS, batch_per_program).
@pytest.mark.parametrize('batch,batch_per_program,bias', [
    (5, 1, False), (5, 2, True), (5, 3, False), (5, 8, True), (3, None, True), (3, None, False), (1, None, True)])
def test_triton_backward_batch_groups(batch, batch_per_program, bias):
    """fp32, batch not a multiple of batch_per_program (and groups larger than the batch): dx, dweight and dbias
    match the fp64 gradients to ~1e-5 relative."""
    x, weight, b = _inputs(batch, 9, 6, BIDIRECTIONAL, 4, bias=bias, strided=True, seed=5)
    grad = torch.randn(batch, 9, 12, generator=torch.Generator().manual_seed(6)).to(DEVICE)
    config = None if batch_per_program is None else (4, 8, 1, 2, batch_per_program)
    dx, dweight, dbias = causal_conv_silu_bwd(grad, x, weight, b, BIDIRECTIONAL, config=config)
    ex, ew, eb = _autograd_ref(x, weight, b, BIDIRECTIONAL, grad)
    torch.testing.assert_close(dx, ex.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dweight, ew.float(), rtol=1e-5, atol=1e-5)
    if bias:
        torch.testing.assert_close(dbias, eb.float(), rtol=1e-5, atol=1e-5)
    else:
        assert dbias is None


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_triton_backward_low_precision_x_fp32_params(dtype):
    """fp16 / bf16 x and grad with fp32 weight / bias (autocast callers), odd batch (ragged last batch group): dx in
    x's dtype at the low-precision tolerance; dweight / dbias (fp32) sum fp32 dpre, so they match the fp64 gradients
    of the same inputs at fp32 tolerance."""
    x, weight, b = _inputs(3, 13, 10, BIDIRECTIONAL, 4, dtype=dtype, wdtype=torch.float32, strided=True, seed=7)
    grad = torch.randn(3, 13, 20, generator=torch.Generator().manual_seed(8)).to(DEVICE, dtype)
    dx, dweight, dbias = causal_conv_silu_bwd(grad, x, weight, b, BIDIRECTIONAL)
    ex, ew, eb = _autograd_ref(x, weight, b, BIDIRECTIONAL, grad)
    assert dx.dtype == dtype and dweight.dtype == dbias.dtype == torch.float32
    rtol, atol = BWD_TOL[dtype]
    torch.testing.assert_close(dx, ex.to(dtype), rtol=rtol, atol=atol)
    torch.testing.assert_close(dweight, ew.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dbias, eb.float(), rtol=1e-5, atol=1e-5)


class _RecordLaunch:
    """Stands in for a Triton kernel: records each launch's grid and arguments, then runs the kernel."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append((grid, args, kwargs))
            return self.kernel[grid](*args, **kwargs)
        return launch


@pytest.mark.parametrize('batch_per_program', [1, 2, 4])
def test_triton_backward_partial_rows(batch_per_program, monkeypatch):
    """One launch; its partial dweight / dbias buffers hold one fp32 row per (group of batch_per_program batch
    entries, position chunk), (rows, G*E, K) / (rows, G*E)."""
    import vmamba.kernels.triton.conv as triton_conv
    kernel = _RecordLaunch(triton_conv._causal_conv_silu_bwd_kernel)
    monkeypatch.setattr(triton_conv, '_causal_conv_silu_bwd_kernel', kernel)
    x, weight, b = _inputs(5, 9, 6, BIDIRECTIONAL, 3, dtype=torch.float16, wdtype=torch.float32, seed=9)
    grad = torch.randn(5, 9, 12, generator=torch.Generator().manual_seed(10)).to(DEVICE, torch.float16)
    causal_conv_silu_bwd(grad, x, weight, b, BIDIRECTIONAL, config=(4, 8, 1, 2, batch_per_program))
    (grid, args, _), = kernel.launches
    dw_part, db_part = args[5:7]
    rows = -(-5 // batch_per_program) * -(-9 // 4)
    assert grid == (1, 3, -(-5 // batch_per_program))
    assert dw_part.dtype == db_part.dtype == torch.float32
    assert dw_part.shape == (rows, 12, 3) and db_part.shape == (rows, 12)


def test_triton_launch_configs():
    """Explicit launch configs (the benchmark's sweep: chunk, channel block, steps, batch grouping) give the default
    configs' results (y and dx bit for bit: each element is the same sum whatever the split); bad ones are named."""
    x, weight, b = _inputs(3, 10, 12, BIDIRECTIONAL, 4, strided=True, seed=11)
    grad = torch.randn(3, 10, 24, generator=torch.Generator().manual_seed(12)).to(DEVICE)
    y = causal_conv_silu_fwd(x, weight, b, BIDIRECTIONAL)
    for config in ((8, 16, 2, 4), (3, 8, 1, 1), (16, 32, 1, 8)):
        torch.testing.assert_close(causal_conv_silu_fwd(x, weight, b, BIDIRECTIONAL, config=config), y,
                                   rtol=0, atol=0)
    expected = causal_conv_silu_bwd(grad, x, weight, b, BIDIRECTIONAL)
    for config in ((8, 16, 1, 3, 3), (5, 8, 2, 1, 1), (16, 32, 1, 4, 2)):
        got = causal_conv_silu_bwd(grad, x, weight, b, BIDIRECTIONAL, config=config)
        torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)
        for g, e in zip(got[1:], expected[1:]):
            torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match='launch config must be 5 positive ints'):
        causal_conv_silu_bwd(grad, x, weight, b, BIDIRECTIONAL, config=(8, 16, 1, 2))
    with pytest.raises(ValueError, match='launch config must be 4 positive ints'):
        causal_conv_silu_fwd(x, weight, b, BIDIRECTIONAL, config=(8, 16, 1, 0))
    with pytest.raises(ValueError, match='BLOCK_C must be a power of two'):
        causal_conv_silu_fwd(x, weight, b, BIDIRECTIONAL, config=(8, 24, 1, 2))


def test_reference_backward_closed_form_matches_autograd():
    """The CPU path of the backward op (closed form) vs autograd through the reference, fp32 and fp16."""
    for reverse in (BIDIRECTIONAL, (True,), (False,)):
        for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 2e-3)):
            x, weight, b = _inputs(2, 13, 10, reverse, 4, dtype=dtype, strided=True, device='cpu', seed=3)
            grad = torch.randn(2, 13, 10 * len(reverse), generator=torch.Generator().manual_seed(4)).to(dtype)
            dx, dweight, dbias = torch.ops.vmamba.causal_conv_silu_backward(grad, x, weight, b, list(reverse))
            ex, ew, eb = _autograd_ref(x, weight, b, reverse, grad)
            assert dx.dtype == dweight.dtype == dbias.dtype == dtype
            torch.testing.assert_close(dx, ex.to(dtype), rtol=tol, atol=tol)
            torch.testing.assert_close(dweight, ew.to(dtype), rtol=tol, atol=tol)
            torch.testing.assert_close(dbias, eb.to(dtype), rtol=tol, atol=tol)


@pytest.mark.parametrize('bias', [True, False])
def test_gradcheck_and_opcheck(bias):
    x, weight, b = _inputs(2, 5, 3, BIDIRECTIONAL, 4, dtype=torch.float64, bias=bias, strided=True, device='cpu')
    leaves = [x.detach().clone().requires_grad_(True), weight.requires_grad_(True)]
    if bias:
        leaves.append(b.requires_grad_(True))
    assert torch.autograd.gradcheck(
        lambda xx, w, *bb: causal_conv_silu(xx, w, bb[0] if bb else None, BIDIRECTIONAL), tuple(leaves))
    strided = x.detach().requires_grad_(True)  # a view with position stride 2E + 3
    assert torch.autograd.gradcheck(lambda xx: causal_conv_silu(xx, weight, b, BIDIRECTIONAL), (strided,))
    for args in ((strided, weight, b, [False, True]), (leaves[0], weight, b, [False, True])):
        result = torch.library.opcheck(torch.ops.vmamba.causal_conv_silu.default, args)
        assert all(v == 'SUCCESS' for v in result.values()), result
    grad = torch.randn(2, 5, 6, dtype=torch.float64)
    result = torch.library.opcheck(torch.ops.vmamba.causal_conv_silu_backward.default,
                                   (grad, x.detach(), weight.detach(), None if b is None else b.detach(),
                                    [False, True]))
    assert all(v == 'SUCCESS' for v in result.values()), result


def test_public_matches_reference_and_short_sequences():
    for length in (1, 2, 7):
        x, weight, b = _inputs(2, length, 4, BIDIRECTIONAL, 4, dtype=torch.float64, device='cpu')
        torch.testing.assert_close(causal_conv_silu(x, weight, b, BIDIRECTIONAL), _loop(x, weight, b, BIDIRECTIONAL),
                                   rtol=1e-12, atol=1e-12)
    x, weight, b = _inputs(2, 3, 4, (True,), 4, dtype=torch.float64, device='cpu')
    torch.testing.assert_close(causal_conv_silu(x, weight, b, True), _loop(x, weight, b, (True,)),
                               rtol=1e-12, atol=1e-12)
    x, weight, b = _inputs(2, 0, 4, BIDIRECTIONAL, 4, dtype=torch.float32, device='cpu')
    assert causal_conv_silu(x, weight, b, BIDIRECTIONAL).shape == (2, 0, 8)


def test_bad_inputs_are_named():
    x, weight, bias = _inputs(1, 5, 4, BIDIRECTIONAL, 4, device='cpu')
    with pytest.raises(ValueError, match=r'weight must be \(G \* E = 2 \* 4, K\)'):
        causal_conv_silu(x, weight[:6], bias[:6], BIDIRECTIONAL)
    with pytest.raises(ValueError, match=r'weight must be \(G \* E = 1 \* 4, K\)'):
        causal_conv_silu(x, weight, bias, False)
    with pytest.raises(ValueError, match='at least one tap'):
        causal_conv_silu(x, weight[:, :0], bias, BIDIRECTIONAL)
    with pytest.raises(ValueError, match=r'bias must be \(G\*E = 8,\)'):
        causal_conv_silu(x, weight, bias[:4], BIDIRECTIONAL)
    with pytest.raises(ValueError, match='x must have 3 dims'):
        causal_conv_silu(x[0], weight, bias, BIDIRECTIONAL)
    with pytest.raises(TypeError, match='x must be a floating tensor'):
        causal_conv_silu(x.long(), weight, bias, BIDIRECTIONAL)
    for bad in ((), (0, 1), 'both', None):
        with pytest.raises(ValueError, match='reverse must be a bool or a non-empty tuple of bools'):
            causal_conv_silu(x, weight, bias, bad)
    with pytest.raises(ValueError, match='weight must have 2 dims'):
        causal_conv_silu(x, weight[None], bias, BIDIRECTIONAL)


@pytest.mark.gpu
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
def test_gpu_real_size(dtype):
    """Vim-S sizes (197 tokens, E = 768, two directions, K = 4) on CUDA vs the fp64 reference, forward + backward;
    batch 5 with the default 2 batch entries per backward program leaves a ragged last group."""
    x, weight, bias = _inputs(5, 197, 768, BIDIRECTIONAL, 4, dtype=dtype, strided=True, device='cuda')
    xg = x.detach().requires_grad_(True)
    wg = weight.detach().requires_grad_(True)
    bg = bias.detach().requires_grad_(True)
    y = causal_conv_silu(xg, wg, bg, BIDIRECTIONAL)
    expected = causal_conv_silu_ref(x.double(), weight.double(), bias.double(), BIDIRECTIONAL)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(y, expected.to(dtype), rtol=tol, atol=tol)
    grad = torch.randn_like(y)
    y.backward(grad)
    ex, ew, eb = _autograd_ref(x, weight, bias, BIDIRECTIONAL, grad)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(xg.grad, ex.to(dtype), rtol=tol, atol=tol)
    torch.testing.assert_close(wg.grad, ew.to(dtype), rtol=tol, atol=tol * 10)
    torch.testing.assert_close(bg.grad, eb.to(dtype), rtol=tol, atol=tol * 10)

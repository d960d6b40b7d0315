"""Fused depthwise conv + SiLU (token-major): reference vs a per-element loop, Triton vs reference (forward and
backward; the backward's batch groups, its dpre / partial dweight buffers, explicit launch configs), gradients,
custom-op checks, input errors. Without CUDA the Triton kernels run in the interpreter."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

import pytest  # noqa: E402

from vmamba.kernels.conv import depthwise_conv_silu, depthwise_conv_silu_ref  # noqa: E402
from vmamba.kernels.triton.conv import depthwise_conv_silu_bwd, depthwise_conv_silu_fwd  # noqa: E402

DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'


def _inputs(batch, length, channels, groups, width, dtype=torch.float32, wdtype=None, bias=True, strided=False,
            device=DEVICE, seed=0):
    """x (batch, L, E) (a slice of a (batch, L, 2E + 3) buffer if ``strided``), weight (G*E, W), bias (G*E,)."""
    gen = torch.Generator().manual_seed(seed)
    if strided:
        buf = torch.randn(batch, length, 2 * channels + 3, generator=gen).to(device=device, dtype=dtype)
        x = buf[..., 1:channels + 1]
    else:
        x = torch.randn(batch, length, channels, generator=gen).to(device=device, dtype=dtype)
    wdtype = wdtype or dtype
    weight = (torch.randn(groups * channels, width, generator=gen) / width ** 0.5).to(device=device, dtype=wdtype)
    b = torch.randn(groups * channels, generator=gen).to(device=device, dtype=wdtype) if bias else None
    return x, weight, b


def _loop(x, weight, bias, groups):
    batch, length, channels = x.shape
    width = weight.shape[1]
    pad = (width - 1) // 2
    out = torch.zeros(batch, length, groups * channels, dtype=x.dtype)
    for b in range(batch):
        for t in range(length):
            for o in range(groups * channels):
                acc = bias[o].item() if bias is not None else 0.0
                for k in range(width):
                    src = t + k - pad
                    if 0 <= src < length:
                        acc += weight[o, k].item() * x[b, src, o % channels].item()
                out[b, t, o] = acc
    return out * torch.sigmoid(out)


@pytest.mark.parametrize('length', [2, 9])
@pytest.mark.parametrize('groups,width', [(1, 3), (2, 7), (2, 3), (1, 7)])
def test_reference_matches_loop(length, groups, width):
    x, weight, bias = _inputs(2, length, 3, groups, width, dtype=torch.float64, device='cpu')
    expected = _loop(x, weight, bias, groups)
    torch.testing.assert_close(depthwise_conv_silu_ref(x, weight, bias, groups), expected, rtol=1e-12, atol=1e-12)
    expected = _loop(x, weight, None, groups)
    torch.testing.assert_close(depthwise_conv_silu_ref(x, weight, None, groups), expected, rtol=1e-12, atol=1e-12)


FWD_TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('length,channels,groups,width', [(13, 10, 2, 7), (1, 10, 2, 7), (6, 5, 1, 3)])
@pytest.mark.parametrize('bias', [True, False])
def test_triton_forward_matches_reference(length, channels, groups, width, dtype, bias):
    x, weight, b = _inputs(2, length, channels, groups, width, dtype=dtype, bias=bias, strided=True)
    assert x.stride(1) == 2 * channels + 3
    y = depthwise_conv_silu_fwd(x, weight, b, groups)
    assert y.shape == (2, length, groups * channels) and y.is_contiguous() and y.dtype == dtype
    expected = depthwise_conv_silu_ref(x.double(), weight.double(), None if b is None else b.double(), groups)
    torch.testing.assert_close(y, expected.to(dtype), rtol=FWD_TOL[dtype], atol=FWD_TOL[dtype])


def test_triton_forward_mixed_dtypes():
    """fp16 x with fp32 weight / bias (autocast callers): fp32 math, fp16 output."""
    x, weight, b = _inputs(2, 13, 10, 2, 7, dtype=torch.float16, wdtype=torch.float32, strided=True)
    y = depthwise_conv_silu_fwd(x, weight, b, 2)
    assert y.dtype == torch.float16
    expected = depthwise_conv_silu_ref(x.double(), weight.double(), b.double(), 2)
    torch.testing.assert_close(y, expected.half(), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(depthwise_conv_silu_ref(x, weight, b, 2), expected.half(), rtol=1e-2, atol=1e-2)


def _autograd_ref(x, weight, bias, groups, grad):
    """Gradients of the fp64 reference (same values as the inputs) by autograd."""
    leaves = [t.detach().double().requires_grad_(True) for t in (x, weight) + ((bias,) if bias is not None else ())]
    y = depthwise_conv_silu_ref(leaves[0], leaves[1], leaves[2] if bias is not None else None, groups)
    grads = torch.autograd.grad(y, leaves, grad.double())
    return grads if bias is not None else grads + (None,)


BWD_TOL = {torch.float32: (1e-4, 1e-5), torch.float16: (2e-2, 2e-2), torch.bfloat16: (2e-2, 2e-2)}


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('length,channels,groups,width', [(13, 10, 2, 7), (1, 10, 2, 7), (9, 6, 1, 3)])
@pytest.mark.parametrize('bias', [True, False])
def test_triton_backward_matches_autograd(length, channels, groups, width, dtype, bias):
    x, weight, b = _inputs(2, length, channels, groups, width, dtype=dtype, bias=bias, strided=True, seed=1)
    grad = torch.randn(2, length, groups * channels, generator=torch.Generator().manual_seed(2)).to(DEVICE, dtype)
    dx, dweight, dbias = depthwise_conv_silu_bwd(grad, x, weight, b, groups)
    ex, ew, eb = _autograd_ref(x, weight, b, groups, grad)
    rtol, atol = BWD_TOL[dtype]
    assert dx.shape == x.shape and dx.dtype == dtype and dx.is_contiguous()
    assert dweight.dtype == weight.dtype
    torch.testing.assert_close(dx, ex.to(dtype), rtol=rtol, atol=atol)
    torch.testing.assert_close(dweight, ew.to(dtype), rtol=rtol, atol=atol * 4)
    if bias:
        assert dbias.dtype == b.dtype
        torch.testing.assert_close(dbias, eb.to(dtype), rtol=rtol, atol=atol * 4)
    else:
        assert dbias is None


# The dpre kernel's programs each cover a group of batch_per_program batch entries (the last group ragged when the
# batch is not a multiple); under the interpreter tiles are tiny, (BLOCK_T, BLOCK_C, num_warps, batch_per_program).
@pytest.mark.parametrize('batch,batch_per_program,bias', [
    (5, 1, False), (5, 2, True), (5, 3, False), (5, 8, True), (3, None, True), (3, None, False), (1, None, True)])
def test_triton_backward_batch_groups(batch, batch_per_program, bias):
    """fp32, batch not a multiple of batch_per_program (and groups larger than the batch): dx, dweight and dbias
    match the fp64 gradients to ~1e-5 relative."""
    x, weight, b = _inputs(batch, 9, 6, 2, 7, bias=bias, strided=True, seed=5)
    grad = torch.randn(batch, 9, 12, generator=torch.Generator().manual_seed(6)).to(DEVICE)
    config = None if batch_per_program is None else (4, 8, 1, batch_per_program)
    dx, dweight, dbias = depthwise_conv_silu_bwd(grad, x, weight, b, 2, dpre_config=config)
    ex, ew, eb = _autograd_ref(x, weight, b, 2, grad)
    torch.testing.assert_close(dx, ex.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dweight, ew.float(), rtol=1e-5, atol=1e-5)
    if bias:
        torch.testing.assert_close(dbias, eb.float(), rtol=1e-5, atol=1e-5)
    else:
        assert dbias is None


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_triton_backward_low_precision_x_fp32_params(dtype):
    """fp16 / bf16 x and grad with fp32 weight / bias (autocast callers), odd batch (ragged last batch group): dx
    (x's dtype, through dpre rounded to x's dtype) at the low-precision tolerance; dweight / dbias (fp32) sum the
    unrounded fp32 dpre, so they match the fp64 gradients of the same inputs at fp32 tolerance."""
    x, weight, b = _inputs(3, 13, 10, 2, 7, dtype=dtype, wdtype=torch.float32, strided=True, seed=7)
    grad = torch.randn(3, 13, 20, generator=torch.Generator().manual_seed(8)).to(DEVICE, dtype)
    dx, dweight, dbias = depthwise_conv_silu_bwd(grad, x, weight, b, 2)
    ex, ew, eb = _autograd_ref(x, weight, b, 2, grad)
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


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('batch_per_program', [1, 2, 4])
def test_triton_backward_buffers(dtype, batch_per_program, monkeypatch):
    """dpre travels between the two backward kernels in x's dtype; the partial dweight / dbias buffers hold one fp32
    row per (group of batch_per_program batch entries, position block)."""
    import vmamba.kernels.triton.conv as triton_conv
    dpre_kernel = _RecordLaunch(triton_conv._conv_silu_bwd_dpre_kernel)
    dx_kernel = _RecordLaunch(triton_conv._conv_silu_bwd_dx_kernel)
    monkeypatch.setattr(triton_conv, '_conv_silu_bwd_dpre_kernel', dpre_kernel)
    monkeypatch.setattr(triton_conv, '_conv_silu_bwd_dx_kernel', dx_kernel)
    x, weight, b = _inputs(5, 9, 6, 2, 3, dtype=dtype, wdtype=torch.float32, seed=9)
    grad = torch.randn(5, 9, 12, generator=torch.Generator().manual_seed(10)).to(DEVICE, dtype)
    depthwise_conv_silu_bwd(grad, x, weight, b, 2, dpre_config=(4, 8, 1, batch_per_program))
    (grid, args, _), = dpre_kernel.launches
    dpre, dw_part, db_part = args[4:7]
    rows = -(-5 // batch_per_program) * -(-9 // 4)
    assert grid[2] == -(-5 // batch_per_program)
    assert dpre.dtype == dtype and dpre.shape == (5, 9, 12)
    assert dw_part.dtype == db_part.dtype == torch.float32
    assert dw_part.shape == (rows, 12, 3) and db_part.shape == (rows, 12)
    (_, args, _), = dx_kernel.launches
    assert args[0] is dpre


def test_triton_launch_configs():
    """Explicit launch configs (the benchmark's sweep) give the default configs' results (dx bit for bit: dpre does
    not depend on the batch grouping); bad ones are named."""
    x, weight, b = _inputs(3, 10, 12, 2, 7, strided=True, seed=11)
    grad = torch.randn(3, 10, 24, generator=torch.Generator().manual_seed(12)).to(DEVICE)
    y = depthwise_conv_silu_fwd(x, weight, b, 2)
    torch.testing.assert_close(depthwise_conv_silu_fwd(x, weight, b, 2, config=(8, 16, 2)), y, rtol=0, atol=0)
    expected = depthwise_conv_silu_bwd(grad, x, weight, b, 2)
    got = depthwise_conv_silu_bwd(grad, x, weight, b, 2, dpre_config=(8, 16, 1, 3), dx_config=(2, 16, 2))
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)
    for g, e in zip(got[1:], expected[1:]):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match='launch config must be 4 positive ints'):
        depthwise_conv_silu_bwd(grad, x, weight, b, 2, dpre_config=(8, 16, 1))
    with pytest.raises(ValueError, match='launch config must be 4 positive ints'):
        depthwise_conv_silu_bwd(grad, x, weight, b, 2, dpre_config=(8, 16, 1, 0))


def test_reference_backward_closed_form_matches_autograd():
    """The CPU path of the backward op (closed form) vs autograd through the reference, fp32 and fp16."""
    for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 2e-3)):
        x, weight, b = _inputs(2, 13, 10, 2, 7, dtype=dtype, strided=True, device='cpu', seed=3)
        grad = torch.randn(2, 13, 20, generator=torch.Generator().manual_seed(4)).to(dtype)
        dx, dweight, dbias = torch.ops.vmamba.depthwise_conv_silu_backward(grad, x, weight, b, 2)
        ex, ew, eb = _autograd_ref(x, weight, b, 2, grad)
        assert dx.dtype == dweight.dtype == dbias.dtype == dtype
        torch.testing.assert_close(dx, ex.to(dtype), rtol=tol, atol=tol)
        torch.testing.assert_close(dweight, ew.to(dtype), rtol=tol, atol=tol)
        torch.testing.assert_close(dbias, eb.to(dtype), rtol=tol, atol=tol)


@pytest.mark.parametrize('bias', [True, False])
def test_gradcheck_and_opcheck(bias):
    x, weight, b = _inputs(2, 5, 3, 2, 7, dtype=torch.float64, bias=bias, strided=True, device='cpu')
    leaves = [x.detach().clone().requires_grad_(True), weight.requires_grad_(True)]
    if bias:
        leaves.append(b.requires_grad_(True))
    assert torch.autograd.gradcheck(
        lambda xx, w, *bb: depthwise_conv_silu(xx, w, bb[0] if bb else None, 2), tuple(leaves))
    strided = x.detach().requires_grad_(True)  # a view with position stride 2E + 3
    assert torch.autograd.gradcheck(lambda xx: depthwise_conv_silu(xx, weight, b, 2), (strided,))
    for args in ((strided, weight, b, 2), (leaves[0], weight, b, 2)):
        result = torch.library.opcheck(torch.ops.vmamba.depthwise_conv_silu.default, args)
        assert all(v == 'SUCCESS' for v in result.values()), result
    grad = torch.randn(2, 5, 6, dtype=torch.float64)
    result = torch.library.opcheck(torch.ops.vmamba.depthwise_conv_silu_backward.default,
                                   (grad, x.detach(), weight.detach(), None if b is None else b.detach(), 2))
    assert all(v == 'SUCCESS' for v in result.values()), result


def test_public_matches_reference_and_short_sequences():
    for length in (1, 2, 7):
        x, weight, b = _inputs(2, length, 4, 2, 7, dtype=torch.float64, device='cpu')
        torch.testing.assert_close(depthwise_conv_silu(x, weight, b, 2), _loop(x, weight, b, 2),
                                   rtol=1e-12, atol=1e-12)
    x, weight, b = _inputs(2, 0, 4, 2, 7, dtype=torch.float32, device='cpu')
    assert depthwise_conv_silu(x, weight, b, 2).shape == (2, 0, 8)


def test_bad_inputs_are_named():
    x, weight, bias = _inputs(1, 5, 4, 2, 7, device='cpu')
    with pytest.raises(ValueError, match=r'weight must be \(groups_out \* E = 2 \* 4, W\)'):
        depthwise_conv_silu(x, weight[:6], bias[:6], 2)
    with pytest.raises(ValueError, match=r'weight must be \(groups_out \* E = 1 \* 4, W\)'):
        depthwise_conv_silu(x, weight, bias, 1)
    with pytest.raises(ValueError, match='width must be odd'):
        depthwise_conv_silu(x, weight[:, :6], bias, 2)
    with pytest.raises(ValueError, match=r'bias must be \(G\*E = 8,\)'):
        depthwise_conv_silu(x, weight, bias[:4], 2)
    with pytest.raises(ValueError, match='x must have 3 dims'):
        depthwise_conv_silu(x[0], weight, bias, 2)
    with pytest.raises(TypeError, match='x must be a floating tensor'):
        depthwise_conv_silu(x.long(), weight, bias, 2)
    with pytest.raises(ValueError, match='groups_out must be an int >= 1'):
        depthwise_conv_silu(x, weight, bias, 0)
    with pytest.raises(ValueError, match='weight must have 2 dims'):
        depthwise_conv_silu(x, weight[None], bias, 2)


@pytest.mark.gpu
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
def test_gpu_real_size(dtype):
    """Vim-S sizes (197 tokens, E = 768, two directions, W = 7) on CUDA vs the fp64 reference, forward + backward;
    batch 12: the default 8 batch entries per dpre program leave a ragged second group."""
    x, weight, bias = _inputs(12, 197, 768, 2, 7, dtype=dtype, strided=True, device='cuda')
    xg = x.detach().requires_grad_(True)
    wg = weight.detach().requires_grad_(True)
    bg = bias.detach().requires_grad_(True)
    y = depthwise_conv_silu(xg, wg, bg, 2)
    expected = depthwise_conv_silu_ref(x.double(), weight.double(), bias.double(), 2)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(y, expected.to(dtype), rtol=tol, atol=tol)
    grad = torch.randn_like(y)
    y.backward(grad)
    ex, ew, eb = _autograd_ref(x, weight, bias, 2, grad)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(xg.grad, ex.to(dtype), rtol=tol, atol=tol)
    torch.testing.assert_close(wg.grad, ew.to(dtype), rtol=tol, atol=tol * 10)
    torch.testing.assert_close(bg.grad, eb.to(dtype), rtol=tol, atol=tol * 10)

"""Gated group sum (Vim mixer epilogue): reference vs a per-element loop, Triton vs reference (forward and
backward, strided y / z, ragged sizes), gradients, custom-op checks, input errors. Without CUDA the Triton kernels run
in the interpreter."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

import pytest  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from vmamba.kernels import gated_group_sum as exported  # noqa: E402
from vmamba.kernels.gated_sum import gated_group_sum, gated_group_sum_ref  # noqa: E402
from vmamba.kernels.triton.gated_sum import gated_group_sum_bwd, gated_group_sum_fwd  # noqa: E402

DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'


def _inputs(batch, length, channels, groups, dtype=torch.float32, y_layout='transposed', device=DEVICE, seed=0):
    """y (batch, L, G*E) and z (batch, L, E), as the mixer hands them over.

    z is ``xz[..., E:]`` of a contiguous (batch, L, 2E) buffer (position stride 2E). y by ``y_layout``:
    'transposed': the scan's logical (batch, G*E, L) view of (batch, L, G*E) memory, transposed back (contiguous);
    'strided': a window of a (batch + 1, L + 2, G*E + 3) buffer (batch / position strides of neither y nor z);
    'batch_step': every other batch element of a (2 * batch, L, G*E) buffer (only the batch stride is unusual)."""
    gen = torch.Generator().manual_seed(seed)
    wide = groups * channels
    xz = torch.randn(batch, length, 2 * channels, generator=gen).to(device=device, dtype=dtype)
    z = xz[..., channels:]
    if y_layout == 'transposed':
        scan_out = torch.randn(batch, length, wide, generator=gen).to(device=device, dtype=dtype).transpose(1, 2)
        y = scan_out.transpose(1, 2)
    elif y_layout == 'strided':
        buf = torch.randn(batch + 1, length + 2, wide + 3, generator=gen).to(device=device, dtype=dtype)
        y = buf[1:, 1:length + 1, 2:wide + 2]
    elif y_layout == 'batch_step':
        y = torch.randn(2 * batch, length, wide, generator=gen).to(device=device, dtype=dtype)[::2]
    else:
        raise AssertionError(y_layout)
    return y, z


def _loop(y, z, scale):
    batch, length, channels = z.shape
    groups = y.shape[2] // channels
    out = torch.zeros(batch, length, channels, dtype=torch.float64)
    for b in range(batch):
        for t in range(length):
            for e in range(channels):
                s = sum(y[b, t, g * channels + e].item() for g in range(groups))
                zv = z[b, t, e].item()
                out[b, t, e] = scale * s * zv / (1 + torch.exp(torch.tensor(-zv, dtype=torch.float64)).item())
    return out


@pytest.mark.parametrize('groups', [1, 2, 3])
@pytest.mark.parametrize('scale', [1.0, 0.5])
def test_reference_matches_loop_and_unfused_mixer(groups, scale):
    y, z = _inputs(2, 5, 3, groups, dtype=torch.float64, device='cpu')
    out = gated_group_sum_ref(y, z, scale)
    assert out.shape == z.shape and out.is_contiguous() and out.dtype == torch.float64
    torch.testing.assert_close(out, _loop(y, z, scale), rtol=1e-12, atol=1e-12)
    # The mixer's unfused code (divide_out: scale = 1 / G).
    unfused = y.unflatten(-1, (groups, 3)).sum(dim=2) / groups * F.silu(z)
    torch.testing.assert_close(gated_group_sum(y, z, 1.0 / groups), unfused, rtol=1e-12, atol=1e-12)


FWD_TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('length,channels,groups,y_layout', [
    (13, 37, 2, 'transposed'), (7, 10, 3, 'strided'), (6, 5, 1, 'batch_step'), (1, 16, 2, 'strided')])
def test_triton_forward_matches_reference(length, channels, groups, y_layout, dtype):
    y, z = _inputs(2, length, channels, groups, dtype=dtype, y_layout=y_layout)
    assert z.stride(1) == 2 * channels
    out, s = gated_group_sum_fwd(y, z, 0.5)
    for t in (out, s):
        assert t.shape == (2, length, channels) and t.is_contiguous() and t.dtype == dtype
    expected = gated_group_sum_ref(y.double(), z.double(), 0.5)
    tol = FWD_TOL[dtype]
    torch.testing.assert_close(out, expected.to(dtype), rtol=tol, atol=tol)
    group_sum = y.double().unflatten(-1, (groups, channels)).sum(-2)
    torch.testing.assert_close(s, group_sum.to(dtype), rtol=tol, atol=tol)
    out_only, no_sum = gated_group_sum_fwd(y, z, 0.5, store_sum=False)  # no backward to come: s not written
    assert no_sum is None
    torch.testing.assert_close(out_only, out, rtol=0, atol=0)


def test_triton_empty_sequence():
    y, z = _inputs(2, 0, 6, 2)
    out, s = gated_group_sum_fwd(y, z, 1.0)
    assert out.shape == s.shape == (2, 0, 6)
    dy, dz = gated_group_sum_bwd(out, z, s, 1.0, 2)
    assert dy.shape == (2, 0, 12) and dz.shape == (2, 0, 6)


def _autograd_ref(y, z, scale, grad):
    """Gradients (dy, dz) of the fp64 reference (same values as the inputs) by autograd."""
    leaves = [t.detach().double().requires_grad_(True) for t in (y, z)]
    out = gated_group_sum_ref(leaves[0], leaves[1], scale)
    return torch.autograd.grad(out, leaves, grad.double())


# dz reads s rounded to the input dtype (one extra fp16 / bf16 rounding of s), hence the looser half tolerances.
BWD_TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (1e-2, 1e-2), torch.bfloat16: (2e-2, 2e-2)}


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('length,channels,groups,y_layout', [
    (13, 37, 2, 'transposed'), (7, 10, 3, 'strided'), (6, 5, 1, 'batch_step')])
def test_triton_backward_matches_autograd(length, channels, groups, y_layout, dtype):
    y, z = _inputs(2, length, channels, groups, dtype=dtype, y_layout=y_layout, seed=1)
    grad = torch.randn(2, length, channels, generator=torch.Generator().manual_seed(2)).to(DEVICE, dtype)
    scale = 1.0 / groups
    _, s = gated_group_sum_fwd(y, z, scale)
    dy, dz = gated_group_sum_bwd(grad, z, s, scale, groups)
    ey, ez = _autograd_ref(y, z, scale, grad)
    assert dy.shape == y.shape and dy.dtype == dtype and dy.is_contiguous()
    assert dz.shape == z.shape and dz.dtype == dtype and dz.is_contiguous()
    rtol, atol = BWD_TOL[dtype]
    torch.testing.assert_close(dy, ey.to(dtype), rtol=rtol, atol=atol)
    torch.testing.assert_close(dz, ez.to(dtype), rtol=rtol, atol=atol)


def test_reference_backward_closed_form_matches_autograd():
    """The PyTorch path of both ops (CPU) vs autograd through the reference, fp32 and fp16."""
    for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 1e-2)):
        y, z = _inputs(2, 9, 7, 3, dtype=dtype, y_layout='strided', device='cpu', seed=3)
        grad = torch.randn(2, 9, 7, generator=torch.Generator().manual_seed(4)).to(dtype)
        out, s = torch.ops.vmamba.gated_group_sum(y, z, 0.25)
        torch.testing.assert_close(out, gated_group_sum_ref(y.double(), z.double(), 0.25).to(dtype),
                                   rtol=tol, atol=tol)
        dy, dz = torch.ops.vmamba.gated_group_sum_backward(grad, z, s, 0.25, 3)
        ey, ez = _autograd_ref(y, z, 0.25, grad)
        assert dy.dtype == dz.dtype == dtype and dy.is_contiguous() and dz.is_contiguous()
        torch.testing.assert_close(dy, ey.to(dtype), rtol=tol, atol=tol)
        torch.testing.assert_close(dz, ez.to(dtype), rtol=tol, atol=tol)


@pytest.mark.parametrize('groups', [1, 2, 3])
def test_gradcheck(groups):
    """fp64 gradcheck of the public function (eager autograd.Function) and of the custom op, strided z."""
    y, z = _inputs(2, 4, 3, groups, dtype=torch.float64, y_layout='strided', device='cpu')
    yg = y.detach().requires_grad_(True)  # views: strides kept
    zg = z.detach().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: gated_group_sum(a, b, 0.7), (yg, zg))
    assert torch.autograd.gradcheck(lambda a, b: torch.ops.vmamba.gated_group_sum(a, b, 0.7)[0], (yg, zg))


def test_opcheck():
    y, z = _inputs(2, 4, 3, 2, dtype=torch.float64, y_layout='strided', device='cpu')
    for args in ((y.detach().requires_grad_(True), z.detach().requires_grad_(True), 0.5),
                 (y.contiguous(), z.contiguous(), 1.0)):
        result = torch.library.opcheck(torch.ops.vmamba.gated_group_sum.default, args)
        assert all(v == 'SUCCESS' for v in result.values()), result
    _, s = torch.ops.vmamba.gated_group_sum(y, z, 0.5)
    grad = torch.randn(2, 4, 3, dtype=torch.float64)
    result = torch.library.opcheck(torch.ops.vmamba.gated_group_sum_backward.default, (grad, z, s, 0.5, 2))
    assert all(v == 'SUCCESS' for v in result.values()), result


def test_public_autograd_and_dispatch():
    """Eager and custom-op routes give the same values and gradients; meta tensors trace through the op."""
    assert exported is gated_group_sum
    y, z = _inputs(2, 6, 5, 2, dtype=torch.float32, device='cpu')
    grad = torch.randn(2, 6, 5, generator=torch.Generator().manual_seed(5))
    results = []
    for fn in (lambda a, b: gated_group_sum(a, b, 0.5), lambda a, b: torch.ops.vmamba.gated_group_sum(a, b, 0.5)[0]):
        yg, zg = y.detach().requires_grad_(True), z.detach().requires_grad_(True)
        out = fn(yg, zg)
        out.backward(grad)
        results.append((out.detach(), yg.grad, zg.grad))
    ey, ez = _autograd_ref(y, z, 0.5, grad)
    for out, dy, dz in results:
        torch.testing.assert_close(out, gated_group_sum_ref(y, z, 0.5), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(dy, ey.float(), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(dz, ez.float(), rtol=1e-6, atol=1e-6)
    meta = gated_group_sum(y.to('meta'), z.to('meta'), 2)
    assert meta.shape == (2, 6, 5) and meta.is_contiguous() and meta.dtype == torch.float32
    # Non-unit channel stride: copied, not rejected. Empty sequence.
    yt = y.contiguous().transpose(0, 2).contiguous().transpose(0, 2)  # channel stride != 1
    assert yt.stride(2) != 1
    torch.testing.assert_close(gated_group_sum(yt, z), gated_group_sum_ref(y, z), rtol=1e-6, atol=1e-6)
    y0, z0 = _inputs(2, 0, 5, 2, device='cpu')
    assert gated_group_sum(y0, z0).shape == (2, 0, 5)


def test_bad_inputs_are_named():
    y, z = _inputs(2, 5, 4, 2, device='cpu')
    with pytest.raises(TypeError, match='y must be a torch.Tensor'):
        gated_group_sum(y.tolist(), z)
    with pytest.raises(TypeError, match='z must be a torch.Tensor'):
        gated_group_sum(y, None)
    with pytest.raises(ValueError, match='y must have 3 dims'):
        gated_group_sum(y[0], z)
    with pytest.raises(ValueError, match='z must have 3 dims'):
        gated_group_sum(y, z[..., None])
    with pytest.raises(TypeError, match='y must be a floating tensor'):
        gated_group_sum(y.long(), z)
    with pytest.raises(TypeError, match=r'y and z must share a dtype, got y torch.float32 and z torch.float16'):
        gated_group_sum(y, z.half())
    with pytest.raises(ValueError, match=r'y and z must have the same \(batch, L\), got y shape \(2, 5, 8\) and '
                                         r'z shape \(2, 4, 4\)'):
        gated_group_sum(y, z[:, :4])
    with pytest.raises(ValueError, match=r'positive multiple of z last dim, got y shape \(2, 5, 7\) and '
                                         r'z shape \(2, 5, 4\)'):
        gated_group_sum(y[..., :7], z)
    with pytest.raises(ValueError, match='positive multiple'):
        gated_group_sum(y[..., :0], z)
    with pytest.raises(TypeError, match='scale must be a real number'):
        gated_group_sum(y, z, torch.tensor(0.5))
    with pytest.raises(ValueError, match='z is on meta but y is on cpu'):
        gated_group_sum(y, z.to('meta'))


@pytest.mark.gpu
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_gpu_real_size(dtype):
    """Vim-S sizes (197 tokens, E = 768, two directions) on CUDA vs the fp64 reference, forward + backward."""
    y, z = _inputs(8, 197, 768, 2, dtype=dtype, device='cuda')
    yg, zg = y.detach().requires_grad_(True), z.detach().requires_grad_(True)
    out = gated_group_sum(yg, zg, 0.5)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(out, gated_group_sum_ref(y.double(), z.double(), 0.5).to(dtype), rtol=tol, atol=tol)
    grad = torch.randn_like(out)
    out.backward(grad)
    ey, ez = _autograd_ref(y, z, 0.5, grad)
    rtol, atol = BWD_TOL[dtype]
    torch.testing.assert_close(yg.grad, ey.to(dtype), rtol=rtol, atol=atol)
    torch.testing.assert_close(zg.grad, ez.to(dtype), rtol=rtol, atol=atol)

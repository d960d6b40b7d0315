"""LayerNorm over the last dim: reference vs explicit sums, Triton forward / backward vs the reference, the custom
ops (gradcheck, opcheck, dispatch), input errors. Without CUDA the Triton kernels run in the interpreter on small
row blocks (4 rows per program), so ragged row counts and masked columns are covered."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

import pytest  # noqa: E402

from vmamba.kernels import layer_norm as ln  # noqa: E402
from vmamba.kernels.layer_norm import layer_norm_last_dim, layer_norm_last_dim_ref  # noqa: E402
from vmamba.kernels.triton import layer_norm as ln_triton  # noqa: E402
from vmamba.kernels.triton.layer_norm import layer_norm_bwd, layer_norm_fwd  # noqa: E402

DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'
EPS = 1e-5
AFFINE = ['weight_bias', 'weight', 'bias', 'none']


def _params(channels, affine, dtype=torch.float32, device=DEVICE, seed=0):
    gen = torch.Generator().manual_seed(seed)
    weight = (1 + 0.5 * torch.randn(channels, generator=gen)).to(device, dtype)
    bias = (0.5 * torch.randn(channels, generator=gen)).to(device, dtype)
    return (weight if 'weight' in affine else None), (bias if 'bias' in affine else None)


def _randn(*shape, dtype=torch.float32, device=DEVICE, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (2 * torch.randn(*shape, generator=gen) + 0.5).to(device, dtype)


def _assert_close(actual, expected, tol):
    """|actual - expected| <= tol * (|expected| + max |expected|), elementwise."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    scale = max(expected.abs().max().item(), 1e-3) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * scale)


def _reference_grads(x, weight, bias, grad_out):
    """Autograd through the reference run in fp64 (the fp32 reference loses ~1e-4 to cancellation for C = 1:
    dx is 0 there), cast to the dtypes of the inputs."""
    inputs = (x, weight, bias)
    leaves = [t.detach().double().requires_grad_(True) if t is not None else None for t in inputs]
    y = layer_norm_last_dim_ref(*leaves, EPS)
    present = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad(y, present, grad_out.double()))
    return [next(grads).to(t.dtype) if t is not None else None for t in inputs]


# --------------------------------------------------------------------------------------------------------------
# Reference

@pytest.mark.parametrize('affine', AFFINE)
def test_reference_matches_explicit_sums(affine):
    x = _randn(3, 5, 7, dtype=torch.float64, device='cpu')
    weight, bias = _params(7, affine, torch.float64, 'cpu')
    mean = x.sum(-1, keepdim=True) / 7
    var = ((x - mean) ** 2).sum(-1, keepdim=True) / 7
    expected = (x - mean) / torch.sqrt(var + EPS)
    if weight is not None:
        expected = expected * weight
    if bias is not None:
        expected = expected + bias
    torch.testing.assert_close(layer_norm_last_dim_ref(x, weight, bias, EPS), expected, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------------------------
# Triton forward (launcher) vs reference

FWD_TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('channels', [48, 96, 13, 1])
@pytest.mark.parametrize('affine', ['weight_bias', 'none'])
def test_triton_forward(dtype, channels, affine):
    x = _randn(37, channels, dtype=dtype)  # 37 rows: a ragged last row block
    weight, bias = _params(channels, affine, dtype)
    y, mean, rstd = layer_norm_fwd(x, weight, bias, EPS)
    assert y.dtype == dtype and y.is_contiguous() and mean.dtype == rstd.dtype == torch.float32
    _assert_close(y, layer_norm_last_dim_ref(x, weight, bias, EPS), FWD_TOL[dtype])
    xf = x.float()
    torch.testing.assert_close(mean, xf.mean(-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rstd, torch.rsqrt(xf.var(-1, unbiased=False) + EPS), rtol=1e-4, atol=1e-4)
    y_only, no_mean, no_rstd = layer_norm_fwd(x, weight, bias, EPS, store_stats=False)  # no backward to come
    assert no_mean is None and no_rstd is None
    torch.testing.assert_close(y_only, y, rtol=0, atol=0)


@pytest.mark.parametrize('affine', ['weight', 'bias'])
def test_triton_forward_one_sided_affine_and_out_dtype(affine):
    x = _randn(21, 20, dtype=torch.float16)
    weight, bias = _params(20, affine, torch.float32)  # fp32 parameters with fp16 x
    y, _, _ = layer_norm_fwd(x, weight, bias, EPS, out_dtype=torch.float32)
    assert y.dtype == torch.float32
    _assert_close(y, layer_norm_last_dim_ref(x, weight, bias, EPS, torch.float32), 1e-5)


def test_rows_views_and_strided_forward():
    channels = 24
    # A slice of a wider channels-last map: rows with stride 31, read in place.
    wide = _randn(2, 3, 5, 31)
    x = wide[..., 3:3 + channels]
    rows = ln._rows(x)
    assert rows.data_ptr() == x.data_ptr() and rows.stride() == (31, 1)
    # A channels-last NCHW tensor permuted to NHWC is row-contiguous: a view too.
    nchw = _randn(2, channels, 3, 5).contiguous(memory_format=torch.channels_last)
    nhwc = nchw.permute(0, 2, 3, 1)
    assert ln._rows(nhwc).data_ptr() == nhwc.data_ptr()
    # A plain NCHW tensor permuted to NHWC has channel stride H*W: copied.
    plain = _randn(2, channels, 3, 5).permute(0, 2, 3, 1)
    assert ln._rows(plain).is_contiguous()
    # Leading dims that do not merge into one row stride: copied.
    skipped = _randn(2, 6, 5, channels)[:, ::2]
    assert ln._rows(skipped).is_contiguous()
    weight, bias = _params(channels, 'weight_bias')
    for t in (x, nhwc, plain, skipped):
        y, _, _ = layer_norm_fwd(ln._rows(t), weight, bias, EPS)
        _assert_close(y.view(t.shape), layer_norm_last_dim_ref(t, weight, bias, EPS), 1e-5)


def test_triton_empty_and_limits():
    weight, bias = _params(8, 'weight_bias')
    y, mean, _ = layer_norm_fwd(_randn(0, 8), weight, bias, EPS)
    assert y.shape == (0, 8) and mean.shape == (0,)
    dx, dweight, dbias = layer_norm_bwd(_randn(0, 8), _randn(0, 8), weight, bias, mean, mean)
    assert dx.shape == (0, 8) and torch.equal(dweight, torch.zeros(8, device=DEVICE)) and dbias.abs().sum() == 0
    assert ln._TRITON_MAX_CHANNELS == ln_triton.MAX_CHANNELS
    with pytest.raises(ValueError, match='unit column stride'):
        layer_norm_fwd(_randn(8, 4).t(), None, None, EPS)


# --------------------------------------------------------------------------------------------------------------
# Triton backward (launcher) vs autograd through the reference

@pytest.mark.parametrize('dtype, out_dtype, tol', [
    (torch.float32, torch.float32, 1e-4),
    (torch.bfloat16, torch.bfloat16, 2e-2),
    (torch.float16, torch.float32, 1e-2),
])
@pytest.mark.parametrize('channels', [48, 13, 1])
@pytest.mark.parametrize('affine', AFFINE)
def test_triton_backward(dtype, out_dtype, tol, channels, affine):
    x = _randn(37, channels, dtype=dtype)
    weight, bias = _params(channels, affine, torch.float32 if dtype == torch.float16 else dtype)
    _, mean, rstd = layer_norm_fwd(x, weight, bias, EPS, out_dtype)
    grad_out = _randn(37, channels, dtype=out_dtype, seed=2)
    dx, dweight, dbias = layer_norm_bwd(grad_out, x, weight, bias, mean, rstd)
    expected = _reference_grads(x, weight, bias, grad_out)
    assert dx.is_contiguous()
    for actual, ref in zip((dx, dweight, dbias), expected):
        assert (actual is None) == (ref is None)
        if ref is not None:
            _assert_close(actual, ref, tol)


def test_triton_backward_strided_x():
    wide = _randn(3, 11, 40)
    x = wide[..., 5:35]  # (33, 30) rows with stride 40
    rows = ln._rows(x)
    weight, bias = _params(30, 'weight_bias')
    _, mean, rstd = layer_norm_fwd(rows, weight, bias, EPS)
    grad_out = _randn(33, 30, seed=3)
    dx, dweight, dbias = layer_norm_bwd(grad_out, rows, weight, bias, mean, rstd)
    expected = _reference_grads(rows, weight, bias, grad_out)
    for actual, ref in zip((dx, dweight, dbias), expected):
        _assert_close(actual, ref, 1e-4)


# --------------------------------------------------------------------------------------------------------------
# Public function and custom ops

@pytest.fixture
def force_triton(monkeypatch):
    """Route the custom ops to the Triton launchers on any device (the interpreter on CPU)."""
    monkeypatch.setattr(ln, '_use_triton', lambda x: x.dtype != torch.float64)


@pytest.mark.parametrize('dtype, out_dtype, tol', [(torch.float32, None, 1e-4), (torch.bfloat16, torch.float32, 2e-2)])
def test_public_function_on_triton_path(force_triton, dtype, out_dtype, tol):
    x = _randn(2, 3, 5, 26, dtype=dtype)[..., 1:21]  # (2, 3, 5, 20) strided view
    weight, bias = _params(20, 'weight_bias', torch.float32)
    leaves = [t.detach().requires_grad_(True) for t in (x, weight, bias)]
    y = layer_norm_last_dim(*leaves, EPS, out_dtype)
    assert y.shape == x.shape and y.is_contiguous() and y.dtype == (out_dtype or dtype)
    _assert_close(y, layer_norm_last_dim_ref(x, weight, bias, EPS, out_dtype), tol)
    grad_out = _randn(*x.shape, dtype=y.dtype, seed=4)
    y.backward(grad_out)
    for leaf, ref in zip(leaves, _reference_grads(x, weight, bias, grad_out)):
        assert leaf.grad.dtype == leaf.dtype
        _assert_close(leaf.grad, ref, tol)


@pytest.mark.parametrize('affine', AFFINE)
def test_gradcheck_fp64(affine):
    x = _randn(2, 3, 9, dtype=torch.float64, device='cpu')[..., :7]
    weight, bias = _params(7, affine, torch.float64, 'cpu')
    inputs = [t.detach().requires_grad_(True) for t in (x, weight, bias) if t is not None]

    def fn(*args):
        it = iter(args)
        return layer_norm_last_dim(next(it), next(it) if weight is not None else None,
                                   next(it) if bias is not None else None, EPS)

    assert torch.autograd.gradcheck(fn, inputs)
    torch.testing.assert_close(fn(*inputs), layer_norm_last_dim_ref(x, weight, bias, EPS), rtol=1e-12, atol=1e-12)


def _opcheck(x, weight, bias, out_dtype):
    args = [t.detach().requires_grad_(True) if t is not None else None for t in (x, weight, bias)]
    result = torch.library.opcheck(torch.ops.vmamba.layer_norm_last_dim.default, (*args, EPS, out_dtype))
    assert all(v == 'SUCCESS' for v in result.values()), result
    y, mean, rstd = torch.ops.vmamba.layer_norm_last_dim(x, weight, bias, EPS, out_dtype)
    grad_out = torch.randn(y.shape, dtype=out_dtype, device=x.device)
    result = torch.library.opcheck(torch.ops.vmamba.layer_norm_last_dim_backward.default,
                                   (grad_out, x, weight, bias, mean, rstd))
    assert all(v == 'SUCCESS' for v in result.values()), result


@pytest.mark.parametrize('affine', ['weight_bias', 'weight'])
def test_opcheck_reference_path(affine):
    weight, bias = _params(6, affine, torch.float64, 'cpu')
    _opcheck(_randn(9, 6, dtype=torch.float64, device='cpu'), weight, bias, torch.float64)
    weight, bias = _params(6, affine, torch.float32, 'cpu')
    _opcheck(_randn(5, 6, dtype=torch.float16, device='cpu'), weight, bias, torch.float32)


def test_opcheck_triton_path(force_triton):
    weight, bias = _params(6, 'weight_bias')
    _opcheck(_randn(9, 6), weight, bias, torch.float32)


def test_dispatch(monkeypatch):
    x = torch.empty(2, 48)
    assert not ln._use_triton(x)  # CPU tensors: the reference
    monkeypatch.setattr(ln, 'scan_backend', lambda device: 'triton')
    assert ln._use_triton(x) and ln._use_triton(x.half()) and ln._use_triton(x.bfloat16())
    assert not ln._use_triton(x.double())
    assert not ln._use_triton(torch.empty(2, ln._TRITON_MAX_CHANNELS + 1))
    assert ln._use_triton(torch.empty(2, ln._TRITON_MAX_CHANNELS))


def test_empty_and_large_channels_on_reference_path():
    weight, bias = _params(8, 'weight_bias', device='cpu')
    x = torch.randn(0, 3, 8, requires_grad=True)
    y = layer_norm_last_dim(x, weight, bias)
    assert y.shape == (0, 3, 8)
    y.sum().backward()
    assert x.grad.shape == x.shape


# --------------------------------------------------------------------------------------------------------------
# Input errors

def test_bad_inputs_are_named():
    x = torch.randn(2, 5, 8)
    w = torch.ones(8)
    with pytest.raises(ValueError, match=r'weight must be \(C=8,\) for x of shape \(2, 5, 8\), got \(7,\)'):
        layer_norm_last_dim(x, torch.ones(7), None)
    with pytest.raises(ValueError, match=r'bias must be \(C=8,\).*got \(1, 8\)'):
        layer_norm_last_dim(x, w, torch.ones(1, 8))
    with pytest.raises(TypeError, match='x must be a floating tensor'):
        layer_norm_last_dim(torch.ones(2, 8, dtype=torch.int64), w, None)
    with pytest.raises(TypeError, match='x must be a torch.Tensor'):
        layer_norm_last_dim([1.0, 2.0], None, None)
    with pytest.raises(TypeError, match='bias must be a floating tensor'):
        layer_norm_last_dim(x, w, torch.ones(8, dtype=torch.int32))
    with pytest.raises(ValueError, match='C >= 1'):
        layer_norm_last_dim(torch.randn(3, 0), None, None)
    with pytest.raises(TypeError, match='out_dtype'):
        layer_norm_last_dim(x, w, None, out_dtype=torch.int32)
    with pytest.raises(ValueError, match='weight is on meta but x is on cpu'):
        layer_norm_last_dim(x, torch.ones(8, device='meta'), None)


# --------------------------------------------------------------------------------------------------------------
# Real sizes (GPU only)

@pytest.mark.gpu
@pytest.mark.parametrize('dtype, tol', [(torch.float32, 1e-4), (torch.float16, 1e-2)])
@pytest.mark.parametrize('shape', [(128, 56, 56, 48), (64, 28, 28, 96)])
def test_gpu_real_size(shape, dtype, tol):
    """EfficientVMamba-T / VMamba-T stage sizes on CUDA (the Triton path) vs the reference, forward and backward."""
    channels = shape[-1]
    x = _randn(*shape, dtype=dtype, device='cuda')
    weight, bias = _params(channels, 'weight_bias', torch.float32, 'cuda')
    leaves = [t.detach().requires_grad_(True) for t in (x, weight, bias)]
    y = layer_norm_last_dim(*leaves, EPS)
    _assert_close(y, layer_norm_last_dim_ref(x, weight, bias, EPS), tol)
    grad_out = _randn(*shape, dtype=dtype, device='cuda', seed=5)
    y.backward(grad_out)
    for leaf, ref in zip(leaves, _reference_grads(x, weight, bias, grad_out)):
        _assert_close(leaf.grad, ref, tol)


# --------------------------------------------------------------------------------------------------------------
# Channels-first maps (B, C, *spatial): LayerNorm2d without permute copies

def _channels_first_ref(x, weight, bias, out_dtype=None):
    y = layer_norm_last_dim_ref(x.movedim(1, -1), weight, bias, EPS, out_dtype)
    return y.movedim(-1, 1)


@pytest.mark.parametrize('layout', ['contiguous', 'channels_last', 'strided'])
@pytest.mark.parametrize('dtype, out_dtype, tol', [(torch.float32, None, 1e-4), (torch.float16, torch.float32, 1e-2)])
@pytest.mark.parametrize('triton_path', [True, False])
def test_channels_first_forward_backward(monkeypatch, layout, dtype, out_dtype, tol, triton_path):
    """Triton (interpreter on CPU) and reference paths: NCHW read in place (channel stride H*W, ragged pixel blocks),
    channels-last memory through the rows, a strided view copied; values, memory format and gradients."""
    if triton_path:
        monkeypatch.setattr(ln, '_use_triton', lambda x: x.dtype != torch.float64)
    base = _randn(2, 6, 5, 7 if layout != 'strided' else 9, dtype=dtype)
    x = {'contiguous': base, 'channels_last': base.contiguous(memory_format=torch.channels_last),
         'strided': base[..., 1:8]}[layout]
    weight, bias = _params(6, 'weight_bias', torch.float32)
    leaves = [t.detach().requires_grad_(True) for t in (x, weight, bias)]
    y = ln.layer_norm_channels_first(*leaves, EPS, out_dtype)
    assert y.shape == x.shape and y.dtype == (out_dtype or dtype)
    assert y.is_contiguous(memory_format=torch.channels_last)  # like timm's LayerNorm2d
    _assert_close(y, _channels_first_ref(x, weight, bias, out_dtype), tol)
    grad_out = _randn(*x.shape, dtype=y.dtype, seed=4)
    y.backward(grad_out)
    expected = _reference_grads(x.movedim(1, -1), weight, bias, grad_out.movedim(1, -1))
    expected[0] = expected[0].movedim(-1, 1)
    for leaf, ref in zip(leaves, expected):
        assert leaf.grad.dtype == leaf.dtype
        _assert_close(leaf.grad, ref, tol)


def test_channels_first_kernel_reads_nchw_in_place():
    x = _randn(3, 5, 4, 3)  # (B, C, H, W) contiguous -> (B, C, P) view, channel stride 12
    maps = x.view(3, 5, 12)
    weight, bias = _params(5, 'weight_bias')
    y, mean, rstd = layer_norm_fwd(maps, weight, bias, EPS)  # rows (b, p) of channels: channels-last memory
    assert y.shape == (36, 5) and y.is_contiguous() and mean.shape == (36,)
    _assert_close(y.view(3, 12, 5).transpose(1, 2), _channels_first_ref(maps, weight, bias), 1e-4)
    torch.testing.assert_close(mean, maps.transpose(1, 2).reshape(36, 5).mean(1), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match='unit pixel stride'):
        layer_norm_fwd(x.view(3, 5, 12)[..., ::2], weight, bias, EPS)


def test_channels_first_opcheck_and_errors(force_triton):
    weight, bias = _params(6, 'weight_bias')
    _opcheck(_randn(2, 6, 5), weight, bias, torch.float32)
    with pytest.raises(ValueError, match=r'layer_norm_channels_first: weight must be \(C=6,\)'):
        ln.layer_norm_channels_first(_randn(2, 6, 3, 3), _params(5, 'weight')[0], None)
    with pytest.raises(ValueError, match=r'\(B, C, \*spatial\)'):
        ln.layer_norm_channels_first(_randn(6), None, None)


@pytest.mark.gpu
@pytest.mark.parametrize('shape', [(128, 48, 112, 112), (128, 768, 7, 7)])
def test_gpu_channels_first_real_size(shape):
    """VMamba-T's stem norm and final norm sizes (NCHW, fp16 in, fp32 out as under autocast) on CUDA vs the
    reference, forward and backward."""
    x = _randn(*shape, dtype=torch.float16, device='cuda')
    weight, bias = _params(shape[1], 'weight_bias', torch.float32, 'cuda')
    leaves = [t.detach().requires_grad_(True) for t in (x, weight, bias)]
    y = ln.layer_norm_channels_first(*leaves, EPS, torch.float32)
    _assert_close(y, _channels_first_ref(x, weight, bias, torch.float32), 1e-4)
    grad_out = _randn(*shape, device='cuda', seed=5)
    y.backward(grad_out)
    expected = _reference_grads(x.movedim(1, -1), weight, bias, grad_out.movedim(1, -1))
    expected[0] = expected[0].movedim(-1, 1)
    for leaf, ref in zip(leaves, expected):
        _assert_close(leaf.grad, ref, 1e-2)

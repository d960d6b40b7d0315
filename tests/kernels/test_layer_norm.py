"""LayerNorm over the last dim: reference vs explicit sums, Triton forward / backward vs the reference, the custom
ops (gradcheck, opcheck, dispatch), input errors; the same for the residual add + LayerNorm, and for RMSNorm and the
residual add + RMSNorm (``rms=True``). Without CUDA the Triton kernels run in the interpreter on small row blocks
(4 rows per program), so ragged row counts and masked columns are covered."""
import os

import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

import pytest  # noqa: E402

from vmamba.kernels import layer_norm as ln  # noqa: E402
from vmamba.kernels.layer_norm import (  # noqa: E402
    add_layer_norm_last_dim, add_layer_norm_last_dim_ref, layer_norm_last_dim, layer_norm_last_dim_ref)
from vmamba.kernels.triton import layer_norm as ln_triton  # noqa: E402
from vmamba.kernels.triton.layer_norm import (  # noqa: E402
    add_layer_norm_bwd, add_layer_norm_fwd, layer_norm_bwd, layer_norm_fwd)

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


# --------------------------------------------------------------------------------------------------------------
# Residual add + LayerNorm: s = residual + branch, y = LayerNorm(s); backward d_s = ds + LayerNorm backward of dy

# (residual, branch, y) dtypes: fp32 model; AMP (fp32 residual stream, fp16 branch and y); bf16 model; fp16 and
# bf16 inputs promoted to an fp32 s.
ADD_DTYPES = [
    (torch.float32, torch.float32, torch.float32),
    (torch.float32, torch.float16, torch.float16),
    (torch.bfloat16, torch.bfloat16, torch.bfloat16),
    (torch.float16, torch.bfloat16, torch.float32),
]
ADD_IDS = ['fp32', 'fp32+fp16', 'bf16', 'fp16+bf16']
ADD_BWD_TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}


def _assert_sum(s, residual, branch):
    """s == residual + branch bitwise (dtype included). The interpreter rounds fp32 -> bf16 toward zero (the GPU
    and PyTorch: to nearest), so there bf16 sums may be 1 ulp off."""
    expected = residual + branch
    ulp = 2 ** -7 if s.dtype == torch.bfloat16 and ln_triton.interpreting() else 0
    assert s.dtype == expected.dtype
    torch.testing.assert_close(s, expected, rtol=ulp, atol=0)


def _add_reference_grads(residual, branch, weight, bias, grad_s, grad_y):
    """Autograd through add_layer_norm_last_dim_ref in fp64 (grad_s: the gradient reaching s from its later uses),
    cast to the dtypes of the inputs."""
    inputs = (residual, branch, weight, bias)
    leaves = [t.detach().double().requires_grad_(True) if t is not None else None for t in inputs]
    s, y = add_layer_norm_last_dim_ref(*leaves, EPS)
    present = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad((s, y), present, (grad_s.double(), grad_y.double())))
    return [next(grads).to(t.dtype) if t is not None else None for t in inputs]


@pytest.mark.parametrize('residual_dtype, branch_dtype', [
    (torch.float32, torch.float16), (torch.bfloat16, torch.bfloat16), (torch.float16, torch.bfloat16),
    (torch.float64, torch.float32)])
@pytest.mark.parametrize('affine', ['weight_bias', 'none'])
def test_add_reference_is_add_then_layer_norm(residual_dtype, branch_dtype, affine):
    residual = _randn(3, 5, 7, dtype=residual_dtype, device='cpu')
    branch = _randn(3, 5, 7, dtype=branch_dtype, device='cpu', seed=2)
    weight, bias = _params(7, affine, torch.float32, 'cpu')
    s, y = add_layer_norm_last_dim_ref(residual, branch, weight, bias, EPS)
    expected = residual + branch
    assert s.dtype == y.dtype == expected.dtype and torch.equal(s, expected)
    assert torch.equal(y, layer_norm_last_dim_ref(expected, weight, bias, EPS))


@pytest.mark.parametrize('residual_dtype, branch_dtype, out_dtype', ADD_DTYPES, ids=ADD_IDS)
@pytest.mark.parametrize('channels', [96, 13, 3])
@pytest.mark.parametrize('affine', ['weight_bias', 'none'])
def test_triton_add_forward(residual_dtype, branch_dtype, out_dtype, channels, affine):
    residual = _randn(37, channels, dtype=residual_dtype)  # 37 rows: a ragged last row block
    branch = _randn(37, channels, dtype=branch_dtype, seed=2)
    weight, bias = _params(channels, affine, torch.float32)
    s, y, mean, rstd = add_layer_norm_fwd(residual, branch, weight, bias, EPS, out_dtype)
    assert s.is_contiguous() and y.is_contiguous() and y.dtype == out_dtype
    _assert_sum(s, residual, branch)
    # y and the statistics are those of s as stored
    _assert_close(y, layer_norm_last_dim_ref(s.double(), *_cast_all((weight, bias), torch.float64), EPS).to(out_dtype),
                  FWD_TOL[out_dtype])
    sf = s.float()
    torch.testing.assert_close(mean, sf.mean(-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rstd, torch.rsqrt(sf.var(-1, unbiased=False) + EPS), rtol=1e-4, atol=1e-4)
    s_only, y_only, no_mean, no_rstd = add_layer_norm_fwd(residual, branch, weight, bias, EPS, out_dtype,
                                                          store_stats=False)
    assert no_mean is None and no_rstd is None
    assert torch.equal(s_only, s) and torch.equal(y_only, y)


def _cast_all(tensors, dtype):
    return [None if t is None else t.to(dtype) for t in tensors]


@pytest.mark.parametrize('residual_dtype, branch_dtype, out_dtype', ADD_DTYPES, ids=ADD_IDS)
@pytest.mark.parametrize('channels', [96, 3])
@pytest.mark.parametrize('affine', AFFINE)
def test_triton_add_backward(residual_dtype, branch_dtype, out_dtype, channels, affine):
    residual = _randn(37, channels, dtype=residual_dtype)
    branch = _randn(37, channels, dtype=branch_dtype, seed=2)
    weight, bias = _params(channels, affine, torch.float32)
    s, _, mean, rstd = add_layer_norm_fwd(residual, branch, weight, bias, EPS, out_dtype)
    grad_y = _randn(37, channels, dtype=out_dtype, seed=3)
    grad_s = _randn(37, channels, dtype=s.dtype, seed=4)  # s is used again later: its own gradient
    d_residual, d_branch, dweight, dbias = add_layer_norm_bwd(grad_y, grad_s, s, weight, bias, mean, rstd,
                                                              residual_dtype, branch_dtype)
    assert (d_branch is None) == (branch_dtype == residual_dtype)  # one store when the dtypes agree
    d_branch = d_residual if d_branch is None else d_branch
    expected = _add_reference_grads(residual, branch, weight, bias, grad_s, grad_y)
    tol = max(ADD_BWD_TOL[t] for t in (residual_dtype, branch_dtype, out_dtype))
    for actual, ref in zip((d_residual, d_branch, dweight, dbias), expected):
        assert (actual is None) == (ref is None)
        if ref is not None:
            assert actual.is_contiguous()
            _assert_close(actual, ref, tol)


def test_triton_add_strided_rows():
    """Residual and branch rows with their own row strides (slices of wider maps), read in place."""
    residual = _randn(3, 11, 40)[..., 5:35]  # (33, 30) rows with stride 40
    branch = _randn(3, 11, 36, dtype=torch.float16, seed=2)[..., 1:31]  # stride 36
    rows = [ln._rows(t) for t in (residual, branch)]
    assert rows[0].data_ptr() == residual.data_ptr() and rows[0].stride() == (40, 1) and rows[1].stride() == (36, 1)
    weight, bias = _params(30, 'weight_bias')
    s, y, mean, rstd = add_layer_norm_fwd(*rows, weight, bias, EPS)
    _assert_sum(s, *rows)
    _assert_close(y, layer_norm_last_dim_ref(s, weight, bias, EPS), 1e-5)
    grad_y, grad_s = _randn(33, 30, seed=3), _randn(33, 30, seed=4)
    d_residual, d_branch, dweight, dbias = add_layer_norm_bwd(grad_y, grad_s, s, weight, bias, mean, rstd,
                                                              torch.float32, torch.float16)
    expected = _add_reference_grads(*rows, weight, bias, grad_s, grad_y)
    for actual, ref in zip((d_residual, d_branch, dweight, dbias), expected):
        _assert_close(actual, ref, 1e-2 if ref.dtype == torch.float16 else 1e-5)


def test_triton_add_empty_and_errors():
    weight, bias = _params(8, 'weight_bias')
    s, y, mean, _ = add_layer_norm_fwd(_randn(0, 8), _randn(0, 8, dtype=torch.float16), weight, bias, EPS)
    assert s.shape == y.shape == (0, 8) and s.dtype == torch.float32 and mean.shape == (0,)
    d_residual, d_branch, dweight, dbias = add_layer_norm_bwd(s, s, s, weight, bias, mean, mean, torch.float32,
                                                              torch.float16)
    assert d_residual.shape == d_branch.shape == (0, 8) and d_branch.dtype == torch.float16
    assert torch.equal(dweight, torch.zeros(8, device=DEVICE)) and dbias.abs().sum() == 0
    with pytest.raises(ValueError, match='branch must be .* unit column stride'):
        add_layer_norm_fwd(_randn(4, 8), _randn(8, 4).t(), None, None, EPS)
    with pytest.raises(ValueError, match=r'one shape, got \(4, 8\) and \(4, 7\)'):
        add_layer_norm_fwd(_randn(4, 8), _randn(4, 7), None, None, EPS)
    s, _, mean, rstd = add_layer_norm_fwd(_randn(4, 8), _randn(4, 8), None, None, EPS)
    with pytest.raises(ValueError, match='grad_s must be contiguous'):
        add_layer_norm_bwd(s, _randn(8, 4).t(), s, None, None, mean, rstd, torch.float32, torch.float32)


@pytest.mark.parametrize('residual_dtype, branch_dtype, out_dtype', ADD_DTYPES[:3], ids=ADD_IDS[:3])
def test_add_public_function_on_triton_path(force_triton, residual_dtype, branch_dtype, out_dtype):
    """Strided (2, 3, 5, 20) views in, autograd with both outputs used; no-grad calls give the same values."""
    residual = _randn(2, 3, 5, 26, dtype=residual_dtype)[..., 1:21]
    branch = _randn(2, 3, 5, 24, dtype=branch_dtype, seed=2)[..., 3:23]
    weight, bias = _params(20, 'weight_bias', torch.float32)
    leaves = [t.detach().requires_grad_(True) for t in (residual, branch, weight, bias)]
    s, y = add_layer_norm_last_dim(*leaves, EPS, out_dtype)
    assert s.shape == y.shape == residual.shape and s.is_contiguous() and y.is_contiguous() and y.dtype == out_dtype
    _assert_sum(s, residual, branch)
    _assert_close(y, layer_norm_last_dim_ref(s, weight, bias, EPS, out_dtype), FWD_TOL[out_dtype])
    grad_s, grad_y = _randn(*s.shape, dtype=s.dtype, seed=4), _randn(*y.shape, dtype=out_dtype, seed=5)
    torch.autograd.backward((s, y), (grad_s, grad_y))
    tol = max(ADD_BWD_TOL[t] for t in (residual_dtype, branch_dtype, out_dtype))
    for leaf, ref in zip(leaves, _add_reference_grads(residual, branch, weight, bias, grad_s, grad_y)):
        assert leaf.grad.dtype == leaf.dtype
        _assert_close(leaf.grad, ref, tol)
    with torch.no_grad():
        s_inference, y_inference = add_layer_norm_last_dim(residual, branch, weight, bias, EPS, out_dtype)
    assert torch.equal(s_inference, s) and torch.equal(y_inference, y)


@pytest.mark.parametrize('residual_dtype, branch_dtype', [
    (torch.float32, torch.float16), (torch.float16, torch.float32), (torch.float64, torch.float64),
    (torch.bfloat16, torch.bfloat16)])
def test_add_reference_path_is_add_then_layer_norm(residual_dtype, branch_dtype):
    """Without Triton the op is ``s = residual + branch; y = layer_norm_last_dim(s)``: bitwise, gradients included
    (for an fp32 / fp64 s; a bf16 s sums the two gradients of s in fp32 before rounding, the unfused graph in
    bf16)."""
    residual = _randn(2, 7, 12, dtype=residual_dtype, device='cpu')
    branch = _randn(2, 7, 12, dtype=branch_dtype, device='cpu', seed=2)
    weight, bias = _params(12, 'weight_bias', torch.float32, 'cpu')
    fused = [t.detach().requires_grad_(True) for t in (residual, branch, weight, bias)]
    unfused = [t.detach().requires_grad_(True) for t in (residual, branch, weight, bias)]
    s, y = add_layer_norm_last_dim(*fused, EPS)
    s_ref = unfused[0] + unfused[1]
    y_ref = layer_norm_last_dim(s_ref, *unfused[2:], EPS)
    assert s.dtype == s_ref.dtype and y.dtype == y_ref.dtype
    assert torch.equal(s, s_ref) and torch.equal(y, y_ref)
    grad_s, grad_y = _randn(*s.shape, dtype=s.dtype, device='cpu', seed=3), _randn(*y.shape, dtype=y.dtype,
                                                                                   device='cpu', seed=4)
    torch.autograd.backward((s, y), (grad_s, grad_y))
    torch.autograd.backward((s_ref, y_ref), (grad_s, grad_y))
    exact = s.dtype != torch.bfloat16
    for a, b in zip(fused, unfused):
        assert a.grad.dtype == b.grad.dtype
        torch.testing.assert_close(a.grad, b.grad, rtol=0 if exact else 2e-2, atol=0 if exact else 2e-2)


@pytest.mark.parametrize('path', ['eager', 'custom_op'])
@pytest.mark.parametrize('affine', AFFINE)
def test_add_gradcheck_fp64(path, affine):
    residual = _randn(3, 9, dtype=torch.float64, device='cpu')[:, 1:8]  # strided rows
    branch = _randn(3, 7, dtype=torch.float64, device='cpu', seed=2)
    weight, bias = _params(7, affine, torch.float64, 'cpu')
    inputs = [t.detach().requires_grad_(True) for t in (residual, branch, weight, bias) if t is not None]

    def fn(*args):
        it = iter(args)
        call_args = (next(it), next(it), next(it) if weight is not None else None,
                     next(it) if bias is not None else None, EPS)
        if path == 'eager':
            return add_layer_norm_last_dim(*call_args)
        return torch.ops.vmamba.add_layer_norm_last_dim(*call_args, torch.float64)[:2]

    assert torch.autograd.gradcheck(fn, inputs)
    for actual, expected in zip(fn(*inputs), add_layer_norm_last_dim_ref(residual, branch, weight, bias, EPS)):
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def _opcheck_add(residual, branch, weight, bias, out_dtype):
    args = [t.detach().requires_grad_(True) if t is not None else None for t in (residual, branch, weight, bias)]
    result = torch.library.opcheck(torch.ops.vmamba.add_layer_norm_last_dim.default, (*args, EPS, out_dtype))
    assert all(v == 'SUCCESS' for v in result.values()), result
    s, y, mean, rstd = torch.ops.vmamba.add_layer_norm_last_dim(residual, branch, weight, bias, EPS, out_dtype)
    grad_y = torch.randn(y.shape, dtype=out_dtype, device=residual.device)
    grad_s = torch.randn(s.shape, dtype=s.dtype, device=residual.device)
    result = torch.library.opcheck(torch.ops.vmamba.add_layer_norm_last_dim_backward.default,
                                   (grad_y, grad_s, s, weight, bias, mean, rstd, residual.dtype, branch.dtype))
    assert all(v == 'SUCCESS' for v in result.values()), result


@pytest.mark.parametrize('affine', ['weight_bias', 'bias'])
def test_add_opcheck_reference_path(affine):
    weight, bias = _params(6, affine, torch.float64, 'cpu')
    _opcheck_add(_randn(9, 6, dtype=torch.float64, device='cpu'), _randn(9, 6, dtype=torch.float64, device='cpu'),
                 weight, bias, torch.float64)
    weight, bias = _params(6, affine, torch.float32, 'cpu')
    _opcheck_add(_randn(5, 6, device='cpu'), _randn(5, 6, dtype=torch.float16, device='cpu'), weight, bias,
                 torch.float16)
    _opcheck_add(_randn(5, 6, dtype=torch.float16, device='cpu'), _randn(5, 6, device='cpu'), weight, bias,
                 torch.float32)  # s in branch's dtype


@pytest.mark.parametrize('branch_dtype', [torch.float32, torch.float16])
def test_add_opcheck_triton_path(force_triton, branch_dtype):
    weight, bias = _params(6, 'weight_bias')
    _opcheck_add(_randn(9, 6), _randn(9, 6, dtype=branch_dtype, seed=2), weight, bias, branch_dtype)


def test_add_torch_compile_fullgraph():
    """torch.compile traces the custom op (fake implementation, autograd registration): same values and gradients
    as eager."""
    residual = _randn(2, 5, 12, device='cpu')
    branch = _randn(2, 5, 12, dtype=torch.bfloat16, device='cpu', seed=2)
    weight, bias = _params(12, 'weight_bias', torch.float32, 'cpu')

    def loss(*args):
        s, y = add_layer_norm_last_dim(*args, EPS, torch.bfloat16)
        return s.square().sum() + y.float().sin().sum()

    eager = [t.detach().requires_grad_(True) for t in (residual, branch, weight, bias)]
    compiled = [t.detach().requires_grad_(True) for t in (residual, branch, weight, bias)]
    loss(*eager).backward()
    torch.compile(loss, fullgraph=True, backend='aot_eager')(*compiled).backward()
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-6)


def test_add_dispatch(monkeypatch):
    x = torch.empty(2, 48)
    assert not ln._use_triton_add(x, x)  # CPU tensors: the reference
    monkeypatch.setattr(ln, 'scan_backend', lambda device: 'triton')
    assert ln._use_triton_add(x, x.half()) and ln._use_triton_add(x.bfloat16(), x.bfloat16())
    assert not ln._use_triton_add(x, x.double()) and not ln._use_triton_add(x.double(), x)
    big = torch.empty(2, ln._TRITON_MAX_CHANNELS + 1)
    assert not ln._use_triton_add(big, big)


def test_add_bad_inputs_are_named():
    residual, w = torch.randn(2, 5, 8), torch.ones(8)
    with pytest.raises(ValueError, match=r'add_layer_norm_last_dim: branch must have the shape of residual '
                                         r'\(2, 5, 8\), got \(2, 5, 1\)'):
        add_layer_norm_last_dim(residual, torch.randn(2, 5, 1), w, None)  # no broadcasting
    with pytest.raises(TypeError, match='branch must be a floating tensor'):
        add_layer_norm_last_dim(residual, torch.ones(2, 5, 8, dtype=torch.int32), w, None)
    with pytest.raises(TypeError, match='branch must be a torch.Tensor'):
        add_layer_norm_last_dim(residual, 1.0, w, None)
    with pytest.raises(ValueError, match='branch is on meta but residual is on cpu'):
        add_layer_norm_last_dim(residual, torch.randn(2, 5, 8, device='meta'), w, None)
    with pytest.raises(TypeError, match='residual must be a floating tensor'):
        add_layer_norm_last_dim(torch.ones(2, 8, dtype=torch.int64), torch.ones(2, 8), w, None)
    with pytest.raises(ValueError, match=r'weight must be \(C=8,\) for residual of shape \(2, 5, 8\)'):
        add_layer_norm_last_dim(residual, residual, torch.ones(7), None)


@pytest.mark.gpu
@pytest.mark.parametrize('shape', [(128, 56, 56, 96), (128, 7, 7, 768)])
def test_gpu_add_real_size(shape):
    """VMamba-T stage sizes under AMP (fp32 residual stream, fp16 branch, fp16 y) on CUDA vs the fp64 reference,
    forward and backward."""
    residual = _randn(*shape, device='cuda')
    branch = _randn(*shape, dtype=torch.float16, device='cuda', seed=2)
    weight, bias = _params(shape[-1], 'weight_bias', torch.float32, 'cuda')
    leaves = [t.detach().requires_grad_(True) for t in (residual, branch, weight, bias)]
    s, y = add_layer_norm_last_dim(*leaves, EPS, torch.float16)
    _assert_sum(s, residual, branch)
    _assert_close(y, layer_norm_last_dim_ref(s, weight, bias, EPS, torch.float16), 1e-2)
    grad_s, grad_y = _randn(*shape, device='cuda', seed=3), _randn(*shape, dtype=torch.float16, device='cuda', seed=4)
    torch.autograd.backward((s, y), (grad_s, grad_y))
    for leaf, ref in zip(leaves, _add_reference_grads(residual, branch, weight, bias, grad_s, grad_y)):
        _assert_close(leaf.grad, ref, 1e-2)


# --------------------------------------------------------------------------------------------------------------
# RMSNorm (rms=True on the same ops and kernels): y = x * rsqrt(mean_C(x^2) + eps) * weight, no bias; and the
# residual add + RMSNorm of Vim's blocks

def _rms_reference_grads(inputs, grad_outs, add=False):
    """Autograd through (add_)rms_norm_last_dim_ref in fp64, cast to the dtypes of the inputs (x, weight) or
    (residual, branch, weight); grad_outs: (grad_y,) or (grad_s, grad_y)."""
    leaves = [t.detach().double().requires_grad_(True) if t is not None else None for t in inputs]
    outputs = ln.add_rms_norm_last_dim_ref(*leaves, EPS) if add else ln.rms_norm_last_dim_ref(*leaves, EPS)
    present = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad(outputs, present, [g.double() for g in grad_outs]))
    return [next(grads).to(t.dtype) if t is not None else None for t in inputs]


@pytest.mark.parametrize('with_weight', [True, False])
def test_rms_reference_matches_explicit_formula(with_weight):
    x = _randn(3, 5, 7, dtype=torch.float64, device='cpu')
    weight = _params(7, 'weight', torch.float64, 'cpu')[0] if with_weight else None
    expected = x / torch.sqrt((x * x).sum(-1, keepdim=True) / 7 + EPS) * (1 if weight is None else weight)
    torch.testing.assert_close(ln.rms_norm_last_dim_ref(x, weight, EPS), expected, rtol=1e-12, atol=1e-12)
    s, y = ln.add_rms_norm_last_dim_ref(x, x.float(), weight, EPS)
    assert torch.equal(s, x + x.float()) and torch.equal(y, ln.rms_norm_last_dim_ref(x + x.float(), weight, EPS))


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('channels', [48, 13, 1])
@pytest.mark.parametrize('with_weight', [True, False])
def test_triton_rms_forward_backward(dtype, channels, with_weight):
    """37 rows (a ragged last row block), odd channel counts; fp32 statistics, no mean stored."""
    x = _randn(37, channels, dtype=dtype)
    weight = _params(channels, 'weight', dtype)[0] if with_weight else None
    y, mean, rstd = layer_norm_fwd(x, weight, None, EPS, rms=True)
    assert mean is None and y.dtype == dtype and rstd.dtype == torch.float32
    _assert_close(y, ln.rms_norm_last_dim_ref(x, weight, EPS), FWD_TOL[dtype])
    xf = x.float()
    torch.testing.assert_close(rstd, torch.rsqrt(xf.square().mean(-1) + EPS), rtol=1e-5, atol=1e-5)
    grad_out = _randn(37, channels, dtype=dtype, seed=2)
    dx, dweight, dbias = layer_norm_bwd(grad_out, x, weight, None, None, rstd, rms=True)
    assert dbias is None and (dweight is None) == (weight is None)
    tol = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 2e-2}[dtype]
    for actual, ref in zip((dx, dweight), _rms_reference_grads((x, weight), (grad_out,))):
        if ref is not None:
            _assert_close(actual, ref, tol)


def test_triton_rms_strided_rows():
    """x rows with stride 40 (a slice of a wider map), read in place, fp32 weight with an fp16 out dtype."""
    x = ln._rows(_randn(3, 11, 40)[..., 5:35])
    assert x.stride() == (40, 1)
    weight = _params(30, 'weight')[0]
    y, _, rstd = layer_norm_fwd(x, weight, None, EPS, torch.float16, rms=True)
    _assert_close(y, ln.rms_norm_last_dim_ref(x, weight, EPS, torch.float16), 1e-2)
    grad_out = _randn(33, 30, dtype=torch.float16, seed=3)
    dx, dweight, _ = layer_norm_bwd(grad_out, x, weight, None, None, rstd, rms=True)
    for actual, ref in zip((dx, dweight), _rms_reference_grads((x, weight), (grad_out,))):
        _assert_close(actual, ref, 1e-4)


@pytest.mark.parametrize('residual_dtype, branch_dtype, out_dtype', ADD_DTYPES, ids=ADD_IDS)
@pytest.mark.parametrize('channels', [96, 13])
@pytest.mark.parametrize('with_weight', [True, False])
def test_triton_add_rms_forward_backward(residual_dtype, branch_dtype, out_dtype, channels, with_weight):
    residual = _randn(37, channels, dtype=residual_dtype)
    branch = _randn(37, channels, dtype=branch_dtype, seed=2)
    weight = _params(channels, 'weight')[0] if with_weight else None
    s, y, mean, rstd = add_layer_norm_fwd(residual, branch, weight, None, EPS, out_dtype, rms=True)
    assert mean is None and y.dtype == out_dtype
    _assert_sum(s, residual, branch)
    _assert_close(y, ln.rms_norm_last_dim_ref(s.double(), weight, EPS).to(out_dtype), FWD_TOL[out_dtype])
    s_only, y_only, _, no_rstd = add_layer_norm_fwd(residual, branch, weight, None, EPS, out_dtype,
                                                    store_stats=False, rms=True)
    assert no_rstd is None and torch.equal(s_only, s) and torch.equal(y_only, y)
    grad_y = _randn(37, channels, dtype=out_dtype, seed=3)
    grad_s = _randn(37, channels, dtype=s.dtype, seed=4)
    d_residual, d_branch, dweight, _ = add_layer_norm_bwd(grad_y, grad_s, s, weight, None, None, rstd,
                                                          residual_dtype, branch_dtype, rms=True)
    d_branch = d_residual if d_branch is None else d_branch
    expected = _rms_reference_grads((residual, branch, weight), (grad_s, grad_y), add=True)
    tol = max(ADD_BWD_TOL[t] for t in (residual_dtype, branch_dtype, out_dtype))
    for actual, ref in zip((d_residual, d_branch, dweight), expected):
        if ref is not None:
            _assert_close(actual, ref, tol)


@pytest.mark.parametrize('add', [False, True], ids=['rms', 'add_rms'])
def test_rms_public_functions_on_triton_path(force_triton, add):
    """Strided (2, 3, 5, 20) views in (fp32 stream, fp16 branch, fp16 weight and y as in an AMP Vim), autograd with
    every output used; no-grad calls give the same values."""
    residual = _randn(2, 3, 5, 26)[..., 1:21]
    branch = _randn(2, 3, 5, 24, dtype=torch.float16, seed=2)[..., 3:23]
    weight = _params(20, 'weight', torch.float16)[0]
    inputs = (residual, branch, weight) if add else (residual, weight)
    fn = ln.add_rms_norm_last_dim if add else ln.rms_norm_last_dim
    leaves = [t.detach().requires_grad_(True) for t in inputs]
    outputs = fn(*leaves, EPS, torch.float16)
    outputs = outputs if add else (outputs,)
    y = outputs[-1]
    assert y.shape == residual.shape and y.is_contiguous() and y.dtype == torch.float16
    if add:
        _assert_sum(outputs[0], residual, branch)
    expected = (ln.add_rms_norm_last_dim_ref if add else ln.rms_norm_last_dim_ref)(*inputs, EPS, torch.float16)
    _assert_close(y, expected[-1] if add else expected, 1e-2)
    grad_outs = [_randn(*t.shape, dtype=t.dtype, seed=4 + i) for i, t in enumerate(outputs)]
    torch.autograd.backward(outputs, grad_outs)
    for leaf, ref in zip(leaves, _rms_reference_grads(inputs, grad_outs, add=add)):
        assert leaf.grad.dtype == leaf.dtype
        _assert_close(leaf.grad, ref, 1e-2)
    with torch.no_grad():
        inference = fn(*inputs, EPS, torch.float16)
    for a, b in zip(inference if add else (inference,), outputs):
        assert torch.equal(a, b)


@pytest.mark.parametrize('residual_dtype, branch_dtype', [
    (torch.float32, torch.float16), (torch.float32, torch.float32), (torch.float64, torch.float64)])
def test_add_rms_reference_path_is_add_then_f_rms_norm(residual_dtype, branch_dtype):
    """Without Triton the ops are bitwise ``F.rms_norm`` in fp32 (what Vim's RmsNormFp32 computed) after
    ``residual + branch``, gradients included."""
    residual = _randn(2, 7, 12, dtype=residual_dtype, device='cpu')
    branch = _randn(2, 7, 12, dtype=branch_dtype, device='cpu', seed=2)
    weight = _params(12, 'weight', torch.float32, 'cpu')[0]
    fused = [t.detach().requires_grad_(True) for t in (residual, branch, weight)]
    unfused = [t.detach().requires_grad_(True) for t in (residual, branch, weight)]
    s, y = ln.add_rms_norm_last_dim(*fused, EPS)
    s_ref = unfused[0] + unfused[1]
    compute = torch.float64 if s_ref.dtype == torch.float64 else torch.float32
    y_ref = F.rms_norm(s_ref.to(compute), (12,), unfused[2].to(compute), EPS).to(s_ref.dtype)
    assert torch.equal(s, s_ref) and torch.equal(y, y_ref)
    assert torch.equal(ln.rms_norm_last_dim(s_ref.detach(), weight, EPS), y_ref.detach())
    grad_s, grad_y = _randn(*s.shape, dtype=s.dtype, device='cpu', seed=3), _randn(*y.shape, dtype=y.dtype,
                                                                                   device='cpu', seed=4)
    torch.autograd.backward((s, y), (grad_s, grad_y))
    torch.autograd.backward((s_ref, y_ref), (grad_s, grad_y))
    for a, b in zip(fused, unfused):
        assert a.grad.dtype == b.grad.dtype
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-6)  # our backward formula vs autograd's


@pytest.mark.parametrize('path', ['eager', 'custom_op'])
@pytest.mark.parametrize('with_weight', [True, False])
def test_rms_gradcheck_fp64(path, with_weight):
    residual = _randn(3, 9, dtype=torch.float64, device='cpu')[:, 1:8]  # strided rows
    branch = _randn(3, 7, dtype=torch.float64, device='cpu', seed=2)
    weight = _params(7, 'weight', torch.float64, 'cpu')[0] if with_weight else None
    inputs = [t.detach().requires_grad_(True) for t in (residual, branch, weight) if t is not None]

    def fn(residual, branch, *weight):
        weight = weight[0] if weight else None
        if path == 'eager':
            return (ln.rms_norm_last_dim(residual, weight, EPS), *ln.add_rms_norm_last_dim(residual, branch, weight,
                                                                                          EPS))
        return (torch.ops.vmamba.layer_norm_last_dim(residual, weight, None, EPS, torch.float64, True)[0],
                *torch.ops.vmamba.add_layer_norm_last_dim(residual, branch, weight, None, EPS, torch.float64,
                                                          True)[:2])

    assert torch.autograd.gradcheck(fn, inputs)
    expected = (ln.rms_norm_last_dim_ref(residual, weight, EPS), *ln.add_rms_norm_last_dim_ref(residual, branch,
                                                                                              weight, EPS))
    for actual, ref in zip(fn(*inputs), expected):
        torch.testing.assert_close(actual, ref.reshape(actual.shape), rtol=1e-12, atol=1e-12)


def _opcheck_rms(residual, branch, weight, out_dtype):
    leaves = [t.detach().requires_grad_(True) for t in (residual, branch, weight)]
    for op, args in ((torch.ops.vmamba.layer_norm_last_dim, (leaves[0], leaves[2])),
                     (torch.ops.vmamba.add_layer_norm_last_dim, leaves)):
        result = torch.library.opcheck(op.default, (*args, None, EPS, out_dtype, True))
        assert all(v == 'SUCCESS' for v in result.values()), result
    y, mean, rstd = torch.ops.vmamba.layer_norm_last_dim(residual, weight, None, EPS, out_dtype, True)
    assert mean.shape == (0,)
    result = torch.library.opcheck(torch.ops.vmamba.layer_norm_last_dim_backward.default,
                                   (torch.randn_like(y), residual, weight, None, mean, rstd, True))
    assert all(v == 'SUCCESS' for v in result.values()), result
    s, y, mean, rstd = torch.ops.vmamba.add_layer_norm_last_dim(residual, branch, weight, None, EPS, out_dtype, True)
    result = torch.library.opcheck(torch.ops.vmamba.add_layer_norm_last_dim_backward.default,
                                   (torch.randn_like(y), torch.randn_like(s), s, weight, None, mean, rstd,
                                    residual.dtype, branch.dtype, True))
    assert all(v == 'SUCCESS' for v in result.values()), result


def test_rms_opcheck_reference_path():
    _opcheck_rms(_randn(9, 6, dtype=torch.float64, device='cpu'), _randn(9, 6, dtype=torch.float64, device='cpu'),
                 _params(6, 'weight', torch.float64, 'cpu')[0], torch.float64)
    _opcheck_rms(_randn(5, 6, device='cpu'), _randn(5, 6, dtype=torch.float16, device='cpu'),
                 _params(6, 'weight', torch.float16, 'cpu')[0], torch.float16)


def test_rms_opcheck_triton_path(force_triton):
    _opcheck_rms(_randn(9, 6), _randn(9, 6, dtype=torch.float16, seed=2), _params(6, 'weight')[0], torch.float16)


def test_rms_torch_compile_fullgraph():
    """torch.compile traces the rms=True custom ops: same values and gradients as eager."""
    residual = _randn(2, 5, 12, device='cpu')
    branch = _randn(2, 5, 12, dtype=torch.bfloat16, device='cpu', seed=2)
    weight = _params(12, 'weight', torch.float32, 'cpu')[0]

    def loss(residual, branch, weight):
        s, y = ln.add_rms_norm_last_dim(residual, branch, weight, EPS, torch.bfloat16)
        return s.square().sum() + y.float().sin().sum() + ln.rms_norm_last_dim(s, weight, EPS).cos().sum()

    eager = [t.detach().requires_grad_(True) for t in (residual, branch, weight)]
    compiled = [t.detach().requires_grad_(True) for t in (residual, branch, weight)]
    loss(*eager).backward()
    torch.compile(loss, fullgraph=True, backend='aot_eager')(*compiled).backward()
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-6)


def test_rms_bad_inputs_are_named():
    x, w = torch.randn(2, 5, 8), torch.ones(8)
    with pytest.raises(ValueError, match=r'rms_norm_last_dim: weight must be \(C=8,\) for x of shape \(2, 5, 8\)'):
        ln.rms_norm_last_dim(x, torch.ones(7))
    with pytest.raises(TypeError, match='rms_norm_last_dim: x must be a floating tensor'):
        ln.rms_norm_last_dim(torch.ones(2, 8, dtype=torch.int64), w)
    with pytest.raises(TypeError, match='rms_norm_last_dim: out_dtype'):
        ln.rms_norm_last_dim(x, w, out_dtype=torch.int32)
    with pytest.raises(ValueError, match=r'add_rms_norm_last_dim: branch must have the shape of residual '
                                         r'\(2, 5, 8\), got \(2, 5, 1\)'):
        ln.add_rms_norm_last_dim(x, torch.randn(2, 5, 1), w)
    with pytest.raises(ValueError, match='add_rms_norm_last_dim: weight is on meta but residual is on cpu'):
        ln.add_rms_norm_last_dim(x, x, torch.ones(8, device='meta'))
    with pytest.raises(ValueError, match=r'RMSNorm \(rms=True\) has no bias'):
        torch.ops.vmamba.add_layer_norm_last_dim(x.view(10, 8), x.view(10, 8), w, w, EPS, torch.float32, True)


@pytest.mark.gpu
@pytest.mark.parametrize('shape', [(128, 197, 192), (64, 729, 384)])
def test_gpu_rms_real_size(shape):
    """Vim-Ti / Vim-S+ block sizes under AMP on CUDA (fp32 residual stream, fp16 branch; fp32 weight and y as
    RmsNormFp32 gives) vs the fp64 reference, forward and backward, fused add and plain RMSNorm."""
    residual = _randn(*shape, device='cuda')
    branch = _randn(*shape, dtype=torch.float16, device='cuda', seed=2)
    weight = _params(shape[-1], 'weight', torch.float32, 'cuda')[0]
    leaves = [t.detach().requires_grad_(True) for t in (residual, branch, weight)]
    s, y = ln.add_rms_norm_last_dim(*leaves, EPS, torch.float32)
    y_plain = ln.rms_norm_last_dim(leaves[0], leaves[2], EPS)
    _assert_sum(s, residual, branch)
    _assert_close(y, ln.rms_norm_last_dim_ref(s, weight, EPS), 1e-5)
    _assert_close(y_plain, ln.rms_norm_last_dim_ref(residual, weight, EPS), 1e-5)
    grad_s, grad_y = _randn(*shape, device='cuda', seed=3), _randn(*shape, device='cuda', seed=4)
    grad_plain = _randn(*shape, device='cuda', seed=5)
    torch.autograd.backward((s, y, y_plain), (grad_s, grad_y, grad_plain))
    expected = _rms_reference_grads((residual, branch, weight), (grad_s, grad_y), add=True)
    plain = _rms_reference_grads((residual, weight), (grad_plain,))
    expected = [expected[0] + plain[0], expected[1], expected[2] + plain[1]]
    for leaf, ref in zip(leaves, expected):
        _assert_close(leaf.grad, ref, 1e-2 if leaf.dtype == torch.float16 else 1e-4)

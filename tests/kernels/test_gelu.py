"""GELU recomputation backward (a = gelu(h), grad_h = grad_a * gelu'(h), fc1's bias gradient): the PyTorch reference
and the Triton kernel vs an fp64 autograd reference, erf and tanh GELU. Without CUDA the kernel runs in the
interpreter on 4 x 16 tiles and 3 row programs, so ragged row counts, masked columns and the sum of the programs'
partial bias rows are covered."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

import pytest  # noqa: E402

from vmamba.kernels import gelu as gelu_module  # noqa: E402
from vmamba.kernels.gelu import gelu_recompute_backward, gelu_recompute_backward_ref  # noqa: E402
from vmamba.kernels.triton.gelu import gelu_recompute_bwd  # noqa: E402

DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
APPROXIMATE = ['none', 'tanh']


def _randn(*shape, dtype=torch.float32, device=DEVICE, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (2 * torch.randn(*shape, generator=gen)).to(device, dtype)


def _inputs(rows, hidden, dtype, device=DEVICE):
    """h with a few saturating values (|h| = 30: tanh / erf at +-1, exp underflow), grad_a."""
    h = _randn(rows, hidden, dtype=dtype, device=device)
    h.view(-1)[:2] = torch.tensor([30.0, -30.0], dtype=dtype)
    return h, _randn(rows, hidden, dtype=dtype, device=device, seed=1)


def _fp64_reference(h, grad_a, approximate):
    """Autograd through F.gelu in fp64 on the given (rounded) inputs: a, grad_h, grad_bias, all fp64."""
    h64 = h.detach().double().requires_grad_(True)
    a = torch.nn.functional.gelu(h64, approximate=approximate)
    (grad_h,) = torch.autograd.grad(a, h64, grad_a.double())
    return a.detach(), grad_h, grad_h.sum(0)


def _assert_close(actual, expected, tol):
    """|actual - expected| <= tol * (|expected| + max |expected|), elementwise; expected fp64, compared in fp64."""
    assert actual.shape == expected.shape
    scale = max(expected.abs().max().item(), 1e-3) if expected.numel() else 1.0
    torch.testing.assert_close(actual.double(), expected, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize('approximate', APPROXIMATE)
def test_derivative_formula_matches_autograd(approximate):
    """The closed-form gelu' of the kernel's docstring (fp64) vs autograd through F.gelu."""
    x = torch.linspace(-8, 8, 1001, dtype=torch.float64)
    if approximate == 'none':
        expected = 0.5 * (1 + torch.erf(x / 2 ** 0.5)) + x * torch.exp(-x * x / 2) / (2 * torch.pi) ** 0.5
    else:
        k = (2 / torch.pi) ** 0.5
        t = torch.tanh(k * (x + 0.044715 * x ** 3))
        expected = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * 0.044715 * x * x)
    _, grad_h, _ = _fp64_reference(x[:, None], torch.ones(1001, 1), approximate)
    torch.testing.assert_close(grad_h[:, 0], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('approximate', APPROXIMATE)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_reference_matches_fp64(dtype, approximate):
    h, grad_a = _inputs(23, 13, dtype, 'cpu')
    a, grad_h, grad_bias = gelu_recompute_backward_ref(h, grad_a, approximate)
    assert a.dtype == grad_h.dtype == dtype
    assert grad_bias.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    tol = TOL.get(dtype, 1e-12)
    for actual, expected in zip((a, grad_h, grad_bias), _fp64_reference(h, grad_a, approximate)):
        _assert_close(actual, expected, tol)


@pytest.mark.parametrize('approximate', APPROXIMATE)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('rows, hidden', [(23, 96), (23, 13), (9, 1), (1, 40)])
def test_triton_matches_fp64(rows, hidden, dtype, approximate):
    """H = 96: 6 column blocks; H = 13 / 40: masked columns; 23 rows: 6 row blocks (the last ragged) over 3 row
    programs, so that the partial bias rows are really summed."""
    h, grad_a = _inputs(rows, hidden, dtype)
    a, grad_h, grad_bias = gelu_recompute_bwd(h, grad_a, approximate)
    assert a.dtype == grad_h.dtype == dtype and grad_bias.dtype == torch.float32
    assert a.is_contiguous() and grad_h.is_contiguous()
    for actual, expected in zip((a, grad_h, grad_bias), _fp64_reference(h, grad_a, approximate)):
        _assert_close(actual.cpu(), expected.cpu(), TOL[dtype])


@pytest.mark.parametrize('approximate', APPROXIMATE)
def test_triton_reads_strided_rows_and_other_grad_dtype(approximate):
    """h and grad_a read in place with their own row strides (column slices of wider rows); fp32 grad_a for fp16 h."""
    h_wide, grad_wide = _inputs(11, 40, torch.float16)
    h, grad_a = h_wide[:, 3:32], grad_wide.float()[:, :29]
    a, grad_h, grad_bias = gelu_recompute_bwd(h, grad_a, approximate)
    assert a.dtype == grad_h.dtype == torch.float16
    for actual, expected in zip((a, grad_h, grad_bias), _fp64_reference(h, grad_a, approximate)):
        _assert_close(actual.cpu(), expected.cpu(), 1e-2)


def test_triton_empty_rows():
    h = torch.empty(0, 7, device=DEVICE)
    a, grad_h, grad_bias = gelu_recompute_bwd(h, h, 'none')
    assert a.shape == grad_h.shape == (0, 7)
    assert torch.equal(grad_bias, torch.zeros(7, device=DEVICE))


def test_triton_input_errors():
    h = torch.randn(4, 8, device=DEVICE)
    with pytest.raises(ValueError, match='shape of h'):
        gelu_recompute_bwd(h, h[:3], 'none')
    with pytest.raises(ValueError, match='unit column stride'):
        gelu_recompute_bwd(h.T, h.T, 'none')
    with pytest.raises(ValueError, match='approximate'):
        gelu_recompute_bwd(h, h, 'sigmoid')


def test_dispatcher_picks_triton_only_on_the_triton_backend(monkeypatch):
    calls = []

    def spy(*args):
        calls.append(args)
        return gelu_recompute_bwd(*args)
    monkeypatch.setattr('vmamba.kernels.triton.gelu.gelu_recompute_bwd', spy)
    h, grad_a = _inputs(5, 8, torch.float32, 'cpu')
    expected = gelu_recompute_backward_ref(h, grad_a)
    monkeypatch.setattr(gelu_module, 'scan_backend', lambda device: 'reference')
    gelu_recompute_backward(h, grad_a)
    assert not calls
    monkeypatch.setattr(gelu_module, 'scan_backend', lambda device: 'triton')
    for actual, ref in zip(gelu_recompute_backward(h, grad_a), expected):
        torch.testing.assert_close(actual, ref, rtol=1e-5, atol=1e-5)
    assert len(calls) == 1
    gelu_recompute_backward(h.double(), grad_a.double())  # fp64: the reference even on the Triton backend
    assert len(calls) == 1


# --------------------------------------------------------------------------------------------------------------
# Real size (GPU only)

@pytest.mark.gpu
@pytest.mark.parametrize('approximate', APPROXIMATE)
def test_gpu_real_size(approximate):
    """VMamba-T stage 1 (batch 128, 56 x 56 tokens, hidden 4 * 96), fp16: the Triton kernel vs the fp32-math
    reference (itself checked against fp64 above)."""
    h, grad_a = _inputs(128 * 56 * 56, 384, torch.float16, 'cuda')
    actual = gelu_recompute_bwd(h, grad_a, approximate)
    for out, ref in zip(actual, gelu_recompute_backward_ref(h, grad_a, approximate)):
        assert out.dtype == ref.dtype
        _assert_close(out, ref.double(), 1e-2)

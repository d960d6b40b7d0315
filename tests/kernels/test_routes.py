"""Route gather / merge (token-major maps <-> scan routes): reference vs per-element loops, Triton vs reference,
gradients, custom-op checks. Without CUDA the Triton kernels run in the interpreter on small maps."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

import pytest  # noqa: E402

from vmamba.kernels import gather_routes, merge_routes, merge_routes_layer_norm  # noqa: E402
from vmamba.kernels.layer_norm import layer_norm_last_dim_ref  # noqa: E402
from vmamba.kernels.routes import gather_routes_ref, merge_routes_ref  # noqa: E402
from vmamba.kernels.triton.routes import gather_routes_triton, merge_routes_triton  # noqa: E402
from vmamba.scans import get_scan_pattern  # noqa: E402

DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'
PATTERN_SIZES = [('cross', 5, 7), ('cross', 1, 1), ('atrous', 5, 7), ('bidirectional', 4, 6),
                 ('local_bidirectional', 3, 9), ('cross', 13, 10)]


def _routes(pattern, height, width, device='cpu'):
    routes = get_scan_pattern(pattern).routes(height, width, device)
    return routes, routes.padded_hw[0] * routes.padded_hw[1]


def _gather_loop(tokens, index):
    batch, _, channels = tokens.shape
    num_routes, length = index.shape
    out = torch.empty(batch, num_routes, channels, length, dtype=tokens.dtype)
    for k in range(num_routes):
        for step in range(length):
            out[:, k, :, step] = tokens[:, index[k, step]]
    return out


def _merge_loop(routes, index, num_positions):
    batch, num_routes, channels, length = routes.shape
    out = torch.zeros(batch, num_positions, channels, dtype=routes.dtype)
    for k in range(num_routes):
        for step in range(length):
            out[:, index[k, step]] += routes[:, k, :, step]
    return out


@pytest.mark.parametrize('pattern,height,width', PATTERN_SIZES)
def test_reference_matches_loops(pattern, height, width):
    routes, num_positions = _routes(pattern, height, width)
    tokens = torch.randn(2, num_positions, 3, dtype=torch.float64)
    ys = torch.randn(2, routes.num_routes, 3, routes.length, dtype=torch.float64)
    torch.testing.assert_close(gather_routes_ref(tokens, routes.index), _gather_loop(tokens, routes.index),
                               rtol=0, atol=0)
    torch.testing.assert_close(merge_routes_ref(ys, routes.inverse), _merge_loop(ys, routes.index, num_positions),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('pattern,height,width', PATTERN_SIZES)
def test_triton_matches_reference(pattern, height, width, dtype):
    routes, num_positions = _routes(pattern, height, width, DEVICE)
    channels = 20  # not a multiple of the channel tile
    # tokens with a batch stride larger than P * C (a view into a bigger buffer)
    tokens = torch.randn(2, num_positions + 3, channels, device=DEVICE).to(dtype)[:, 2:num_positions + 2]
    gathered = gather_routes_triton(tokens, routes.index)
    torch.testing.assert_close(gathered, gather_routes_ref(tokens, routes.index), rtol=0, atol=0)
    ys = torch.randn(2, routes.num_routes, channels, routes.length, device=DEVICE).to(dtype)
    expected = merge_routes_ref(ys.float(), routes.inverse).to(dtype)  # the kernel sums in fp32
    tol = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    padded_w = routes.padded_hw[1]
    # strips of consecutive positions (width unknown), the default 8 x 8 map blocks, and blocks that leave ragged
    # tiles along both axes
    for width, tile in ((0, None), (padded_w, None), (padded_w, (4, 2)), (padded_w, (2, 8))):
        merged = merge_routes_triton(ys, routes.inverse, width, tile=tile)
        torch.testing.assert_close(merged, expected, rtol=tol, atol=tol, msg=f'width {width}, tile {tile}')


def _merge_norm_ref(ys, inverse, weight, bias, out_dtype):
    """fp32 merge, fp32 LayerNorm, one rounding to out_dtype."""
    return layer_norm_last_dim_ref(merge_routes_ref(ys.float(), inverse), weight, bias, 1e-5, out_dtype)


def test_merge_routes_layer_norm():
    """merge then LayerNorm with fp32 math, the output in out_dtype; gradients flow to routes, weight and bias; bad
    parameters are named."""
    routes, num_positions = _routes('cross', 3, 4)
    ys = torch.randn(2, 4, 8, routes.length)
    weight, bias = torch.randn(8), torch.randn(8)
    leaves = [t.clone().requires_grad_(True) for t in (ys, weight, bias)]
    out = merge_routes_layer_norm(leaves[0], routes.index, routes.inverse, leaves[1], leaves[2], 1e-5, torch.float16,
                                  routes.padded_hw[1])
    assert out.dtype == torch.float16 and out.shape == (2, num_positions, 8)
    torch.testing.assert_close(out, _merge_norm_ref(ys, routes.inverse, weight, bias, torch.float16),
                               rtol=1e-3, atol=1e-3)
    out.float().square().sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in leaves)
    with pytest.raises(ValueError, match=r'weight must be \(8,\)'):
        merge_routes_layer_norm(ys, routes.index, routes.inverse, torch.ones(7), None, 1e-5, torch.float32)


def test_custom_ops_autograd_and_opcheck():
    routes, num_positions = _routes('atrous', 3, 5)
    tokens = torch.randn(2, num_positions, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: gather_routes(t, routes.index, routes.inverse), (tokens,))
    ys = torch.randn(2, routes.num_routes, 4, routes.length, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda y: merge_routes(y, routes.index, routes.inverse), (ys,))
    for op, arg in ((torch.ops.vmamba.gather_routes.default, tokens), (torch.ops.vmamba.merge_routes.default, ys)):
        result = torch.library.opcheck(op, (arg, routes.index, routes.inverse, routes.padded_hw[1]))
        assert all(v == 'SUCCESS' for v in result.values()), result


def test_bad_inputs_are_named():
    routes, num_positions = _routes('cross', 2, 3)
    with pytest.raises(ValueError, match='positions, channels'):
        gather_routes(torch.randn(num_positions, 4), routes.index, routes.inverse)
    with pytest.raises(TypeError, match='index must be int64'):
        gather_routes(torch.randn(1, num_positions, 4), routes.index.int(), routes.inverse)
    with pytest.raises(ValueError, match='does not match index'):
        gather_routes(torch.randn(1, num_positions + 1, 4), routes.index, routes.inverse)
    with pytest.raises(ValueError, match=r'routes of shape \(batch, 4, C, 6\)'):
        merge_routes(torch.randn(1, 2, 4, 6), routes.index, routes.inverse)
    with pytest.raises(ValueError, match='width must be 0 .* 6 positions, got 4'):
        merge_routes(torch.randn(1, 4, 4, 6), routes.index, routes.inverse, 4)


@pytest.mark.gpu
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
def test_gpu_real_size(dtype):
    """VMamba-T stage-1 sizes (56x56, 96 channels) on CUDA vs the reference."""
    routes, num_positions = _routes('cross', 56, 56, 'cuda')
    tokens = torch.randn(8, num_positions, 96, device='cuda').to(dtype)
    torch.testing.assert_close(gather_routes(tokens, routes.index, routes.inverse, 56),
                               gather_routes_ref(tokens, routes.index), rtol=0, atol=0)
    ys = torch.randn(8, 4, 96, routes.length, device='cuda').to(dtype)
    for width in (0, 56):
        torch.testing.assert_close(merge_routes(ys, routes.index, routes.inverse, width),
                                   merge_routes_ref(ys.float(), routes.inverse).to(dtype), rtol=1e-3, atol=1e-3)

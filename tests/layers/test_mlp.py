"""RecomputeActMlp: same outputs and gradients as timm's Mlp (fp64, and under bf16 autocast), without storing
the activation's output."""
import functools

import pytest
import torch
from timm.layers import Mlp

from vmamba.layers.mlp import RecomputeActMlp


def _pair(bias=True, dtype=torch.float32, act_layer=torch.nn.GELU):
    torch.manual_seed(0)
    ours = RecomputeActMlp(12, 40, bias=bias, dtype=dtype, act_layer=act_layer)
    plain = Mlp(12, 40, bias=bias, dtype=dtype, act_layer=act_layer)
    plain.load_state_dict(ours.state_dict())
    return ours, plain


def _run_pair_bf16_autocast(ours, plain, x, weight):
    with torch.autocast('cpu', dtype=torch.bfloat16):
        return _run(ours, x, weight), _run(plain, x, weight)


def _run(mlp, x, weight):
    x = x.detach().requires_grad_(True)
    y = mlp(x)
    grads = torch.autograd.grad((y.float() * weight).sum(), [x, *mlp.parameters()])
    return [y.detach()] + list(grads)


@pytest.mark.parametrize('bias', [True, False])
def test_same_outputs_and_gradients_as_timm_mlp_fp64(bias):
    ours, plain = _pair(bias, torch.float64)
    x = torch.randn(3, 5, 12, dtype=torch.float64)
    weight = torch.randn(3, 5, 12)
    for a, b in zip(_run(ours, x, weight), _run(plain, x, weight)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('act_layer', [
    pytest.param(functools.partial(torch.nn.GELU, approximate='tanh'), id='gelu-tanh'),
    pytest.param(torch.nn.SiLU, id='silu'),
])
def test_other_activations_fp64(act_layer):
    ours, plain = _pair(True, torch.float64, act_layer)
    x = torch.randn(3, 5, 12, dtype=torch.float64)
    weight = torch.randn(3, 5, 12)
    for a, b in zip(_run(ours, x, weight), _run(plain, x, weight)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_same_under_autocast_and_activation_not_saved():
    ours, plain = _pair()
    x = torch.randn(4, 7, 12)
    weight = torch.randn(4, 7, 12)
    a, b = _run_pair_bf16_autocast(ours, plain, x, weight)
    assert a[0].dtype == torch.bfloat16
    for u, v in zip(a, b):
        assert u.dtype == v.dtype
        torch.testing.assert_close(u, v, rtol=0, atol=0)  # the same bf16 GEMMs and casts

    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        ours(x.requires_grad_(True))
    assert (4, 7, 40) in saved and saved.count((4, 7, 40)) == 1  # fc1's output only, not act's


def test_dropout_between_act_and_fc2_takes_the_plain_path():
    torch.manual_seed(0)
    mlp = RecomputeActMlp(12, 40, drop=0.5).train()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        mlp(torch.randn(2, 3, 12, requires_grad=True))
    assert saved.count((2, 3, 40)) >= 2


def _run_some(mlp, x, weight, frozen=(), x_grad=True):
    """Output and the gradients of x (if ``x_grad``) and of the parameters not named in ``frozen``."""
    for name, p in mlp.named_parameters():
        p.requires_grad_(name not in frozen)
    x = x.detach().requires_grad_(x_grad)
    y = mlp(x)
    leaves = ([x] if x_grad else []) + [p for p in mlp.parameters() if p.requires_grad]
    return [y.detach()] + list(torch.autograd.grad((y.float() * weight).sum(), leaves))


@pytest.mark.parametrize('frozen, x_grad', [
    pytest.param(('fc1.weight', 'fc1.bias'), True, id='frozen-fc1'),
    pytest.param((), False, id='x-without-grad'),
    pytest.param(('fc1.weight', 'fc1.bias'), False, id='only-fc2-trains'),
    pytest.param(('fc1.bias', 'fc2.weight'), True, id='frozen-fc1-bias-fc2-weight'),
])
def test_frozen_parameters_and_inputs_fp64(frozen, x_grad):
    ours, plain = _pair(True, torch.float64)
    x = torch.randn(3, 5, 12, dtype=torch.float64)
    weight = torch.randn(3, 5, 12)
    a, b = _run_some(ours, x, weight, frozen, x_grad), _run_some(plain, x, weight, frozen, x_grad)
    assert len(a) == len(b)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('bias', [True, False])
def test_channels_last_maps_fp64(bias):
    """(B, H, W, C) maps, here a channels-last view of an NCHW tensor (not contiguous)."""
    ours, plain = _pair(bias, torch.float64)
    x = torch.randn(2, 12, 4, 3, dtype=torch.float64).permute(0, 2, 3, 1)
    weight = torch.randn(2, 4, 3, 12)
    a, b = _run(ours, x, weight), _run(plain, x, weight)
    assert a[1].shape == x.shape
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)


@pytest.fixture
def triton_gelu(monkeypatch):
    """The fused GELU backward on the Triton path (the interpreter without CUDA); yields the list of its calls."""
    from vmamba.kernels import gelu as gelu_module
    from vmamba.kernels.triton import gelu as triton_gelu_module
    calls = []
    kernel = triton_gelu_module.gelu_recompute_bwd

    def spy(*args):
        calls.append(args)
        return kernel(*args)
    monkeypatch.setattr(gelu_module, 'scan_backend', lambda device: 'triton')
    monkeypatch.setattr(triton_gelu_module, 'gelu_recompute_bwd', spy)
    return calls


@pytest.mark.parametrize('approximate', ['none', 'tanh'])
@pytest.mark.parametrize('bias', [True, False])
def test_triton_gelu_backward_matches_timm_mlp_fp32(triton_gelu, bias, approximate):
    """70 rows x 40 hidden: several row programs and a masked column block in the interpreter."""
    ours, plain = _pair(bias, act_layer=functools.partial(torch.nn.GELU, approximate=approximate))
    x = torch.randn(2, 5, 7, 12)
    weight = torch.randn(2, 5, 7, 12)
    a, b = _run(ours, x, weight), _run(plain, x, weight)
    assert len(triton_gelu) == 1
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('act_layer, approximate', [('gelu', 'none'), ('gelu_tanh', 'tanh')])
def test_triton_gelu_backward_with_timm_activations(triton_gelu, act_layer, approximate):
    """timm's GELU modules (what ``get_act_layer('gelu')`` gives the VMamba blocks) take the fused path too."""
    from timm.layers import get_act_layer
    ours, plain = _pair(act_layer=get_act_layer(act_layer))
    x = torch.randn(3, 5, 12)
    weight = torch.randn(3, 5, 12)
    a, b = _run(ours, x, weight), _run(plain, x, weight)
    assert len(triton_gelu) == 1 and triton_gelu[0][2] == approximate
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-5)


def test_triton_gelu_backward_under_autocast(triton_gelu):
    """bf16 autocast on the fused path: the result and gradient dtypes of the plain Mlp, values to bf16 rounding."""
    ours, plain = _pair()
    x = torch.randn(4, 7, 12)
    weight = torch.randn(4, 7, 12)
    a, b = _run_pair_bf16_autocast(ours, plain, x, weight)
    assert len(triton_gelu) == 1
    for u, v in zip(a, b):
        assert u.dtype == v.dtype
        torch.testing.assert_close(u, v, rtol=2e-2, atol=2e-2)


def test_triton_gelu_backward_skipped_when_only_fc2_trains(triton_gelu):
    ours, plain = _pair()
    x = torch.randn(3, 5, 12)
    weight = torch.randn(3, 5, 12)
    frozen = ('fc1.weight', 'fc1.bias')
    a, b = _run_some(ours, x, weight, frozen, False), _run_some(plain, x, weight, frozen, False)
    assert not triton_gelu
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-5)

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
    with torch.autocast('cpu', dtype=torch.bfloat16):
        a = _run(ours, x, weight)
        b = _run(plain, x, weight)
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

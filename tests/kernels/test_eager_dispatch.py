"""Eager dispatch of every vmamba op: calls that autograd would not record (no grad mode, or no input requiring
grad) run the implementation directly, without the ``autograd.Function``; the results are bitwise those of the
recording path, and calls with a grad-requiring input still record (gradients flow)."""
import pytest
import torch

from vmamba.kernels import conv, gated_sum, interface, layer_norm, routes
from vmamba.kernels import causal_conv_silu, gather_routes, gated_group_sum, merge_routes, selective_scan
from vmamba.kernels.layer_norm import (
    add_layer_norm_last_dim, add_rms_norm_last_dim, layer_norm_channels_first, layer_norm_last_dim, rms_norm_last_dim)
from vmamba.scans import get_scan_pattern

from .test_reference import make_inputs


def _cases():
    g = torch.Generator().manual_seed(0)
    rnd = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    scan = make_inputs(2, 4, 9, 3, 2, dtype=torch.float32)
    route = get_scan_pattern('cross').routes(3, 4, 'cpu')
    return [
        ('selective_scan', interface._EagerSelectiveScan, ('u', 'A', 'D'),
         lambda t: selective_scan(t['u'], scan['delta'], t['A'], scan['B'], scan['C'], D=t['D'], z=scan['z'],
                                  delta_bias=scan['delta_bias'], delta_softplus=True, reverse=(False, True)),
         {'u': scan['u'], 'A': scan['A'], 'D': scan['D']}),
        ('layer_norm_last_dim', layer_norm._EagerLayerNorm, ('x', 'w'),
         lambda t: layer_norm_last_dim(t['x'], t['w'], None), {'x': rnd(5, 8), 'w': rnd(8)}),
        ('layer_norm_channels_first', layer_norm._EagerLayerNorm, ('x', 'w'),
         lambda t: layer_norm_channels_first(t['x'], t['w'], None), {'x': rnd(2, 8, 3, 4), 'w': rnd(8)}),
        ('add_layer_norm_last_dim', layer_norm._EagerAddLayerNorm, ('branch', 'w'),
         lambda t: torch.cat(add_layer_norm_last_dim(t['residual'], t['branch'], t['w'], None)),
         {'residual': rnd(5, 8), 'branch': rnd(5, 8), 'w': rnd(8)}),
        ('rms_norm_last_dim', layer_norm._EagerLayerNorm, ('x', 'w'),
         lambda t: rms_norm_last_dim(t['x'], t['w']), {'x': rnd(5, 8), 'w': rnd(8)}),
        ('add_rms_norm_last_dim', layer_norm._EagerAddLayerNorm, ('branch', 'w'),
         lambda t: torch.cat(add_rms_norm_last_dim(t['residual'], t['branch'], t['w'])),
         {'residual': rnd(5, 8), 'branch': rnd(5, 8), 'w': rnd(8)}),
        ('gated_group_sum', gated_sum._EagerGatedGroupSum, ('y', 'z'),
         lambda t: gated_group_sum(t['y'], t['z'], 0.5), {'y': rnd(2, 5, 12), 'z': rnd(2, 5, 6)}),
        ('causal_conv_silu', conv._EagerConvSilu, ('x', 'w'),
         lambda t: causal_conv_silu(t['x'], t['w'], None, (False, True)), {'x': rnd(2, 7, 4), 'w': rnd(8, 4)}),
        ('gather_routes', routes._EagerGatherRoutes, ('tokens',),
         lambda t: gather_routes(t['tokens'], route.index, route.inverse), {'tokens': rnd(2, 12, 5)}),
        ('merge_routes', routes._EagerMergeRoutes, ('routes',),
         lambda t: merge_routes(t['routes'], route.index, route.inverse), {'routes': rnd(2, 4, 5, 12)}),
    ]


CASES = _cases()


@pytest.mark.parametrize('name,function,grad_inputs,call,tensors', CASES, ids=[c[0] for c in CASES])
def test_unrecorded_calls_skip_the_autograd_function(monkeypatch, name, function, grad_inputs, call, tensors):
    recorded = call({k: v.clone().requires_grad_(True) if k in grad_inputs else v for k, v in tensors.items()})
    assert recorded.grad_fn is not None
    recorded.square().sum().backward()  # the recording path still differentiates

    def refuse(*args):
        raise AssertionError(f'{name}: autograd.Function used for a call autograd does not record')

    monkeypatch.setattr(function, 'apply', refuse)
    with torch.no_grad():  # grad mode off, inputs requiring grad
        unrecorded = call({k: v.clone().requires_grad_(True) if k in grad_inputs else v for k, v in tensors.items()})
    assert unrecorded.grad_fn is None
    torch.testing.assert_close(unrecorded, recorded.detach(), rtol=0, atol=0)
    plain = call(tensors)  # grad mode on, no input requiring grad
    torch.testing.assert_close(plain, recorded.detach(), rtol=0, atol=0)
    with pytest.raises(AssertionError, match='autograd.Function used'):
        call({k: v.clone().requires_grad_(k == grad_inputs[-1]) for k, v in tensors.items()})

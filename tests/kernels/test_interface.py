"""The public selective_scan: validation errors, autograd through the custom op, torch.compile, dtypes."""
import pytest
import torch

from vmamba.kernels import scan_backend, selective_scan
from vmamba.kernels.reference import selective_scan_ref

from .oracle import selective_scan_loop
from .test_reference import make_inputs


def test_matches_oracle_and_gradients_flow():
    x = make_inputs(2, 4, 40, 4, 2, requires_grad=True)
    out, last = selective_scan(**x, delta_softplus=True, reverse=(True, False), local_window=6, return_last_state=True)
    ref, ref_last = selective_scan_loop(**{k: v.detach() for k, v in x.items()}, delta_softplus=True,
                                        reverse=(True, False), local_window=6, return_last_state=True)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, ref_last, rtol=1e-10, atol=1e-10)
    (out.sum() + last.square().sum()).backward()
    grads = {k: v.grad.clone() for k, v in x.items()}
    # independent gradients: autograd straight through the reference
    y = {k: v.detach().clone().requires_grad_(True) for k, v in x.items()}
    o2, l2 = selective_scan_ref(**y, delta_softplus=True, reverse=(True, False), local_window=6, return_last_state=True)
    (o2.sum() + l2.square().sum()).backward()
    for k in x:
        torch.testing.assert_close(grads[k], y[k].grad, rtol=1e-10, atol=1e-10, msg=f'grad {k}')


def test_gradcheck_through_custom_op():
    x = make_inputs(1, 4, 9, 2, 2, requires_grad=True)
    names = list(x)

    def fn(*tensors):
        return selective_scan(**dict(zip(names, tensors)), delta_softplus=True, reverse=(False, True),
                              return_last_state=True)

    assert torch.autograd.gradcheck(fn, tuple(x.values()))


def test_opcheck():
    x = make_inputs(2, 4, 13, 2, 2, requires_grad=True)
    args = tuple(x[k] for k in ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias'))
    result = torch.library.opcheck(torch.ops.vmamba.selective_scan.default,
                                   args + (True, [False, True], 3, torch.float64))
    assert all(v == 'SUCCESS' for v in result.values()), result


def test_token_major_inputs_keep_their_layout():
    """Token-major views (memory (batch, L, channels); B / C (batch, L, G, N)) go in without copies on the public
    path: out comes back token-major with the same values, the fake implementation promises the same strides
    (opcheck), and gradients flow back to the strided views."""
    x = make_inputs(2, 4, 13, 2, 2)
    tm = dict(x)
    for name in ('u', 'delta', 'z'):
        tm[name] = x[name].transpose(1, 2).contiguous().transpose(1, 2)
    for name in ('B', 'C'):
        tm[name] = x[name].permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    kwargs = dict(delta_softplus=True, reverse=(False, True))
    out = selective_scan(**tm, **kwargs)
    assert out.stride(1) == 1 and out.stride(2) == 4, out.stride()
    torch.testing.assert_close(out, selective_scan(**x, **kwargs), rtol=1e-12, atol=1e-12)
    args = tuple(tm[k].detach().requires_grad_(True) for k in ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias'))
    result = torch.library.opcheck(torch.ops.vmamba.selective_scan.default, args + (True, [False, True], 0, torch.float64))
    assert all(v == 'SUCCESS' for v in result.values()), result


def test_torch_compile_fullgraph():
    x = make_inputs(2, 4, 13, 2, 2, dtype=torch.float32, requires_grad=True)

    def loss_fn(**kw):
        return selective_scan(**kw, delta_softplus=True, out_dtype=torch.float32).square().mean()

    compiled = torch.compile(loss_fn, fullgraph=True, backend='aot_eager')
    loss = compiled(**x)
    loss.backward()
    eager = {k: v.detach().clone().requires_grad_(True) for k, v in x.items()}
    loss_eager = loss_fn(**eager)
    loss_eager.backward()
    torch.testing.assert_close(loss, loss_eager)
    torch.testing.assert_close(x['u'].grad, eager['u'].grad)


def test_out_dtype_and_bf16():
    x = make_inputs(2, 4, 30, 4, 1, dtype=torch.float32)
    xb = {k: (v.bfloat16() if k in ('u', 'delta', 'B', 'C', 'z') else v) for k, v in x.items()}
    out = selective_scan(**xb, delta_softplus=True, out_dtype=torch.float32)
    assert out.dtype == torch.float32
    assert selective_scan(**xb, delta_softplus=True).dtype == torch.bfloat16
    ref = selective_scan(**x, delta_softplus=True)
    assert ((out - ref).norm() / ref.norm()) < 2e-2


def test_autocast_does_not_change_the_math():
    x = make_inputs(1, 4, 20, 4, 1, dtype=torch.float32)
    ref = selective_scan(**x, delta_softplus=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = selective_scan(**x, delta_softplus=True)
    torch.testing.assert_close(out, ref)


def test_non_contiguous_inputs():
    x = make_inputs(2, 4, 16, 2, 1, dtype=torch.float32)
    u_nc = x['u'].transpose(1, 2).contiguous().transpose(1, 2)
    assert not u_nc.is_contiguous()
    torch.testing.assert_close(selective_scan(**{**x, 'u': u_nc}), selective_scan(**x))


@pytest.mark.parametrize('change,message', [
    (dict(u=torch.zeros(2, 4)), 'u must have 3 dims'),
    (dict(delta=torch.zeros(2, 4, 5)), 'delta shape'),
    (dict(A=torch.zeros(3, 2)), 'A must be (channels=4'),
    (dict(B=torch.zeros(2, 3, 2, 10), C=torch.zeros(2, 3, 2, 10)), 'divisible by the number of B/C groups'),
    (dict(B=torch.zeros(2, 1, 3, 10)), 'B must be (batch=2, G, N=2, L=10)'),
    (dict(u=torch.zeros(2, 4, 10, dtype=torch.float16)), 'u, delta, B, C (and z) must share one dtype'),
    (dict(u=torch.zeros(2, 4, 10, dtype=torch.int64)), 'floating tensor'),
    (dict(z=torch.zeros(2, 4, 9)), 'z shape'),
    (dict(D=torch.zeros(5)), 'D must be (channels=4,)'),
    (dict(local_window=0), 'local_window must be None or an int >= 1'),
    (dict(reverse=(True, False, True)), 'reverse has 3 entries'),
])
def test_clear_errors(change, message):
    x = dict(u=torch.zeros(2, 4, 10), delta=torch.zeros(2, 4, 10), A=-torch.ones(4, 2),
             B=torch.zeros(2, 2, 2, 10), C=torch.zeros(2, 2, 2, 10))
    x.update(change)
    with pytest.raises((ValueError, TypeError), match=pytest.importorskip('re').escape(message)):
        selective_scan(**x)


def test_backend_selection(monkeypatch):
    assert scan_backend(torch.device('cpu')) == 'reference'
    assert scan_backend(torch.device('cuda')) == 'triton'
    monkeypatch.setenv('VMAMBA_SCAN_BACKEND', 'reference')
    assert scan_backend(torch.device('cuda')) == 'reference'
    monkeypatch.setenv('VMAMBA_SCAN_BACKEND', 'fast')
    with pytest.raises(ValueError, match='VMAMBA_SCAN_BACKEND'):
        scan_backend(torch.device('cpu'))


def test_gradient_through_last_state_only():
    """Eager autograd with only the last state used: grad_out is absent and treated as zero."""
    x = make_inputs(1, 4, 9, 2, 2, requires_grad=True)
    _, last = selective_scan(**x, delta_softplus=True, reverse=(False, True), return_last_state=True)
    last.sum().backward()
    grads = {k: v.grad.clone() for k, v in x.items()}
    y = {k: v.detach().clone().requires_grad_(True) for k, v in x.items()}
    _, ref_last = selective_scan_ref(**y, delta_softplus=True, reverse=(False, True), return_last_state=True)
    ref_last.sum().backward()
    for k in x:  # C and z do not reach the last state: zero gradients (None from the reference's autograd)
        expected = y[k].grad if y[k].grad is not None else torch.zeros_like(y[k])
        torch.testing.assert_close(grads[k], expected, rtol=1e-9, atol=1e-10, msg=f'grad {k}')

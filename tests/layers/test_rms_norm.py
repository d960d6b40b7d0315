"""vmamba.layers.rms_norm: RmsNormFp32 on the RMSNorm op against ``F.rms_norm`` in fp32 (its former formula), its
fused residual add (``add_forward`` / ``add_rms_norm``) against the add followed by the norm."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vmamba.layers.rms_norm import RmsNormFp32, add_rms_norm


def _norm(dim=24, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    norm = RmsNormFp32(dim, eps=1e-5, dtype=dtype)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    return norm


@pytest.mark.parametrize('x_dtype, weight_dtype', [
    (torch.float32, torch.float32), (torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16)])
def test_forward_is_f_rms_norm_in_fp32_cast_to_weight_dtype(x_dtype, weight_dtype):
    norm = _norm(dtype=weight_dtype)
    x = torch.randn(2, 7, 24).to(x_dtype).requires_grad_(True)
    y = norm(x)
    expected = F.rms_norm(x.float(), (24,), norm.weight.float(), 1e-5).to(weight_dtype)
    assert y.dtype == weight_dtype and torch.equal(y, expected)  # bitwise on the CPU (reference) path
    g = torch.randn_like(y)
    ours = torch.autograd.grad(y, (x, norm.weight), g)
    theirs = torch.autograd.grad(expected, (x, norm.weight), g)
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_add_forward_equals_add_then_norm():
    norm = _norm()
    residual = torch.randn(2, 7, 24, requires_grad=True)
    branch = torch.randn(2, 7, 24, dtype=torch.bfloat16, requires_grad=True)
    s, y = add_rms_norm(residual, branch, norm)
    s_ref = residual + branch
    y_ref = norm(s_ref)
    assert s.dtype == torch.float32 and torch.equal(s, s_ref) and torch.equal(y, y_ref)
    grads = torch.autograd.grad((s, y), (residual, branch, norm.weight), (torch.ones_like(s), torch.ones_like(y)))
    grads_ref = torch.autograd.grad((s_ref, y_ref), (residual, branch, norm.weight),
                                    (torch.ones_like(s), torch.ones_like(y)))
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_add_rms_norm_with_other_norms_and_errors():
    residual, branch = torch.randn(2, 5, 24), torch.randn(2, 5, 24)
    s, y = add_rms_norm(residual, branch, nn.Identity())  # e.g. a pruned final norm
    assert torch.equal(s, residual + branch) and torch.equal(y, s)
    norm = _norm()
    with pytest.raises(ValueError, match=r'RmsNormFp32\(24\) expects a floating x of shape \(\.\.\., 24\), got '
                                         r'torch.float32 of shape \(2, 5, 16\)'):
        norm(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match=r"add_forward expects a floating branch of the residual's shape"):
        norm.add_forward(residual, torch.randn(2, 5, 1))
    with pytest.raises(ValueError, match='floating residual'):
        norm.add_forward(torch.ones(2, 24, dtype=torch.int64), torch.ones(2, 24))

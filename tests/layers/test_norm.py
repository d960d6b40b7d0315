"""vmamba.layers.norm: the channels-last LayerNorm modules against F.layer_norm (values, output dtypes, gradients),
and LayerNormLastDim's fused residual add (``add_forward``) against the add followed by the norm."""
import pytest
import torch
import torch.nn.functional as F

from vmamba.layers.norm import LayerNorm2dFp32, LayerNormFp32, LayerNormLastDim, add_layer_norm


def _norm(cls, channels=24, seed=0):
    torch.manual_seed(seed)
    norm = cls(channels, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    return norm


def test_last_dim_norm_equals_layer_norm_and_its_gradients():
    norm = _norm(LayerNormLastDim)
    x = torch.randn(2, 5, 7, 24, requires_grad=True)
    y = norm(x)
    expected = F.layer_norm(x, (24,), norm.weight, norm.bias, 1e-5)
    assert y.dtype == torch.float32 and y.shape == x.shape
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-6)
    g = torch.randn_like(y)
    ours = torch.autograd.grad(y, (x, norm.weight, norm.bias), g)
    theirs = torch.autograd.grad(expected, (x, norm.weight, norm.bias), g)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_last_dim_norm_returns_autocast_dtype_computed_in_fp32():
    """Under autocast the result is what the next autocast op would cast an fp32 LayerNorm to: fp32 math, rounded
    once to the autocast dtype."""
    norm = _norm(LayerNormLastDim)
    x = torch.randn(3, 4, 4, 24)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = norm(x)
    assert y.dtype == torch.bfloat16
    expected = F.layer_norm(x, (24,), norm.weight, norm.bias, 1e-5).to(torch.bfloat16)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    assert norm(x.to(torch.bfloat16)).dtype == torch.bfloat16  # no autocast: input dtype


def test_add_forward_equals_add_then_norm():
    """fp32 residual stream + bf16 branch: s = residual + branch in fp32, y = norm(s), gradients of both uses of s."""
    norm = _norm(LayerNormLastDim)
    residual = torch.randn(2, 5, 7, 24, requires_grad=True)
    branch = torch.randn(2, 5, 7, 24, dtype=torch.bfloat16, requires_grad=True)
    s, y = add_layer_norm(residual, branch, norm)
    s_ref = residual + branch
    y_ref = norm(s_ref)
    assert s.dtype == torch.float32 and y.dtype == torch.float32
    assert torch.equal(s, s_ref) and torch.equal(y, y_ref)
    g_s, g_y = torch.randn_like(s), torch.randn_like(y)
    ours = torch.autograd.grad((s, y), (residual, branch, norm.weight, norm.bias), (g_s, g_y))
    theirs = torch.autograd.grad((s_ref, y_ref), (residual, branch, norm.weight, norm.bias), (g_s, g_y))
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_add_forward_dtypes_under_autocast_and_errors():
    """y follows forward's rule for s (the autocast dtype under autocast, else s's dtype)."""
    norm = _norm(LayerNormLastDim)
    residual, branch = torch.randn(3, 4, 24), torch.randn(3, 4, 24, dtype=torch.bfloat16)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        s, y = norm.add_forward(residual, branch)
        assert s.dtype == torch.float32 and y.dtype == torch.bfloat16
        assert torch.equal(y, norm(residual + branch))
    s, y = norm.add_forward(residual.double(), branch.double())
    assert s.dtype == y.dtype == torch.float64
    with pytest.raises(ValueError, match=r'LayerNormLastDim\(24\) expects'):
        norm.add_forward(torch.randn(3, 23), torch.randn(3, 23))
    with pytest.raises(ValueError, match=r"add_forward expects a floating branch of the residual's shape \(3, 4, 24\)"):
        norm.add_forward(residual, torch.randn(1, 4, 24))
    with pytest.raises(ValueError, match='got torch.int64'):
        norm.add_forward(residual, torch.ones(3, 4, 24, dtype=torch.int64))


def test_fp32_norms_are_not_cast_back():
    last = _norm(LayerNormFp32, seed=1)
    x = torch.randn(2, 3, 5, 24, dtype=torch.bfloat16)
    y = last(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, F.layer_norm(x.float(), (24,), last.weight, last.bias, 1e-5), rtol=1e-6, atol=1e-6)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert last(x).dtype == torch.float32
    chw = _norm(LayerNorm2dFp32, seed=2)
    x = torch.randn(2, 24, 3, 5, dtype=torch.bfloat16)
    y = chw(x)
    assert y.dtype == torch.float32 and y.shape == x.shape
    expected = F.layer_norm(x.float().permute(0, 2, 3, 1), (24,), chw.weight, chw.bias, 1e-5).permute(0, 3, 1, 2)
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-6)


def test_layer_norm_2d_is_a_drop_in_for_timm():
    from timm.layers import LayerNorm2d as TimmLayerNorm2d

    from vmamba.layers.norm import LayerNorm2d
    ours = _norm(LayerNorm2d, seed=3)
    theirs = TimmLayerNorm2d(24, eps=1e-5)
    theirs.load_state_dict(ours.state_dict())
    for x in (torch.randn(2, 24, 5, 7), torch.randn(2, 24, 5, 7).contiguous(memory_format=torch.channels_last)):
        x.requires_grad_(True)
        y, expected = ours(x), theirs(x)
        assert y.dtype == expected.dtype == torch.float32
        torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-6)
        g = torch.randn_like(y)
        for a, b in zip(torch.autograd.grad(y, (x, ours.weight, ours.bias), g),
                        torch.autograd.grad(expected, (x, theirs.weight, theirs.bias), g)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    x = torch.randn(2, 24, 3, 3, dtype=torch.bfloat16)
    with torch.autocast('cpu', dtype=torch.bfloat16):  # F.layer_norm's dtype: CPU autocast keeps it (CUDA: fp32)
        y, expected = ours(x), theirs(x)
    assert y.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(y, expected, rtol=1e-2, atol=1e-2)
    with pytest.raises(ValueError, match=r'LayerNorm2d\(24\) expects'):
        ours(torch.randn(2, 23, 3, 3))

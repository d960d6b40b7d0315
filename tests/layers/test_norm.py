"""vmamba.layers.norm: the channels-last LayerNorm modules against F.layer_norm (values, output dtypes, gradients)."""
import pytest
import torch
import torch.nn.functional as F

from vmamba.layers.norm import LayerNorm2dFp32, LayerNormFp32, LayerNormLastDim


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

"""timm's per-model test logic (tests/test_models.py of timm 1.0.31), re-stated for the zoo's tiny models.

Parametrised over every model registered by a ``vmamba.models.*`` module whose name starts with ``test_``, so each
family's tiny entrypoints are covered as soon as they are registered. Models whose ``forward_features`` returns a
token sequence (B, L, C) (Vim-style) get timm's "non-standard" (ViT-like) variants of the checks, as timm does for
``vit_*``: no pool-size / unpooled-head checks and no ``FeatureListNet`` features. Checks, as in timm: forward (+ grad
checkpointing gives the same output), backward (every parameter gets a gradient), the cfg / API contract on the meta
device (unknown kwargs raise, head resets, pool size, num_features, head_hidden_size, bf16, classifier / first_conv
names, factory device, frozen params survive resets), ``features_only`` (list and getter wrappers),
``forward_intermediates``, the prune contract, torch.fx forward / backward, ``init_weights`` after ``to_empty``.
Added: ``torch.compile(fullgraph=True)``. Not run: TorchScript (timm's ``EXCLUDE_JIT_FILTERS`` case: the models call
the ``vmamba::selective_scan`` custom op through Python scan-pattern objects, and ``torch.jit.script`` is deprecated).
"""
import copy
import fnmatch
import functools
import inspect
import math

import pytest
import torch

import timm
import vmamba  # noqa: F401  (registers the zoo)
from timm.layers import get_channel_dim, get_spatial_dim
from timm.models import FeatureInfo, get_notrace_functions, get_notrace_modules
from timm.models._manipulate import group_parameters

TARGET_FWD_SIZE = 384
TARGET_BWD_SIZE = 128
TARGET_FFEAT_SIZE = 96
TARGET_FX_SIZE = 128


def _zoo_test_models():
    names = []
    for name in timm.list_models('test_*'):
        if timm.models.model_entrypoint(name).__module__.startswith('vmamba.models.'):
            names.append(name)
    return sorted(names)


TEST_MODELS = _zoo_test_models()


def _input_size(model, target):
    """timm's _get_input_size: the cfg input size, shrunk to ``target`` unless the model needs a fixed size."""
    cfg = model.pretrained_cfg
    input_size = cfg['input_size']
    if cfg.get('fixed_input_size'):
        return input_size
    if max(input_size) > target:
        input_size = cfg.get('min_input_size') or tuple(min(s, target) for s in input_size)
    return input_size


@functools.lru_cache(maxsize=None)
def _is_sequence_model(model_name):
    """True when forward_features returns (B, L, C) tokens (timm's NON_STD, ViT-like models); checked on meta."""
    model = timm.create_model(model_name, device='meta').eval()
    x = torch.randn(1, *model.pretrained_cfg['input_size'], device='meta')
    return model.forward_features(x).ndim == 3


def test_zoo_registers_test_models():
    assert 'test_vmamba' in TEST_MODELS


@pytest.mark.parametrize('model_name', TEST_MODELS)
def test_model_forward(model_name):
    model = timm.create_model(model_name).eval()
    x = torch.randn(1, *_input_size(model, TARGET_FWD_SIZE))
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, model.num_classes)
        assert not torch.isnan(out).any()
        model.set_grad_checkpointing()
        torch.testing.assert_close(model(x), out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('model_name', TEST_MODELS)
def test_model_backward(model_name):
    model = timm.create_model(model_name, num_classes=42).train()
    x = torch.randn(2, *_input_size(model, TARGET_BWD_SIZE))
    out = model(x)
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f'no gradient for {missing[:5]}'
    assert out.shape == (2, 42)
    assert not torch.isnan(out).any()


def _assert_api_contract(model, model_name):
    with pytest.raises(TypeError):
        timm.create_model(model_name, device='meta', not_a_model_arg=1)
    assert inspect.signature(model.reset_classifier).parameters['global_pool'].default is None
    groups = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    assert len(set(groups.values())) > 1, 'group_matcher() puts all params in one group'
    names = [n for n, _ in model.named_parameters()]
    for pattern in model.no_weight_decay():
        assert any(fnmatch.fnmatch(n, pattern) for n in names), f'no_weight_decay() entry {pattern!r} matches nothing'


@pytest.mark.parametrize('model_name', TEST_MODELS)
def test_model_default_cfgs(model_name):
    """Config metadata, head resets and output shapes, on the meta device (no weights allocated)."""
    device = 'meta'
    sequence_model = _is_sequence_model(model_name)
    with torch.device(device):
        model = timm.create_model(model_name, device=device, dtype=torch.float32).eval()
    _assert_api_contract(model, model_name)
    cfg = model.pretrained_cfg
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    assert model.in_chans == cfg['input_size'][0]
    output_fmt = getattr(model, 'output_fmt', 'NCHW')
    spatial_axis = get_spatial_dim(output_fmt)
    feat_axis = getattr(model, 'feature_dim', None) or (-1 if sequence_model else get_channel_dim(output_fmt))
    x = torch.randn(1, *cfg['input_size'], device=device)

    features = model.forward_features(x)
    pre_logits = model.forward_head(features, pre_logits=True)
    if not sequence_model:
        assert tuple(features.shape[a] for a in spatial_axis) == tuple(cfg['pool_size'])
    assert features.shape[feat_axis] == model.num_features
    assert pre_logits.shape[1] == model.head_hidden_size

    model.to(torch.bfloat16)  # dtype change after a forward must not leave fp32 activations behind
    assert model(x.to(torch.bfloat16)).dtype == torch.bfloat16
    model.to(torch.float32)

    model.reset_classifier(0)
    assert model.num_classes == 0
    out = model(x)
    assert out.shape == pre_logits.shape
    if not sequence_model:
        model.reset_classifier(0, '')
        out = model(x)
        assert out.ndim == 4 and tuple(out.shape[a] for a in spatial_axis) == tuple(cfg['pool_size'])

    model = timm.create_model(model_name, num_classes=0, device=device, dtype=torch.float32).eval()
    assert model(x).shape == pre_logits.shape
    if not sequence_model:
        model = timm.create_model(model_name, num_classes=0, global_pool='', device=device, dtype=torch.float32)
        out = model.eval()(x)
        assert out.ndim == 4 and tuple(out.shape[a] for a in spatial_axis) == tuple(cfg['pool_size'])

    state_dict = model.state_dict()
    full_state_dict = timm.create_model(model_name, device=device).state_dict()
    for classifier in (cfg['classifier'],) if isinstance(cfg['classifier'], str) else cfg['classifier']:
        assert classifier + '.weight' in full_state_dict
    for first_conv in (cfg['first_conv'],) if isinstance(cfg['first_conv'], str) else cfg['first_conv']:
        assert first_conv + '.weight' in state_dict

    # reset_classifier keeps device / dtype / train mode of the model
    model.to(device=device, dtype=torch.float64)
    model.reset_classifier(0)
    model.reset_classifier(2)
    head_params = list(model.get_classifier().parameters())
    assert head_params and all(p.device.type == device and p.dtype == torch.float64 for p in head_params)
    assert all(not m.training for m in model.modules())

    # the factory places everything on the requested device; frozen params stay frozen through resets
    model = timm.create_model(model_name, device=device, dtype=torch.float32)
    misplaced = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type != device]
    assert not misplaced
    model.requires_grad_(False)
    model.reset_classifier(0)
    if not sequence_model:
        model.reset_classifier(0, '')
    assert not [n for n, p in model.named_parameters() if p.requires_grad]


def _check_feature_shapes(outputs, channels, reductions, input_size, batch_size, output_fmt='NCHW'):
    feat_axis, spatial_axis = get_channel_dim(output_fmt), get_spatial_dim(output_fmt)
    assert len(outputs) == len(channels)
    for c, r, o in zip(channels, reductions, outputs):
        assert o.shape[0] == batch_size and o.shape[feat_axis] == c
        for axis, size in zip(spatial_axis, input_size[-2:]):
            assert size / (2 * r) < o.shape[axis] <= math.ceil(size / r) + 1
        assert not torch.isnan(o).any()


@pytest.mark.parametrize('model_name', TEST_MODELS)
@pytest.mark.parametrize('feature_cls', ['list', 'getter'])
def test_model_forward_features(model_name, feature_cls):
    if feature_cls == 'list' and _is_sequence_model(model_name):
        pytest.skip('timm runs FeatureListNet only on models with spatial stage outputs (EXCLUDE_FEAT_FILTERS)')
    model = timm.create_model(model_name, features_only=True, feature_cls=feature_cls).eval()
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert len(channels) >= 3
    input_size = _input_size(model, TARGET_FFEAT_SIZE)
    with torch.no_grad():
        outputs = model(torch.randn(1, *input_size))
    _check_feature_shapes(outputs, channels, reductions, input_size, 1, getattr(model, 'output_fmt', 'NCHW'))


@pytest.mark.parametrize('model_name', TEST_MODELS)
def test_model_forward_intermediates(model_name):
    model = timm.create_model(model_name).eval()
    info = FeatureInfo(model.feature_info, len(model.feature_info))
    input_size = _input_size(model, TARGET_FFEAT_SIZE)
    x = torch.randn(1, *input_size)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x, output_fmt='NCHW')
        _check_feature_shapes(intermediates, info.channels(), info.reduction(), input_size, 1)
        torch.testing.assert_close(final, model.forward_features(x), rtol=1e-5, atol=1e-8)
        model.set_grad_checkpointing()
        final_ckpt, _ = model.forward_intermediates(x, output_fmt='NCHW')
        torch.testing.assert_close(final_ckpt, final, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('model_name', TEST_MODELS)
def test_prune_intermediate_layers_contract(model_name):
    """Pruned / stop_early taps equal the full model's; pruned models train with no unused parameters."""
    model = timm.create_model(model_name).eval()
    x = torch.randn(2, *_input_size(model, TARGET_FFEAT_SIZE))
    last = len(model.feature_info) - 1
    with torch.no_grad():
        expected = model(x)
        taps = model.forward_intermediates(x, intermediates_only=True)
        pruned = copy.deepcopy(model)
        pruned.prune_intermediate_layers([last], prune_head=False)
        torch.testing.assert_close(pruned(x), expected)

    for i in range(last + 1):
        with torch.no_grad():
            selected = model.forward_intermediates(x, indices=[i], stop_early=True, intermediates_only=True)
            torch.testing.assert_close(selected[0], taps[i], msg=f'stop_early tap {i}')
            pruned = copy.deepcopy(model)
            take_indices = pruned.prune_intermediate_layers([i])
            selected = pruned.forward_intermediates(x, indices=take_indices, intermediates_only=True)
            torch.testing.assert_close(selected[0], taps[i], msg=f'pruned tap {i}')
            # w/o the norm (as features_only), spatial features end at the tap
            pruned = copy.deepcopy(model)
            take_indices = pruned.prune_intermediate_layers([i], prune_norm=True)
            features = pruned.forward_features(x)
            if i < last and features.ndim == 4:
                if features.shape != taps[i].shape:
                    features = features.permute(0, 3, 1, 2)  # NHWC
                torch.testing.assert_close(features, taps[i], msg=f'pruned features {i}')
        pruned.train()
        selected = pruned.forward_intermediates(x, indices=take_indices, intermediates_only=True)
        (sum(f.sum() for f in selected) + pruned.forward_features(x).sum()).backward()
        unused = [n for n, p in pruned.named_parameters() if p.requires_grad and p.grad is None]
        assert not unused, f'pruned to {i}, unused params: {unused}'


def _fx_model(model, train=False):
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                         param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    return create_feature_extractor(
        model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]], tracer_kwargs=tracer_kwargs)


@pytest.mark.parametrize('model_name', TEST_MODELS)
def test_model_forward_fx(model_name):
    pytest.importorskip('torchvision')
    model = timm.create_model(model_name).eval()
    x = torch.randn(1, *_input_size(model, TARGET_FX_SIZE))
    with torch.inference_mode():
        expected = model(x)
        fx_out = torch.cat(tuple(_fx_model(model)(x).values()))
    torch.testing.assert_close(fx_out, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('model_name', TEST_MODELS)
def test_model_backward_fx(model_name):
    pytest.importorskip('torchvision')
    model = timm.create_model(model_name, num_classes=42).train()
    num_params = sum(p.numel() for p in model.parameters())
    fx_model = _fx_model(model, train=True)
    out = torch.cat(tuple(fx_model(torch.randn(2, *_input_size(model, TARGET_FX_SIZE))).values()))
    out.mean().backward()
    assert out.shape[-1] == 42
    assert sum(p.grad.numel() for p in fx_model.parameters() if p.grad is not None) == num_params


@pytest.mark.parametrize('model_name', TEST_MODELS)
def test_init_weights_after_to_empty(model_name):
    model = timm.create_model(model_name, device='meta', dtype=torch.float64, num_classes=5)
    model = model.to_empty(device='cpu').eval()
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.fill_(float('nan'))
    model.init_weights()
    bad = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if not torch.isfinite(t).all()]
    assert not bad, f'not re-initialised: {bad[:5]}'
    x = torch.randn(1, *_input_size(model, TARGET_FFEAT_SIZE), dtype=torch.float64)
    assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize('model_name', TEST_MODELS)
def test_torch_compile_fullgraph(model_name):
    model = timm.create_model(model_name).eval()
    x = torch.randn(1, *_input_size(model, TARGET_FFEAT_SIZE))
    compiled = torch.compile(model, fullgraph=True, backend='eager')
    with torch.no_grad():
        expected = model(x)  # eager first: scan patterns build (and cache) their routes outside the trace
        torch.testing.assert_close(compiled(x), expected)

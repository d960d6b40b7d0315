"""VMamba family: official-checkpoint parity, checkpoint conversion, SS2D against an explicit per-route loop,
odd map sizes, scan patterns, precision policy, the block's fused residual add + norm2 against the unfused formula,
and input errors. CPU, tiny models."""
import json
import math
import re

import pytest
import torch
import torch.nn.functional as F

import timm
import vmamba
from vmamba.layers.ss2d import SS2D
from vmamba.models.vmamba import (
    PatchMerging, VMamba, VMambaBlock, VMambaStage, build_from_official_kwargs, checkpoint_filter_fn)

# Official checkpoint stem -> our model name, and the parameter count recounted in shared/specs/vmamba.md §1.2.
RELEASED = {
    'vssm1_tiny_0230s': ('vmamba_tiny_s1l8', 30.25),
    'vssm1_small_0229s': ('vmamba_small_s1l20', 49.01),
    'vssm1_base_0229s': ('vmamba_base_s1l20', 86.61),
    'vssm_tiny_0230': ('vmamba_tiny_s2l5', 30.71),
    'vssm_small_0229': ('vmamba_small_s2l15', 50.15),
    'vssm_base_0229': ('vmamba_base_s2l15', 88.56),
    'vssmtiny_dp01': ('vmamba_tiny_v0', 22.89),
    'vssmsmall_dp03': ('vmamba_small_v0', 44.42),
    'vssmbase_dp06': ('vmamba_base_v0', 76.25),
}
TOL = dict(atol=1e-4, rtol=1e-4)


def _perturb_(module: torch.nn.Module, scale: float = 0.2, seed: int = 0) -> None:
    """Add noise to every parameter, so no init value (ones, zeros, log(1) = 0) hides a mistake."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype))


# ----------------------------------------------------------------------------------------------------------------
# Parity with the official code (tiny_v3 fixture)

def test_fixture_parity_from_official(tiny_v3):
    model = vmamba.from_official('vmamba', tiny_v3['config']['constructor_kwargs'],
                                 tiny_v3['root'] / 'checkpoint.pth').eval()
    expected = tiny_v3['output']
    with torch.no_grad():
        logits = model(tiny_v3['input'])
        final, features = model.forward_intermediates(tiny_v3['input'])
    torch.testing.assert_close(logits, expected['logits'], **TOL)
    assert len(features) == 4
    for ours, ref in zip(features, expected['features']):
        torch.testing.assert_close(ours, ref, **TOL)
    torch.testing.assert_close(model.forward_head(final), logits)


def test_fixture_parity_feature_norms(tiny_v3):
    """Backbone_VSSM's outputs: per-stage LayerNorms (not in the classification checkpoint, so at init 1 / 0)."""
    official = torch.load(tiny_v3['root'] / 'checkpoint.pth', weights_only=True)
    model = timm.create_model('test_vmamba', num_classes=10, feature_norms=True).eval()
    missing, unexpected = model.load_state_dict(checkpoint_filter_fn(official), strict=False)
    assert not unexpected
    assert sorted(missing) == sorted(f'feature_norms.{i}.{p}' for i in range(4) for p in ('weight', 'bias'))
    with torch.no_grad():
        normed = model.forward_intermediates(tiny_v3['input'], norm=True, intermediates_only=True)
        raw = model.forward_intermediates(tiny_v3['input'], intermediates_only=True)
    for ours, ref in zip(normed, tiny_v3['output']['features_outnorm']):
        torch.testing.assert_close(ours, ref, **TOL)
    for ours, ref in zip(raw, tiny_v3['output']['features']):
        torch.testing.assert_close(ours, ref, **TOL)


def test_fixture_checkpoint_variants_load_identically(tiny_v3):
    """Bare state dict, container with training extras, 4-D 1x1 weights, 'module.' prefix, already converted."""
    official = torch.load(tiny_v3['root'] / 'checkpoint.pth', weights_only=True)['model']
    reference = checkpoint_filter_fn({'model': official})
    four_d = {k: v[:, :, None, None] if re.search(r'(in_proj|out_proj|fc1|fc2)\.weight$', k) else v
              for k, v in official.items()}
    assert sum(v.ndim == 4 and v.shape[2:] == (1, 1) for v in four_d.values()) > 10
    variants = {
        'bare': official,
        'container': {'model': official, 'optimizer': {'state': {}}, 'epoch': 3, 'config': {'MODEL': 'x'},
                      'model_ema': {k: torch.zeros_like(v) for k, v in official.items()}},
        'state_dict key': {'state_dict': official},
        'module prefix': {'model': {f'module.{k}': v for k, v in official.items()}},
        '4-D linear2d': {'model': four_d},
        'converted twice': checkpoint_filter_fn(reference),
    }
    for name, checkpoint in variants.items():
        converted = checkpoint_filter_fn(checkpoint, None)
        assert converted.keys() == reference.keys(), name
        for key in reference:
            assert torch.equal(converted[key], reference[key]), f'{name}: {key}'
    model = build_from_official_kwargs(tiny_v3['config']['constructor_kwargs']).eval()
    model.load_state_dict(reference, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(model(tiny_v3['input']), tiny_v3['output']['logits'], **TOL)


# ----------------------------------------------------------------------------------------------------------------
# Released checkpoints: key -> shape manifests

@pytest.mark.parametrize('stem', sorted(RELEASED))
def test_manifest_maps_completely(vmamba_fixtures, stem):
    path = vmamba_fixtures / 'vmamba' / 'manifests' / f'{stem}.json'
    if not path.is_file():
        pytest.skip(f'{path} not found')
    manifest = json.loads(path.read_text())
    name, params_m = RELEASED[stem]
    official = {k: torch.empty(shape, device='meta') for k, shape in manifest.items()}
    converted = checkpoint_filter_fn({'model': official})
    model = timm.create_model(name, device='meta')
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(own) - set(converted)) == [], 'model parameters left unmapped'
    assert sorted(set(converted) - set(own)) == [], 'checkpoint keys with no model parameter'
    mismatched = {k: (tuple(converted[k].shape), own[k]) for k in own if tuple(converted[k].shape) != own[k]}
    assert not mismatched
    assert len(converted) == len(manifest)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == params_m


def test_legacy_v0_names_roundtrip():
    """Jan-2024 v0 names (patch_embed.proj, ln_1, self_attention, downsample.reduction, head) and the one-file
    numbered patch merging (downsample.1 = norm, .2 = reduction) land on the right parameters."""
    model = timm.create_model('test_vmamba_v0')
    _perturb_(model)
    ours = model.state_dict()

    def to_legacy(key, numbered_merging):
        key = re.sub(r'^stem\.conv1\.', 'patch_embed.proj.', key)
        key = re.sub(r'^stem\.norm1\.', 'patch_embed.norm.', key)
        key = re.sub(r'^head\.fc\.', 'head.', key)
        ds = re.match(r'^stages\.(\d+)\.downsample\.(norm|reduction)\.(.+)$', key)
        if ds:
            index = {'norm': '1', 'reduction': '2'}[ds[2]] if numbered_merging else ds[2]
            return f'layers.{int(ds[1]) - 1}.downsample.{index}.{ds[3]}'
        block = re.match(r'^stages\.(\d+)\.blocks\.(\d+)\.(.+)$', key)
        if block:
            rest = block[3].replace('norm1.', 'ln_1.').replace('mixer.', 'self_attention.')
            rest = {'self_attention.dt_proj_weight': 'self_attention.dt_projs_weight',
                    'self_attention.dt_bias': 'self_attention.dt_projs_bias',
                    'self_attention.A_log': 'self_attention.A_logs',
                    'self_attention.D': 'self_attention.Ds'}.get(rest, rest)
            rest = rest.replace('self_attention.conv.', 'self_attention.conv2d.')
            return f'layers.{block[1]}.blocks.{block[2]}.{rest}'
        return key

    for numbered in (False, True):
        legacy = {to_legacy(k, numbered): v for k, v in ours.items()}
        assert 'layers.0.blocks.0.self_attention.A_logs' in legacy and 'head.weight' in legacy
        converted = checkpoint_filter_fn({'model': legacy})
        assert converted.keys() == ours.keys()
        for key in ours:
            assert torch.equal(converted[key], ours[key]), key


def test_filter_maps_backbone_outnorms():
    converted = checkpoint_filter_fn({'patch_embed.0.weight': torch.zeros(12, 3, 3, 3),
                                      'outnorm2.weight': torch.ones(96), 'outnorm2.bias': torch.zeros(96)})
    assert sorted(converted) == ['feature_norms.2.bias', 'feature_norms.2.weight', 'stem.conv1.weight']


# ----------------------------------------------------------------------------------------------------------------
# SS2D against a direct per-route loop (independent of vmamba.scans and the kernel)

def _ss2d_cross_loop(m: SS2D, x: torch.Tensor) -> torch.Tensor:
    """SS2D with the cross scan written out: explicit transposes / flips and a step-by-step fp64 recurrence."""
    p = {k: v.detach().double() for k, v in m.state_dict().items()}
    x = x.double()
    batch, _, height, width = x.shape
    d_inner, n, r = m.d_inner, m.d_state, m.dt_rank
    u = torch.einsum('oc,bchw->bohw', p['in_proj.weight'], x)
    if m.gated:
        u, z = u[:, :d_inner], u[:, d_inner:]
    u = F.silu(F.conv2d(u, p['conv.weight'], p.get('conv.bias'), padding=m.conv.padding, groups=d_inner))
    rows = u.reshape(batch, d_inner, height * width)  # step h * W + w
    cols = u.transpose(2, 3).reshape(batch, d_inner, width * height)  # step w * H + h
    y = torch.zeros(batch, d_inner, height, width, dtype=torch.float64)
    for k, seq in enumerate([rows, cols, rows.flip(-1), cols.flip(-1)]):
        proj = torch.einsum('cd,bdl->bcl', p['x_proj_weight'][k], seq)
        dt_low, b_k, c_k = proj[:, :r], proj[:, r:r + n], proj[:, r + n:]
        delta = F.softplus(torch.einsum('dr,brl->bdl', p['dt_proj_weight'][k], dt_low) + p['dt_bias'][k][:, None])
        a = -torch.exp(p['A_log'][k * d_inner:(k + 1) * d_inner])
        skip = p['D'][k * d_inner:(k + 1) * d_inner]
        h = torch.zeros(batch, d_inner, n, dtype=torch.float64)
        outs = []
        for t in range(seq.shape[-1]):
            dt = delta[:, :, t, None]
            h = torch.exp(dt * a) * h + dt * b_k[:, None, :, t] * seq[:, :, t, None]
            outs.append((h * c_k[:, None, :, t]).sum(-1) + skip * seq[:, :, t])
        y_k = torch.stack(outs, dim=-1)
        if k >= 2:
            y_k = y_k.flip(-1)
        y += y_k.view(batch, d_inner, height, width) if k % 2 == 0 else \
            y_k.view(batch, d_inner, width, height).transpose(2, 3)
    y = F.layer_norm(y.permute(0, 2, 3, 1), (d_inner,), p['out_norm.weight'], p['out_norm.bias'],
                     m.out_norm.eps).permute(0, 3, 1, 2)
    if m.gated:
        y = y * F.silu(z)
    return torch.einsum('cd,bdhw->bchw', p['out_proj.weight'], y)


@pytest.mark.parametrize('height,width', [(1, 1), (3, 5), (7, 4), (6, 6)])
@pytest.mark.parametrize('gated,d_state,conv_bias', [(False, 1, False), (True, 4, True)], ids=['v2', 'v0'])
def test_ss2d_matches_per_route_loop(height, width, gated, d_state, conv_bias):
    torch.manual_seed(0)
    m = SS2D(8, d_state=d_state, ssm_ratio=1.5, dt_rank=3, conv_bias=conv_bias, gated=gated, dtype=torch.float64)
    _perturb_(m)
    x = torch.randn(2, 8, height, width, dtype=torch.float64)
    expected = _ss2d_cross_loop(m, x)
    with torch.no_grad():
        torch.testing.assert_close(m(x), expected, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(m.float()(x.float()), expected.float(), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize('scan,gated,d_state', [('cross', False, 1), ('cross', True, 4), ('atrous', True, 4),
                                               ('bidirectional', False, 1), ('local_bidirectional', False, 2)])
def test_ss2d_channels_last_matches_channel_first(scan, gated, d_state):
    """Same weights, NHWC (route gather/merge kernels, nn.Linear, last-dim LayerNorm) vs NCHW path: outputs and the
    gradients of the input and of every parameter, odd 5x7 map (padding for atrous)."""
    torch.manual_seed(0)
    nchw = SS2D(12, d_state=d_state, gated=gated, scan=scan, dtype=torch.float64)
    _perturb_(nchw)
    nhwc = SS2D(12, d_state=d_state, gated=gated, scan=scan, channel_first=False, dtype=torch.float64)
    nhwc.load_state_dict(nchw.state_dict())
    x = torch.randn(2, 12, 5, 7, dtype=torch.float64, requires_grad=True)
    y_nchw = nchw(x)
    y_nhwc = nhwc(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(y_nhwc, y_nchw, rtol=1e-12, atol=1e-12)
    grads_nchw = torch.autograd.grad(y_nchw.square().sum(), [x, *nchw.parameters()])
    grads_nhwc = torch.autograd.grad(y_nhwc.square().sum(), [x, *nhwc.parameters()])
    for name, a, b in zip(['x'] + [n for n, _ in nchw.named_parameters()], grads_nhwc, grads_nchw):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


def test_ss2d_parameter_layout_and_init():
    m = SS2D(32, d_state=4, ssm_ratio=2.0)
    K, D, N, R = 4, 64, 4, 2
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        'x_proj_weight': (K, R + 2 * N, D), 'dt_proj_weight': (K, D, R), 'dt_bias': (K, D), 'A_log': (K * D, N),
        'D': (K * D,), 'in_proj.weight': (D, 32), 'conv.weight': (D, 1, 3, 3), 'out_norm.weight': (D,),
        'out_norm.bias': (D,), 'out_proj.weight': (32, D)}
    torch.testing.assert_close(m.A_log, torch.log(torch.arange(1., N + 1)).expand(K * D, N))
    assert torch.equal(m.D, torch.ones(K * D))
    dt = F.softplus(m.dt_bias)
    assert dt.min() >= 1e-3 - 1e-7 and dt.max() <= 0.1 + 1e-7
    assert m.x_proj_weight.abs().max() <= D ** -0.5 and m.dt_proj_weight.abs().max() <= R ** -0.5


@pytest.mark.parametrize('scan,size', [('cross', (5, 6)), ('atrous', (5, 7))])
def test_ss2d_recomputing_routes_scan_matches_plain_autograd(monkeypatch, scan, size):
    """Training SS2D keeps only the token map and recomputes routes and projections in the backward
    (_RoutesScan); outputs and every gradient equal the plain autograd graph (fp64, CPU reference scan)."""
    import vmamba.layers.ss2d as ss2d_module
    torch.manual_seed(0)
    m = SS2D(12, d_state=3, dt_rank=2, channel_first=False, scan=scan, dtype=torch.float64)
    with torch.no_grad():
        for param in m.parameters():
            param.add_(0.2 * torch.randn_like(param))
    x = torch.randn(2, *size, 12, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, *size, 12, dtype=torch.float64)

    def grads():
        y = m(x)
        return [y.detach()] + list(torch.autograd.grad((y * weight).sum(), [x, *m.parameters()]))

    calls = []
    apply = ss2d_module._RoutesScan.apply
    monkeypatch.setattr(ss2d_module._RoutesScan, 'apply', lambda *args: calls.append(1) or apply(*args))
    recomputed = grads()
    assert calls == [1]
    monkeypatch.setattr(ss2d_module, 'dispatch_through_custom_op', lambda t: True)  # the plain graph
    plain = grads()
    assert calls == [1]
    names = ['y', 'x'] + [n for n, _ in m.named_parameters()]
    for name, a, b in zip(names, recomputed, plain):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


def test_ss2d_recomputing_routes_scan_with_frozen_parts():
    """Only some of _RoutesScan's inputs need gradients: frozen projections, or a map that needs none."""
    torch.manual_seed(0)
    m = SS2D(8, d_state=2, channel_first=False)
    x = torch.randn(1, 4, 4, 8)
    m.x_proj_weight.requires_grad_(False)
    m.dt_proj_weight.requires_grad_(False)
    m(x.requires_grad_(True)).sum().backward()
    assert x.grad is not None and m.x_proj_weight.grad is None and m.A_log.grad is not None
    m.x_proj_weight.requires_grad_(True)
    for param in [*m.in_proj.parameters(), *m.conv.parameters()]:
        param.requires_grad_(False)
    m(torch.randn(1, 4, 4, 8)).sum().backward()  # the token map needs no gradient
    assert m.x_proj_weight.grad is not None


def test_ss2d_inference_packing_cache_follows_parameter_updates():
    """No-grad calls reuse the packed scan parameters until a parameter changes in place or the activation dtype
    changes; results always equal a fresh (autograd) pack."""
    torch.manual_seed(0)
    m = SS2D(16, d_state=4, channel_first=False).eval()
    x = torch.randn(2, 5, 6, 16)
    with torch.no_grad():
        first = m(x)
        entry = m._packed._entry
        torch.testing.assert_close(m(x), first, rtol=0, atol=0)
        assert m._packed._entry is entry
        for param in (m.x_proj_weight, m.dt_proj_weight, m.A_log):  # in-place updates, like an optimizer step
            param.add_(0.5 * torch.randn_like(param))
        updated = m(x)
        assert m._packed._entry is not entry and not torch.allclose(updated, first, atol=1e-4)
        m(x.double().float())  # same dtype: still cached
        with torch.autocast('cpu', dtype=torch.bfloat16):
            m(x)
        assert m._packed._entry[1][0].dtype == torch.bfloat16  # x_proj weight in the activation dtype
    torch.testing.assert_close(updated, m(x).detach(), rtol=0, atol=0)
    m.half()
    assert m._packed._entry is None


@pytest.mark.parametrize('scan,height,width,gated', [('cross', 5, 6, False), ('atrous', 5, 7, True)])
def test_ss2d_triton_inference_path_matches_training_path(monkeypatch, scan, height, width, gated):
    """On the Triton path (here: the interpreter), inference runs the packed parameters and the route kernels on map
    blocks; its output equals the recorded (training-path: _RoutesScan) forward, padding and crop included."""
    import importlib
    for name in ('interface', 'routes', 'layer_norm', 'conv', 'gated_sum'):
        monkeypatch.setattr(importlib.import_module(f'vmamba.kernels.{name}'), 'scan_backend', lambda d: 'triton')
    torch.manual_seed(0)
    m = SS2D(16, d_state=4, channel_first=False, scan=scan, gated=gated).eval()
    x = torch.randn(2, height, width, 16)
    recorded = m(x)
    assert recorded.grad_fn is not None
    with torch.no_grad():
        inferred = m(x)
    torch.testing.assert_close(inferred, recorded.detach(), rtol=1e-5, atol=1e-5)


def test_ss2d_triton_training_backward_matches_reference(monkeypatch):
    """Training on the Triton path (the interpreter; N = 1, several scan chunks): _RoutesScan's forward keeps the
    scan's chunk-start states, its backward runs no forward pre-pass, and all gradients equal the reference's."""
    import importlib

    from vmamba.kernels.triton import selective_scan as triton_scan
    torch.manual_seed(0)
    m = SS2D(16, d_state=1, channel_first=False, scan='cross')
    x = torch.randn(2, 6, 7, 16)
    weight = torch.randn(2, 6, 7, 16)

    def grads():
        x_leaf = x.clone().requires_grad_(True)
        m.zero_grad()
        (m(x_leaf) * weight).sum().backward()
        return [x_leaf.grad] + [p.grad.clone() for p in m.parameters()]

    expected = grads()  # CPU reference scan
    for name in ('interface', 'routes', 'layer_norm', 'conv', 'gated_sum'):
        monkeypatch.setattr(importlib.import_module(f'vmamba.kernels.{name}'), 'scan_backend', lambda d: 'triton')
    launches = []
    launch = triton_scan._launch_fwd
    monkeypatch.setattr(triton_scan, '_launch_fwd',
                        lambda *a, **k: launches.append(a[-1] is not None) or launch(*a, **k))
    actual = grads()
    assert launches == [True], 'one forward launch that keeps the chunk states, and no backward pre-pass'
    for (name, _), a, e in zip([('x', None)] + list(m.named_parameters()), actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5, msg=name)


def test_patch_merging_matches_explicit_loop():
    torch.manual_seed(0)
    merge = PatchMerging(3, 5, dtype=torch.float64)
    _perturb_(merge)
    x = torch.randn(1, 3, 5, 7, dtype=torch.float64)
    padded = F.pad(x, (0, 1, 0, 1))
    expected = torch.empty(1, 5, 3, 4, dtype=torch.float64)
    for i in range(3):
        for j in range(4):
            vec = torch.cat([padded[0, :, 2 * i, 2 * j], padded[0, :, 2 * i + 1, 2 * j],
                             padded[0, :, 2 * i, 2 * j + 1], padded[0, :, 2 * i + 1, 2 * j + 1]])
            vec = F.layer_norm(vec, (12,), merge.norm.weight, merge.norm.bias, 1e-5)
            expected[0, :, i, j] = merge.reduction.weight @ vec
    with torch.no_grad():
        torch.testing.assert_close(merge(x), expected)


# ----------------------------------------------------------------------------------------------------------------
# Map sizes, scan patterns, precision

def _ceil_half(size, times):
    for _ in range(times):
        size = math.ceil(size / 2)
    return size


@pytest.mark.parametrize('model_name', ['test_vmamba', 'test_vmamba_v0'])
@pytest.mark.parametrize('height,width', [(4, 4), (13, 19), (28, 12)])
def test_odd_and_small_maps(model_name, height, width):
    model = timm.create_model(model_name, num_classes=7).eval()
    x = torch.randn(1, 3, height, width)
    with torch.no_grad():
        logits = model(x)
        features = model.forward_intermediates(x, intermediates_only=True)
    assert logits.shape == (1, 7) and torch.isfinite(logits).all()
    if model_name == 'test_vmamba':  # two ceil-halvings in the conv stem
        stem_hw = (_ceil_half(height, 2), _ceil_half(width, 2))
    else:  # 4x4 patch stem
        stem_hw = (height // 4, width // 4)
    for i, f in enumerate(features):
        assert f.shape[-2:] == (_ceil_half(stem_hw[0], i), _ceil_half(stem_hw[1], i))
        assert torch.isfinite(f).all()


@pytest.mark.parametrize('scan', ['cross', 'bidirectional', 'atrous', 'local_bidirectional'])
def test_other_scan_patterns(scan, monkeypatch):
    """Any pattern builds and runs; its routes' reverse flags and local window reach the kernel."""
    import vmamba.layers.ss2d as ss2d_module
    calls = []

    def recording_scan(*args, reverse=False, local_window=None, **kwargs):
        calls.append((args[0].shape[-1], tuple(reverse), local_window))
        return vmamba.selective_scan(*args, reverse=reverse, local_window=local_window, **kwargs)

    monkeypatch.setattr(ss2d_module, 'selective_scan', recording_scan)
    model = timm.create_model('test_vmamba', scan=scan, num_classes=5).eval()
    pattern = vmamba.scans.get_scan_pattern(scan)
    mixer = model.stages[0].blocks[0].mixer
    assert mixer.x_proj_weight.shape[0] == pattern.num_routes
    assert mixer.A_log.shape[0] == pattern.num_routes * mixer.d_inner
    with torch.no_grad():
        out = model(torch.randn(1, 3, 36, 44))
    assert out.shape == (1, 5) and torch.isfinite(out).all()
    stage_sizes = [(9, 11), (5, 6), (3, 3), (3, 3), (2, 2)]  # one entry per block
    expected = []
    for height, width in stage_sizes:
        routes = pattern.routes(height, width)
        expected.append((routes.length, tuple(routes.reverse), routes.local_window))
    assert calls == expected


def test_full_size_model_with_other_scan():
    pattern = vmamba.scans.get_scan_pattern('atrous')
    model = timm.create_model('vmamba_tiny_s1l8', scan=pattern, num_classes=3, device='meta')
    assert model.stages[2].blocks[0].mixer.scan_pattern is pattern
    # materialise without the (slow, irrelevant here) official init: small random weights
    model = model.to_empty(device='cpu').eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.02 * torch.randn(p.shape, generator=gen))
        out = model(torch.randn(1, 3, 40, 40))
    assert out.shape == (1, 3) and torch.isfinite(out).all()


def test_autocast_scan_precision(monkeypatch):
    """Official v05 policy: scan inputs in the autocast dtype, A / D / delta_bias fp32, fp32 scan output (v2 and v0
    models alike: v0's official fp32 cast of the scan inputs is exact, see the next test)."""
    import vmamba.layers.ss2d as ss2d_module
    calls = []

    def recording_scan(u, delta, A, B, C, D=None, delta_bias=None, out_dtype=None, **kwargs):
        calls.append(dict(u=u.dtype, delta=delta.dtype, A=A.dtype, B=B.dtype, C=C.dtype, D=D.dtype,
                          delta_bias=delta_bias.dtype, out=out_dtype))
        return vmamba.selective_scan(u, delta, A, B, C, D=D, delta_bias=delta_bias, out_dtype=out_dtype, **kwargs)

    monkeypatch.setattr(ss2d_module, 'selective_scan', recording_scan)
    x = torch.randn(1, 3, 32, 32)
    half = torch.bfloat16
    for name in ('test_vmamba', 'test_vmamba_v0'):
        model = timm.create_model(name).eval()
        with torch.no_grad():
            reference = model(x)
            calls.clear()
            with torch.autocast('cpu', dtype=half):
                out = model(x)
        assert calls and all(c == dict(u=half, delta=half, A=torch.float32, B=half, C=half, D=torch.float32,
                                       delta_bias=torch.float32, out=torch.float32) for c in calls), calls[0]
        assert torch.isfinite(out).all()
        assert (out.float() - reference).abs().max() < 0.1 * reference.abs().max()


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_fp32_cast_of_scan_inputs_is_exact(dtype):
    """The official v0 / EfficientVMamba code casts u, delta, B, C to fp32 before the scan. The scan computes in fp32
    from the half-precision values, so skipping the cast gives bit-identical outputs and input gradients."""
    gen = torch.Generator().manual_seed(0)
    u, delta, z = (torch.randn(2, 8, 37, generator=gen).to(dtype) for _ in range(3))
    B, C = (torch.randn(2, 4, 3, 37, generator=gen).to(dtype) for _ in range(2))
    A = -torch.rand(8, 3, generator=gen) - 0.1
    D, bias = torch.randn(8, generator=gen), torch.randn(8, generator=gen)

    def run(cast):
        inputs = [t.clone().requires_grad_() for t in (u, delta, B, C)]
        scan_inputs = [t.float() if cast else t for t in inputs]
        out = vmamba.selective_scan(*scan_inputs[:2], A, *scan_inputs[2:], D=D, delta_bias=bias, delta_softplus=True,
                                    reverse=(False, True, False, True), out_dtype=torch.float32)
        grads = torch.autograd.grad(out.square().sum(), inputs)
        return out, grads

    out_cast, grads_cast = run(True)
    out_half, grads_half = run(False)
    assert torch.equal(out_cast, out_half)
    for g_cast, g_half in zip(grads_cast, grads_half):
        assert g_cast.dtype == g_half.dtype == dtype and torch.equal(g_cast, g_half)


def test_bf16_model_keeps_dtype():
    model = timm.create_model('test_vmamba', dtype=torch.bfloat16).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


# ----------------------------------------------------------------------------------------------------------------
# The block's fused residual add + norm2 (LayerNormLastDim.add_forward) against the unfused formula

def _unfused_block_forward(block, x):
    """The VSS block as written in the official code: two residual adds, norm2 applied to the sum."""
    x = x + block.drop_path(block.mixer(block.norm1(x)))
    return x + block.drop_path(block.mlp(block.norm2(x)))


@pytest.mark.parametrize('autocast', [False, True], ids=['fp32', 'autocast_bf16'])
@pytest.mark.parametrize('drop_path', [0.0, 0.3])
def test_block_fused_add_norm_matches_unfused_formula(autocast, drop_path):
    """Training mode (DropPath active on both branches, same random masks): output and the gradients of the input
    and of every parameter. Under CPU autocast the residual stream is fp32 and the mixer's output bf16."""
    block = VMambaBlock(12, mlp_ratio=2.0, drop_path=drop_path, ssm_kwargs=dict(d_state=2, dt_rank=2)).train()
    _perturb_(block)
    assert {'norm2.weight', 'norm2.bias'} <= set(block.state_dict())
    kept = []  # samples each DropPath call keeps
    block.drop_path.register_forward_hook(lambda m, args, out: kept.append(int((out.flatten(1) != 0).any(1).sum())))
    x = torch.randn(4, 5, 6, 12, requires_grad=True)
    results = []
    for forward in (block, lambda t: _unfused_block_forward(block, t)):
        torch.manual_seed(3)
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            out = forward(x)
        grads = torch.autograd.grad(out.float().square().sum(), [x, *block.parameters()])
        results.append((out, grads))
    assert kept == ([3, 3] if drop_path else [4, 4]) * 2  # both branches: dropped and kept samples
    (fused, fused_grads), (unfused, unfused_grads) = results
    assert fused.dtype == unfused.dtype == torch.float32
    torch.testing.assert_close(fused, unfused, rtol=0, atol=0)
    names = ['x'] + [n for n, _ in block.named_parameters()]
    for name, a, b in zip(names, fused_grads, unfused_grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize('grad_checkpointing', [False, True])
def test_model_fused_add_norm_matches_unfused_formula(monkeypatch, grad_checkpointing):
    """test_vmamba in training mode: logits and every parameter gradient equal those of the unfused blocks run one
    after the other, and the fused path is the one that runs: norm2 is never called as a module, and norm1 only by
    a stage's first block when the stage chains its blocks (each block's last add then runs in the next norm1)."""
    model = timm.create_model('test_vmamba', num_classes=5, drop_path_rate=0.2).train()
    model.set_grad_checkpointing(grad_checkpointing)
    _perturb_(model, scale=0.05)
    calls = {'norm1': [], 'norm2': []}
    for block in (b for stage in model.stages for b in stage.blocks):
        block.norm1.register_forward_hook(lambda *args: calls['norm1'].append(1))
        block.norm2.register_forward_hook(lambda *args: calls['norm2'].append(1))
    x = torch.randn(2, 3, 32, 32)

    def run():
        for hook_calls in calls.values():
            hook_calls.clear()
        torch.manual_seed(0)
        logits = model(x)
        forward_calls = {name: len(hook_calls) for name, hook_calls in calls.items()}  # not the recomputation
        return logits, torch.autograd.grad(logits.square().sum(), list(model.parameters())), forward_calls

    num_blocks = sum(len(stage.blocks) for stage in model.stages)
    fused, fused_grads, fused_calls = run()
    assert fused_calls == {'norm1': num_blocks if grad_checkpointing else len(model.stages), 'norm2': 0}
    monkeypatch.setattr(VMambaBlock, 'forward', _unfused_block_forward)
    monkeypatch.setattr(VMambaStage, 'run_blocks', lambda stage, x: stage.blocks(x))
    unfused, unfused_grads, unfused_calls = run()
    assert unfused_calls == {'norm1': num_blocks, 'norm2': num_blocks}
    torch.testing.assert_close(fused, unfused, rtol=0, atol=0)
    for (name, _), a, b in zip(model.named_parameters(), fused_grads, unfused_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)


def test_block_without_mlp_keeps_plain_residual_add():
    block = VMambaBlock(12, mlp_ratio=0, ssm_kwargs=dict(d_state=2)).eval()
    _perturb_(block)
    assert block.norm2 is None and block.mlp is None
    x = torch.randn(2, 4, 5, 12)
    with torch.no_grad():
        torch.testing.assert_close(block(x), x + block.mixer(block.norm1(x)), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------------
# Errors, configs, API details

def test_bad_inputs_raise_clear_errors():
    model = timm.create_model('test_vmamba').eval()
    with pytest.raises(ValueError, match=r'shape \(B, 3, H, W\), got \(3, 32, 32\)'):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match=r'got \(1, 4, 32, 32\)'):
        model(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match=r'SS2D \(channel_first=False\) expects an NHWC map with 24 channels'):
        model.stages[0].blocks[0].mixer(torch.randn(1, 24, 8, 8))  # blocks run channels-last
    with pytest.raises(TypeError, match='not_an_arg'):
        timm.create_model('test_vmamba', not_an_arg=1)
    with pytest.raises(ValueError, match='stem_type'):
        VMamba(stem_type='conv7')
    with pytest.raises(ValueError, match='downsample_type'):
        VMamba(downsample_type='pool')
    with pytest.raises(ValueError, match='unknown scan pattern'):
        timm.create_model('test_vmamba', scan='zigzag')
    with pytest.raises(ValueError, match='same, non-zero length'):
        VMamba(depths=(1, 1), dims=(8, 16, 32))


def test_official_kwargs_errors(tiny_v3):
    kwargs = dict(tiny_v3['config']['constructor_kwargs'])
    with pytest.raises(ValueError, match=r"unknown official VSSM kwargs: \['not_a_kwarg'\]"):
        build_from_official_kwargs(dict(kwargs, not_a_kwarg=1))
    with pytest.raises(ValueError, match=r"forward_type='v2'"):
        build_from_official_kwargs(dict(kwargs, forward_type='v2'))
    with pytest.raises(ValueError, match=r"norm_layer='bn'.*downsample_version='v2'"):
        build_from_official_kwargs(dict(kwargs, norm_layer='bn', downsample_version='v2'))
    with pytest.raises(ValueError, match=r'posembed=True'):
        vmamba.from_official('vmamba', dict(kwargs, posembed=True))


def test_official_v0_kwargs_build_the_v0_architecture():
    kwargs = dict(depths=[1, 1, 1, 1], dims=16, ssm_d_state=4, ssm_ratio=2.0, ssm_conv_bias=True,
                  forward_type='v0', mlp_ratio=0.0, norm_layer='ln', downsample_version='v1',
                  patchembed_version='v1', num_classes=1000)
    model = build_from_official_kwargs(kwargs)
    reference = timm.create_model('test_vmamba_v0')
    assert {k: v.shape for k, v in model.state_dict().items()} == \
        {k: v.shape for k, v in reference.state_dict().items()}
    mixer = model.stages[1].blocks[0].mixer
    assert mixer.gated and mixer.d_state == 4 and mixer.conv.bias is not None


def test_pretrained_cfgs():
    names = [RELEASED[stem][0] for stem in RELEASED]
    assert sorted(timm.list_pretrained('vmamba_*')) == sorted(f'{n}.in1k' for n in names)
    for stem, (name, _) in RELEASED.items():
        cfg = timm.models.get_pretrained_cfg(f'{name}.in1k').to_dict()
        tag = '%23v0cls' if stem.startswith('vssm') and '_dp0' in stem else '%23v2cls'
        assert cfg['url'].startswith(f'https://github.com/MzeroMiko/VMamba/releases/download/{tag}/{stem}_ckpt_epoch_')
        assert (cfg['crop_pct'], cfg['interpolation'], cfg['input_size']) == (0.875, 'bicubic', (3, 224, 224))
        assert (cfg['first_conv'], cfg['classifier'], cfg['license']) == ('stem.conv1', 'head.fc', 'mit')
        assert cfg['paper_ids'] == 'arXiv:2401.10166'


def test_no_weight_decay_and_groups():
    model = timm.create_model('test_vmamba')
    names = [n for n, _ in model.named_parameters()]
    assert model.no_weight_decay() == {'*.A_log', '*.D'}
    assert sum(n.endswith(('.A_log', '.D')) for n in names) == 2 * 5
    groups = timm.models.group_parameters(model, model.group_matcher(), reverse=True)
    # layer-decay order: stem first, one layer per block (a stage's downsample joins its first block), norm last
    assert groups['stem.conv1.weight'] == 0
    block_layers = [groups[f'stages.{i}.blocks.{j}.mixer.A_log'] for i, j in ((0, 0), (1, 0), (2, 0), (2, 1), (3, 0))]
    assert block_layers == sorted(set(block_layers)) and block_layers[0] > 0
    assert groups['stages.2.downsample.conv.weight'] == groups['stages.2.blocks.0.mixer.A_log']
    assert groups['norm.weight'] >= block_layers[-1] and max(groups.values()) == groups['head.fc.weight']


def test_prune_with_feature_norms_uses_every_parameter():
    model = timm.create_model('test_vmamba', feature_norms=True)
    take = model.prune_intermediate_layers([1, 2], prune_norm=False)
    assert take == [1, 2] and len(model.stages) == 3
    features = model.forward_intermediates(torch.randn(1, 3, 32, 32), indices=take, norm=True,
                                           intermediates_only=True)
    sum(f.sum() for f in features).backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused, unused


@pytest.mark.gpu
def test_fixture_parity_cuda(tiny_v3):
    """Triton scan path: fp32 parity with TF32 off, and a finite bf16-autocast forward with fp32 scan outputs."""
    model = vmamba.from_official('vmamba', tiny_v3['config']['constructor_kwargs'],
                                 tiny_v3['root'] / 'checkpoint.pth').eval().cuda()
    x = tiny_v3['input'].cuda()
    matmul_tf32, cudnn_tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            logits = model(x)
            features = model.forward_intermediates(x, intermediates_only=True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul_tf32, cudnn_tf32
    torch.testing.assert_close(logits.cpu(), tiny_v3['output']['logits'], atol=2e-4, rtol=2e-4)
    for ours, ref in zip(features, tiny_v3['output']['features']):
        torch.testing.assert_close(ours.cpu(), ref, atol=2e-4, rtol=2e-4)
    with torch.no_grad(), torch.autocast('cuda', dtype=torch.bfloat16):
        amp_logits = model(x)
    assert torch.isfinite(amp_logits).all()
    assert (amp_logits.float().cpu() - tiny_v3['output']['logits']).abs().max() < 0.1

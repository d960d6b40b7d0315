"""EfficientVMamba: official-checkpoint parity, released-model manifests, the atrous padding rule, strict loading.

The generic timm contract (forward, backward, cfgs, features, intermediates, prune, fx) of ``test_efficientvmamba``
is covered by tests/models/test_timm_suite.py; this file tests what is specific to the family.
"""
import fnmatch
import json
import warnings

import pytest
import torch
import torch.nn.functional as F

import timm
import vmamba
from vmamba.models.efficientvmamba import (
    EfficientVMamba, EfficientVSSBlock, build_from_official_kwargs, checkpoint_filter_fn,
)
from tests.kernels.oracle import selective_scan_loop

ATOL, RTOL = 5e-5, 1e-5  # fixture README: CPU fp32 tolerance on logits and every feature map
MANIFESTS = ('efficient_vmamba_tiny', 'efficient_vmamba_small', 'efficient_vmamba_base')
RELEASED = {  # manifest stem -> (our timm name, dims)
    'efficient_vmamba_tiny': ('efficientvmamba_tiny', 48),
    'efficient_vmamba_small': ('efficientvmamba_small', 64),
    'efficient_vmamba_base': ('efficientvmamba_base', 96),
}


@pytest.fixture(scope='module')
def tiny_fixture(vmamba_fixtures):
    path = vmamba_fixtures / 'efficientvmamba' / 'tiny'
    if not path.is_dir():
        pytest.skip(f'no EfficientVMamba fixture at {path}')
    config = json.loads((path / 'config.json').read_text())
    return dict(
        path=path,
        checkpoint=path / 'checkpoint.pth',
        kwargs=config['kwargs'],
        input=torch.load(path / 'input.pt', weights_only=True),
        output=torch.load(path / 'output.pt', weights_only=True),
    )


@pytest.fixture(scope='module')
def tiny_model(tiny_fixture):
    return vmamba.from_official('efficientvmamba', tiny_fixture['kwargs'], tiny_fixture['checkpoint']).eval()


def _manifest(vmamba_fixtures, name):
    path = vmamba_fixtures / 'efficientvmamba' / 'manifests' / f'{name}.json'
    if not path.is_file():
        pytest.skip(f'no manifest at {path}')
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------------------------
# Parity with the official model

def test_fixture_parity_from_official(tiny_fixture, tiny_model):
    """Logits and all four stage taps of the official model, CPU fp32."""
    with torch.no_grad():
        final, features = tiny_model.forward_intermediates(tiny_fixture['input'])
        logits = tiny_model.forward_head(final)
        logits_direct = tiny_model(tiny_fixture['input'])
    torch.testing.assert_close(logits, tiny_fixture['output']['logits'], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(logits_direct, logits)
    assert len(features) == len(tiny_fixture['output']['features']) == 4
    for i, (ours, ref) in enumerate(zip(features, tiny_fixture['output']['features'])):
        assert ours.shape == ref.shape, f'stage {i}'
        torch.testing.assert_close(ours, ref, atol=ATOL, rtol=RTOL, msg=lambda m: f'stage {i}: {m}')


def test_fixture_parity_through_timm_pretrained(tiny_fixture):
    """The released-checkpoint path: timm.create_model(pretrained=True) on an official ``{'state_dict'}`` file
    (safe load -> filter -> safetensors cache -> timm's strict load), as a classifier and as features_only."""
    overlay = dict(file=str(tiny_fixture['checkpoint']), num_classes=10)
    model = timm.create_model('test_efficientvmamba', pretrained=True, num_classes=10,
                              pretrained_cfg_overlay=overlay).eval()
    backbone = timm.create_model('test_efficientvmamba', pretrained=True, features_only=True,
                                 pretrained_cfg_overlay=overlay).eval()
    assert backbone.feature_info.channels() == [16, 32, 64, 128]
    assert backbone.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        logits = model(tiny_fixture['input'])
        features = backbone(tiny_fixture['input'])
    torch.testing.assert_close(logits, tiny_fixture['output']['logits'], atol=ATOL, rtol=RTOL)
    for ours, ref in zip(features, tiny_fixture['output']['features']):
        torch.testing.assert_close(ours, ref, atol=ATOL, rtol=RTOL)


def test_batchnorm_runs_in_eval_mode(tiny_fixture, tiny_model):
    """The fixture only matches with BN running statistics; train-mode BN moves the logits (README: by > 1)."""
    model = vmamba.from_official('efficientvmamba', tiny_fixture['kwargs'], tiny_fixture['checkpoint']).train()
    with torch.no_grad():
        train_logits = model(tiny_fixture['input'])
    assert (train_logits - tiny_fixture['output']['logits']).abs().max() > 1e-2


# ---------------------------------------------------------------------------------------------------------------
# Released models: every official key maps onto our model, shape for shape

@pytest.mark.parametrize('name', MANIFESTS)
def test_manifest_maps_completely(vmamba_fixtures, name):
    manifest = _manifest(vmamba_fixtures, name)
    official = {k: torch.empty(shape, device='meta', dtype=getattr(torch, manifest.get('dtypes', {}).get(k, 'float32')))
                for k, shape in manifest['state_dict'].items()}
    converted = checkpoint_filter_fn({'state_dict': official})
    assert len(converted) == len(official) == manifest['num_tensors']

    with torch.device('meta'):
        from_official = build_from_official_kwargs(manifest['kwargs'])
    arch, dims = RELEASED[name]
    registered = timm.create_model(arch, device='meta')
    assert registered.feature_info[0]['num_chs'] == dims
    for model in (from_official, registered):
        own = model.state_dict()
        assert sorted(own) == sorted(converted)
        mismatched = {k: (tuple(own[k].shape), tuple(v.shape)) for k, v in converted.items()
                      if own[k].shape != v.shape or own[k].dtype != v.dtype}
        assert not mismatched
        assert sum(p.numel() for p in model.parameters()) == manifest['num_params']


def test_pretrained_cfgs():
    for name, (arch, _) in RELEASED.items():
        cfg = timm.models.get_pretrained_cfg(f'{arch}.in1k').to_dict()
        size = name.rsplit('_', 1)[-1].capitalize()
        assert cfg['hf_hub_id'] == f'TerryPei/EfficientVMamba-{size}'
        assert cfg['hf_hub_filename'] == f'{name}.ckpt'
        assert (cfg['crop_pct'], cfg['interpolation'], cfg['license']) == (0.875, 'bicubic', 'apache-2.0')
        assert (cfg['first_conv'], cfg['classifier']) == ('stem.conv1', 'head.fc')


# ---------------------------------------------------------------------------------------------------------------
# Odd / non-square maps: the official padding rule, checked against a per-phase loop written from the spec

# (row offset, column offset, traversal) of the four routes, spec §4.1
_PHASES = ((0, 0, 'row'), (1, 0, 'col'), (0, 1, 'row'), (1, 1, 'col'))


def _es2d_reference(mixer, x, pad_to_even=True):
    """Gated ES2D mixer, one phase at a time, float64: in_proj -> x | z -> SiLU(dwconv(x)) -> [zero pad to even]
    -> per phase: gather, project, scan (step-by-step oracle), write back -> crop -> LayerNorm -> * SiLU(z) ->
    out_proj. ``pad_to_even=False`` scans the unpadded sub-grids instead (the wrong rule, spec §7.4)."""
    p = {k: v.detach().double() for k, v in mixer.state_dict().items()}
    x = x.double()
    height, width = x.shape[-2:]
    d_inner, d_state, dt_rank = mixer.d_inner, mixer.d_state, mixer.dt_rank
    xz = torch.einsum('oc,bchw->bohw', p['in_proj.weight'], x)
    u, z = xz[:, :d_inner], xz[:, d_inner:]
    u = F.silu(F.conv2d(u, p['conv.weight'], p['conv.bias'], padding=1, groups=d_inner))
    if pad_to_even:
        u = F.pad(u, (0, width % 2, 0, height % 2))
    y = torch.zeros_like(u)
    for k, (row, col, order) in enumerate(_PHASES):
        grid = u[:, :, row::2, col::2]
        seq = grid.flatten(2) if order == 'row' else grid.transpose(2, 3).flatten(2)  # (B, D, L)
        x_dbl = torch.einsum('cd,bdl->bcl', p['x_proj_weight'][k], seq)
        dt_low, B, C = torch.split(x_dbl, [dt_rank, d_state, d_state], dim=1)
        delta = torch.einsum('dr,brl->bdl', p['dt_proj_weight'][k], dt_low)
        rows = slice(k * d_inner, (k + 1) * d_inner)
        out = selective_scan_loop(
            seq, delta, -torch.exp(p['A_log'][rows]), B[:, None], C[:, None], D=p['D'][rows],
            delta_bias=p['dt_bias'][k], delta_softplus=True)
        if order == 'col':
            out = out.view(*out.shape[:2], grid.shape[3], grid.shape[2]).transpose(2, 3)
        y[:, :, row::2, col::2] = out.reshape(grid.shape)
    y = y[:, :, :height, :width]
    y = F.layer_norm(y.permute(0, 2, 3, 1), (d_inner,), p['out_norm.weight'], p['out_norm.bias'],
                     mixer.out_norm.eps).permute(0, 3, 1, 2)
    y = y * F.silu(z)
    return torch.einsum('od,bdhw->bohw', p['out_proj.weight'], y)


@pytest.mark.parametrize('size', [(5, 7), (6, 3), (4, 6)], ids=lambda s: f'{s[0]}x{s[1]}')
def test_es2d_padding_rule(tiny_model, size):
    """The ES2D mixer (trained-like weights of the fixture's first block) on odd and non-square maps."""
    mixer = tiny_model.stages[0].blocks[0].mixer
    torch.manual_seed(0)
    x = torch.randn(2, mixer.dim, *size)
    with torch.no_grad():
        out = mixer(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # EVSS blocks run channels-last
    expected = _es2d_reference(mixer, x)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    if size[0] % 2 or size[1] % 2:
        # the rule matters: scanning the unpadded sub-grids gives visibly different outputs
        unpadded = _es2d_reference(mixer, x, pad_to_even=False)
        assert (unpadded - expected).abs().max() > 1e-3


def test_odd_non_square_images(tiny_model):
    """Whole model on a non-square image whose stage maps are odd (13x19 -> 7x10 -> 4x5 -> 2x3)."""
    x = torch.randn(1, 3, 52, 76)
    with torch.no_grad():
        final, features = tiny_model.forward_intermediates(x)
    assert [tuple(f.shape[-2:]) for f in features] == [(13, 19), (7, 10), (4, 5), (2, 3)]
    assert final.shape == (1, 128, 2, 3)
    assert all(torch.isfinite(f).all() for f in features)


def test_evss_block_shares_one_channel_attention():
    block = EfficientVSSBlock(16)
    assert sum(1 for name, _ in block.named_modules() if name.endswith('se')) == 1
    assert block.mixer.num_routes == 4 and block.mixer.d_state == 16 and block.mixer.gated


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint filter and strict loading

def test_filter_containers_prefixes_and_idempotence(tiny_fixture):
    container = torch.load(tiny_fixture['checkpoint'], weights_only=True)
    official = container['state_dict']
    converted = checkpoint_filter_fn(container)  # model=None: pure renaming
    assert len(converted) == len(official)
    assert 'stages.3.downsample.reduction.weight' in converted  # official layers.2.{d+2} PatchMerging
    assert 'stages.2.blocks.0.se.fc1.weight' in converted  # official layers.2.1.se.conv_reduce
    assert not any(k.startswith(('layers.', 'patch_embed.', 'classifier.')) for k in converted)
    for variant in (official, {'model': official}, {f'module.module.{k}': v for k, v in official.items()},
                    {'state_dict': {f'module.{k}': v for k, v in official.items()}}):
        again = checkpoint_filter_fn(variant)
        assert again.keys() == converted.keys()
    idempotent = checkpoint_filter_fn(converted)
    assert idempotent.keys() == converted.keys()
    assert all(idempotent[k] is converted[k] for k in converted)


def test_filter_drops_classifier_for_headless_model(tiny_fixture):
    model = build_from_official_kwargs(dict(tiny_fixture['kwargs'], num_classes=0))
    state_dict = checkpoint_filter_fn(torch.load(tiny_fixture['checkpoint'], weights_only=True), model)
    model.load_state_dict(state_dict, strict=True)


def test_strict_load_failure_names_keys(tiny_fixture):
    official = dict(torch.load(tiny_fixture['checkpoint'], weights_only=True)['state_dict'])
    del official['layers.0.blocks.1.op.A_logs']
    official['layers.1.blocks.0.se.extra.weight'] = torch.zeros(3)
    official['layers.3.1.conv_pw.0.weight'] = torch.zeros(512, 128, 1, 1)[:100]
    with pytest.raises(RuntimeError) as err:
        vmamba.from_official('efficientvmamba', tiny_fixture['kwargs'], {'state_dict': official})
    message = str(err.value)
    assert 'stages.0.blocks.1.mixer.A_log' in message
    assert 'stages.1.blocks.0.se.extra.weight' in message
    assert 'stages.3.blocks.0.conv_pw.conv.weight' in message and '(100, 128, 1, 1)' in message


def test_wrong_architecture_fails_loudly_through_timm(tiny_fixture):
    """A config that does not match the checkpoint (the official loader's silent strict=False trap) must fail."""
    overlay = dict(file=str(tiny_fixture['checkpoint']), num_classes=10)
    with pytest.raises(RuntimeError, match=r'stem\.conv1\.weight'):
        timm.create_model('test_efficientvmamba', pretrained=True, num_classes=10, dims=24,
                          pretrained_cfg_overlay=overlay)


# ---------------------------------------------------------------------------------------------------------------
# Official constructor kwargs

def test_official_kwargs_unknown_and_unsupported(tiny_fixture):
    kwargs = tiny_fixture['kwargs']
    with pytest.raises(ValueError, match='unknown official EfficientVSSM kwargs.*not_an_arg'):
        build_from_official_kwargs(dict(kwargs, not_an_arg=1))
    with pytest.raises(ValueError, match=r"mlp_ratio=4\.0.*downsample_version='v2'.*step_size=3"):
        build_from_official_kwargs(dict(kwargs, mlp_ratio=4.0, downsample_version='v2', step_size=3))
    defaults_only = dict(depths=[1, 1, 1, 1], dims=16)  # the official defaults are not a released model
    with pytest.raises(ValueError, match='mlp_ratio'):
        build_from_official_kwargs(defaults_only)


def test_official_kwargs_silently_ignored_by_official_class(tiny_fixture):
    """d_state / dt_rank / window_size never reach the official layers: the model is built as the official
    class builds it (N=16, R=ceil(C/16)), with a warning naming them."""
    kwargs = dict(tiny_fixture['kwargs'], d_state=4, dt_rank=7, window_size=4)
    with pytest.warns(UserWarning, match=r'd_state=4.*dt_rank=7.*window_size=4'):
        model = build_from_official_kwargs(kwargs)
    mixer = model.stages[0].blocks[0].mixer
    assert (mixer.d_state, mixer.dt_rank) == (16, 1)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        build_from_official_kwargs(tiny_fixture['kwargs'])  # the fixture's own kwargs: no warning


def test_model_rejects_bad_config():
    with pytest.raises(ValueError, match='same, non-zero length'):
        EfficientVMamba(depths=(1, 1, 1), dims=(8, 16, 32, 64))
    with pytest.raises(ValueError, match='num_ssm_stages'):
        EfficientVMamba(depths=(1, 1), dims=16, num_ssm_stages=3)
    with pytest.raises(TypeError):
        timm.create_model('test_efficientvmamba', not_a_model_arg=1)


def test_api_on_fixture_model(tiny_fixture, tiny_model):
    """features_only taps, grad checkpointing, group matcher and weight-decay exclusions on the real weights."""
    model = tiny_model
    x = tiny_fixture['input']
    with torch.no_grad():
        model.set_grad_checkpointing(True)
        try:
            torch.testing.assert_close(model(x), tiny_fixture['output']['logits'], atol=ATOL, rtol=RTOL)
        finally:
            model.set_grad_checkpointing(False)
        early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
    torch.testing.assert_close(early[0], tiny_fixture['output']['features'][1], atol=ATOL, rtol=RTOL)

    names = [n for n, _ in model.named_parameters()]
    groups = timm.models.group_parameters(model, model.group_matcher())
    assert len(groups) > 4 and sorted(n for g in groups.values() for n in g) == sorted(names)
    no_decay = [n for n in names if any(fnmatch.fnmatch(n, pat) for pat in model.no_weight_decay())]
    assert len(no_decay) == 2 * sum(len(model.stages[i].blocks) for i in (0, 1))  # A_log and D of every ES2D

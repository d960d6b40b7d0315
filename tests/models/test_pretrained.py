"""timm's pretrained path for VMamba, offline: the tiny_v3 official-format checkpoint served as a local file or as a
pre-cached release URL, through ``vmamba.pretrained.build_model`` (safe load -> filter -> safetensors cache ->
timm's loader with head / in_chans adaptation)."""
import shutil
import sys
import types

import torch

import timm
import vmamba  # noqa: F401
from vmamba.models.vmamba import checkpoint_filter_fn

TOL = dict(atol=1e-4, rtol=1e-4)


def _create(checkpoint, **kwargs):
    """``test_vmamba`` has the fixture's architecture; the fixture head has 10 classes."""
    overlay = dict(file=str(checkpoint), num_classes=10)
    return timm.create_model('test_vmamba', pretrained=True, pretrained_cfg_overlay=overlay, **kwargs).eval()


def test_local_file_logits_and_cache(tiny_v3, tmp_path, monkeypatch):
    cache = tmp_path / 'cache'
    monkeypatch.setenv('VMAMBA_CACHE', str(cache))
    model = _create(tiny_v3['checkpoint'], num_classes=10)
    with torch.no_grad():
        logits = model(tiny_v3['input'])
    torch.testing.assert_close(logits, tiny_v3['output']['logits'], **TOL)
    cached = list(cache.glob('test_vmamba-*.safetensors'))
    assert len(cached) == 1
    import safetensors.torch
    converted = safetensors.torch.load_file(cached[0])
    official = torch.load(tiny_v3['checkpoint'], weights_only=True)
    assert converted.keys() == checkpoint_filter_fn(official).keys()

    mtime = cached[0].stat().st_mtime_ns
    again = _create(tiny_v3['checkpoint'], num_classes=10)  # served from the cache
    assert cached[0].stat().st_mtime_ns == mtime and len(list(cache.iterdir())) == 1
    with torch.no_grad():
        torch.testing.assert_close(again(tiny_v3['input']), logits, rtol=0, atol=0)


def test_training_container_with_yacs_config(tiny_v3, tmp_path, monkeypatch):
    """Official training saves pickle a yacs CfgNode under 'config'; it loads without yacs and without unpickling
    arbitrary objects, and only 'model' is used."""
    official = torch.load(tiny_v3['checkpoint'], weights_only=True)['model']
    yacs = types.ModuleType('yacs')
    yacs_config = types.ModuleType('yacs.config')

    class CfgNode(dict):  # pickles like yacs' CfgNode: dict items plus an instance __dict__
        def __init__(self, **items):
            super().__init__(**items)
            self.__dict__['__immutable__'] = False

    CfgNode.__module__, CfgNode.__qualname__ = 'yacs.config', 'CfgNode'
    yacs_config.CfgNode = CfgNode
    monkeypatch.setitem(sys.modules, 'yacs', yacs)
    monkeypatch.setitem(sys.modules, 'yacs.config', yacs_config)
    container = {
        'model': official, 'optimizer': {'state': {}, 'param_groups': []}, 'lr_scheduler': {}, 'max_accuracy': 82.6,
        'scaler': {}, 'epoch': 264, 'config': CfgNode(MODEL=CfgNode(NAME='vssm1_tiny_0230s')),
    }
    path = tmp_path / 'vssm_ckpt_epoch_264.pth'
    torch.save(container, path)
    monkeypatch.delitem(sys.modules, 'yacs')
    monkeypatch.delitem(sys.modules, 'yacs.config')

    model = _create(path, num_classes=10)
    with torch.no_grad():
        torch.testing.assert_close(model(tiny_v3['input']), tiny_v3['output']['logits'], **TOL)


def test_cached_release_url_offline(tiny_v3, tmp_path, monkeypatch):
    """A URL cfg loads offline from torch hub's cache (``$TORCH_HOME/hub/checkpoints/<basename>``)."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.setattr(torch.hub, '_hub_dir', None, raising=False)
    checkpoints = tmp_path / 'torch' / 'hub' / 'checkpoints'
    checkpoints.mkdir(parents=True)
    shutil.copy(tiny_v3['checkpoint'], checkpoints / 'tiny_v3_ckpt_epoch_1.pth')

    def no_network(*args, **kwargs):
        raise AssertionError('tried to download')

    monkeypatch.setattr(torch.hub, 'download_url_to_file', no_network)
    url = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/tiny_v3_ckpt_epoch_1.pth'
    model = timm.create_model('test_vmamba', pretrained=True, num_classes=10,
                              pretrained_cfg_overlay=dict(url=url, num_classes=10)).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(tiny_v3['input']), tiny_v3['output']['logits'], **TOL)


def test_new_head_in_chans_and_features(tiny_v3):
    official = checkpoint_filter_fn(torch.load(tiny_v3['checkpoint'], weights_only=True))
    expected = tiny_v3['output']

    model = _create(tiny_v3['checkpoint'], num_classes=5)  # head dropped, body loaded
    assert model.get_classifier().out_features == 5
    with torch.no_grad():
        features = model.forward_intermediates(tiny_v3['input'], intermediates_only=True)
    for ours, ref in zip(features, expected['features']):
        torch.testing.assert_close(ours, ref, **TOL)

    model = _create(tiny_v3['checkpoint'], num_classes=10, in_chans=1)  # RGB filters summed
    torch.testing.assert_close(model.stem.conv1.weight, official['stem.conv1.weight'].sum(1, keepdim=True))
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 10)

    model = _create(tiny_v3['checkpoint'], features_only=True)
    assert model.feature_info.channels() == [24, 48, 96, 192] and model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        features = model(tiny_v3['input'])
    for ours, ref in zip(features, expected['features']):
        torch.testing.assert_close(ours, ref, **TOL)

    # official Backbone_VSSM outputs: fresh per-output LayerNorms on top of the same taps
    model = _create(tiny_v3['checkpoint'], features_only=True, feature_norms=True)
    with torch.no_grad():
        features = model(tiny_v3['input'])
    for ours, ref in zip(features, expected['features_outnorm']):
        torch.testing.assert_close(ours, ref, **TOL)

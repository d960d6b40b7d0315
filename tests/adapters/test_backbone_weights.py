"""Official seg/det checkpoints -> our names (synthetic state dicts from the official key manifests), classification
weights through init_cfg, frozen stages and layer-wise lr decay."""
import json

import pytest
import torch

from .conftest import import_mm, load_config

adapters = import_mm('mmseg', 'mmdet')


def _official_mm_state_dict(manifest, our_model, generator):
    """An official seg/det state dict: backbone from the manifest (classifier dropped, outnorm{i} added), heads from
    our model (mmseg / mmdet modules have the same names in both)."""
    state = {f'backbone.{k}': torch.randn(shape, generator=generator) for k, shape in manifest.items()
             if not k.startswith('classifier.')}
    for i, dim in enumerate(our_model.backbone.out_channels):
        state[f'backbone.outnorm{i}.weight'] = torch.randn(dim, generator=generator)
        state[f'backbone.outnorm{i}.bias'] = torch.randn(dim, generator=generator)
    for key, value in our_model.state_dict().items():
        if not key.startswith('backbone.'):
            state[key] = torch.randn(value.shape, generator=generator) if value.is_floating_point() else value
    return state


@pytest.mark.parametrize('kind,config,manifest', [
    ('seg', 'configs/seg/upernet_vmamba_tiny_s1l8_ade20k_512x512_160k.py', 'vssm1_tiny_0230s'),
    ('det', 'configs/det/mask_rcnn_vmamba_small_s2l15_fpn_1x_coco.py', 'vssm_small_0229'),
])
def test_official_mm_checkpoint_loads_strictly(kind, config, manifest, vmamba_fixtures, tmp_path):
    path = vmamba_fixtures / 'vmamba' / 'manifests' / f'{manifest}.json'
    if not path.is_file():
        pytest.skip(f'{path} not found')
    registry = __import__(f'mm{kind}.registry', fromlist=['MODELS']).MODELS
    model = registry.build(load_config(config).model)
    official = _official_mm_state_dict(json.loads(path.read_text()), model, torch.Generator().manual_seed(0))

    output = tmp_path / 'converted.pth'
    converted = adapters.convert_official_mm_checkpoint({'meta': {}, 'state_dict': official}, 'vmamba', output=output)
    model.load_state_dict(converted, strict=True)  # every key of our model, no extra key
    own = model.state_dict()
    assert torch.equal(own['backbone.out_norms.2.weight'], official['backbone.outnorm2.weight'])
    assert torch.equal(own['backbone.model.stages.1.downsample.conv.weight'], official['backbone.layers.0.downsample.1.weight'])
    assert torch.equal(own['backbone.model.stages.2.blocks.1.mixer.A_log'], official['backbone.layers.2.blocks.1.op.A_logs'])
    # idempotent, and the saved file loads tensors-only
    assert adapters.convert_official_mm_checkpoint(converted, 'vmamba').keys() == converted.keys()
    reloaded = torch.load(output, weights_only=True)['state_dict']
    assert all(torch.equal(reloaded[k], converted[k]) for k in converted)


def test_pretrained_classification_weights_via_init_cfg(tmp_path):
    import timm
    from safetensors.torch import save_file

    classifier = timm.create_model('test_vmamba')
    for param in classifier.parameters():
        torch.nn.init.normal_(param)
    path = tmp_path / 'test_vmamba.safetensors'
    save_file(classifier.state_dict(), str(path))

    backbone = adapters.BACKBONES['VMambaBackbone'](model_name='test_vmamba', pretrained=str(path))
    before = backbone.out_norms['0'].weight.clone()
    backbone.init_weights()
    loaded = backbone.model.state_dict()
    for key, value in loaded.items():
        assert torch.equal(value, classifier.state_dict()[key]), key
    assert torch.equal(backbone.out_norms['0'].weight, before)  # not in a classifier checkpoint
    x = torch.randn(1, 3, 64, 64)
    backbone.eval()
    classifier.eval()
    with torch.no_grad():
        expected = classifier.forward_intermediates(x, intermediates_only=True)
        actual = backbone(x)
    ln = torch.nn.functional.layer_norm
    for stage, (e, a) in enumerate(zip(expected, actual)):
        norm = backbone.out_norms[str(stage)]
        ref = ln(e.permute(0, 2, 3, 1), e.shape[1:2], norm.weight, norm.bias, 1e-5).permute(0, 3, 1, 2)
        torch.testing.assert_close(a, ref)

    with pytest.raises(RuntimeError, match='no key matches'):
        adapters.BACKBONES['VMambaBackbone'](model_name='test_vmamba').load_pretrained({'foo.weight': torch.ones(1)})
    with pytest.raises(ValueError, match='builds'):
        adapters.BACKBONES['VMambaBackbone'](model_name='test_vim')


def test_plain_mixer_features_match_manual_computation():
    backbone = adapters.BACKBONES['VimBackbone'](model_name='test_vim', out_indices=(1, 3), pyramid=None)
    backbone.eval()
    model = backbone.model
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = backbone(x)
        tokens, grid = model._embed(x)
        expected = []
        for i, block in enumerate(model.blocks):
            mixed = block.mixer(block.norm(tokens))
            tokens = tokens + mixed
            if i in (1, 3):
                idx = grid[0] * grid[1] // 2  # middle class token
                patches = torch.cat([mixed[:, :idx], mixed[:, idx + 1:]], dim=1)
                expected.append(patches.transpose(1, 2).reshape(2, -1, *grid))
    assert [tuple(m.shape) for m in maps] == [(2, 64, 4, 4)] * 2
    for a, e in zip(maps, expected):
        torch.testing.assert_close(a, e)


def test_frozen_stages_and_layer_decay():
    from mmengine.optim import build_optim_wrapper
    from mmseg.registry import MODELS

    backbone = adapters.BACKBONES['VMambaBackbone'](model_name='test_vmamba', frozen_stages=2)
    frozen = {n for n, p in backbone.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(('model.stem.', 'model.stages.0.', 'model.stages.1.')) for n in frozen)
    assert not any(p.requires_grad for n, p in backbone.named_parameters() if n.startswith('model.stages.1.'))
    assert all(p.requires_grad for n, p in backbone.named_parameters() if n.startswith('model.stages.2.'))
    backbone.train()
    assert not backbone.model.stages[1].training and backbone.model.stages[2].training

    cfg = load_config('configs/seg/upernet_vim_tiny_ade20k_512x512_60k.py', model_name='test_vim',
                      out_indices=(0, 1, 2, 3), pyramid_norm_cfg=dict(type='BN'))
    cfg.model.decode_head.update(in_channels=[64] * 4, norm_cfg=dict(type='BN'))
    cfg.model.auxiliary_head.update(in_channels=64, norm_cfg=dict(type='BN'))
    model = MODELS.build(cfg.model)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    lr_of = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in wrapper.optimizer.param_groups:
        for param in group['params']:
            lr_of[names[id(param)]] = (group['lr'], group['weight_decay'])
    base, rate = 2e-4, 0.92
    assert lr_of['backbone.model.pos_embed'] == pytest.approx((base * rate ** 5, 0.0))
    assert lr_of['backbone.model.patch_embed.proj.weight'][0] == pytest.approx(base * rate ** 5)
    assert lr_of['backbone.model.blocks.0.mixer.in_proj.weight'] == pytest.approx((base * rate ** 4, 0.1))
    assert lr_of['backbone.model.blocks.3.mixer.A_log'] == pytest.approx((base * rate, 0.0))
    assert lr_of['decode_head.conv_seg.weight'] == pytest.approx((base, 0.1))

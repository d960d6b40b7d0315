"""Vim: official parity fixture, checkpoint conversion, any-size inputs, the bidirectional mixer and the timm API."""
import copy
import fnmatch
import json

import pytest
import timm
import torch
import torch.nn.functional as F

import vmamba
from vmamba.layers.layer_shuffle import token_shuffled_call
from vmamba.layers.mamba_mixer import MambaMixer
from vmamba.layers.rms_norm import add_rms_norm
from vmamba.models import vim
from vmamba.models.vim import VisionMamba, checkpoint_filter_fn, default_cfgs, resample_pos_embed

MANIFEST_MODELS = {
    'vim_t_midclstok_76p1acc': 'vim_tiny_patch16_224',
    'vim_t_midclstok_ft_78p3acc': 'vim_tiny_patch16_stride8_224',
    'vim_s_midclstok_80p5acc': 'vim_small_patch16_224',
    'vim_s_midclstok_ft_81p6acc': 'vim_small_patch16_stride8_224',
    'vim_b_midclstok_81p9acc': 'vim_base_patch16_224',
}


def _tiny(**kwargs) -> VisionMamba:
    torch.manual_seed(0)
    kwargs = dict(dict(img_size=64, embed_dim=32, depth=2, d_state=8, num_classes=7), **kwargs)
    model = VisionMamba(**kwargs).eval()
    with torch.no_grad():  # make every parameter non-trivial (zero biases hide wiring mistakes)
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


@pytest.fixture(scope='module')
def fixture_dir(vmamba_fixtures):
    path = vmamba_fixtures / 'vim' / 'tiny_midcls'
    if not path.is_dir():
        pytest.skip(f'{path} missing')
    return path


# ---- official parity ---------------------------------------------------------------------------------------------

def test_official_fixture_parity(fixture_dir):
    kwargs = json.loads((fixture_dir / 'config.json').read_text())['kwargs']
    model = vmamba.from_official('vim', kwargs, fixture_dir / 'checkpoint.pth').eval()
    x = torch.load(fixture_dir / 'input.pt')
    ref = torch.load(fixture_dir / 'output.pt')
    with torch.no_grad():
        tokens = model.forward_features(x)
        cls_feature = model.forward_head(tokens, pre_logits=True)
        logits = model.forward_head(tokens)
    torch.testing.assert_close(tokens, ref['tokens'], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cls_feature, ref['cls_feature'], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits, ref['logits'], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model(x), ref['logits'], atol=1e-4, rtol=1e-4)


def test_official_fixture_through_timm_pretrained_path(fixture_dir):
    # test_vim has the fixture's architecture: the official file goes through vmamba.pretrained (safe load, filter,
    # safetensors cache) and timm's loader
    overlay = dict(file=str(fixture_dir / 'checkpoint.pth'), num_classes=10)
    model = timm.create_model('test_vim', pretrained=True, num_classes=10, pretrained_cfg_overlay=overlay).eval()
    new_head = timm.create_model('test_vim', pretrained=True, num_classes=3, pretrained_cfg_overlay=overlay).eval()
    x = torch.load(fixture_dir / 'input.pt')
    ref = torch.load(fixture_dir / 'output.pt')
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref['logits'], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(new_head.forward_features(x), ref['tokens'], atol=1e-4, rtol=1e-4)
        assert new_head(x).shape == (2, 3)  # timm re-initialises a head of another size


def test_filter_takes_model_not_ema_and_is_idempotent(fixture_dir):
    container = torch.load(fixture_dir / 'checkpoint.pth', weights_only=False)
    converted = checkpoint_filter_fn(container)  # model=None: renaming only
    assert converted.keys() == checkpoint_filter_fn(converted).keys()
    assert all(torch.equal(converted[k], v) for k, v in checkpoint_filter_fn(converted).items())
    official = container['model']
    assert len(converted) == len(official)
    torch.testing.assert_close(converted['blocks.3.mixer.A_b_log'], official['layers.3.mixer.A_b_log'], rtol=0, atol=0)
    torch.testing.assert_close(converted['norm.weight'], official['norm_f.weight'], rtol=0, atol=0)
    assert not torch.equal(converted['norm.weight'], container['model_ema']['norm_f.weight'])
    with pytest.raises(ValueError, match="model_ema"):
        checkpoint_filter_fn({'model_ema': official, 'epoch': 3})


@pytest.mark.parametrize('manifest', sorted(MANIFEST_MODELS))
def test_released_manifests_map_completely(vmamba_fixtures, manifest):
    path = vmamba_fixtures / 'vim' / 'manifests' / f'{manifest}.json'
    if not path.is_file():
        pytest.skip(f'{path} missing')
    info = json.loads(path.read_text())
    variant = MANIFEST_MODELS[manifest]
    cfg = default_cfgs[variant].cfgs['in1k']
    assert (cfg.hf_hub_id, cfg.hf_hub_filename) == (info['hf_repo'], info['released_file'])
    model = timm.create_model(variant, device='meta')
    official = {k: torch.empty(shape, device='meta') for k, shape in info['state_dict'].items()}
    converted = checkpoint_filter_fn({'model': official}, model)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == ours
    assert sum(p.numel() for p in model.parameters()) == info['num_params']


# ---- position embeddings and input sizes -------------------------------------------------------------------------

def test_resample_keeps_middle_class_token_on_non_square_grid():
    torch.manual_seed(0)
    old = torch.randn(1, 16 + 1, 8)  # 4x4 grid, class row at 8
    new = resample_pos_embed(old, (3, 6), old_size=(4, 4), class_token_position='middle')
    assert new.shape == (1, 18 + 1, 8)
    torch.testing.assert_close(new[:, 9], old[:, 8], rtol=0, atol=0)  # class row re-inserted at 18 // 2
    grid = torch.cat([old[:, :8], old[:, 9:]], 1).reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(3, 6), mode='bicubic', align_corners=False)
    expected = expected.permute(0, 2, 3, 1).reshape(1, 18, 8)
    torch.testing.assert_close(torch.cat([new[:, :9], new[:, 10:]], 1), expected)
    # front class token and no class token
    front = resample_pos_embed(old, (3, 6), old_size=(4, 4), class_token_position='front')
    torch.testing.assert_close(front[:, 0], old[:, 0], rtol=0, atol=0)
    assert resample_pos_embed(old[:, 1:], (3, 6), class_token_position=None).shape == (1, 18, 8)
    with pytest.raises(ValueError, match='not a square'):
        resample_pos_embed(torch.randn(1, 13, 8), (4, 4))


def test_non_square_model_from_square_checkpoint():
    square = _tiny()
    wide = VisionMamba(img_size=(64, 96), embed_dim=32, depth=2, d_state=8, num_classes=7).eval()
    wide.load_state_dict(checkpoint_filter_fn({'model': square.state_dict()}, wide))
    assert wide.pos_embed.shape == (1, 4 * 6 + 1, 32)
    x = torch.randn(2, 3, 64, 96)
    tokens, grid = wide._embed(x)
    assert grid == (4, 6)
    # The class token (with the class row of the square model) sits in the middle: index 24 // 2.
    torch.testing.assert_close(tokens[:, 12], (square.cls_token[0] + square.pos_embed[:, 8]).expand(2, -1),
                               rtol=0, atol=0)
    with torch.no_grad():
        feats = wide.forward_features(x)
        torch.testing.assert_close(wide.forward_head(feats, pre_logits=True), feats[:, 12])
        assert torch.isfinite(wide(x)).all()


def test_dynamic_img_size_matches_model_built_for_that_size():
    fixed = _tiny()
    dynamic = _tiny(dynamic_img_size=True)
    wide = VisionMamba(img_size=(48, 80), embed_dim=32, depth=2, d_state=8, num_classes=7).eval()
    wide.load_state_dict(checkpoint_filter_fn(fixed.state_dict(), wide))
    x = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        torch.testing.assert_close(dynamic(x), wide(x), atol=1e-6, rtol=1e-6)
        x64 = torch.randn(1, 3, 64, 64)
        torch.testing.assert_close(dynamic(x64), fixed(x64), atol=0, rtol=0)  # native size: no resampling
        out, maps = dynamic.forward_intermediates(x, indices=[0, 1])
    assert [m.shape for m in maps] == [(2, 32, 3, 5)] * 2


def test_set_input_size_resamples_pos_embed():
    model = _tiny()
    expected = resample_pos_embed(model.pos_embed.detach(), (5, 3), old_size=(4, 4))
    model.set_input_size((80, 48))
    torch.testing.assert_close(model.pos_embed.detach(), expected, rtol=0, atol=0)
    assert model(torch.randn(1, 3, 80, 48)).shape == (1, 7)


def test_bad_input_sizes_raise_clear_errors():
    model = _tiny()
    with pytest.raises(ValueError, match=r'does not match the model img_size'):
        model(torch.randn(1, 3, 80, 80))
    dynamic = _tiny(dynamic_img_size=True)
    with pytest.raises(ValueError, match=r'height 70 does not fit patch_size 16.*dynamic_img_pad=True'):
        dynamic(torch.randn(1, 3, 70, 64))
    with pytest.raises(ValueError, match='width 8 does not fit'):
        dynamic(torch.randn(1, 3, 64, 8))
    with pytest.raises(ValueError, match='does not fit'):
        VisionMamba(img_size=100, embed_dim=32, depth=1)
    padded = _tiny(dynamic_img_size=True, dynamic_img_pad=True)
    x = torch.randn(1, 3, 70, 64)
    with torch.no_grad():
        torch.testing.assert_close(padded(x), padded(F.pad(x, (0, 0, 0, 10))), rtol=0, atol=0)
    # stride 8 with patch 16: grid = (size - 16) // 8 + 1, sizes must satisfy (size - 16) % 8 == 0
    stride8 = _tiny(img_size=48, patch_stride=8)
    assert stride8.patch_embed.grid_size == (5, 5) and stride8.pos_embed.shape[1] == 26
    with pytest.raises(ValueError, match='stride 8'):
        _tiny(img_size=52, patch_stride=8)


# ---- the bidirectional mixer against a direct transcription of the official math -------------------------------

def _official_branch(x, z, conv, x_proj, dt_proj, A_log, D):
    """One direction of the official v2 mixer: causal conv + SiLU, projections, sequential scan, SiLU(z) gate."""
    x, z = x.double(), z.double()
    k = conv.weight.shape[-1]
    seq_len = x.shape[-1]
    xp = F.pad(x, (k - 1, 0))
    xc = sum(conv.weight[:, 0, j].double()[:, None] * xp[..., j:j + seq_len] for j in range(k))
    xc = F.silu(xc + conv.bias.double()[:, None])
    dbc = torch.einsum('bel,re->blr', xc, x_proj.weight.double())
    rank, state = dt_proj.weight.shape[1], A_log.shape[1]
    dt_raw, Bt, Ct = dbc.split([rank, state, state], dim=-1)
    dt = F.softplus(dt_raw @ dt_proj.weight.double().T + dt_proj.bias.double())  # (b, l, e)
    A = -torch.exp(A_log.double())
    h = torch.zeros(x.shape[0], x.shape[1], state, dtype=torch.float64)
    ys = []
    for t in range(seq_len):
        h = torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * xc[..., t])[..., None] * Bt[:, t, None, :]
        ys.append((h * Ct[:, t, None, :]).sum(-1) + D.double() * xc[..., t])
    return torch.stack(ys, -1) * F.silu(z)


def _official_v2_mixer(mixer, u):
    xz = (u.double() @ mixer.in_proj.weight.double().T).transpose(1, 2)
    x, z = xz.chunk(2, dim=1)
    y_f = _official_branch(x, z, mixer.conv1d, mixer.x_proj, mixer.dt_proj, mixer.A_log, mixer.D)
    y_b = _official_branch(x.flip(-1), z.flip(-1), mixer.conv1d_b, mixer.x_proj_b, mixer.dt_proj_b, mixer.A_b_log,
                           mixer.D_b)
    y = (y_f + y_b.flip(-1)) / 2
    return y.transpose(1, 2) @ mixer.out_proj.weight.double().T


@pytest.mark.parametrize('seq_len,d_conv', [(13, 4), (7, 3)])
def test_bidirectional_mixer_matches_official_math(seq_len, d_conv):
    torch.manual_seed(seq_len)
    mixer = MambaMixer(24, d_state=6, d_conv=d_conv, scan='bidirectional').eval()
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    u = torch.randn(2, seq_len, 24)
    with torch.no_grad():
        out = mixer(u)
    torch.testing.assert_close(out.double(), _official_v2_mixer(mixer, u), atol=2e-5, rtol=1e-4)
    # the branches really differ: sharing the forward parameters changes the output
    shared = copy.deepcopy(mixer)
    with torch.no_grad():
        shared.conv1d_b.weight.copy_(shared.conv1d.weight)
        assert not torch.allclose(shared(u), out, atol=1e-4)


def test_bidirectional_mixer_gradients_match_official_math():
    """fp64 autograd through our mixer (conv custom op, block-diagonal projections, token-major scan) against
    autograd through the direct transcription of the official math."""
    torch.manual_seed(1)
    mixer = MambaMixer(12, d_state=3, d_conv=4, scan='bidirectional').double()
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    u = torch.randn(2, 9, 12, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 9, 12, dtype=torch.float64)
    (mixer(u) * weight).sum().backward()
    ours = {'u': u.grad.clone(), **{n: p.grad.clone() for n, p in mixer.named_parameters()}}
    mixer.zero_grad()
    u.grad = None
    (_official_v2_mixer(mixer, u) * weight).sum().backward()
    theirs = {'u': u.grad, **{n: p.grad for n, p in mixer.named_parameters()}}
    for name in ours:
        assert theirs[name] is not None, name
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-6, atol=1e-7, msg=name)  # chunked scan: ~1e-9


def test_mixer_gradients_flow_to_both_branches():
    torch.manual_seed(0)
    mixer = MambaMixer(16, d_state=4, scan='bidirectional')
    mixer(torch.randn(2, 9, 16)).square().sum().backward()
    for name in ('conv1d_b.weight', 'x_proj_b.weight', 'dt_proj_b.weight', 'A_b_log', 'D_b', 'A_log', 'in_proj.weight'):
        grad = dict(mixer.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_inference_packing_cache_follows_parameter_updates():
    """No-grad calls reuse the packed parameters until a parameter changes in place, is replaced by
    ``load_state_dict`` or the autocast dtype changes; results always equal a fresh (autograd) pack."""
    torch.manual_seed(0)
    mixer = MambaMixer(16, d_state=4, scan='bidirectional').eval()
    u = torch.randn(2, 9, 16)
    with torch.no_grad():
        first = mixer(u)
        packed = mixer._packed._entry[1]
        torch.testing.assert_close(mixer(u), first, rtol=0, atol=0)
        assert mixer._packed._entry[1] is packed
        mixer.x_proj_b.weight.mul_(1.5)  # an in-place update, like an optimizer step
        updated = mixer(u)
    assert mixer._packed._entry[1] is not packed
    assert not torch.allclose(updated, first, atol=1e-4)
    torch.testing.assert_close(updated, mixer(u).detach(), rtol=0, atol=0)  # autograd: packed afresh
    other = MambaMixer(16, d_state=4, scan='bidirectional').eval()
    mixer.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(mixer(u), other(u), rtol=0, atol=0)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            mixer(u)
        assert mixer._packed._entry[1].x_proj.dtype == torch.bfloat16
        torch.testing.assert_close(mixer(u), other(u), rtol=0, atol=0)
    mixer.double()  # .to() / .half() / .cuda() drop the entry
    assert mixer._packed._entry is None


# ---- timm API -------------------------------------------------------------------------------------------------------

def test_create_model_and_registry():
    model = timm.create_model('test_vim')
    assert model.pos_embed.shape == (1, 17, 64) and model.num_features == model.head_hidden_size == 64
    assert model.pretrained_cfg['crop_pct'] == 0.875 and model.pretrained_cfg['interpolation'] == 'bicubic'
    with pytest.raises(TypeError):
        timm.create_model('test_vim', not_a_model_arg=1)
    meta = timm.create_model('vim_tiny_patch16_224', device='meta')
    assert all(p.device.type == 'meta' for p in meta.parameters())
    names = timm.list_models('vim_*')
    assert {'vim_tiny_patch16_224', 'vim_small_patch16_224', 'vim_base_patch16_224', 'vim_tiny_patch16_stride8_224',
            'vim_small_patch16_stride8_224'} <= set(names)
    assert 'vim_small_patch16_stride8_224.in1k' in timm.list_pretrained('vim_*')


def test_forward_intermediates_features_only_and_prune():
    model = _tiny(depth=3)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        assert [m.shape for m in maps] == [(2, 32, 4, 4)] * 3
        # map of block i = residual stream after block i without the class token, raster order
        stream, _ = model._embed(x)
        for block in model.blocks[:2]:
            stream = block(stream)
        tokens = torch.cat([stream[:, :8], stream[:, 9:]], 1)
        torch.testing.assert_close(maps[1], tokens.reshape(2, 4, 4, 32).permute(0, 3, 1, 2))
        pairs = model.forward_intermediates(x, indices=[1], return_prefix_tokens=True, intermediates_only=True)
        torch.testing.assert_close(pairs[0][1], stream[:, 8:9])
        nlc = model.forward_intermediates(x, indices=1, output_fmt='NLC', norm=True, intermediates_only=True)
        torch.testing.assert_close(nlc[0], torch.cat([final[:, :8], final[:, 9:]], 1))
        # maps taken mid-chain (the pending residual add runs there) leave the rest of the chain unchanged
        final_mid, normed = model.forward_intermediates(x, indices=[0, 1], output_fmt='NLC', norm=True)
        torch.testing.assert_close(final_mid, final, rtol=0, atol=0)
        torch.testing.assert_close(normed[1], model.norm(tokens), rtol=0, atol=0)

    feature_model = timm.create_model('test_vim', features_only=True, out_indices=(1, 3)).eval()
    reference = timm.create_model('test_vim').eval()
    reference.load_state_dict(feature_model.model.state_dict(), strict=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = feature_model(x)
        expected = reference.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
    assert [f.shape for f in feats] == [(1, 64, 4, 4)] * 2
    for got, want in zip(feats, expected):
        torch.testing.assert_close(got, want)

    pruned = copy.deepcopy(model)
    kept = pruned.prune_intermediate_layers([0, 1])
    assert kept == [0, 1] and len(pruned.blocks) == 2 and isinstance(pruned.head, torch.nn.Identity)
    with torch.no_grad():
        got = pruned.forward_intermediates(x.expand(2, -1, -1, -1), indices=[0, 1], intermediates_only=True)
        want = model.forward_intermediates(x.expand(2, -1, -1, -1), indices=[0, 1], intermediates_only=True)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_grad_checkpointing_same_output_and_grads():
    model = _tiny(drop_path_rate=0.)
    model.train()
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    out.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out_ckpt = model(x)
    out_ckpt.sum().backward()
    torch.testing.assert_close(out_ckpt, out)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], msg=n)


def _block_by_block_logits(model, x):
    """The spec of the chained forward: every block on its own (norm as a module, shuffled tokens into the norm as
    the paper writes it, the residual add by itself), then the final norm as a module."""
    stream, _ = model._embed(x)
    for block in model.blocks:
        def mix(tokens, block=block):
            return block.mixer(block.norm(tokens))
        h = token_shuffled_call(mix, stream, block.shuffle_prob) if block.training else mix(stream)
        stream = stream + block.drop_path(h)
    return model.forward_head(model.norm(stream))


def _chain_mismatch(model, x):
    """Largest |difference| between the chained forward and :func:`_block_by_block_logits`, over the logits and
    every parameter gradient (the same random draws for both: drop path, token shuffles)."""
    results = []
    for forward in (model, lambda t: _block_by_block_logits(model, t)):
        model.zero_grad()
        torch.manual_seed(5)
        logits = forward(x)
        logits.square().sum().backward()
        results.append([logits.detach()] + [torch.zeros_like(p) if p.grad is None else p.grad.clone()
                                            for p in model.parameters()])
    return max((a - b).abs().max().item() for a, b in zip(*results))


@pytest.mark.parametrize('train', [False, True], ids=['eval', 'train'])
@pytest.mark.parametrize('name', ['test_vim', 'test_lbvim'])
def test_chained_blocks_match_block_by_block(monkeypatch, name, train):
    """Each residual add runs inside the next norm (the last inside the final norm): the same logits and gradients
    as block after block, in training too (drop path, ShuffleMamba); a chain that normalises the stale residual is
    caught."""
    torch.manual_seed(0)
    model = timm.create_model(name, embed_dim=32, d_state=8, depth=3, num_classes=5, drop_path_rate=0.5 * train,
                              layer_shuffle_prob=float(train)).train(train)
    x = torch.randn(2, 3, 64, 64)
    fused_calls = []

    def counting_add_rms_norm(residual, branch, norm, out_dtype=None):
        fused_calls.append(norm)
        return add_rms_norm(residual, branch, norm, out_dtype)

    monkeypatch.setattr(vim, 'add_rms_norm', counting_add_rms_norm)
    assert _chain_mismatch(model, x) < 1e-6
    # the three adds ran fused: into the norms of blocks 1 and 2 and into the final norm (forward only)
    assert fused_calls == [model.blocks[1].norm, model.blocks[2].norm, model.norm]

    monkeypatch.setattr(vim, 'add_rms_norm', lambda residual, branch, norm, out_dtype=None: (
        residual + branch, norm(residual)))
    assert _chain_mismatch(model, x) > 1e-3


def test_chained_blocks_under_autocast_write_the_mixer_dtype():
    """Under autocast the block norms write the mixers' inputs in the autocast dtype (the dtype their input
    projections cast to): the same logits and gradients as norms in fp32 followed by autocast's cast; the stream and
    the final norm stay fp32."""
    torch.manual_seed(0)
    model = timm.create_model('test_vim', embed_dim=32, d_state=8, depth=3, num_classes=5)
    x = torch.randn(2, 3, 64, 64)
    seen = []
    model.blocks[1].mixer.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert _chain_mismatch(model, x) == 0
        features = model.forward_features(x)
    assert seen[0] == torch.bfloat16 and seen[1] == torch.float32  # chained forward, then the fp32-norm reference
    assert features.dtype == torch.float32


def test_optimizer_helpers_and_classifier_reset():
    model = _tiny()
    names = [n for n, _ in model.named_parameters()]
    for pattern in model.no_weight_decay():
        assert any(fnmatch.fnmatch(n, pattern) for n in names), pattern
    no_decay = {n for n in names if any(fnmatch.fnmatch(n, p) for p in model.no_weight_decay())}
    assert {'pos_embed', 'cls_token', 'blocks.1.mixer.A_log', 'blocks.1.mixer.A_b_log', 'blocks.0.mixer.D',
            'blocks.0.mixer.D_b'} <= no_decay
    assert 'blocks.0.mixer.dt_proj.weight' not in no_decay

    from timm.optim import param_groups_layer_decay
    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.5)
    names_by_id = {id(p): n for n, p in model.named_parameters()}
    scales = {names_by_id[id(p)]: g['lr_scale'] for g in groups for p in g['params']}
    assert scales['pos_embed'] < scales['blocks.0.mixer.in_proj.weight'] < scales['blocks.1.mixer.in_proj.weight']
    # timm's layer decay puts the final norm with the last block and the head at full lr
    assert scales['blocks.1.mixer.in_proj.weight'] == scales['norm.weight'] < scales['head.weight'] == 1.

    model.reset_classifier(3)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3) and not model.head.training
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 32)
    model.reset_classifier(0, '')
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 17, 32)
    model.reset_classifier(5, 'avg')
    tokens = model.forward_features(torch.randn(1, 3, 64, 64))
    torch.testing.assert_close(model.forward_head(tokens, pre_logits=True),
                               torch.cat([tokens[:, :8], tokens[:, 9:]], 1).mean(1))


def test_official_builder_rejects_unknown_and_unsupported_kwargs():
    base = dict(img_size=64, embed_dim=32, depth=2, num_classes=5, bimamba_type='v2')
    model = vmamba.from_official('vim', dict(base, if_devide_out=True, fused_add_norm=False))
    assert model.blocks[0].mixer.scan == 'bidirectional' and model.global_pool == 'token'
    with pytest.raises(ValueError, match=r"unknown official Vim kwargs: \['bogus', 'if_devide'\]"):
        vmamba.from_official('vim', dict(base, bogus=1, if_devide=True))
    with pytest.raises(ValueError, match=r'if_rope=True.*use_double_cls_token=True'):
        vmamba.from_official('vim', dict(base, if_rope=True, use_double_cls_token=True))
    with pytest.raises(ValueError, match='use_fast_path'):
        vmamba.from_official('vim', dict(base, ssm_cfg={'use_fast_path': False}))
    custom = vmamba.from_official('vim', dict(base, ssm_cfg={'d_conv': 3, 'expand': 3, 'dt_rank': 5}))
    assert custom.blocks[0].mixer.conv1d.weight.shape == (96, 1, 3)
    assert custom.blocks[0].mixer.dt_proj.weight.shape == (96, 5)


@pytest.mark.gpu
@pytest.mark.parametrize('name', ['test_vim', 'test_lbvim'])
def test_cuda_kernel_path_matches_cpu_reference(name):
    torch.manual_seed(0)
    model = timm.create_model(name, embed_dim=32, d_state=8, depth=3).eval()
    x = torch.randn(2, 3, 64, 64)
    cpu_out = model(x)
    cpu_out.square().sum().backward()
    cpu_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.cuda()
    gpu_out = model(x.cuda())
    gpu_out.square().sum().backward()
    torch.testing.assert_close(gpu_out.cpu(), cpu_out, atol=1e-4, rtol=1e-4)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad.cpu(), cpu_grads[n], atol=1e-3, rtol=1e-3, msg=n)


def test_front_class_token_option():
    model = _tiny(class_token_position='front')
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        stream, _ = model._embed(x)
        torch.testing.assert_close(stream[:, 0], (model.cls_token[0] + model.pos_embed[:, 0]).expand(2, -1))
        tokens = model.forward_features(x)
        torch.testing.assert_close(model.forward_head(tokens, pre_logits=True), tokens[:, 0])
        maps = model.forward_intermediates(x, indices=1, output_fmt='NLC', norm=True, intermediates_only=True)
        torch.testing.assert_close(maps[0], tokens[:, 1:])


def test_rms_norm_fp32_formula():
    """RmsNormFp32 = x * rsqrt(mean(x^2) + eps) * weight in fp32, returned in the weight's dtype."""
    from vmamba.layers.rms_norm import RmsNormFp32
    norm = RmsNormFp32(24, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(24) + 0.5)
    x = torch.randn(2, 7, 24, dtype=torch.float64)
    expected = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-5) * norm.weight.double()
    torch.testing.assert_close(norm(x.float()).double(), expected, rtol=1e-6, atol=1e-6)
    assert norm(x.to(torch.bfloat16)).dtype == torch.float32  # fp32 stream in, weight dtype out
    assert norm.to(torch.bfloat16)(x.float()).dtype == torch.bfloat16


@pytest.mark.parametrize('patch, size', [((16, 16), (32, 48)), ((4, 2), (8, 6))])
def test_patch_tokens_equal_the_patch_convolution(patch, size):
    """The stride = kernel patch embedding runs as one GEMM over the patches: the convolution's tokens, raster order,
    in fp64 to rounding (a wrong patch or channel order moves them by O(1))."""
    from vmamba.models.vim import patch_tokens
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, *size, generator=gen, dtype=torch.float64)
    conv = torch.nn.Conv2d(3, 5, patch, stride=patch, dtype=torch.float64)
    tokens, grid = patch_tokens(x, conv.weight, conv.bias)
    expected = conv(x)
    assert grid == tuple(expected.shape[-2:])
    torch.testing.assert_close(tokens, expected.flatten(2).transpose(1, 2), rtol=1e-12, atol=1e-12)

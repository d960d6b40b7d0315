"""LBVim: the LBMamba mixer against a brute-force per-window computation, per-block direction alternation against an
explicit sequence flip (as the official code does it), the official-kwargs builder and the model API.

There is no official PyTorch reference of the LB scan (it exists only in the official CUDA kernel); the brute force
below is written from the math of shared/specs/lbmamba.md §1 (verified against that kernel by the spec authors).
"""
import copy
import re

import pytest
import timm
import torch
import torch.nn.functional as F

import vmamba
from vmamba.layers.mamba_mixer import MambaMixer, default_local_window
from vmamba.models.vim import VisionMamba


def _perturbed(module, scale=0.1, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module.eval()


def _lb_mixer_bruteforce(mixer: MambaMixer, u: torch.Tensor, window: int) -> torch.Tensor:
    """LBMamba mixer in float64, state sums written out term by term for every (t, s) pair.

    h_t = sum_{s <= t} (prod_{j=s+1..t} a_j) b_s                    (global causal part)
        + sum_{t < s < end(t)} (prod_{j=t..s-1} a_j) b_s            (in-window backward part, diagonal counted once)
    with a_j = exp(dt_j A), b_s = dt_s B_s u_s, end(t) = min((t // W + 1) W, L).
    """
    w = {n: p.detach().double() for n, p in mixer.named_parameters()}
    u = u.double()
    seq_len, k = u.shape[1], mixer.d_conv
    x, z = (u @ w['in_proj.weight'].T).transpose(1, 2).chunk(2, dim=1)  # (b, e, l)
    xp = F.pad(x, (k - 1, 0))
    xc = sum(w['conv1d.weight'][:, 0, j, None] * xp[..., j:j + seq_len] for j in range(k)) + w['conv1d.bias'][:, None]
    xc = F.silu(xc)
    dbc = torch.einsum('bel,re->blr', xc, w['x_proj.weight'])
    rank, state = mixer.dt_rank, mixer.d_state
    dt_raw, Bm, Cm = dbc.split([rank, state, state], dim=-1)  # (b, l, .)
    dt = F.softplus(dt_raw @ w['dt_proj.weight'].T + w['dt_proj.bias']).transpose(1, 2)  # (b, e, l)
    A = -torch.exp(w['A_log'])  # (e, n)
    log_a = dt[..., None] * A[:, None, :]  # (b, e, l, n)
    b_term = (dt * xc)[..., None] * Bm[:, None, :, :]  # (b, e, l, n)
    h = torch.zeros_like(b_term)
    for t in range(seq_len):
        for s in range(t + 1):
            h[:, :, t] += torch.exp(log_a[:, :, s + 1:t + 1].sum(2)) * b_term[:, :, s]
        end = min((t // window + 1) * window, seq_len)
        for s in range(t + 1, end):
            h[:, :, t] += torch.exp(log_a[:, :, t:s].sum(2)) * b_term[:, :, s]
    y = torch.einsum('beln,bln->bel', h, Cm) + w['D'][:, None] * xc
    y = y * F.silu(z)
    return y.transpose(1, 2) @ w['out_proj.weight'].T


@pytest.mark.parametrize('seq_len,window', [(11, 4), (16, 8), (9, 1), (7, 16)])
def test_lb_mixer_matches_bruteforce(seq_len, window):
    mixer = _perturbed(MambaMixer(12, d_state=5, scan='local_bidirectional', local_window=window), seed=seq_len)
    u = torch.randn(2, seq_len, 12)
    with torch.no_grad():
        out = mixer(u)
    torch.testing.assert_close(out.double(), _lb_mixer_bruteforce(mixer, u, window), atol=2e-5, rtol=1e-4)
    # the local backward part matters: a plain forward scan with the same weights differs
    forward_only = copy.deepcopy(mixer)
    forward_only.scan, forward_only.local_window = 'forward', None
    if window > 1:
        with torch.no_grad():
            assert not torch.allclose(forward_only(u), out, atol=1e-4)


def test_lb_mixer_window_follows_cuda_launch_table():
    assert [default_local_window(n) for n in (1, 16, 128, 129, 196, 256, 257, 1024, 4096)] == [4, 4, 4, 8, 8, 8, 16, 16,
                                                                                                16]
    mixer = _perturbed(MambaMixer(8, d_state=4, scan='local_bidirectional'))
    for seq_len, window in ((10, 4), (130, 8)):
        u = torch.randn(1, seq_len, 8)
        explicit = copy.deepcopy(mixer)
        explicit.local_window = window
        wrong = copy.deepcopy(mixer)
        wrong.local_window = 2 * window
        with torch.no_grad():
            torch.testing.assert_close(mixer(u), explicit(u), rtol=0, atol=0)
            assert not torch.allclose(mixer(u), wrong(u), atol=1e-5)


@pytest.mark.parametrize('scan', ['local_bidirectional', 'forward'])
def test_reverse_mixer_equals_flipping_the_sequence(scan):
    mixer = _perturbed(MambaMixer(12, d_state=5, scan=scan, local_window=4 if scan != 'forward' else None))
    reverse = copy.deepcopy(mixer)
    reverse.reverse = True
    u = torch.randn(2, 14, 12)  # 14 = 3 full windows + a partial one: windows align to the start of the flipped order
    with torch.no_grad():
        torch.testing.assert_close(reverse(u), mixer(u.flip(1)).flip(1), atol=1e-6, rtol=1e-5)


def _official_style_lbvim(model: VisionMamba, x: torch.Tensor) -> torch.Tensor:
    """LBVim forward as the official code runs it: (hidden, residual) pairs, flipped after every block, forward-only
    mixers; mean of the final-norm tokens."""
    def rms(t, weight, eps=1e-5):
        t = t.float()
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps) * weight

    tokens, _ = model.patch_embed(x)
    hidden, residual = tokens + model.pos_embed, None
    for block in model.blocks:
        residual = hidden.float() if residual is None else residual + hidden
        mixer = copy.deepcopy(block.mixer)
        mixer.reverse = False
        hidden = mixer(rms(residual, block.norm.weight))
        hidden, residual = hidden.flip(1), residual.flip(1)
    final = rms(residual + hidden, model.norm.weight)
    return model.head(final.mean(1))


@pytest.mark.parametrize('depth', [3, 4])
def test_lbvim_alternation_matches_official_sequence_flips(depth):
    model = _perturbed(timm.create_model('test_lbvim', depth=depth, embed_dim=32, d_state=8, num_classes=5), 0.02)
    assert [b.mixer.reverse for b in model.blocks] == [i % 2 == 1 for i in range(depth)]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _official_style_lbvim(model, x), atol=1e-5, rtol=1e-4)


def test_lbvim_model_structure_and_api():
    for name, params in (('lbvim_tiny_patch16_224', 6_419_560), ('lbvim_small_patch16_224', 23_897_320)):
        meta = timm.create_model(name, device='meta')
        assert sum(p.numel() for p in meta.parameters()) == params
        assert meta.cls_token is None and meta.pos_embed.shape[1] == 196 and meta.global_pool == 'avg'
        assert not meta.pretrained_cfg.get('hf_hub_id') and not meta.pretrained_cfg.get('url')
    assert timm.list_pretrained('lbvim_*') == []

    model = _perturbed(timm.create_model('test_lbvim', depth=2, embed_dim=32, d_state=8, num_classes=5), 0.02)
    keys = set(model.state_dict())
    assert 'blocks.0.mixer.A_log' in keys and not any('_b' in k.split('.')[-2] for k in keys if 'mixer' in k)
    assert model.no_weight_decay() == {'pos_embed', '*.A_log', '*.D'}
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        tokens = model.forward_features(x)
        torch.testing.assert_close(final, tokens)
        torch.testing.assert_close(model.forward_head(tokens, pre_logits=True), tokens.mean(1))
        # maps are in raster order: last map with the final norm = final tokens reshaped
        last = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)[0]
        torch.testing.assert_close(last, tokens.reshape(2, 4, 4, 32).permute(0, 3, 1, 2))
    assert [m.shape for m in maps] == [(2, 32, 4, 4)] * 2

    dynamic = timm.create_model('test_lbvim', dynamic_img_size=True, embed_dim=32, d_state=8, num_classes=5).eval()
    with torch.no_grad():
        assert dynamic(torch.randn(1, 3, 48, 96)).shape == (1, 5)


def test_official_lbvim_kwargs():
    # kwargs of the registered LBVim models (shared/specs/lbmamba.md §3), shrunk
    official = dict(img_size=64, patch_size=16, embed_dim=32, depth=2, num_classes=5, rms_norm=True,
                    residual_in_fp32=True, fused_add_norm=True, final_pool_type='mean', if_abs_pos_embed=True,
                    if_rope=False, bimamba_type='none', if_cls_token=False, if_divide_out=True,
                    use_middle_cls_token=True, lbm=True, layerwise_reverse_sq=True)
    model = vmamba.from_official('lbvim', official)
    assert model.cls_token is None and model.global_pool == 'avg'
    assert [(b.mixer.scan, b.mixer.reverse) for b in model.blocks] == [('local_bidirectional', False),
                                                                         ('local_bidirectional', True)]
    # an official-style state dict loads strictly
    state = {('norm_f.weight' if k == 'norm.weight' else re.sub(r'^blocks\.', 'layers.', k)): v
             for k, v in model.state_dict().items()}
    vmamba.from_official('lbvim', official, {'model': state, 'epoch': 1})
    with pytest.raises(ValueError, match='head_type'):
        vmamba.from_official('lbvim', dict(official, head_type='att_qkv_onlyatt_pnorm_nomapq'))
    with pytest.raises(ValueError, match="lbm=True with bimamba_type='v2'"):
        vmamba.from_official('lbvim', dict(official, bimamba_type='v2'))
    with pytest.raises(ValueError, match=r"unknown official Vim kwargs: \['if_bimamba'\]"):
        vmamba.from_official('lbvim', dict(official, if_bimamba=False))

"""vmamba/flops.py: the scan formula, the papers' convention, and the published VMamba counts."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import timm
import vmamba  # noqa: F401
from vmamba.flops import count_flops, count_params, selective_scan_flops
from vmamba.kernels import selective_scan


@pytest.mark.parametrize('with_D', [True, False])
def test_flop_counter_counts_scan_by_formula(with_D):
    batch, channels, length, num_states, groups = 2, 6, 7, 3, 2
    u = torch.randn(batch, channels, length)
    delta = torch.rand(batch, channels, length)
    A = -torch.rand(channels, num_states)
    B = torch.randn(batch, groups, num_states, length)
    C = torch.randn(batch, groups, num_states, length)
    D = torch.randn(channels) if with_D else None
    with FlopCounterMode(display=False) as counter:  # the formula is registered globally on import
        selective_scan(u, delta, A, B, C, D=D, delta_softplus=True)
    expected = 9 * batch * length * channels * num_states + (batch * channels * length if with_D else 0)
    assert counter.get_total_flops() == expected
    assert selective_scan_flops(u.shape, A.shape, has_D=with_D) == expected


def test_paper_convention_rules():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.LayerNorm([8, 5, 5]), nn.Flatten(), nn.Linear(200, 4))
    conv_macs = 8 * 5 * 5 * 3 * 3 * 3
    norm = 5 * 8 * 5 * 5
    linear_macs = 200 * 4
    paper = count_flops(model, (3, 5, 5), batch_size=2)
    assert paper.total == 2 * (conv_macs + norm + linear_macs)
    torch_count = count_flops(model, (3, 5, 5), batch_size=2, convention='torch')
    assert torch_count.total == 2 * 2 * (conv_macs + linear_macs)  # 2 FLOPs per MAC, norms uncounted


def test_vmamba_tiny_matches_published_count():
    # VMamba README: VMamba-T[s1l8] 4.9 G (fvcore recount 4.906 G, of which the scan 0.063 G), 30.2 M params
    model = timm.create_model('vmamba_tiny_s1l8', device='meta')
    count = count_flops(model, (3, 224, 224))
    assert count.total / 1e9 == pytest.approx(4.906, abs=0.001)
    assert count.scan / 1e9 == pytest.approx(0.0632, abs=0.0005)
    assert count_params(model) == 30_249_064


def test_vim_count_leaves_out_block_diagonal_zeros():
    """Vim's two branch projections run as block-diagonal GEMMs; the count is the math of the per-branch GEMMs.
    Independent count of the projections: G branches x tokens x (E (R + 2N) + R E) multiply-adds."""
    from vmamba.layers.mamba_mixer import MambaMixer
    model = timm.create_model('vim_tiny_patch16_224', device='meta')
    count = count_flops(model, (3, 224, 224))
    # 1.830 G until v14: the conv was one 2K-1 = 7-tap kernel per branch, 3 taps of them zeros (0.011 G)
    assert count.total / 1e9 == pytest.approx(1.819, abs=0.001)
    # the depthwise convs: 2 branches x 24 layers x 197 tokens x E = 384 channels x K = 4 taps
    assert count.by_op['causal_conv_silu'] == 2 * 24 * 197 * 384 * 4
    mixer = MambaMixer(192, scan='bidirectional', device='meta')
    E, R, N, tokens = mixer.d_inner, mixer.dt_rank, mixer.d_state, 197
    counter = torch.utils.flop_counter.FlopCounterMode(display=False)
    with counter:
        F.linear(torch.empty(tokens, 2 * E, device='meta'), torch.empty(2 * (R + 2 * N), 2 * E, device='meta'))
        F.linear(torch.empty(tokens, 2 * R, device='meta'), torch.empty(2 * E, 2 * R, device='meta'))
    packed_macs = counter.get_total_flops() // 2
    assert packed_macs - mixer.padding_macs(tokens) == 2 * tokens * (E * (R + 2 * N) + R * E)


def test_flops_tool_prints_table(capsys):
    from ._tools import load_tool
    rows = load_tool('flops').main(['--models', 'vmamba_tiny_v0,vim_tiny_patch16_224'])
    by_name = {r['model']: r for r in rows}
    assert by_name['vmamba_tiny_v0']['gflops'] == pytest.approx(5.627, abs=0.001)  # README 5.6 G, recount 5.627
    assert by_name['vim_tiny_patch16_224']['params_m'] == pytest.approx(7.148008, abs=1e-6)
    assert 'vim_tiny_patch16_224' in capsys.readouterr().out

"""Mamba-1 token mixer for plain (non-hierarchical) vision backbones: Vim, LBVim, ShuffleMamba-style models.

One module covers the three scan modes these models use:

* ``'forward'``: the vanilla Mamba-1 mixer (``mamba_ssm.modules.mamba_simple.Mamba``): in_proj -> [x | z],
  causal depthwise conv1d + SiLU, x_proj -> [dt | B | C], dt_proj, selective scan gated by SiLU(z), out_proj.
* ``'bidirectional'``: Vim's "v2" mixer. A second branch with its own ``conv1d_b``, ``x_proj_b``, ``dt_proj_b``,
  ``A_b_log``, ``D_b`` scans the sequence backwards; in_proj and out_proj are shared, and the two branch outputs are
  summed (and divided by two with ``divide_out``) before out_proj.
* ``'local_bidirectional'``: LBMamba. The forward scan plus, inside windows of ``W`` tokens, a backward scan with the
  *same* parameters (the kernel's ``local_window``). Same parameters and keys as ``'forward'``.

Both Vim directions run in one kernel launch: the branches are stacked as two channel groups and the kernels get
``reverse=(False, True)``. The backward branch's causal conv on the flipped sequence is an anti-causal conv on the
original one, so no flipped copies of the activations are made: ``causal_conv_silu`` runs both branches' kernels
(as in the checkpoint) from one read of x, and x_proj / dt_proj become block-diagonal weights. The whole mixer works
on token-major (batch, L, features) tensors, the layout of the projections; the scan reads them through strides.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_module
from torch import nn

from vmamba.kernels import selective_scan
from vmamba.kernels.conv import causal_conv_silu
from vmamba.kernels.gated_sum import gated_group_sum

from .packing import PackedParameterCache, autocast_dtype

__all__ = ['MambaMixer', 'default_local_window', 'MIXER_SCANS']

MIXER_SCANS = ('forward', 'bidirectional', 'local_bidirectional')


def default_local_window(seq_len: int) -> int:
    """LBMamba window ``W`` for a sequence of ``seq_len`` tokens, as chosen by the official CUDA launch table.

    The official kernel's window is the number of items per CUDA thread, which depends on the sequence length:
    ``L <= 128 -> 4``, ``129 <= L <= 256 -> 8``, ``L > 256 -> 16`` (e.g. LBVim at 224x224, L = 196: W = 8).
    The official ROCm build uses a different table; this is the CUDA one, which the released models ran with.
    """
    if seq_len <= 128:
        return 4
    if seq_len <= 256:
        return 8
    return 16


class _PackedParameters(NamedTuple):
    """The mixer's parameters in the fused kernels' layout (G branches, E inner channels, R dt rank, N states)."""
    conv_weight: torch.Tensor  # (G * E, K) depthwise kernels, group g = branch g
    conv_bias: Optional[torch.Tensor]  # (G * E,)
    x_proj: torch.Tensor  # (G * (R + 2N), G * E) block-diagonal
    dt_proj: torch.Tensor  # (G * E, G * R) block-diagonal
    A: torch.Tensor  # (G * E, N) fp32, = -exp(A_log)
    D: torch.Tensor  # (G * E,) fp32
    delta_bias: torch.Tensor  # (G * E,) fp32


@register_notrace_module  # shape-dependent kernel packing; a leaf for torch.fx feature extraction
class MambaMixer(nn.Module):
    """Mamba-1 mixer on token sequences, with Vim's bidirectional and LBMamba's locally bidirectional scans.

    Args:
        dim: token width ``D``.
        d_state: SSM state size ``N``.
        d_conv: width ``K`` of the causal depthwise conv.
        expand: inner width ``E = expand * D``.
        dt_rank: rank ``R`` of the dt projection; ``None`` -> ``ceil(D / 16)``.
        scan: ``'forward'``, ``'bidirectional'`` (Vim v2) or ``'local_bidirectional'`` (LBMamba).
        reverse: run a single-direction mixer (``'forward'`` / ``'local_bidirectional'``) from the end of the
            sequence. Equivalent to flipping the tokens before and after the mixer (LBVim alternates this per block).
        local_window: LBMamba window ``W``; ``None`` -> :func:`default_local_window` of the sequence length.
        divide_out: divide the sum of the two Vim directions by two (``if_divide_out`` of the released models).
        dt_min, dt_max, dt_init, dt_scale, dt_init_floor: Mamba's dt initialisation.
        conv_bias: bias of the depthwise conv(s).
        bias: biases of in_proj and out_proj.
    """

    def __init__(
            self,
            dim: int,
            d_state: int = 16,
            d_conv: int = 4,
            expand: int = 2,
            dt_rank: Optional[int] = None,
            scan: str = 'forward',
            reverse: bool = False,
            local_window: Optional[int] = None,
            divide_out: bool = True,
            dt_min: float = 0.001,
            dt_max: float = 0.1,
            dt_init: str = 'random',
            dt_scale: float = 1.0,
            dt_init_floor: float = 1e-4,
            conv_bias: bool = True,
            bias: bool = False,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        if scan not in MIXER_SCANS:
            raise ValueError(f'scan must be one of {MIXER_SCANS}, got {scan!r}')
        if scan == 'bidirectional' and reverse:
            raise ValueError("reverse=True is meaningless for scan='bidirectional' (it scans both directions)")
        if local_window is not None and scan != 'local_bidirectional':
            raise ValueError(f"local_window is only used by scan='local_bidirectional', got scan={scan!r}")
        if local_window is not None and local_window < 1:
            raise ValueError(f'local_window must be >= 1, got {local_window}')
        if dt_init not in ('random', 'constant'):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        self.dim = dim
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = expand * dim
        self.dt_rank = math.ceil(dim / 16) if dt_rank is None else dt_rank
        self.scan = scan
        self.reverse = reverse
        self.local_window = local_window
        self.divide_out = divide_out
        inner, rank = self.d_inner, self.dt_rank

        self.in_proj = nn.Linear(dim, 2 * inner, bias=bias, **dd)
        self.conv1d = nn.Conv1d(inner, inner, d_conv, groups=inner, padding=d_conv - 1, bias=conv_bias, **dd)
        self.x_proj = nn.Linear(inner, rank + 2 * d_state, bias=False, **dd)
        self.dt_proj = nn.Linear(rank, inner, bias=True, **dd)
        self.A_log = nn.Parameter(torch.empty(inner, d_state, device=device, dtype=torch.float32))
        self.D = nn.Parameter(torch.empty(inner, device=device, dtype=torch.float32))
        if scan == 'bidirectional':
            self.conv1d_b = nn.Conv1d(inner, inner, d_conv, groups=inner, padding=d_conv - 1, bias=conv_bias, **dd)
            self.x_proj_b = nn.Linear(inner, rank + 2 * d_state, bias=False, **dd)
            self.dt_proj_b = nn.Linear(rank, inner, bias=True, **dd)
            self.A_b_log = nn.Parameter(torch.empty(inner, d_state, device=device, dtype=torch.float32))
            self.D_b = nn.Parameter(torch.empty(inner, device=device, dtype=torch.float32))
        self.out_proj = nn.Linear(inner, dim, bias=bias, **dd)

        self._packed = PackedParameterCache()  # _pack's result, reused between no-grad calls
        self._dt_init = dict(dt_min=dt_min, dt_max=dt_max, dt_init=dt_init, dt_scale=dt_scale,
                             dt_init_floor=dt_init_floor)
        self.reset_ssm_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise every parameter: PyTorch defaults for the projections and convs, then
        :meth:`reset_ssm_parameters`."""
        for module in self.children():
            if isinstance(module, (nn.Linear, nn.Conv1d)):
                module.reset_parameters()
        self.reset_ssm_parameters()

    @property
    def num_branches(self) -> int:
        return 2 if self.scan == 'bidirectional' else 1

    def _branch_modules(self) -> Sequence[tuple]:
        """(conv1d, x_proj, dt_proj, A_log, D, reverse) of each branch, in kernel group order."""
        if self.scan == 'bidirectional':
            return ((self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D, False),
                    (self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b, True))
        return ((self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D, self.reverse),)

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """Mamba's initialisation of the SSM parameters (dt_proj, A_log, D), as in the official Vim code.

        The forward dt_proj gets Mamba's dt init (weight ~ U(+-R^-0.5 * dt_scale); bias = softplus^-1 of dt drawn
        log-uniformly in [dt_min, dt_max]). The official Vim code gives ``dt_proj_b`` no special init and its
        model-level init then zeroes ``dt_proj_b.bias``; we reproduce that (PyTorch default weight, zero bias).
        """
        cfg = self._dt_init
        std = self.dt_rank ** -0.5 * cfg['dt_scale']
        if cfg['dt_init'] == 'constant':
            nn.init.constant_(self.dt_proj.weight, std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        device = self.dt_proj.bias.device
        dt = torch.exp(
            torch.rand(self.d_inner, device=device) * (math.log(cfg['dt_max']) - math.log(cfg['dt_min']))
            + math.log(cfg['dt_min'])
        ).clamp(min=cfg['dt_init_floor'])
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
        a_init = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.A_log.device)
        self.A_log.copy_(torch.log(a_init).expand(self.d_inner, -1))
        self.D.fill_(1.)
        if self.scan == 'bidirectional':
            self.A_b_log.copy_(torch.log(a_init).expand(self.d_inner, -1))
            self.D_b.fill_(1.)
            self.dt_proj_b.reset_parameters()
            self.dt_proj_b.bias.zero_()

    def _packed_conv(self, branches) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Depthwise kernels of all branches as one (G * E, K) weight and the (G * E,) biases; a reverse branch's
        conv runs over the reversed sequence (``causal_conv_silu``'s ``reverse``), so its kernel is used as is."""
        weights = [conv.weight.squeeze(1) for conv, *_ in branches]
        biases = [conv.bias for conv, *_ in branches]
        weight = weights[0] if len(weights) == 1 else torch.cat(weights, 0)
        if biases[0] is None:
            return weight, None
        return weight, (biases[0] if len(biases) == 1 else torch.cat(biases, 0))

    def _packed_projections(self, branches) -> tuple[torch.Tensor, torch.Tensor]:
        """x_proj and dt_proj of all branches as block-diagonal weights, so that each is one GEMM on the tokens.

        x_proj: (G * (R + 2N), G * E), output columns ``[dt_0 .. dt_{G-1} | B_0 C_0 .. B_{G-1} C_{G-1}]`` (the dt
        columns of all branches side by side are the dt GEMM's input). dt_proj: (G * E, G * R). Measured on the
        H100 (Vim-S, batch 128): 3,519 img/s vs 2,746 with per-branch batched matmuls and a copy of delta into the
        token-major layout. The GEMMs also multiply the zero blocks; :meth:`padding_macs` counts that work, which
        ``vmamba.flops`` leaves out of the model's FLOPs.
        """
        if len(branches) == 1:
            return branches[0][1].weight, branches[0][2].weight
        groups, rank = len(branches), self.dt_rank
        x_proj = torch.block_diag(*[b[1].weight for b in branches]).unflatten(0, (groups, -1))
        x_proj = torch.cat([x_proj[:, :rank].flatten(0, 1), x_proj[:, rank:].flatten(0, 1)])
        return x_proj, torch.block_diag(*[b[2].weight for b in branches])

    def _apply(self, fn, recurse=True):
        self._packed.clear()
        return super()._apply(fn, recurse)

    def _pack(self, gemm_dtype: Optional[torch.dtype]) -> _PackedParameters:
        """All branches' parameters in the layout of the fused kernels (see :class:`_PackedParameters`); the GEMM
        weights in ``gemm_dtype`` (the autocast dtype, so that autocast does not cast them again) if given.
        Reused between no-grad calls (``vmamba/layers/packing.py``)."""
        branches = self._branch_modules()
        conv_weight, conv_bias = self._packed_conv(branches)
        x_proj, dt_proj = self._packed_projections(branches)
        if gemm_dtype is not None:
            x_proj, dt_proj = x_proj.to(gemm_dtype), dt_proj.to(gemm_dtype)
        if len(branches) == 1:
            A_log, D, delta_bias = branches[0][3], branches[0][4], branches[0][2].bias
        else:
            A_log = torch.cat([b[3] for b in branches])
            D = torch.cat([b[4] for b in branches])
            delta_bias = torch.cat([b[2].bias for b in branches])
        return _PackedParameters(conv_weight, conv_bias, x_proj, dt_proj, -torch.exp(A_log.float()), D.float(),
                                 delta_bias.float())

    def padding_macs(self, num_tokens: int) -> int:
        """Multiply-adds the block-diagonal projections spend on zero blocks for ``num_tokens`` (batch * L) tokens."""
        groups = self.num_branches
        inner, rank, state = self.d_inner, self.dt_rank, self.d_state
        per_token = (groups * groups - groups) * (inner * (rank + 2 * state) + rank * inner)
        return num_tokens * per_token

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: (batch, L, D) -> (batch, L, D).

        Everything stays token-major, (batch, L, features): the conv, the projections and the scan (which reads
        and writes transposed views, ``vmamba/kernels/layout.py``); no activation is transposed or repeated.
        """
        seq_len = hidden.shape[1]
        inner, rank, state = self.d_inner, self.dt_rank, self.d_state
        groups = self.num_branches
        packed = self._packed.get(self, hidden, self._pack, autocast_dtype(hidden.device.type))

        xz = self.in_proj(hidden)  # (batch, L, 2E)
        # split, not two slices: split's backward concatenates the two gradients once, where each slice's backward
        # zero-fills a (batch, L, 2E) gradient, copies into it, and the two are added (~0.2 ms a layer of a Vim-S
        # training step)
        x, z = xz.split(inner, dim=-1)
        # (batch, L, G*E): group g feeds branch g
        reverse = tuple(bool(branch[-1]) for branch in self._branch_modules())
        x = causal_conv_silu(x, packed.conv_weight, packed.conv_bias, reverse)

        x_dbl = F.linear(x, packed.x_proj)  # (batch, L, G*R + G*2N)
        dt_low_rank, bc = x_dbl.split([groups * rank, groups * 2 * state], dim=-1)
        delta = F.linear(dt_low_rank, packed.dt_proj)  # (batch, L, G*E), token-major
        B, C = bc.unflatten(-1, (groups, 2 * state)).split(state, dim=-1)  # (batch, L, G, N) each
        B, C = B.permute(0, 2, 3, 1), C.permute(0, 2, 3, 1)  # (batch, G, N, L) views

        local_window = None
        if self.scan == 'local_bidirectional':
            local_window = self.local_window or default_local_window(seq_len)

        y = selective_scan(
            x.transpose(1, 2), delta.transpose(1, 2), packed.A, B, C, D=packed.D,
            z=z.transpose(1, 2) if groups == 1 else None,
            delta_bias=packed.delta_bias, delta_softplus=True,
            reverse=reverse, local_window=local_window,
        ).transpose(1, 2)  # (batch, L, G*E), token-major like x
        if groups > 1:
            # Both branches are gated by SiLU(z) at the same position, so the gate is applied once to their sum:
            # one fused pass, (sum_g y_g) * scale * silu(z) -> (batch, L, E).
            y = gated_group_sum(y, z, 1.0 / groups if self.divide_out else 1.0)
        return self.out_proj(y)

    def extra_repr(self) -> str:
        s = f'scan={self.scan!r}, d_state={self.d_state}, d_conv={self.d_conv}, dt_rank={self.dt_rank}'
        if self.reverse:
            s += ', reverse=True'
        if self.scan == 'local_bidirectional':
            s += f', local_window={self.local_window or "auto"}'
        return s

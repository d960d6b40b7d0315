"""SS2D: the 2-D selective-scan token mixer of VMamba.

Data flow for an NCHW input ``x`` of shape (B, C, H, W) (or an NHWC ``x`` of shape (B, H, W, C) when built with
``channel_first=False``), with ``D = int(ssm_ratio * C)`` scan channels,
``N = d_state``, ``R = dt_rank`` and ``K = scan pattern routes``::

    in_proj (1x1, C -> D, or C -> 2D split into x | z when gated)
    -> depthwise conv d_conv x d_conv -> act
    -> scan pattern: (B, D, H, W) -> K routes (B, K, D, L)   (channels-last: gather_routes from (B, H*W, D))
    -> per-route x_proj (K, R + 2N, D): dt_low (R), B (N), C (N)          (B/C shared by the D channels of a route)
    -> per-route dt_proj (K, D, R): delta (B, K, D, L)
    -> selective_scan over K * D channels, groups = routes, reverse = routes.reverse, fp32 output
    -> pattern merge back to (B, D, H, W) -> out_norm (fp32 LayerNorm) -> [* act(z)] -> out_proj (1x1, D -> C)
       (channels-last: merge_routes to (B, H*W, D), LayerNorm over the last dim, nn.Linear projections)

Channels-last (``channel_first=False``, the official ``channel_first`` flag) keeps every tensor of the block in one
layout: the norms and projections run on contiguous (B, H, W, C) tensors and the only layout changes are the
route gather / merge kernels around the scan. Same parameters and names in both layouts.

The released VMamba v2 models ("v05_noz") are ``gated=False, d_state=1, conv_bias=False``; the v0 ("Vanilla")
models are ``gated=True, d_state=16, conv_bias=True``. Route ``k`` owns scan channels
``k * D:(k + 1) * D`` of ``A_log``, ``D`` and ``dt_bias`` (direction-major, as in the official checkpoints).

Precision (official v05 "oflex"): the scan inputs stay in the activation / autocast dtype, ``A``, ``D`` and the
delta bias are fp32, the scan returns fp32, the merge and ``out_norm`` run in fp32 and the result is cast back.
The official v0 code also casts the scan inputs (u, delta, B, C) to fp32 before its kernel; the scan here computes
in fp32 from the activation-dtype values, which is the same arithmetic on the same (exactly representable) values,
so v0 needs no cast and no extra copies (tests/models/test_vmamba.py checks the identity bit for bit).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Type, Union

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import get_act_layer, register_notrace_module, trunc_normal_

from vmamba.kernels import gather_routes, merge_routes, merge_routes_layer_norm, selective_scan
from vmamba.kernels.interface import selective_scan_input_grads, selective_scan_no_autograd
from vmamba.kernels.layout import dispatch_through_custom_op
from vmamba.scans import ScanPattern, ScanRoutes, get_scan_pattern

from .norm import LayerNorm2dFp32, LayerNormFp32
from .packing import PackedParameterCache

__all__ = ['SS2D', 'Linear2d', 'resolve_dt_rank']


def resolve_dt_rank(dt_rank: Union[int, str], dim: int) -> int:
    """``'auto'`` -> ceil(dim / 16) (VMamba uses the *block* dim, not the scan dim); an int is returned as is."""
    if dt_rank == 'auto':
        return math.ceil(dim / 16)
    if isinstance(dt_rank, bool) or not isinstance(dt_rank, int) or dt_rank < 1:
        raise ValueError(f"dt_rank must be 'auto' or a positive int, got {dt_rank!r}")
    return dt_rank


class Linear2d(nn.Linear):
    """``nn.Linear`` over the channels of an NCHW map (a 1x1 convolution that stores a 2-D (out, in) weight).

    (B, in_features, H, W) -> (B, out_features, H, W). The 2-D weight matches the official checkpoints.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight[:, :, None, None], self.bias)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half / single precision, fp64 stays fp64."""
    return torch.promote_types(dtype, torch.float32)


def _projections(xs, x_proj_weight, dt_proj_weight, with_dt_low=False):
    """Routes xs (B, K, D, L) -> delta (B, K, D, L), B and C (B, K, N, L) contiguous (and the low-rank dt
    (B, K, R, L) if ``with_dt_low``).

    Batched matmuls over (batch, route) that read xs and write x_dbl / delta in place: (B, K, *, L) layouts, no
    permuted copies (einsum would copy xs to (K, B, L, D) and return a permuted delta)."""
    x_dbl = torch.matmul(x_proj_weight, xs)  # (K, R+2N, D) @ (B, K, D, L) -> (B, K, R+2N, L)
    rank, states = dt_proj_weight.shape[-1], (x_dbl.shape[2] - dt_proj_weight.shape[-1]) // 2
    dt_low, B, C = torch.split(x_dbl, [rank, states, states], dim=2)
    delta = torch.matmul(dt_proj_weight, dt_low)  # (K, D, R) @ (B, K, R, L) -> (B, K, D, L)
    return (delta, B.contiguous(), C.contiguous()) + ((dt_low,) if with_dt_low else ())


def _route_projections(tokens, x_proj_weight, dt_proj_weight, index, inverse, width):
    """tokens (B, L', D) of a map ``width`` wide -> routes xs (B, K, D, L) and their :func:`_projections`."""
    xs = gather_routes(tokens, index, inverse, width)
    return (xs, *_projections(xs, x_proj_weight, dt_proj_weight))


class _RoutesScan(torch.autograd.Function):
    """gather routes -> x_proj -> dt_proj -> selective scan, keeping only the token map (and the scan's small
    chunk-start states, so that the scan backward skips its forward pre-pass) for the backward.

    The plain autograd graph keeps the K route copies of the map and delta (2 K-times-map-sized tensors, ~40% of
    VMamba-T's training activations); here the backward re-gathers the routes and recomputes the two projections
    (cheap GEMMs) before the scan's backward kernel, which recomputes the scan states itself as before. Same math
    and kernels as :meth:`SS2D._scan_routes`: tokens (B, L', D) -> ys (B, K, D, L) in fp32 (fp64 for fp64).
    """

    @staticmethod
    def forward(ctx, tokens, x_proj_weight, dt_proj_weight, A, D, delta_bias, index, inverse, width, reverse,
                local_window):
        batch, num_routes, length = tokens.shape[0], index.shape[0], index.shape[1]
        with torch.autocast(tokens.device.type, enabled=False):
            xs, delta, B, C = _route_projections(tokens, x_proj_weight, dt_proj_weight, index, inverse, width)
            ys, chunk_states = selective_scan_no_autograd(
                xs.flatten(1, 2), delta.flatten(1, 2), A, B, C, D, None, delta_bias, True, reverse, local_window,
                A.dtype, save_chunk_states=True)
        ctx.save_for_backward(tokens, x_proj_weight, dt_proj_weight, A, D, delta_bias, index, inverse, chunk_states)
        ctx.scan_options = (width, reverse, local_window)
        return ys.view(batch, num_routes, -1, length)

    @staticmethod
    def backward(ctx, grad_ys):
        tokens, x_proj_weight, dt_proj_weight, A, D, delta_bias, index, inverse, chunk_states = ctx.saved_tensors
        width, reverse, local_window = ctx.scan_options
        need_tokens, need_x_proj, need_dt_proj = ctx.needs_input_grad[:3]
        with torch.no_grad(), torch.autocast(tokens.device.type, enabled=False):
            xs = gather_routes(tokens, index, inverse, width)
            delta, B, C, dt_low = _projections(xs, x_proj_weight, dt_proj_weight, with_dt_low=True)
            du, ddelta, dA, dB, dC, dD, _, ddelta_bias = selective_scan_input_grads(
                grad_ys.flatten(1, 2), xs.flatten(1, 2), delta.flatten(1, 2), A, B, C, D, None, delta_bias, True,
                reverse, local_window, chunk_states)
            # The two projections' gradients by hand: the same matmuls autograd would run, without recording the
            # recompute and running a nested autograd.backward per call. Weights broadcast over the batch, so their
            # gradients sum over it.
            ddelta = ddelta.view_as(delta)  # (B, K, D, L)
            grad_x_proj = grad_dt_proj = grad_tokens = None
            if need_dt_proj:
                grad_dt_proj = torch.matmul(ddelta, dt_low.transpose(-1, -2)).sum(0)  # (K, D, R)
            if need_x_proj or need_tokens:
                d_dt_low = torch.matmul(dt_proj_weight.transpose(-1, -2), ddelta)  # (B, K, R, L)
                d_x_dbl = torch.cat([d_dt_low, dB, dC], dim=2)  # (B, K, R + 2N, L)
                if need_x_proj:
                    grad_x_proj = torch.matmul(d_x_dbl, xs.transpose(-1, -2)).sum(0)  # (K, R + 2N, D)
                if need_tokens:
                    # dxs = x_proj^T @ d_x_dbl + du: one batched GEMM that accumulates into du (beta = 1), over
                    # (batch * route) with the route weights repeated per batch element (a small copy).
                    batch, num_routes, channels, length = xs.shape
                    weight_t = x_proj_weight.transpose(-1, -2).expand(batch, -1, -1, -1)
                    dxs = du.view(batch * num_routes, channels, length).baddbmm_(
                        weight_t.reshape(batch * num_routes, channels, -1), d_x_dbl.flatten(0, 1))
                    grad_tokens = merge_routes(dxs.view_as(xs), index, inverse, width)  # the gather's adjoint
        return (grad_tokens, grad_x_proj, grad_dt_proj, dA, dD, ddelta_bias, None, None, None, None, None)


@register_notrace_module  # shape-dependent scan routes: a leaf module for torch.fx tracing
class SS2D(nn.Module):
    """2-D selective-scan mixer (VMamba SS2D) over K scan routes.

    Args:
        dim: input / output channels C.
        d_state: SSM state size N.
        ssm_ratio: scan channels D = int(ssm_ratio * dim).
        dt_rank: rank R of the delta projection; ``'auto'`` = ceil(dim / 16).
        d_conv: depthwise conv kernel size (odd, >= 3).
        conv_bias: bias in the depthwise conv (v0: True, v2: False).
        gated: in_proj also produces a gate z; the output is ``out_norm(y) * act(z)`` (v0 / "v05"), else
            ``out_norm(y)`` ("_noz").
        scan: a scan pattern name for :func:`vmamba.scans.get_scan_pattern` or a :class:`ScanPattern`.
            The released weights use ``'cross'`` (4 routes).
        act_layer: activation after the depthwise conv (and on z when gated).
        proj_drop: dropout after out_proj.
        dt_min, dt_max, dt_init_floor: range of the initial softplus(dt_bias).
        norm_eps: eps of out_norm.
        channel_first: NCHW input / output (default); False: NHWC (B, H, W, C), the channels-last block layout.
    """

    def __init__(
            self,
            dim: int,
            d_state: int = 1,
            ssm_ratio: float = 2.0,
            dt_rank: Union[int, str] = 'auto',
            d_conv: int = 3,
            conv_bias: bool = False,
            gated: bool = False,
            scan: Union[str, ScanPattern] = 'cross',
            act_layer: Union[str, Type[nn.Module]] = nn.SiLU,
            proj_drop: float = 0.,
            dt_min: float = 0.001,
            dt_max: float = 0.1,
            dt_init_floor: float = 1e-4,
            norm_eps: float = 1e-5,
            channel_first: bool = True,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        if d_state < 1:
            raise ValueError(f'd_state must be >= 1, got {d_state}')
        if d_conv < 3 or d_conv % 2 == 0:
            raise ValueError(f'd_conv must be an odd kernel size >= 3, got {d_conv}')
        if not isinstance(scan, (str, ScanPattern)):
            raise TypeError(f'scan must be a pattern name or a vmamba.scans.ScanPattern, got {type(scan).__name__}')
        self.scan_pattern = get_scan_pattern(scan)
        self.dim = dim
        self.d_inner = int(ssm_ratio * dim)
        if self.d_inner < 1:
            raise ValueError(f'ssm_ratio={ssm_ratio} gives {self.d_inner} scan channels for dim={dim}')
        self.d_state = d_state
        self.dt_rank = resolve_dt_rank(dt_rank, dim)
        self.num_routes = self.scan_pattern.num_routes
        self.gated = gated
        self.channel_first = channel_first
        self.dt_min, self.dt_max, self.dt_init_floor = dt_min, dt_max, dt_init_floor
        act_layer = get_act_layer(act_layer)

        K, D, N, R = self.num_routes, self.d_inner, self.d_state, self.dt_rank
        linear = Linear2d if channel_first else nn.Linear
        self.in_proj = linear(dim, 2 * D if gated else D, bias=False, **dd)
        self.conv = nn.Conv2d(D, D, d_conv, padding=(d_conv - 1) // 2, groups=D, bias=conv_bias, **dd)
        self.act = act_layer()
        # Per-route projections of the scanned sequence to [dt_low (R), B (N), C (N)] and of dt_low to D deltas.
        self.x_proj_weight = nn.Parameter(torch.empty(K, R + 2 * N, D, **dd))
        self.dt_proj_weight = nn.Parameter(torch.empty(K, D, R, **dd))
        self.dt_bias = nn.Parameter(torch.empty(K, D, **dd))
        # Direction-major scan channels: row k * D + d belongs to route k.
        self.A_log = nn.Parameter(torch.empty(K * D, N, **dd))
        self.D = nn.Parameter(torch.empty(K * D, **dd))
        self.out_norm = (LayerNorm2dFp32 if channel_first else LayerNormFp32)(D, eps=norm_eps, **dd)
        self.out_proj = linear(D, dim, bias=False, **dd)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()
        self._packed = PackedParameterCache()  # _pack's result, reused between no-grad calls
        self.init_weights()

    def extra_repr(self) -> str:
        return (f'dim={self.dim}, d_inner={self.d_inner}, d_state={self.d_state}, dt_rank={self.dt_rank}, '
                f'routes={self.num_routes}, gated={self.gated}, channel_first={self.channel_first}')

    @torch.no_grad()
    def init_weights(self) -> None:
        """Official VMamba init ("v0"); safe on the meta device and after ``to_empty``."""
        K, D, N, R = self.num_routes, self.d_inner, self.d_state, self.dt_rank
        trunc_normal_(self.in_proj.weight, std=.02)
        trunc_normal_(self.out_proj.weight, std=.02)
        self.conv.reset_parameters()
        self.out_norm.reset_parameters()
        # x_proj: PyTorch's default Linear(D, R + 2N) init, independently per route.
        bound = D ** -0.5
        nn.init.uniform_(self.x_proj_weight, -bound, bound)
        nn.init.uniform_(self.dt_proj_weight, -R ** -0.5, R ** -0.5)
        # dt_bias = softplus^-1(dt) with dt log-uniform in [dt_min, dt_max], so softplus(dt_bias) starts there.
        device = self.dt_bias.device
        log_min, log_max = math.log(self.dt_min), math.log(self.dt_max)
        dt = torch.exp(torch.rand(K, D, device=device) * (log_max - log_min) + log_min).clamp(min=self.dt_init_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        # A = -exp(A_log) = -(1..N) for every scan channel (S4D-real init).
        A = torch.arange(1, N + 1, dtype=torch.float32, device=device).expand(K * D, N)
        self.A_log.copy_(torch.log(A))
        self.D.fill_(1.0)

    def _apply(self, fn, recurse=True):
        self._packed.clear()
        return super()._apply(fn, recurse)

    def _pack(self, dtype: torch.dtype) -> Tuple[torch.Tensor, ...]:
        """Scan-ready parameters for activations of ``dtype``: x_proj / dt_proj weights in ``dtype``, and
        ``A = -exp(A_log)``, ``D``, the flat ``dt_bias`` in its compute dtype (fp32; fp64 for fp64). Reused between
        no-grad calls (``vmamba/layers/packing.py``)."""
        param_dtype = _compute_dtype(dtype)
        return (self.x_proj_weight.to(dtype), self.dt_proj_weight.to(dtype), -torch.exp(self.A_log.to(param_dtype)),
                self.D.to(param_dtype), self.dt_bias.reshape(-1).to(param_dtype))

    def _scan_routes(self, xs: torch.Tensor, routes: ScanRoutes) -> torch.Tensor:
        """Selective scan of the routes ``xs`` (B, K, D, L) -> (B, K, D, L) in fp32 (fp64 for fp64)."""
        batch, _, _, length = xs.shape
        K, D = self.num_routes, self.d_inner
        x_proj_weight, dt_proj_weight, A, D_skip, delta_bias = self._packed.get(self, xs, self._pack, xs.dtype)
        delta, B, C = _projections(xs, x_proj_weight, dt_proj_weight)
        ys = selective_scan(
            xs.reshape(batch, K * D, length),
            delta.reshape(batch, K * D, length),
            A,
            B,
            C,
            D=D_skip,
            delta_bias=delta_bias,
            delta_softplus=True,
            reverse=routes.reverse,
            local_window=routes.local_window,
            out_dtype=A.dtype,
        )
        return ys.view(batch, K, D, length)

    def _scan(self, u: torch.Tensor) -> torch.Tensor:
        """Selective scan over the routes of ``u`` (B, D, H, W) -> merged (B, D, H, W) in fp32 (fp64 for fp64)."""
        height, width = u.shape[-2:]
        xs, routes = self.scan_pattern.scan(u)  # (B, K, D, L)
        return self.scan_pattern.merge(self._scan_routes(xs, routes), routes, height, width)

    def _scan_norm_channels_last(self, u: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        """Selective scan over the routes of ``u`` (B, H, W, D), merged and ``out_norm``-ed -> (B, H, W, D) in
        ``out_dtype`` (the norm computes in fp32, fp64 for fp64; :func:`~vmamba.kernels.routes.
        merge_routes_layer_norm`). The padded map's width goes to the route kernels (the merge reads map blocks)."""
        batch, height, width, channels = u.shape
        routes = self.scan_pattern.routes(height, width, u.device)
        padded_h, padded_w = routes.padded_hw
        if (padded_h, padded_w) != (height, width):
            u = F.pad(u, (0, 0, 0, padded_w - width, 0, padded_h - height))
        tokens = u.reshape(batch, padded_h * padded_w, channels)
        if torch.is_grad_enabled() and not dispatch_through_custom_op(tokens):
            # Training: keep only the map for the backward, not the K route copies and delta (_RoutesScan).
            x_proj_weight, dt_proj_weight, A, D_skip, delta_bias = self._pack(tokens.dtype)
            ys = _RoutesScan.apply(tokens, x_proj_weight, dt_proj_weight, A, D_skip, delta_bias, routes.index,
                                   routes.inverse, padded_w, tuple(routes.reverse), int(routes.local_window or 0))
        else:
            ys = self._scan_routes(gather_routes(tokens, routes.index, routes.inverse, padded_w), routes)
        norm = self.out_norm
        y = merge_routes_layer_norm(ys, routes.index, routes.inverse, norm.weight, norm.bias, norm.eps, out_dtype,
                                    padded_w)
        y = y.view(batch, padded_h, padded_w, channels)
        if (padded_h, padded_w) != (height, width):
            y = y[:, :height, :width]  # per-token norm: normalising the padding too and cropping is the same
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W); with ``channel_first=False`` (B, H, W, C) -> (B, H, W, C)."""
        channel_dim = 1 if self.channel_first else 3
        if x.ndim != 4 or x.shape[channel_dim] != self.dim:
            expects = 'expects an NCHW' if self.channel_first else '(channel_first=False) expects an NHWC'
            raise ValueError(f'SS2D {expects} map with {self.dim} channels, got shape {tuple(x.shape)}')
        u = self.in_proj(x)
        z: Optional[torch.Tensor] = None
        if self.gated:
            u, z = u.chunk(2, dim=channel_dim)
        if self.channel_first:
            y = self.out_norm(self._scan(self.act(self.conv(u)))).to(x.dtype)
        else:
            # The depthwise conv runs on the NCHW view of the NHWC tensor (a channels-last convolution). A gated u is
            # a strided half: one NHWC copy here instead of a conversion to NCHW and back around the conv.
            u = self.act(self.conv(u.contiguous().permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
            y = self._scan_norm_channels_last(u, out_dtype=x.dtype)
        if z is not None:
            y = y * self.act(z)
        return self.proj_drop(self.out_proj(y))

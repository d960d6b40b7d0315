"""Route gather / merge between token-major maps and the scan's route layout, as autograd custom ops.

* :func:`gather_routes`: tokens ``(batch, P, C)`` -> routes ``(batch, K, C, L)``, ``routes[b, k, c, l] =
  tokens[b, index[k, l], c]``.
* :func:`merge_routes`: routes ``(batch, K, C, L)`` -> tokens ``(batch, P, C)``, the sum over all visits of each
  position (``inverse`` lists them as flat ``k * L + l`` indices).
* :func:`merge_routes_layer_norm`: the merge followed by a LayerNorm over the channels (SS2D's ``out_norm``).

The two are adjoint (the backward of one is the other), so neither direction needs atomics. ``index`` / ``inverse``
are the :class:`vmamba.scans.ScanRoutes` of a pattern. CUDA tensors run the Triton kernels of ``triton/routes.py``;
other devices (and ``VMAMBA_SCAN_BACKEND=reference``) run the PyTorch functions below, which are also the tests'
reference. The merge accumulates in fp32 on the Triton path and returns the routes' dtype; fp64 tensors always take
the PyTorch path (exact in fp64).
"""
from __future__ import annotations

import torch
from torch import Tensor

from typing import Optional

from .interface import scan_backend
from .layer_norm import layer_norm_last_dim_unchecked
from .layout import dispatch_through_custom_op, records_autograd

__all__ = ['gather_routes', 'merge_routes', 'merge_routes_layer_norm', 'gather_routes_ref', 'merge_routes_ref']


def _use_triton(t: Tensor) -> bool:
    return scan_backend(t.device) == 'triton' and t.dtype in (torch.float32, torch.float16, torch.bfloat16)


def gather_routes_ref(tokens: Tensor, index: Tensor) -> Tensor:
    """(batch, P, C), (K, L) positions -> (batch, K, C, L) contiguous."""
    batch, _, channels = tokens.shape
    num_routes, length = index.shape
    routes = tokens.index_select(1, index.reshape(-1)).view(batch, num_routes, length, channels)
    return routes.permute(0, 1, 3, 2).contiguous()


def merge_routes_ref(routes: Tensor, inverse: Tensor) -> Tensor:
    """(batch, K, C, L), (M, P) flat visits -> (batch, P, C): for every position the sum of its M visits."""
    batch, num_routes, channels, length = routes.shape
    flat = routes.permute(0, 1, 3, 2).reshape(batch, num_routes * length, channels)
    out = flat.index_select(1, inverse[0])
    for visit in inverse[1:]:
        out = out + flat.index_select(1, visit)
    return out


def _gather_impl(tokens: Tensor, index: Tensor, inverse: Tensor, width: int) -> Tensor:
    if _use_triton(tokens):
        from .triton.routes import gather_routes_triton
        return gather_routes_triton(tokens, index)
    return gather_routes_ref(tokens, index)


_gather_routes_op = torch.library.custom_op('vmamba::gather_routes', mutates_args=())(_gather_impl)


@_gather_routes_op.register_fake
def _gather_routes_fake(tokens, index, inverse, width):
    return tokens.new_empty((tokens.shape[0], index.shape[0], tokens.shape[2], index.shape[1]))


def _merge_impl(routes: Tensor, index: Tensor, inverse: Tensor, width: int) -> Tensor:
    if _use_triton(routes):
        from .triton.routes import merge_routes_triton
        return merge_routes_triton(routes, inverse, width)
    return merge_routes_ref(routes, inverse)


_merge_routes_op = torch.library.custom_op('vmamba::merge_routes', mutates_args=())(_merge_impl)


@_merge_routes_op.register_fake
def _merge_routes_fake(routes, index, inverse, width):
    return routes.new_empty((routes.shape[0], inverse.shape[1], routes.shape[2]))


def _save_maps(ctx, inputs, output):
    _, index, inverse, width = inputs
    ctx.save_for_backward(index, inverse)
    ctx.width = width


def _gather_backward(ctx, grad):
    index, inverse = ctx.saved_tensors
    return _merge_routes_op(grad.contiguous(), index, inverse, ctx.width), None, None, None


def _merge_backward(ctx, grad):
    index, inverse = ctx.saved_tensors
    return _gather_routes_op(_channel_contiguous(grad), index, inverse, ctx.width), None, None, None


_gather_routes_op.register_autograd(_gather_backward, setup_context=_save_maps)
_merge_routes_op.register_autograd(_merge_backward, setup_context=_save_maps)


class _EagerGatherRoutes(torch.autograd.Function):
    """The gather op's implementation without the custom-op dispatch (~30-50 us host per call); eager tensors only
    (``layout.dispatch_through_custom_op``). Backward: the eager merge."""

    @staticmethod
    def forward(ctx, tokens, index, inverse, width):
        ctx.save_for_backward(index, inverse)
        ctx.width = width
        return _gather_impl(tokens, index, inverse, width)

    @staticmethod
    def backward(ctx, grad):
        index, inverse = ctx.saved_tensors
        return _EagerMergeRoutes.apply(grad.contiguous(), index, inverse, ctx.width), None, None, None


class _EagerMergeRoutes(torch.autograd.Function):
    """The merge op's implementation without the custom-op dispatch. Backward: the eager gather."""

    @staticmethod
    def forward(ctx, routes, index, inverse, width):
        ctx.save_for_backward(index, inverse)
        ctx.width = width
        return _merge_impl(routes, index, inverse, width)

    @staticmethod
    def backward(ctx, grad):
        index, inverse = ctx.saved_tensors
        return _EagerGatherRoutes.apply(_channel_contiguous(grad), index, inverse, ctx.width), None, None, None


def _channel_contiguous(tokens: Tensor) -> Tensor:
    return tokens if tokens.stride(-1) == 1 else tokens.contiguous()


def _check_maps(index: Tensor, inverse: Tensor, device: torch.device, num_positions: int, width: int) -> None:
    if index.ndim != 2 or inverse.ndim != 2:
        raise ValueError(f'index must be (K, L) and inverse (M, P), got {tuple(index.shape)} and '
                         f'{tuple(inverse.shape)}')
    for name, t in (('index', index), ('inverse', inverse)):
        if t.dtype != torch.int64:
            raise TypeError(f'{name} must be int64, got {t.dtype}')
        if t.device != device:
            raise ValueError(f'{name} is on {t.device} but the data is on {device}')
    if inverse.shape[1] != num_positions or inverse.numel() != index.numel():
        raise ValueError(f'inverse {tuple(inverse.shape)} does not match index {tuple(index.shape)} over '
                         f'{num_positions} positions')
    if width < 0 or (width and num_positions % width):
        raise ValueError(f'width must be 0 (unknown) or the width of the map of {num_positions} positions, '
                         f'got {width}')


def gather_routes(tokens: Tensor, index: Tensor, inverse: Tensor, width: int = 0) -> Tensor:
    """Token-major map -> scan routes.

    Args:
        tokens: (batch, P, C) float; any batch / position strides (channels are made contiguous if needed).
        index: (K, L) int64, the position visited at step l of route k.
        inverse: (M, P) int64, the flat visits ``k * L + l`` of every position (used by the backward).
        width: the width of the (row-major) map, or 0 if unknown; only the backward's merge uses it (see
            :func:`merge_routes`).
    Returns:
        (batch, K, C, L) contiguous, in the dtype of ``tokens``.
    """
    if tokens.ndim != 3:
        raise ValueError(f'gather_routes expects (batch, positions, channels) tokens, got shape {tuple(tokens.shape)}')
    _check_maps(index, inverse, tokens.device, tokens.shape[1], width)
    tokens = _channel_contiguous(tokens)
    if dispatch_through_custom_op(tokens):
        return _gather_routes_op(tokens, index, inverse, width)
    if not records_autograd(tokens):
        return _gather_impl(tokens, index, inverse, width)
    return _EagerGatherRoutes.apply(tokens, index, inverse, width)


def merge_routes(routes: Tensor, index: Tensor, inverse: Tensor, width: int = 0) -> Tensor:
    """Scan routes -> token-major map: the sum of all visits of each position.

    Args:
        routes: (batch, K, C, L) float.
        index, inverse: as for :func:`gather_routes`.
        width: the width of the (row-major) map of P positions, or 0 if unknown. Same result either way; with it the
            Triton kernel merges square blocks of the map, so routes that walk columns read whole memory sectors.
    Returns:
        (batch, P, C) contiguous, in the dtype of ``routes``.
    """
    if routes.ndim != 4 or routes.shape[1] != index.shape[0] or routes.shape[3] != index.shape[1]:
        raise ValueError(f'merge_routes expects routes of shape (batch, {index.shape[0]}, C, {index.shape[1]}), '
                         f'got {tuple(routes.shape)}')
    _check_maps(index, inverse, routes.device, inverse.shape[1], width)
    routes = routes.contiguous()
    if dispatch_through_custom_op(routes):
        return _merge_routes_op(routes, index, inverse, width)
    if not records_autograd(routes):
        return _merge_impl(routes, index, inverse, width)
    return _EagerMergeRoutes.apply(routes, index, inverse, width)


def merge_routes_layer_norm(routes: Tensor, index: Tensor, inverse: Tensor, weight: Optional[Tensor],
                            bias: Optional[Tensor], eps: float, out_dtype: torch.dtype, width: int = 0) -> Tensor:
    """:func:`merge_routes` followed by a LayerNorm over the channels, computed in fp32 and stored in ``out_dtype``
    (SS2D's ``out_norm``).

    Args:
        routes, index, inverse, width: as for :func:`merge_routes`.
        weight, bias: (C,) or None; eps: the LayerNorm's eps.
    Returns:
        (batch, P, C) contiguous in ``out_dtype``: ``layer_norm_last_dim(merge_routes(routes, index, inverse, width),
        weight, bias, eps, out_dtype)``, two differentiable ops. (A kernel that merged and normalised in one pass,
        holding whole channel rows, was slower than the two kernels once the merge reads map blocks:
        ``benchmarks/results/v10``.)
    """
    channels = routes.shape[2] if routes.ndim == 4 else -1
    for name, t in (('weight', weight), ('bias', bias)):
        if t is not None and (t.shape != (channels,) or t.device != routes.device):
            raise ValueError(f'merge_routes_layer_norm: {name} must be ({channels},) on {routes.device} like the '
                             f'routes, got {tuple(t.shape)} on {t.device}')
    return layer_norm_last_dim_unchecked(merge_routes(routes, index, inverse, width), weight, bias, eps, out_dtype)

"""Scan patterns as data: index maps that turn a 2D map into K 1D routes and merge the K route outputs back.

A pattern defines, for a map of size (H, W), the routes over the zero-padded map of size ``padded_hw``:
``index[k, l]`` is the row-major position (``h * Wp + w``) visited at step ``l`` of route ``k``; ``reverse[k]``
tells the selective scan to run route ``k`` from its end (instead of materialising a flipped copy), and
``local_window`` selects LBMamba's locally bidirectional scan. Merging sums, for every position, the outputs of all
routes that visited it (a plain write-back when each position is visited once) and crops the padding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ['ScanRoutes', 'ScanPattern']


@dataclass(frozen=True)
class ScanRoutes:
    """Routes of one pattern for one map size.

    Attributes:
        index: (K, L) long, row-major positions of the padded map in visiting order.
        inverse: (M, P) long, for each padded position p the flat indices ``k * L + l`` of its M visits
            (M = visits per position, equal for all positions); used by the merge.
        reverse: K bools, pass as the kernel's ``reverse`` (route k's scan runs from the end).
        padded_hw: (Hp, Wp) size of the zero-padded map the routes walk over.
        local_window: None, or the LB window W to pass as the kernel's ``local_window``.
    """
    index: Tensor
    inverse: Tensor
    reverse: Tuple[bool, ...]
    padded_hw: Tuple[int, int]
    local_window: Optional[int] = None

    @property
    def num_routes(self) -> int:
        return self.index.shape[0]

    @property
    def length(self) -> int:
        return self.index.shape[1]


class ScanPattern:
    """Base class. Subclasses implement :meth:`build_routes`; everything else is generic."""

    name: str = ''
    num_routes: int = 0

    def __init__(self) -> None:
        self._cache: Dict[tuple, ScanRoutes] = {}

    def build_routes(self, height: int, width: int) -> Tuple[Tensor, Tuple[bool, ...], Tuple[int, int], Optional[int]]:
        """Return (index (K, L) long on CPU, reverse (K bools), padded (Hp, Wp), local_window or None)."""
        raise NotImplementedError

    def routes(self, height: int, width: int, device: torch.device | str = 'cpu') -> ScanRoutes:
        """Routes for an (height, width) map, cached per size and device."""
        if height < 1 or width < 1:
            raise ValueError(f'{self.name} scan: map size must be >= 1x1, got {height}x{width}')
        key = (height, width, str(device))
        routes = self._cache.get(key)
        if routes is None:
            # Normal tensors even if the first call runs under inference_mode (the cache serves training too).
            with torch.inference_mode(False):
                index, reverse, padded_hw, local_window = self.build_routes(height, width)
                routes = ScanRoutes(
                    index=index.to(device), inverse=_inverse_index(index, padded_hw).to(device),
                    reverse=tuple(reverse), padded_hw=padded_hw, local_window=local_window)
            self._cache[key] = routes
        return routes

    def scan(self, x: Tensor) -> Tuple[Tensor, ScanRoutes]:
        """(batch, C, H, W) -> routes (batch, K, C, L) and the :class:`ScanRoutes` used."""
        if x.dim() != 4:
            raise ValueError(f'{self.name} scan expects a (batch, C, H, W) map, got shape {tuple(x.shape)}')
        batch, channels, height, width = x.shape
        routes = self.routes(height, width, x.device)
        padded_h, padded_w = routes.padded_hw
        if (padded_h, padded_w) != (height, width):
            x = F.pad(x, (0, padded_w - width, 0, padded_h - height))
        flat = x.reshape(batch, channels, padded_h * padded_w)
        xs = _GatherRoutes.apply(flat, routes.index.reshape(-1), routes.inverse)  # (batch, C, K*L)
        xs = xs.view(batch, channels, routes.num_routes, routes.length).transpose(1, 2)
        return xs.contiguous(), routes

    def merge(self, ys: Tensor, routes: ScanRoutes, height: int, width: int) -> Tensor:
        """(batch, K, C, L) route outputs -> (batch, C, H, W): sum of all visits of each position, cropped."""
        batch, num_routes, channels, length = ys.shape
        if num_routes != routes.num_routes or length != routes.length:
            raise ValueError(f'{self.name} merge: expected (batch, {routes.num_routes}, C, {routes.length}), '
                             f'got {tuple(ys.shape)}')
        flat = ys.transpose(1, 2).reshape(batch, channels, num_routes * length)
        out = _MergeRoutes.apply(flat, routes.index.reshape(-1), routes.inverse)
        padded_h, padded_w = routes.padded_hw
        out = out.view(batch, channels, padded_h, padded_w)
        if (padded_h, padded_w) != (height, width):
            out = out[:, :, :height, :width]
        return out

    def __repr__(self) -> str:
        return f'{type(self).__name__}()'


def _sum_of_visits(flat_routes: Tensor, inverse: Tensor) -> Tensor:
    """(batch, C, K*L) -> (batch, C, P): for every position, the sum of its M visits (gathers, no atomics)."""
    out = flat_routes.index_select(2, inverse[0])
    for visit in inverse[1:]:
        out = out + flat_routes.index_select(2, visit)
    return out


class _GatherRoutes(torch.autograd.Function):
    """(batch, C, P) -> (batch, C, K*L) gather whose backward is the merge (gathers instead of index_add atomics)."""

    @staticmethod
    def forward(ctx, flat: Tensor, index: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(index, inverse)
        return flat.index_select(2, index)

    @staticmethod
    def backward(ctx, grad: Tensor):
        index, inverse = ctx.saved_tensors
        return _MergeRoutes.apply(grad.contiguous(), index, inverse), None, None


class _MergeRoutes(torch.autograd.Function):
    """(batch, C, K*L) -> (batch, C, P) sum of visits whose backward is the route gather."""

    @staticmethod
    def forward(ctx, flat_routes: Tensor, index: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(index, inverse)
        return _sum_of_visits(flat_routes, inverse)

    @staticmethod
    def backward(ctx, grad: Tensor):
        index, inverse = ctx.saved_tensors
        return _GatherRoutes.apply(grad.contiguous(), index, inverse), None, None


def _inverse_index(index: Tensor, padded_hw: Tuple[int, int]) -> Tensor:
    """(K, L) visiting order -> (M, P): the flat route indices of the M visits of every position."""
    num_positions = padded_hw[0] * padded_hw[1]
    flat = index.reshape(-1)
    visits = flat.numel() // num_positions
    if not torch.compiler.is_compiling():  # data-dependent check: eager only (routes are built once per size)
        counts = torch.bincount(flat, minlength=num_positions)
        if counts.min() != counts.max() or counts.min() == 0 or flat.numel() != visits * num_positions:
            raise ValueError('scan pattern must visit every position of the padded map the same number of times '
                             f'(visits range {counts.min().item()}..{counts.max().item()})')
    order = torch.argsort(flat, stable=True)  # visits grouped by position, in route order
    return order.view(num_positions, visits).t().contiguous()


def row_major(height: int, width: int) -> Tensor:
    """Positions of an (height, width) map in row-major order: p = h * W + w."""
    return torch.arange(height * width)


def column_major(height: int, width: int) -> Tensor:
    """Positions visited column by column: step w * H + h visits position h * W + w."""
    return torch.arange(height * width).view(height, width).t().reshape(-1)

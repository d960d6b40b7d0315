"""Opt-in torchvision stand-in for the compiled mmcv ops that UperNet and Mask R-CNN need (``mmcv-lite`` installs).

PyPI ships ``mmcv==2.1.0`` only as a source distribution that needs a C++/CUDA build; ``mmcv-lite==2.1.0`` is the
same Python code without the ``mmcv._ext`` extension, so ``import mmseg.models`` / ``import mmdet.models`` fail on
``from mmcv.ops import ...`` (``No module named 'mmcv._ext'``). This module installs a small ``mmcv._ext`` whose
kernels the genuine ``mmcv.ops`` Python code (``nms``, ``batched_nms``, ``RoIAlign``, ``roi_align``, ...) then calls:

* ``nms``                -> ``torchvision.ops.nms`` (mmcv's legacy ``offset=1`` box convention emulated exactly);
* ``roi_align_forward``  -> ``torchvision.ops.roi_align`` (``pool_mode='avg'``, ``aligned`` True/False);
* ``roi_align_backward`` -> torchvision's RoIAlign backward kernel.

Any other ``mmcv._ext`` kernel (deformable convs, focal loss, max-pool RoIAlign, ...) exists only so that ``mmcv.ops``
can be imported; calling it raises :class:`MmcvOpUnavailableError` naming the op.

Activation is explicit: ``import vmamba.adapters.mmcv_ops_compat`` (or :func:`activate`) before importing
``mmseg.models`` / ``mmdet.models``, e.g. ``custom_imports = dict(imports=['vmamba.adapters.mmcv_ops_compat', ...])``
in a config or ``--mmcv-ops-compat`` of ``tools/mm_train.py``. It logs once that it is active and does nothing when a
compiled ``mmcv._ext`` is importable. The adapters themselves never import this module.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import sys
import types
from typing import Callable

import torch
from torch import Tensor

__all__ = ['activate', 'is_active', 'SUPPORTED_OPS', 'MmcvOpUnavailableError']

_logger = logging.getLogger(__name__)

SUPPORTED_OPS = ('nms', 'roi_align_forward', 'roi_align_backward')
_EXT_NAME = 'mmcv._ext'


class MmcvOpUnavailableError(NotImplementedError):
    """An mmcv op that needs the compiled ``mmcv._ext`` was called while the torchvision stand-in is active."""


def _nms(boxes: Tensor, scores: Tensor, iou_threshold: float, offset: int = 0) -> Tensor:
    """Indices (long, by decreasing score) of the boxes kept by greedy NMS; boxes (N, 4) x1y1x2y2, scores (N,)."""
    import torchvision

    if offset not in (0, 1):
        raise ValueError(f'nms offset must be 0 or 1, got {offset}')
    if offset:
        # mmcv's legacy convention: width = x2 - x1 + 1 for areas and intersections; identical to shifting x2, y2.
        boxes = torch.cat([boxes[:, :2], boxes[:, 2:] + 1], dim=1)
    return torchvision.ops.nms(boxes, scores, float(iou_threshold))


def _require_avg_pool(pool_mode: int) -> None:
    if pool_mode != 1:
        raise MmcvOpUnavailableError(
            "mmcv RoIAlign with pool_mode='max' needs compiled mmcv (mmcv._ext); the torchvision stand-in "
            "(vmamba.adapters.mmcv_ops_compat) supports pool_mode='avg' only")


def _roi_align_forward(
        input: Tensor, rois: Tensor, output: Tensor, argmax_y: Tensor, argmax_x: Tensor, *,
        aligned_height: int, aligned_width: int, spatial_scale: float, sampling_ratio: int, pool_mode: int,
        aligned: bool) -> None:
    """mmcv kernel contract: writes RoIAlign of ``input`` (B, C, H, W) over ``rois`` (K, 5) into ``output``."""
    _require_avg_pool(pool_mode)
    result = torch.ops.torchvision.roi_align(
        input, rois.to(input.dtype), float(spatial_scale), int(aligned_height), int(aligned_width),
        int(sampling_ratio), bool(aligned))
    output.copy_(result)


def _roi_align_backward(
        grad_output: Tensor, rois: Tensor, argmax_y: Tensor, argmax_x: Tensor, grad_input: Tensor, *,
        aligned_height: int, aligned_width: int, spatial_scale: float, sampling_ratio: int, pool_mode: int,
        aligned: bool) -> None:
    """mmcv kernel contract: writes d(loss)/d(input) into ``grad_input`` (B, C, H, W)."""
    _require_avg_pool(pool_mode)
    batch, channels, height, width = grad_input.shape
    result = torch.ops.torchvision._roi_align_backward(
        grad_output, rois.to(grad_output.dtype), float(spatial_scale), int(aligned_height), int(aligned_width),
        batch, channels, height, width, int(sampling_ratio), bool(aligned))
    grad_input.copy_(result)


def _unavailable(name: str) -> Callable:
    def op(*args, **kwargs):
        raise MmcvOpUnavailableError(
            f"mmcv op '{name}' needs compiled mmcv (mmcv._ext), which mmcv-lite does not have; the torchvision "
            f"stand-in vmamba.adapters.mmcv_ops_compat provides only {', '.join(SUPPORTED_OPS)}. Build "
            f"mmcv==2.1.0 from source (docs/mm.md) to use this op.")
    op.__name__ = name
    return op


class _TorchvisionExtModule(types.ModuleType):
    """``mmcv._ext`` stand-in: the supported kernels, and a raising stub for every other name mmcv asks for."""

    def __getattr__(self, name: str):
        if name.startswith('__'):
            raise AttributeError(name)
        return _unavailable(name)


_active = False


def _compiled_ext_available() -> bool:
    module = sys.modules.get(_EXT_NAME)
    if module is not None:
        return not isinstance(module, _TorchvisionExtModule)
    try:
        return importlib.util.find_spec(_EXT_NAME) is not None
    except (ImportError, ValueError):
        return False


def is_active() -> bool:
    """True when the torchvision stand-in serves ``mmcv._ext``."""
    return isinstance(sys.modules.get(_EXT_NAME), _TorchvisionExtModule)


def activate() -> bool:
    """Serve mmcv's ``_ext`` kernels from torchvision unless compiled mmcv ops are installed.

    Returns True if the stand-in is (now) active, False if a compiled ``mmcv._ext`` exists and is left in place.
    Must run before ``mmcv.ops`` is imported (directly or through ``mmseg.models`` / ``mmdet.models``).
    """
    global _active
    if is_active():
        return True
    import mmcv  # noqa: F401  (mmcv-lite or mmcv; raises a plain ImportError if neither is installed)

    if _compiled_ext_available():
        _logger.info('vmamba.adapters.mmcv_ops_compat: compiled mmcv ops found, the torchvision stand-in is not used')
        return False
    if 'mmcv.ops' in sys.modules:
        raise RuntimeError('mmcv.ops was imported before vmamba.adapters.mmcv_ops_compat.activate(); activate the '
                           'stand-in first (before importing mmseg.models / mmdet.models)')
    import torchvision  # noqa: F401  (registers torch.ops.torchvision)

    module = _TorchvisionExtModule(_EXT_NAME, __doc__)
    # find_spec() on a module without a loader returns a spec whose loader is None, so mmengine's
    # mmcv_full_available() correctly reports that the compiled extension is absent.
    module.__spec__ = importlib.machinery.ModuleSpec(_EXT_NAME, loader=None)
    module.nms = _nms
    module.roi_align_forward = _roi_align_forward
    module.roi_align_backward = _roi_align_backward
    sys.modules[_EXT_NAME] = module
    sys.modules['mmcv']._ext = module
    if not _active:
        _logger.warning(
            'vmamba.adapters.mmcv_ops_compat is active: mmcv ops %s run on torchvision; any other mmcv op raises '
            'MmcvOpUnavailableError (build mmcv==2.1.0 for those, see docs/mm.md)', ', '.join(SUPPORTED_OPS))
    _active = True
    return True


def _activate_on_import() -> None:
    try:
        activate()
    except ImportError as err:
        raise ImportError(f'vmamba.adapters.mmcv_ops_compat needs mmcv-lite (or mmcv) and torchvision: {err}') from err


_activate_on_import()

"""FLOP counting for vmamba models, including the selective scan.

Two conventions:

* ``'paper'`` (default; what the VMamba, Vim and EfficientVMamba papers report, measured there with fvcore): one
  multiply-accumulate of a convolution / linear / matmul / einsum counts as **1** FLOP; LayerNorm / GroupNorm count
  5 per element (4 without affine), BatchNorm in eval 2 per element (1 without affine), adaptive average pooling
  1 per input element; the selective scan counts ``9 * B * L * D * N`` plus ``B * D * L`` when the skip term ``D``
  is present (B batch, L sequence length, D scan channels summed over routes, N state size; the count proposed in
  state-spaces/mamba issue #110 and used by VMamba's ``selective_scan_flop_jit``). Element-wise ops (activations,
  adds, the gate, scan-route gathers) are not counted.
* ``'torch'``: ``torch.utils.flop_counter`` as is (2 FLOPs per multiply-accumulate, norms uncounted) plus the scan
  formula above.

The scan formula is registered for ``torch.ops.vmamba.selective_scan`` with
``torch.utils.flop_counter.register_flop_formula`` when this module is imported, so a plain
``torch.utils.flop_counter.FlopCounterMode`` counts our scan too. The backward op (Triton path) is counted as twice
the forward, the usual convention for backward passes.

Counting runs the model on the ``meta`` device when it can (no memory, no compute); models that cannot run on meta
are counted with a real CPU forward.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

import vmamba.kernels  # noqa: F401  (defines torch.ops.vmamba.selective_scan, causal_conv_silu, layer_norm_last_dim)

__all__ = ['selective_scan_flops', 'FlopCount', 'count_flops', 'count_params', 'CONVENTIONS']

CONVENTIONS = ('paper', 'torch')
_aten = torch.ops.aten


def selective_scan_flops(u_shape: Sequence[int], A_shape: Sequence[int], has_D: bool = True) -> int:
    """FLOPs of one selective scan: ``9 * B * L * D * N`` (+ ``B * D * L`` with the skip term ``D``).

    Args:
        u_shape: shape of ``u``, (batch, channels D, length L).
        A_shape: shape of ``A``, (channels D, state size N).
        has_D: whether the ``D * u`` skip term is computed.
    """
    batch, channels, length = u_shape
    num_states = A_shape[1]
    flops = 9 * batch * length * channels * num_states
    if has_D:
        flops += batch * channels * length
    return flops


def _scan_formula(u_shape, delta_shape, A_shape, B_shape, C_shape, D_shape, *args, out_shape=None, **kwargs) -> int:
    return selective_scan_flops(u_shape, A_shape, has_D=D_shape is not None and math.prod(D_shape) > 0)


def _scan_backward_formula(grad_out_shape, grad_last_shape, u_shape, delta_shape, A_shape, B_shape, C_shape,
                           D_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * selective_scan_flops(u_shape, A_shape, has_D=D_shape is not None and math.prod(D_shape) > 0)


register_flop_formula(torch.ops.vmamba.selective_scan)(_scan_formula)
register_flop_formula(torch.ops.vmamba.selective_scan_backward)(_scan_backward_formula)


def _conv_silu_formula(x_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    """vmamba::causal_conv_silu: a depthwise conv1d of K taps per output channel, 2 FLOPs per multiply-add
    (torch's convolution formula)."""
    batch, length, _ = x_shape
    out_channels, width = weight_shape
    return 2 * batch * length * out_channels * width


register_flop_formula(torch.ops.vmamba.causal_conv_silu)(_conv_silu_formula)


# ----------------------------------------------------------------------------------------------------------------
# 'paper' convention: fvcore's rules, expressed as torch.utils.flop_counter formulas (shapes in, FLOPs out).

def _as_macs(registered_formula: Callable[..., int]) -> Callable[..., int]:
    """A registered torch formula (2 FLOPs per multiply-accumulate) turned into multiply-accumulates."""
    def formula(*args, **kwargs) -> int:
        return registered_formula(*args, **kwargs) // 2
    formula._get_raw = True  # takes the same raw arguments as the registered (already wrapped) formula
    return formula


def _layer_norm_formula(input_shape, normalized_shape, weight_shape=None, *args, out_shape=None, **kwargs) -> int:
    return math.prod(input_shape) * (5 if weight_shape is not None else 4)


def _layer_norm_last_dim_formula(x_shape, weight_shape=None, bias_shape=None, eps=None, out_dtype=None, rms=False,
                                 *args, out_shape=None, **kwargs) -> int:
    """The LayerNorm's count; RMSNorm (``rms=True``, Vim's norms) is not counted, as ``F.rms_norm`` is not."""
    return 0 if rms else _layer_norm_formula(x_shape, x_shape[-1:], weight_shape)


def _add_layer_norm_last_dim_formula(residual_shape, branch_shape, *args, out_shape=None, **kwargs) -> int:
    """The norm's count: fvcore does not count elementwise adds."""
    return _layer_norm_last_dim_formula(residual_shape, *args, **kwargs)


def _group_norm_formula(input_shape, weight_shape=None, *args, out_shape=None, **kwargs) -> int:
    return math.prod(input_shape) * (5 if weight_shape is not None else 4)


def _batch_norm_formula(input_shape, weight_shape=None, bias_shape=None, mean_shape=None, var_shape=None,
                        training=False, *args, out_shape=None, **kwargs) -> int:
    if training:
        return math.prod(input_shape) * (5 if weight_shape is not None else 4)
    return math.prod(input_shape) * (2 if weight_shape is not None else 1)


def _input_elements_formula(input_shape, *args, out_shape=None, **kwargs) -> int:
    return math.prod(input_shape)


def _paper_mapping() -> Dict[Any, Callable[..., int]]:
    """fvcore's rules: every default torch formula (matmul / conv / attention) halved to multiply-accumulates, plus
    norms, adaptive average pooling and our scan."""
    from torch.utils.flop_counter import flop_registry
    scan_ops = (torch.ops.vmamba.selective_scan, torch.ops.vmamba.selective_scan_backward)
    mapping: Dict[Any, Callable[..., int]] = {
        op: _as_macs(formula) for op, formula in flop_registry.items() if op not in scan_ops}
    mapping[_aten.native_layer_norm] = _layer_norm_formula
    mapping[torch.ops.vmamba.layer_norm_last_dim] = _layer_norm_last_dim_formula
    mapping[torch.ops.vmamba.add_layer_norm_last_dim] = _add_layer_norm_last_dim_formula
    mapping[_aten.native_group_norm] = _group_norm_formula
    for name in ('_native_batch_norm_legit_no_training', '_native_batch_norm_legit', 'native_batch_norm'):
        if hasattr(_aten, name):
            mapping[getattr(_aten, name)] = _batch_norm_formula
    mapping[_aten._adaptive_avg_pool2d] = _input_elements_formula
    mapping[torch.ops.vmamba.selective_scan] = _scan_formula
    return mapping


# ----------------------------------------------------------------------------------------------------------------

@dataclass
class FlopCount:
    """Result of :func:`count_flops`.

    Attributes:
        total: FLOPs of one forward pass of the whole batch, in the chosen convention.
        scan: the selective-scan part of ``total``.
        by_op: FLOPs per counted operator name (e.g. ``'convolution'``, ``'selective_scan'``).
        convention: ``'paper'`` or ``'torch'``.
        input_size: (batch, channels, height, width) of the counted input.
    """
    total: int
    scan: int
    by_op: Dict[str, int] = field(default_factory=dict)
    convention: str = 'paper'
    input_size: Tuple[int, ...] = ()

    @property
    def gflops(self) -> float:
        return self.total / 1e9


def _run_counted(model: nn.Module, inputs: torch.Tensor, convention: str) -> Tuple[int, Dict[str, int]]:
    """Total and per-op FLOPs of one forward. Work on structural zeros is left out: the multiply-adds of Vim's
    block-diagonal branch projections on their zero blocks (``MambaMixer.padding_macs``), so the count is the
    model's math, independent of how the kernels pack it."""
    from vmamba.layers.mamba_mixer import MambaMixer
    padding = []
    def record_padding(mixer, args, out):
        padding.append(mixer.padding_macs(out.shape[0] * out.shape[1]))

    hooks = [m.register_forward_hook(record_padding) for m in model.modules() if isinstance(m, MambaMixer)]
    counter = FlopCounterMode(display=False, custom_mapping=_paper_mapping() if convention == 'paper' else None)
    try:
        with torch.no_grad(), counter:
            model(inputs)
    finally:
        for hook in hooks:
            hook.remove()
    by_op = {str(op).split('.')[-1]: int(n) for op, n in counter.get_flop_counts().get('Global', {}).items()}
    zeros = sum(padding) * (1 if convention == 'paper' else 2)
    if zeros:
        by_op['mm'] = by_op.get('mm', 0) - zeros
    return int(counter.get_total_flops()) - zeros, by_op


def count_flops(
        model: nn.Module,
        input_size: Sequence[int] = (3, 224, 224),
        batch_size: int = 1,
        convention: str = 'paper',
        device: Optional[torch.device] = None,
) -> FlopCount:
    """Count the FLOPs of one forward pass of ``model`` (eval mode) on a zero input.

    Args:
        model: any module; its parameters' device is used unless ``device`` is given. A model on the ``meta``
            device is counted without any compute.
        input_size: (channels, height, width).
        batch_size: batch of the counted input (papers report batch 1).
        convention: ``'paper'`` (fvcore rules, 1 FLOP per multiply-accumulate; the papers' numbers) or
            ``'torch'`` (torch.utils.flop_counter, 2 FLOPs per multiply-accumulate). See the module docstring.
    Returns:
        A :class:`FlopCount`.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f'convention must be one of {CONVENTIONS}, got {convention!r}')
    if len(input_size) != 3:
        raise ValueError(f'input_size must be (channels, height, width), got {tuple(input_size)}')
    if device is None:
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device('cpu')
    was_training = model.training
    model.eval()
    try:
        inputs = torch.zeros((batch_size, *input_size), device=device)
        total, by_op = _run_counted(model, inputs, convention)
    finally:
        model.train(was_training)
    return FlopCount(total=total, scan=by_op.get('selective_scan', 0), by_op=by_op, convention=convention,
                     input_size=(batch_size, *input_size))


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared parameters counted once), as fvcore and the papers count them."""
    return sum(p.numel() for p in model.parameters())

"""Resuming mmengine training checkpoints on torch >= 2.6.

mmengine 0.10.7 loads checkpoints with ``torch.load(filename)``, whose default became ``weights_only=True`` in
torch 2.6; its own training checkpoints hold the message hub's ``HistoryBuffer`` objects (numpy reductions that
would need ``builtins.getattr`` on an allow-list), so ``Runner(resume=True)`` fails with ``Unsupported global``.

:class:`TrustedResumeRunner` unpickles fully **only** the one file it resumes from, for the duration of that call:
resume only from checkpoints you wrote yourself (the run's own ``work_dir``). Every other load (``load_from``,
pretrained weights) stays tensors-only.
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator, Union

import torch
from mmengine.runner import CheckpointLoader, Runner

__all__ = ['TrustedResumeRunner', 'trusted_checkpoint']


@contextlib.contextmanager
def trusted_checkpoint(filename: Union[str, os.PathLike]) -> Iterator[None]:
    """Within the block, mmengine loads the local file ``filename`` with ``weights_only=False``; other files and
    the code outside the block keep torch's tensors-only default."""
    trusted = os.path.realpath(os.path.expanduser(os.fspath(filename)))
    schemes = CheckpointLoader._schemes
    local_loader: Callable = schemes['']

    def load(path, map_location=None):
        if os.path.realpath(os.path.expanduser(path)) == trusted:
            return torch.load(path, map_location=map_location, weights_only=False)
        return local_loader(path, map_location)

    schemes[''] = load
    try:
        yield
    finally:
        CheckpointLoader._schemes[''] = local_loader


class TrustedResumeRunner(Runner):
    """mmengine ``Runner`` whose :meth:`resume` can read its own checkpoints on torch >= 2.6 (see module doc)."""

    def resume(self, filename: str, resume_optimizer: bool = True, resume_param_scheduler: bool = True,
               map_location: Union[str, Callable] = 'default') -> None:
        with trusted_checkpoint(filename):
            super().resume(filename, resume_optimizer=resume_optimizer,
                           resume_param_scheduler=resume_param_scheduler, map_location=map_location)

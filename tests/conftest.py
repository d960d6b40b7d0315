"""Test configuration shared by every test directory.

- Without CUDA, Triton kernels run in its CPU interpreter (TRITON_INTERPRET=1 must be set before triton is imported).
- ``gpu``-marked tests are skipped without CUDA.
- ``vmamba_fixtures``: the parity fixtures directory (``$VMAMBA_FIXTURES`` or ``../shared/fixtures``).
"""
import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')
    # Tiny CPU models: one thread per pytest worker (the suite runs with -n 2 on 2 cores); more threads only
    # oversubscribe the cores (25x slower under load).
    torch.set_num_threads(int(os.environ.get('VMAMBA_TEST_THREADS', '1')))

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason='needs a CUDA GPU')
    for item in items:
        if 'gpu' in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope='session')
def vmamba_fixtures() -> Path:
    path = Path(os.environ.get('VMAMBA_FIXTURES', REPO_ROOT.parent / 'shared' / 'fixtures'))
    if not path.is_dir():
        pytest.skip(f'parity fixtures not found at {path} (set VMAMBA_FIXTURES)')
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Converted-weights cache in a temp dir, never the user's."""
    monkeypatch.setenv('VMAMBA_CACHE', str(tmp_path_factory.getbasetemp() / 'vmamba_cache'))

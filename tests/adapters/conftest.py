"""Shared by the mm adapter tests: skip without the mm packages, and serve mmcv ops from torchvision when mmcv is the
lite build (the stand-in does nothing when compiled mmcv ops are installed)."""
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def import_mm(*packages):
    """importorskip the mm packages, activating the mmcv ops stand-in before any of them imports mmcv.ops."""
    for package in ('mmengine', 'mmcv', 'torchvision', *packages):
        pytest.importorskip(package)
    pytest.importorskip('vmamba.adapters.mmcv_ops_compat')
    return pytest.importorskip('vmamba.adapters')


def load_config(relative_path, **backbone_overrides):
    """Config.fromfile of a repo config with backbone overrides (as --cfg-options would apply them)."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(REPO_ROOT / relative_path))
    cfg.model.backbone.update(backbone_overrides)
    return cfg

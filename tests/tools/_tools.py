"""Import helpers for the scripts in tools/ (they are scripts, not a package)."""
import importlib
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS_DIR = REPO_ROOT / 'tools'


def load_tool(name: str):
    """Import ``tools/<name>.py`` as a module."""
    if str(TOOLS_DIR) not in sys.path:
        sys.path.insert(0, str(TOOLS_DIR))
    return importlib.import_module(name)


# A very small VMamba for fast CPU runs on the digits dataset (16x16 images).
TINY_TRAIN_ARGS = ['--model', 'test_vmamba', '--model-kwargs', 'dims=8', 'depths=(1,1,1,1)', '--img-size', '16',
                   '--batch-size', '32', '--no-progress']

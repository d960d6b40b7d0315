"""Helpers shared by the scripts in ``tools/``: import path, recipe configs, model names, checkpoints, data.

The scripts run from a checkout (``python tools/train.py``) with or without ``pip install -e .``: importing this
module puts the repository root on ``sys.path`` so ``import vmamba`` registers our models in timm.
"""
from __future__ import annotations

import argparse
import ast
import difflib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
import timm  # noqa: E402

import vmamba  # noqa: E402,F401  (registers our model families in timm)

CONFIG_DIR = REPO_ROOT / 'configs' / 'train'
DEFAULT_CONFIG = CONFIG_DIR / 'digits.yaml'
# registry module names of our families (timm's list_models(module=...) filter)
FAMILY_MODULES = ('vmamba', 'vim', 'lbvim', 'efficientvmamba')


class ToolError(RuntimeError):
    """A user-facing error: the scripts print its message and exit with status 2 (no traceback)."""


def run_main(main, argv: Optional[Sequence[str]] = None):
    """Run ``main(argv)``; a :class:`ToolError` prints ``error: ...`` and exits with status 2."""
    try:
        return main(argv)
    except ToolError as err:
        print(f'error: {err}', file=sys.stderr)
        raise SystemExit(2)


# ----------------------------------------------------------------------------------------------------------------
# Config files (YAML recipes) layered under the command line

def load_yaml_config(path: os.PathLike) -> Dict[str, Any]:
    """A recipe file as a dict of argument names (``dest`` spelling, ``-`` or ``_``) to values."""
    import yaml
    path = Path(path)
    if not path.is_file():  # a recipe name such as 'vmamba_tiny' or 'vmamba_tiny.yaml'
        candidate = CONFIG_DIR / (path.name if path.suffix else f'{path.name}.yaml')
        if not candidate.is_file():
            known = sorted(p.stem for p in CONFIG_DIR.glob('*.yaml'))
            raise ToolError(f'config file {str(path)!r} not found; recipes in {CONFIG_DIR}: {", ".join(known)}')
        path = candidate
    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    if not isinstance(cfg, dict):
        raise ToolError(f'config {path} must be a mapping of argument names to values, got {type(cfg).__name__}')
    return {str(k).replace('-', '_'): v for k, v in cfg.items()}


def parse_with_config(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]],
                      default_config: Optional[Path] = None) -> Tuple[argparse.Namespace, Optional[Path]]:
    """Parse ``argv`` with defaults taken from ``--config FILE`` (command-line values win over the file).

    ``default_config`` is used when ``--config`` is not given (``None``: no file). Unknown keys in the file are an
    error that suggests the closest argument names.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument('--config', '-c', default=None)
    known, _ = pre.parse_known_args(argv)
    config_path = Path(known.config) if known.config else default_config
    if config_path is not None:
        cfg = load_yaml_config(config_path)
        dests = {a.dest for a in parser._actions}
        unknown = sorted(set(cfg) - dests)
        if unknown:
            hints = [f'{k} (did you mean {", ".join(difflib.get_close_matches(k, dests, n=2)) or "?"})'
                     for k in unknown]
            raise ToolError(f'unknown keys in config {config_path}: {"; ".join(hints)}')
        parser.set_defaults(**cfg)
    args = parser.parse_args(argv)
    args.config = str(config_path) if config_path is not None else None
    return args, config_path


def parse_kwargs(items: Any) -> Dict[str, Any]:
    """``['depth=4', 'dims=[16, 32]']`` (command line) or a dict (config file) -> kwargs with Python literals."""
    if items is None:
        return {}
    if isinstance(items, Mapping):
        return dict(items)
    kwargs = {}
    for item in items:
        if '=' not in item:
            raise ToolError(f'model kwargs must be key=value, got {item!r}')
        key, value = item.split('=', 1)
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value  # a plain string such as scan=cross
    return kwargs


def json_safe(value: Any) -> Any:
    """Plain JSON / ``torch.load(weights_only=True)``-safe version of ``value`` (paths -> str, tuples -> lists)."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.dtype):
        return str(value).replace('torch.', '')
    return str(value)


# ----------------------------------------------------------------------------------------------------------------
# Models

def our_model_names(pretrained: bool = False, include_test: bool = False) -> List[str]:
    """Registered names of our families (``arch.tag`` when ``pretrained``)."""
    names = timm.list_models(module=list(FAMILY_MODULES), pretrained=pretrained)
    return [n for n in names if include_test or not n.startswith('test_')]


def check_model_name(name: str) -> str:
    """``name`` if timm knows it, else a :class:`ToolError` that suggests close registered names."""
    if not name:
        raise ToolError('no model given (--model NAME)')
    if timm.is_model(name):
        return name
    candidates = timm.list_models() + timm.list_pretrained()
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    hint = f'; did you mean: {", ".join(close)}' if close else ''
    raise ToolError(f'unknown model {name!r}{hint} (our families: {", ".join(FAMILY_MODULES)}; '
                    f'list them with timm.list_models(module={list(FAMILY_MODULES)!r}))')


def pretrained_cfg_of(name: str) -> Dict[str, Any]:
    """The default pretrained cfg of a model name (``{}`` when it has none)."""
    from timm.models import get_pretrained_cfg
    arch, _, tag = name.partition('.')
    cfg = get_pretrained_cfg(name) if tag else get_pretrained_cfg(arch)
    return cfg.to_dict() if cfg is not None else {}


def create_model_from_args(
        name: str,
        num_classes: Optional[int] = None,
        pretrained: bool = False,
        pretrained_path: Optional[str] = None,
        img_size: Optional[int] = None,
        model_kwargs: Optional[Mapping[str, Any]] = None,
        **extra_kwargs,
) -> torch.nn.Module:
    """``timm.create_model`` with our conventions.

    ``img_size`` is passed as a constructor kwarg only to models with a fixed input size (position embeddings, e.g.
    Vim); ``pretrained_path`` loads a local weight file through the family's checkpoint filter (timm's
    ``pretrained_cfg_overlay=dict(file=...)``). ``None`` kwargs are dropped by timm.
    """
    check_model_name(name)
    kwargs = dict(model_kwargs or {})
    kwargs.update({k: v for k, v in extra_kwargs.items() if v is not None})
    if num_classes is not None:
        kwargs['num_classes'] = num_classes
    if img_size is not None and 'img_size' not in kwargs and pretrained_cfg_of(name).get('fixed_input_size'):
        kwargs['img_size'] = img_size
    if pretrained_path:
        if not Path(pretrained_path).is_file():
            raise ToolError(f'--pretrained-path {pretrained_path!r} is not a file')
        kwargs['pretrained_cfg_overlay'] = dict(file=str(pretrained_path))
        pretrained = True
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as err:
        bad = [k for k in kwargs if f"'{k}'" in str(err)]
        if bad:
            raise ToolError(f'model {name!r} does not accept {", ".join(bad)} ({err})') from err
        raise


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints

def save_checkpoint_atomic(obj: Mapping[str, Any], path: os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same directory, then ``os.replace`` (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}')
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint_file(path: os.PathLike) -> Dict[str, Any]:
    """Load a ``.pth`` (``weights_only=True``: tensors and plain Python types only) or ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise ToolError(f'checkpoint {str(path)!r} not found')
    if path.suffix == '.safetensors':
        from safetensors.torch import load_file
        return load_file(str(path))
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # noqa: BLE001  (unpickling errors have many types)
        raise ToolError(f'could not load {path} with torch.load(weights_only=True): {err}. Official checkpoints '
                        f'that pickle config objects: convert them with tools/convert.py') from err


def model_state_from_checkpoint(checkpoint: Mapping[str, Any], use_ema: bool = False) -> Dict[str, torch.Tensor]:
    """The model weights of a train.py checkpoint (``'model'`` / ``'model_ema'``) or a bare state dict."""
    if 'model' in checkpoint and isinstance(checkpoint['model'], Mapping):
        if use_ema:
            if not checkpoint.get('model_ema'):
                raise ToolError('--use-ema: this checkpoint has no EMA weights (train with --model-ema)')
            return dict(checkpoint['model_ema'])
        return dict(checkpoint['model'])
    if use_ema:
        raise ToolError('--use-ema needs a train.py checkpoint (this file is a bare state dict)')
    state = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise ToolError('checkpoint holds no tensors')
    return {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}


# ----------------------------------------------------------------------------------------------------------------
# Data

def check_image_folder(data_dir: os.PathLike, split: str) -> Path:
    """``data_dir/split`` as an ImageNet-style folder (one sub-folder per class), or a :class:`ToolError`."""
    root = Path(data_dir)
    if not root.is_dir():
        raise ToolError(f'data dir {str(root)!r} does not exist')
    split_dir = root / split
    if not split_dir.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise ToolError(f'{split_dir} not found; expected ImageNet layout {root}/{{train,val}}/<class>/<image>; '
                        f'sub-folders present: {found or "none"}')
    classes = [p for p in split_dir.iterdir() if p.is_dir()]
    if not classes:
        raise ToolError(f'{split_dir} has no class sub-folders (expected {split_dir}/<class>/<image>)')
    if not any(f.is_file() for c in classes for f in c.iterdir()):
        raise ToolError(f'{split_dir} has class folders but no image files')
    return split_dir


def image_folder_classes(split_dir: Path) -> List[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir())


def shard(dataset, rank: int, world_size: int):
    """Every ``world_size``-th sample starting at ``rank`` (evaluation shards: no padding, no duplicates, so the
    all-reduced metric equals the single-process metric)."""
    if world_size == 1:
        return dataset
    return torch.utils.data.Subset(dataset, list(range(rank, len(dataset), world_size)))


def accuracy_counts(logits: torch.Tensor, target: torch.Tensor, topk: Iterable[int] = (1, 5)) -> List[int]:
    """Number of samples whose target is among the top-k logits, per k (k is clipped to the class count)."""
    num_classes = logits.shape[-1]
    ks = [min(k, num_classes) for k in topk]
    pred = logits.topk(max(ks), dim=-1).indices
    hit = pred.eq(target.unsqueeze(-1))
    return [int(hit[:, :k].any(dim=-1).sum()) for k in ks]


def write_json(path: os.PathLike, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}')
    with open(tmp, 'w') as f:
        json.dump(json_safe(obj), f, indent=2)
        f.write('\n')
    os.replace(tmp, path)


def resolve_device(name: Optional[str]) -> torch.device:
    """``'cuda'`` when available, else ``'cpu'``; an explicit name must be usable."""
    if not name:
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    device = torch.device(name)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ToolError(f'--device {name}: CUDA is not available')
    return device

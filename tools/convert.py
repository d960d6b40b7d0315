#!/usr/bin/env python3
"""Convert a checkpoint trained with an official codebase into our format (safetensors).

Example::

    python tools/convert.py --family vmamba --kwargs my_vssm_kwargs.json --checkpoint ckpt_epoch_299.pth \\
        --output my_vssm.safetensors

``--kwargs`` is a JSON file with the keyword arguments the official model class was built with (e.g. VMamba's
``VSSM(dims=96, depths=[2, 2, 8, 2], ssm_d_state=1, ...)``). The model is built by
``vmamba.from_official(family, kwargs, checkpoint)``: the checkpoint is loaded with ``weights_only=True`` and an
allow-list of config objects, converted by the family's checkpoint filter and loaded strictly (errors name every
mismatching key and shape). The output holds the state dict plus metadata (family, official kwargs, class); load it
with ``timm.create_model(<our name>, pretrained=True, pretrained_cfg_overlay=dict(file=...))`` or
``model.load_state_dict(safetensors.torch.load_file(...))`` on a model from ``vmamba.from_official(family, kwargs)``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as common  # noqa: E402

import vmamba  # noqa: E402
from vmamba.official import official_families  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--family', required=True, help='official family: ' + ', '.join(official_families()))
    p.add_argument('--kwargs', required=True, help='JSON file (or inline JSON object) of the official model kwargs')
    p.add_argument('--checkpoint', required=True, help='official checkpoint file (.pth / .ckpt)')
    p.add_argument('--output', required=True, help='output .safetensors file')
    return p


def read_kwargs(value: str) -> Dict[str, Any]:
    text = Path(value).read_text() if Path(value).is_file() else value
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as err:
        raise common.ToolError(f'--kwargs must be a JSON file or a JSON object: {err}') from err
    if not isinstance(kwargs, dict):
        raise common.ToolError(f'--kwargs must hold a JSON object, got {type(kwargs).__name__}')
    return kwargs


def main(argv: Optional[Sequence[str]] = None) -> Path:
    args = build_parser().parse_args(argv)
    if args.family not in official_families():
        raise common.ToolError(f'unknown family {args.family!r}; known: {", ".join(official_families())}')
    if not Path(args.checkpoint).is_file():
        raise common.ToolError(f'checkpoint {args.checkpoint!r} not found')
    output = Path(args.output)
    if output.suffix != '.safetensors':
        raise common.ToolError(f'--output must end in .safetensors, got {output.name}')
    official_kwargs = read_kwargs(args.kwargs)
    try:
        model = vmamba.from_official(args.family, official_kwargs, checkpoint=args.checkpoint)
    except (ValueError, RuntimeError) as err:
        raise common.ToolError(str(err)) from err
    from safetensors.torch import save_file
    state = {k: v.detach().to('cpu').contiguous().clone() for k, v in model.state_dict().items()}
    metadata = dict(format='pt', family=args.family, official_kwargs=json.dumps(official_kwargs, sort_keys=True),
                    model_class=type(model).__name__, source=Path(args.checkpoint).name,
                    vmamba_version=vmamba.__version__)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f'.{output.name}.tmp{os.getpid()}')
    save_file(state, str(tmp), metadata=metadata)
    os.replace(tmp, output)
    params = sum(v.numel() for v in state.values())
    print(f'{args.family} model ({type(model).__name__}, {len(state)} tensors, {params / 1e6:.2f}M values) '
          f'-> {output}')
    return output


if __name__ == '__main__':
    common.run_main(main)

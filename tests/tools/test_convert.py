"""tools/convert.py on the VMamba parity fixture: official checkpoint + kwargs -> safetensors with official outputs."""
import json

import torch

import vmamba
from ._tools import load_tool


def test_convert_vmamba_fixture(vmamba_fixtures, tmp_path):
    fixture = vmamba_fixtures / 'vmamba' / 'tiny_v3'
    kwargs = json.loads((fixture / 'config.json').read_text())['constructor_kwargs']
    kwargs_file = tmp_path / 'kwargs.json'
    kwargs_file.write_text(json.dumps(kwargs))
    out = tmp_path / 'model.safetensors'
    load_tool('convert').main(['--family', 'vmamba', '--kwargs', str(kwargs_file),
                               '--checkpoint', str(fixture / 'checkpoint.pth'), '--output', str(out)])
    from safetensors import safe_open
    from safetensors.torch import load_file
    with safe_open(str(out), 'pt') as f:
        assert json.loads(f.metadata()['official_kwargs']) == kwargs
    model = vmamba.from_official('vmamba', kwargs)
    model.load_state_dict(load_file(str(out)), strict=True)
    model.eval()
    inputs = torch.load(fixture / 'input.pt', weights_only=True)
    expected = torch.load(fixture / 'output.pt', weights_only=True)['logits']
    with torch.no_grad():
        torch.testing.assert_close(model(inputs), expected, atol=1e-4, rtol=1e-4)

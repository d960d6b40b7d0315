"""Fixtures shared by the model tests."""
import json

import pytest
import torch


@pytest.fixture(scope='module')
def tiny_v3(vmamba_fixtures):
    """The official VMamba ``tiny_v3`` parity fixture: its directory, checkpoint path, constructor kwargs, input and
    official outputs."""
    root = vmamba_fixtures / 'vmamba' / 'tiny_v3'
    if not root.is_dir():
        pytest.skip(f'{root} not found')
    return dict(
        root=root,
        checkpoint=root / 'checkpoint.pth',
        config=json.loads((root / 'config.json').read_text()),
        input=torch.load(root / 'input.pt', weights_only=True),
        output=torch.load(root / 'output.pt', weights_only=True),
    )

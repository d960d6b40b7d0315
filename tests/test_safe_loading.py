"""Official checkpoints are loaded tensors-only: allow-listed config objects pass, anything else is refused."""
import argparse
import sys
import types

import pytest
import torch

from vmamba.official import load_state_dict_strict
from vmamba.pretrained import load_official_checkpoint


def test_argparse_namespace_is_allowed(tmp_path):
    path = tmp_path / 'vim_like.pth'
    torch.save({'model': {'w': torch.ones(2)}, 'args': argparse.Namespace(lr=1e-3, model='vim')}, path)
    ckpt = load_official_checkpoint(path)
    torch.testing.assert_close(ckpt['model']['w'], torch.ones(2))
    assert ckpt['args'].lr == 1e-3


def test_yacs_config_is_read_as_plain_data(tmp_path, monkeypatch):
    # Pickle an object whose class is yacs.config.CfgNode (a dict subclass), as VMamba's trainer does,
    # then load it without yacs being importable.
    yacs = types.ModuleType('yacs')
    config = types.ModuleType('yacs.config')

    class CfgNode(dict):
        pass

    CfgNode.__module__ = 'yacs.config'
    CfgNode.__qualname__ = 'CfgNode'
    config.CfgNode = CfgNode
    yacs.config = config
    monkeypatch.setitem(sys.modules, 'yacs', yacs)
    monkeypatch.setitem(sys.modules, 'yacs.config', config)
    node = CfgNode(MODEL=CfgNode(NAME='vssm1_tiny_0230s'))
    node.__dict__['__immutable__'] = False
    path = tmp_path / 'vmamba_like.pth'
    torch.save({'model': {'w': torch.zeros(3)}, 'config': node, 'epoch': 264}, path)
    monkeypatch.delitem(sys.modules, 'yacs')
    monkeypatch.delitem(sys.modules, 'yacs.config')
    ckpt = load_official_checkpoint(path)
    assert ckpt['epoch'] == 264
    assert ckpt['config']['MODEL']['NAME'] == 'vssm1_tiny_0230s'
    torch.testing.assert_close(ckpt['model']['w'], torch.zeros(3))


class Arbitrary:
    def __reduce__(self):
        return (print, ('this must never run',))


def test_arbitrary_objects_are_refused(tmp_path, capsys):
    path = tmp_path / 'evil.pth'
    torch.save({'model': {}, 'payload': Arbitrary()}, path)
    with pytest.raises(RuntimeError, match='outside vmamba\'s allow-list'):
        load_official_checkpoint(path)
    assert 'this must never run' not in capsys.readouterr().out


def test_missing_file():
    with pytest.raises(FileNotFoundError, match='checkpoint file not found'):
        load_official_checkpoint('/nonexistent/ckpt.pth')


def test_strict_load_names_every_problem():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    sd = {'0.weight': torch.zeros(4, 2), '0.bias': torch.zeros(4), 'extra.weight': torch.zeros(1)}
    with pytest.raises(RuntimeError) as err:
        load_state_dict_strict(model, sd, source='ckpt.pth')
    text = str(err.value)
    assert '1.weight' in text and '1.bias' in text  # missing
    assert 'extra.weight' in text  # unexpected
    assert '0.weight: ckpt.pth (4, 2) vs model (4, 3)' in text  # shape mismatch with both shapes

"""model_cards/: one card per registered pretrained tag, and no card for anything unregistered."""
import re

import timm

from ._tools import REPO_ROOT, load_tool

cards = load_tool('make_model_cards')
common = load_tool('_common')
CARDS_DIR = REPO_ROOT / 'model_cards'


def test_every_pretrained_tag_has_a_card():
    names = common.our_model_names(pretrained=True)
    assert names, 'no pretrained models registered'
    missing = [n for n in names if not (CARDS_DIR / f'{n}.md').is_file()]
    assert not missing, f'run python tools/make_model_cards.py; missing cards: {missing}'


def test_every_card_names_a_registered_model():
    registered = set(timm.list_pretrained())
    for path in CARDS_DIR.glob('*.md'):
        if path.name == 'README.md':
            continue
        name = path.stem
        assert name in registered, f'{path} is for an unregistered model'
        assert path.read_text().startswith(f'# {name}\n')


def test_every_pretrained_tag_has_an_official_top1():
    missing = [n for n in common.our_model_names(pretrained=True) if n not in cards.OFFICIAL_TOP1]
    assert not missing, f'add the official top-1 of {missing} to OFFICIAL_TOP1 in tools/make_model_cards.py'


def test_card_content():
    text = cards.card_text('vmamba_tiny_s1l8.in1k')
    assert '82.6%' in text and "'cross'" in text
    assert re.search(r'\*\*Params:\*\* 30\.25 M', text)
    assert re.search(r'\*\*FLOPs:\*\* 4\.906 G', text)
    assert "timm.create_model('vmamba_tiny_s1l8.in1k', pretrained=True)" in text
    assert '@article{liu2024vmamba' in text


def test_superseded_rows_are_skipped(tmp_path):
    import json
    row = dict(model='vmamba_tiny_s1l8', infer_img_s=100.0, train_img_s=10.0, input_size=[3, 224, 224], batch_size=8)
    old = dict(device='gpu', device_type='cuda', date='d1', precision='amp', results=[row],
               superseded=dict(models=['vmamba_tiny_s1l8'], by='new.json'))
    new = dict(device='gpu', device_type='cuda', date='d2', precision='amp', results=[dict(row, infer_img_s=200.0)])
    (tmp_path / 'old.json').write_text(json.dumps(old))
    (tmp_path / 'new.json').write_text(json.dumps(new))
    rows = cards.measured_throughput('vmamba_tiny_s1l8', tmp_path)
    assert [(r['file'], r['infer_img_s']) for r in rows] == [('new.json', 200.0)]


def test_rows_superseded_by_a_later_session_are_skipped(tmp_path):
    """A report's ``superseded.later`` entries (re-measurements added after its first supersession) skip their
    models too; the report's other models stay."""
    import json
    rows = [dict(model=m, infer_img_s=100.0, train_img_s=10.0, input_size=[3, 224, 224], batch_size=8)
            for m in ('vmamba_tiny_s1l8', 'vim_tiny_patch16_224')]
    old = dict(device='gpu', device_type='cuda', date='d1', precision='amp', results=rows,
               superseded=dict(models=[], by='x.json', later=[dict(models=['vmamba_tiny_s1l8'], by='new.json')]))
    (tmp_path / 'old.json').write_text(json.dumps(old))
    assert cards.measured_throughput('vmamba_tiny_s1l8', tmp_path) == []
    assert [r['file'] for r in cards.measured_throughput('vim_tiny_patch16_224', tmp_path)] == ['old.json']

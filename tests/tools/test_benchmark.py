"""tools/benchmark.py on CPU at a tiny size: JSON, Markdown table with peer ratios, PNG plot."""
import json

import pytest

from ._tools import load_tool


def test_benchmark_writes_table_and_plot(tmp_path):
    benchmark = load_tool('benchmark')
    out = tmp_path / 'models'
    report = benchmark.main(['--models', 'test_vmamba,test_vim', '--peers', 'test_mambaout', '--img-size', '32',
                             '-b', '2', '--warmup', '1', '--iters', '2', '--out', str(out)])
    rows = {r['model']: r for r in report['results']}
    assert set(rows) == {'test_vmamba', 'test_vim', 'test_mambaout'}
    for row in rows.values():
        assert not row.get('error'), row
        assert row['infer_img_s'] > 0 and row['train_img_s'] > 0 and row['gflops'] > 0
    assert rows['test_mambaout']['peer'] and not rows['test_vmamba']['peer']
    saved = json.loads(out.with_suffix('.json').read_text())
    assert saved['results'][0]['model'] == 'test_vmamba' and saved['iters'] == 2
    table = out.with_suffix('.md').read_text()
    assert '| test_vmamba |' in table and '| test_mambaout (peer) |' in table
    ratio = rows['test_vmamba']['infer_img_s'] / rows['test_mambaout']['infer_img_s']
    assert f'{ratio:.2f}x' in table
    assert out.with_suffix('.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_cuda_graph_needs_cuda():
    benchmark = load_tool('benchmark')
    with pytest.raises(Exception, match='--cuda-graph needs a CUDA device'):
        benchmark.main(['--models', 'test_vim', '--no-peers', '--device', 'cpu', '--cuda-graph', '--iters', '1'])

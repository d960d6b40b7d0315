"""tools/train.py and tools/validate.py on CPU: learning on the embedded digits data, exact resume, torchrun DDP,
validate reproducing the logged accuracy, clear errors."""
import math
import csv
import os
import subprocess
import sys

import pytest
import torch

from ._tools import REPO_ROOT, TINY_TRAIN_ARGS, TOOLS_DIR, load_tool

train = load_tool('train')
validate = load_tool('validate')
common = load_tool('_common')


def _step_losses(run_dir):
    with open(run_dir / 'steps.csv') as f:
        return [(int(r['step']), float(r['loss'])) for r in csv.DictReader(f)]


@pytest.fixture(scope='module')
def straight_run(tmp_path_factory):
    """Two short epochs in one go (the reference for the resume and validate tests)."""
    out = tmp_path_factory.mktemp('straight')
    result = train.main(TINY_TRAIN_ARGS + ['--epochs', '2', '--steps-per-epoch', '4', '--lr', '2e-3',
                                           '--output', str(out)])
    return out, result


def test_embedded_default_learns(tmp_path):
    # digits recipe, smaller and shorter: chance is 10%
    result = train.main(['--model-kwargs', 'dims=16', 'depths=(1,1,1,1)', '--img-size', '16', '--epochs', '2',
                         '--batch-size', '32', '--no-progress', '--output', str(tmp_path)])
    history = result['history']
    assert len(history) == 2 and history[-1]['val_images'] == 359
    assert history[-1]['top1'] > 50.0, history
    assert history[-1]['train_loss'] < history[0]['train_loss']
    assert (tmp_path / 'last.pth').is_file() and (tmp_path / 'summary.csv').is_file()
    assert not [p for p in tmp_path.iterdir() if '.tmp' in p.name]  # atomic writes leave no temp files


def test_checkpoint_loads_weights_only(straight_run):
    out, _ = straight_run
    state = torch.load(out / 'last.pth', map_location='cpu', weights_only=True)
    assert state['epoch'] == 1 and state['step'] == 8
    assert {'model', 'optimizer', 'scheduler', 'rng', 'args'} <= set(state)


def test_resume_reproduces_loss_curve(straight_run, tmp_path):
    out, _ = straight_run
    first = tmp_path / 'resumed'
    train.main(TINY_TRAIN_ARGS + ['--epochs', '2', '--steps-per-epoch', '4', '--lr', '2e-3', '--output', str(first),
                                  '--stop-after-epoch', '1'])
    assert len(_step_losses(first)) == 4
    train.main(['--resume', str(first / 'last.pth'), '--no-progress'])
    straight, resumed = _step_losses(out), _step_losses(first)
    assert [s for s, _ in resumed] == list(range(1, 9))
    torch.testing.assert_close(torch.tensor([l for _, l in resumed]), torch.tensor([l for _, l in straight]),
                               rtol=1e-5, atol=1e-6)
    straight_state = torch.load(out / 'last.pth', weights_only=True)
    resumed_state = torch.load(first / 'last.pth', weights_only=True)
    for key, value in straight_state['model'].items():
        torch.testing.assert_close(resumed_state['model'][key], value, rtol=1e-5, atol=1e-6)


def test_validate_reproduces_train_accuracy(straight_run, tmp_path):
    out, result = straight_run
    logged = result['history'][-1]
    results = validate.main(['--checkpoint', str(out / 'last.pth'), '--no-progress',
                             '--results-file', str(tmp_path / 'val.json')])
    assert results['images'] == logged['val_images'] == 359
    assert results['top1'] == pytest.approx(logged['top1'], abs=1e-9)
    assert results['top5'] == pytest.approx(logged['top5'], abs=1e-9)
    assert results['loss'] == pytest.approx(logged['val_loss'], rel=1e-4)
    assert (tmp_path / 'val.json').is_file()


def test_torchrun_two_processes_gloo(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO_ROOT))
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           str(TOOLS_DIR / 'train.py')] + TINY_TRAIN_ARGS + [
        '--batch-size', '16', '--epochs', '1', '--steps-per-epoch', '3', '--output', str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [l for l in (proc.stdout + proc.stderr).splitlines() if 'all-reduced val top-1' in l]
    assert len(lines) == 2, proc.stdout + proc.stderr
    assert lines[0].split(']', 1)[1] == lines[1].split(']', 1)[1]  # both ranks report the same metric
    with open(tmp_path / 'summary.csv') as f:
        row = next(csv.DictReader(f))
    assert int(row['train_images']) == 2 * 3 * 16 and int(row['val_images']) == 359
    assert f'{float(row["top1"]):.4f}%' in lines[0]
    state = torch.load(tmp_path / 'last.pth', weights_only=True)
    assert state['args']['world_size'] == 2 and len(state['rng']) == 2


def _image_folder(root, classes, per_class=2):
    from PIL import Image
    for split in ('train', 'val'):
        for i, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for j in range(per_class):
                Image.new('RGB', (20, 20), (40 * i, 10 * j, 100)).save(folder / f'{j}.png')


def test_image_folder_training_and_errors(tmp_path):
    data = tmp_path / 'data'
    _image_folder(data, ['cat', 'dog'])
    result = train.main(['--data-dir', str(data), '--model', 'test_vmamba', '--model-kwargs', 'dims=8',
                         'depths=(1,1,1,1)', '--img-size', '32', '-b', '2', '--epochs', '1', '--workers', '0',
                         '--warmup-epochs', '0', '--no-progress', '--output', str(tmp_path / 'run')])
    assert result['history'][0]['val_images'] == 4
    with pytest.raises(common.ToolError, match='--num-classes 3 but the dataset has 2 classes'):
        train.main(['--data-dir', str(data), '--model', 'test_vmamba', '--num-classes', '3', '--workers', '0',
                    '--output', str(tmp_path / 'bad')])
    with pytest.raises(common.ToolError, match='does not exist'):
        train.main(['--data-dir', str(tmp_path / 'missing'), '--model', 'test_vmamba'])
    (tmp_path / 'empty' / 'train').mkdir(parents=True)
    (tmp_path / 'empty' / 'val').mkdir()
    with pytest.raises(common.ToolError, match='no class sub-folders'):
        train.main(['--data-dir', str(tmp_path / 'empty'), '--model', 'test_vmamba'])
    with pytest.raises(common.ToolError, match="did you mean: .*vmamba_tiny_s1l8"):
        train.main(['--model', 'vmamba_tiny_s1l9'])


def test_cli_error_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, str(TOOLS_DIR / 'validate.py'), '--model', 'vim_tiny_patch16_244'],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert 'unknown model' in proc.stderr and 'vim_tiny_patch16_224' in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_recipe_features_run(tmp_path):
    # AMP bf16, grad checkpointing, channels-last, EMA, Mixup/CutMix, layer decay, clipping: two steps.
    # 32x32 images: at 16x16 the last downsample conv sees a 1x1 map, and PyTorch's CPU bf16 Conv2d backward
    # (3x3, stride 2, padding 1, 1x1 input; torch 2.14) returns garbage weight gradients on the padding-only taps.
    result = train.main(TINY_TRAIN_ARGS + [
        '--img-size', '32', '--epochs', '1', '--steps-per-epoch', '2', '--amp', '--amp-dtype', 'bfloat16', '--grad-checkpointing',
        '--channels-last', '--model-ema', '--model-ema-decay', '0.9', '--mixup', '0.8', '--cutmix', '1.0',
        '--layer-decay', '0.75', '--clip-grad', '1.0', '--drop-path', '0.1', '--output', str(tmp_path)])
    record = result['history'][0]
    assert record['train_images'] == 64 and 'ema_top1' in record
    assert math.isfinite(record['val_loss']) and math.isfinite(record['ema_val_loss'])
    state = torch.load(tmp_path / 'last.pth', weights_only=True)
    assert state['model_ema'] is not None
    assert len({g['lr_scale'] for g in state['optimizer']['param_groups']}) > 1  # layer-wise lr decay groups


def test_layer_shuffle_needs_a_plain_model(tmp_path):
    with pytest.raises(common.ToolError, match='does not accept layer_shuffle_prob'):
        train.main(TINY_TRAIN_ARGS + ['--layer-shuffle-prob', '0.5', '--output', str(tmp_path)])


def test_synthetic_imagenet_shaped_data(tmp_path):
    """--synthetic: random ImageNet-shaped data with 1000 classes (the throughput / DDP scaling runs)."""
    result = train.main(['--model', 'test_vmamba', '--model-kwargs', 'dims=8', 'depths=(1,1,1,1)', '--synthetic', '40',
                         '--img-size', '16', '--batch-size', '8', '--epochs', '1', '--no-progress',
                         '--output', str(tmp_path)])
    history = result['history']
    assert history[-1]['val_images'] == 4
    assert torch.isfinite(torch.tensor(history[-1]['train_loss']))
    with pytest.raises(Exception, match='mutually exclusive'):
        train.main(['--model', 'test_vmamba', '--synthetic', '8', '--data-dir', str(tmp_path),
                    '--output', str(tmp_path / 'x')])

"""mmengine Runner on our seg config: 2 iterations, a checkpoint, then resume=True continues at iteration 3 on
torch >= 2.6 (TrustedResumeRunner; mmengine's plain Runner cannot read its own checkpoint there)."""
import numpy as np
import pytest
import torch

from .conftest import import_mm, load_config

adapters = import_mm('mmseg', 'cv2')


def _fake_ade20k(root, count=2, size=48):
    import cv2

    rng = np.random.default_rng(0)
    for split in ('training', 'validation'):
        (root / 'images' / split).mkdir(parents=True)
        (root / 'annotations' / split).mkdir(parents=True)
        for i in range(count):
            cv2.imwrite(str(root / 'images' / split / f'img_{i}.jpg'), rng.integers(0, 255, (size, size, 3), np.uint8))
            cv2.imwrite(str(root / 'annotations' / split / f'img_{i}.png'), rng.integers(0, 151, (size, size), np.uint8))


def _config(root, work_dir, max_iters, resume):
    from vmamba.adapters.cli import set_data_root

    cfg = load_config('configs/seg/upernet_vmamba_tiny_s1l8_ade20k_512x512_160k.py', model_name='test_vmamba')
    cfg.model.decode_head.in_channels = [24, 48, 96, 192]
    cfg.model.auxiliary_head.in_channels = 96
    for head in (cfg.model.decode_head, cfg.model.auxiliary_head):
        head.norm_cfg = dict(type='BN', requires_grad=True)
    cfg.model.data_preprocessor.size = (32, 32)
    cfg.train_dataloader.dataset.pipeline = [
        dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', reduce_zero_label=True),
        dict(type='RandomCrop', crop_size=(32, 32)), dict(type='PackSegInputs')]
    cfg.train_dataloader.update(batch_size=2, num_workers=0, persistent_workers=False)
    set_data_root(cfg, str(root))
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=10 ** 6)
    for key in ('val_dataloader', 'val_cfg', 'val_evaluator', 'test_dataloader', 'test_cfg', 'test_evaluator'):
        cfg[key] = None
    cfg.param_scheduler = [dict(type='LinearLR', start_factor=0.5, by_epoch=False, begin=0, end=10)]
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', by_epoch=False, interval=2)
    cfg.default_hooks.visualization = dict(type='SegVisualizationHook', draw=False)
    cfg.visualizer = dict(type='SegLocalVisualizer', vis_backends=[], name=f'vis_{max_iters}_{resume}')
    cfg.log_level = 'WARNING'
    cfg.work_dir = str(work_dir)
    cfg.resume = resume
    cfg.experiment_name = f'run_{max_iters}_{resume}'
    return cfg


def test_resume_continues_at_iteration_3(tmp_path):
    from mmengine.runner import Runner

    _fake_ade20k(tmp_path / 'ade')
    work_dir = tmp_path / 'work'
    torch.manual_seed(0)
    runner = adapters.TrustedResumeRunner.from_cfg(_config(tmp_path / 'ade', work_dir, max_iters=2, resume=False))
    runner.train()
    checkpoint = work_dir / 'iter_2.pth'
    assert checkpoint.is_file() and runner.iter == 2

    # mmengine's own Runner cannot read the checkpoint it wrote on torch >= 2.6 (HistoryBuffer in the message hub)
    plain = Runner.from_cfg(_config(tmp_path / 'ade', work_dir, max_iters=3, resume=True))
    if tuple(int(v) for v in torch.__version__.split('.')[:2]) >= (2, 6):
        with pytest.raises(Exception, match='[Ww]eights only load failed|Unsupported global'):
            plain.train()

    resumed = adapters.TrustedResumeRunner.from_cfg(_config(tmp_path / 'ade', work_dir, max_iters=3, resume=True))
    started = []
    resumed.register_hook(_RecordIterHook(started), priority='LOWEST')
    resumed.train()
    assert started == [2]  # 0-based: iteration 3 is the first one run after resuming
    assert resumed.iter == 3
    assert (work_dir / 'iter_3.pth').is_file()
    optimizer_state = resumed.optim_wrapper.optimizer.state_dict()['state']
    assert optimizer_state and all(float(s['step']) == 3 for s in optimizer_state.values())


def _RecordIterHook(started):
    from mmengine.hooks import Hook

    class RecordIterHook(Hook):
        def before_train_iter(self, runner, batch_idx, data_batch=None):
            started.append(runner.iter)

    return RecordIterHook()

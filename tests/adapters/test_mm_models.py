"""UperNet (every family) and Mask R-CNN (hierarchical families + Vim) built from our configs with the tiny test
models: a training step (finite losses, gradients reaching the backbone) and inference, on 2x3x128x128 for UperNet
and 2x3x64x64 for Mask R-CNN (the CPU reference scan dominates the run time)."""
import pytest
import torch

from .conftest import import_mm, load_config

adapters = import_mm('mmseg', 'mmdet')

SEG_CONFIGS = {
    'test_vmamba': 'configs/seg/upernet_vmamba_tiny_s1l8_ade20k_512x512_160k.py',
    'test_efficientvmamba': 'configs/seg/upernet_efficientvmamba_tiny_ade20k_512x512_160k.py',
    'test_vim': 'configs/seg/upernet_vim_tiny_ade20k_512x512_60k.py',
    'test_lbvim': 'configs/seg/upernet_lbvim_tiny_ade20k_512x512_160k.py',
}
DET_CONFIGS = {
    'test_vmamba': 'configs/det/mask_rcnn_vmamba_tiny_s1l8_fpn_1x_coco.py',
    'test_efficientvmamba': 'configs/det/mask_rcnn_efficientvmamba_tiny_fpn_1x_coco.py',
    'test_vim': 'configs/det/mask_rcnn_vim_tiny_fpn_1x_coco.py',
}
PLAIN = {'test_vim', 'test_lbvim'}


def _backbone_overrides(model_name):
    overrides = dict(model_name=model_name, drop_path_rate=0.1)
    if model_name in PLAIN:
        overrides['out_indices'] = (0, 1, 2, 3)  # the tiny models have 4 blocks
    return overrides


def _probe_backbone(cfg):
    kwargs = dict(cfg.model.backbone)
    return adapters.BACKBONES[kwargs.pop('type')](**kwargs)


def _build(registry, cfg):
    from mmengine.model import revert_sync_batchnorm

    return revert_sync_batchnorm(registry.build(cfg.model))  # SyncBN -> BN in a single CPU process


def _assert_backbone_gradients(model):
    grads = [p.grad for n, p in model.backbone.named_parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads), 'some backbone parameters got no gradient'
    assert all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


@pytest.mark.parametrize('model_name', list(SEG_CONFIGS))
def test_upernet_train_step_and_inference(model_name):
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample

    cfg = load_config(SEG_CONFIGS[model_name], **_backbone_overrides(model_name))
    probe = _probe_backbone(cfg)
    cfg.model.decode_head.in_channels = probe.out_channels
    cfg.model.auxiliary_head.in_channels = probe.out_channels[2]
    cfg.model.data_preprocessor.size = (128, 128)
    model = _build(MODELS, cfg)
    assert type(model).__name__ == 'EncoderDecoder' and model.decode_head.num_classes == 150

    torch.manual_seed(0)
    inputs = torch.randn(2, 3, 128, 128)
    samples = []
    for _ in range(2):
        sample = SegDataSample(metainfo=dict(img_shape=(128, 128), pad_shape=(128, 128), ori_shape=(128, 128)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 150, (1, 128, 128)))
        samples.append(sample)
    model.train()
    losses = model(inputs, samples, mode='loss')
    assert {'decode.loss_ce', 'aux.loss_ce'} <= set(losses)
    total = sum(v for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(total) and total > 0
    total.backward()
    _assert_backbone_gradients(model)

    model.eval()
    with torch.no_grad():
        results = model(inputs, samples, mode='predict')
    assert len(results) == 2
    for result in results:
        assert result.seg_logits.data.shape == (150, 128, 128)
        assert result.pred_sem_seg.data.shape == (1, 128, 128)
        assert torch.isfinite(result.seg_logits.data).all()


@pytest.mark.parametrize('model_name', list(DET_CONFIGS))
def test_mask_rcnn_losses_and_prediction(model_name):
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    cfg = load_config(DET_CONFIGS[model_name], **_backbone_overrides(model_name))
    probe = _probe_backbone(cfg)
    assert probe.out_strides == [4, 8, 16, 32]
    cfg.model.neck.in_channels = probe.out_channels
    cfg.model.test_cfg.rcnn.score_thr = 0.0  # an untrained head scores every class about equally
    model = _build(MODELS, cfg)
    assert type(model).__name__ == 'MaskRCNN'

    torch.manual_seed(0)
    size = 64
    inputs = torch.randn(2, 3, size, size)
    meta = dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size),
                batch_input_shape=(size, size), scale_factor=(1.0, 1.0))
    samples = []
    for boxes, labels in (([[5., 6., 30., 35.], [32., 15., 60., 50.]], [3, 17]), ([[10., 10., 45., 55.]], [0])):
        boxes = torch.tensor(boxes)
        masks = torch.zeros(len(boxes), size, size, dtype=torch.uint8)
        for mask, (x1, y1, x2, y2) in zip(masks, boxes.long().tolist()):
            mask[y1 + 3:y2 - 3, x1 + 3:x2 - 3] = 1
        sample = DetDataSample(metainfo=meta)
        sample.gt_instances = InstanceData(bboxes=boxes, labels=torch.tensor(labels),
                                           masks=BitmapMasks(masks.numpy(), size, size))
        samples.append(sample)

    model.train()
    losses = model(inputs, samples, mode='loss')
    assert {'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox', 'loss_mask'} <= set(losses)
    total = sum(sum(v) if isinstance(v, list) else v for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(total) and total > 0
    total.backward()
    _assert_backbone_gradients(model)

    model.eval()
    with torch.no_grad():
        results = model(inputs, samples, mode='predict')
    for result in results:
        pred = result.pred_instances
        assert 0 < len(pred) <= cfg.model.test_cfg.rcnn.max_per_img
        assert pred.bboxes.shape == (len(pred), 4) and torch.isfinite(pred.bboxes).all()
        assert pred.masks.shape == (len(pred), size, size) and pred.masks.dtype == torch.bool

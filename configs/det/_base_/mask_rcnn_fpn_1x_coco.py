# Mask R-CNN + FPN on COCO, 1x (12 epochs): mmdet's Swin-T recipe, which the official VMamba / EfficientVMamba detection
# configs inherit: AdamW lr 1e-4, betas (0.9, 0.999), weight decay 0.05 (none on keys containing 'norm'), LinearLR
# warmup for 1000 iterations from 0.001, MultiStepLR at epochs 8 and 11 (x0.1); images resized to 1333x800 keeping the
# ratio, flip 0.5; batch 2 per GPU (official runs: 8 GPUs). Per-model files set the backbone and the neck channels.
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py']
custom_imports = dict(imports=['vmamba.adapters'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='VMambaBackbone',
        model_name='vmamba_tiny_s1l8',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        pretrained=None,  # converted classification weights: --cfg-options model.backbone.pretrained=PATH
    ),
    neck=dict(in_channels=[96, 192, 384, 768]))

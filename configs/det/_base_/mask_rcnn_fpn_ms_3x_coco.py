# Mask R-CNN + FPN on COCO, 3x with multi-scale training (36 epochs, milestones 27 / 33): mmdet's Swin-T ms-crop-3x
# recipe, identical to the official VMamba *_ms_3x configs (DETR-style augmentation: short side 480-800 of 1333, or
# resize 400-600 -> random crop 384-600 -> resize 480-800), AdamW lr 1e-4, wd 0.05 (none on 'norm' keys).
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py']
custom_imports = dict(imports=['vmamba.adapters'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='VMambaBackbone',
        model_name='vmamba_tiny_s1l8',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        pretrained=None,
    ),
    neck=dict(in_channels=[96, 192, 384, 768]))

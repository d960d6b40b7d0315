# vmamba_tiny_v0, Mask R-CNN 1x: reported box 46.5 / mask 42.1 (official vssm/mask_rcnn_vssm_fpn_coco_tiny.py)
_base_ = ['./_base_/mask_rcnn_fpn_1x_coco.py']
model = dict(
    backbone=dict(type='VMambaBackbone', model_name='vmamba_tiny_v0', drop_path_rate=0.2),
    neck=dict(in_channels=[96, 192, 384, 768]))

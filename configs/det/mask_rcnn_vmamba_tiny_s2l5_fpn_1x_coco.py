# vmamba_tiny_s2l5, Mask R-CNN 1x: reported box 47.4 / mask 42.7 (official vssm1/mask_rcnn_vssm_fpn_coco_tiny1.py)
_base_ = ['./_base_/mask_rcnn_fpn_1x_coco.py']
model = dict(
    backbone=dict(type='VMambaBackbone', model_name='vmamba_tiny_s2l5', drop_path_rate=0.2),
    neck=dict(in_channels=[96, 192, 384, 768]))

# vmamba_tiny_s2l5, Mask R-CNN ms_3x: reported box 48.9 / mask 43.7 (official vssm1/mask_rcnn_vssm_fpn_coco_tiny1_ms_3x.py)
_base_ = ['./_base_/mask_rcnn_fpn_ms_3x_coco.py']
model = dict(
    backbone=dict(type='VMambaBackbone', model_name='vmamba_tiny_s2l5', drop_path_rate=0.2),
    neck=dict(in_channels=[96, 192, 384, 768]))

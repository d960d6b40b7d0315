# vmamba_small_v0, Mask R-CNN 1x: reported box 48.2 / mask 43.0 (official vssm/mask_rcnn_vssm_fpn_coco_small.py)
_base_ = ['./_base_/mask_rcnn_fpn_1x_coco.py']
model = dict(
    backbone=dict(type='VMambaBackbone', model_name='vmamba_small_v0', drop_path_rate=0.3),
    neck=dict(in_channels=[96, 192, 384, 768]))

# vmamba_tiny_v0, Mask R-CNN ms_3x: reported box 48.5 / mask 43.2 (official vssm/mask_rcnn_vssm_fpn_coco_tiny_ms_3x.py)
_base_ = ['./_base_/mask_rcnn_fpn_ms_3x_coco.py']
model = dict(
    backbone=dict(type='VMambaBackbone', model_name='vmamba_tiny_v0', drop_path_rate=0.2),
    neck=dict(in_channels=[96, 192, 384, 768]))

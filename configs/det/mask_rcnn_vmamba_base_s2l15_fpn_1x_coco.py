# vmamba_base_s2l15, Mask R-CNN 1x: reported box 49.2 / mask 44.1 (official vssm1/mask_rcnn_vssm_fpn_coco_base.py)
_base_ = ['./_base_/mask_rcnn_fpn_1x_coco.py']
model = dict(
    backbone=dict(type='VMambaBackbone', model_name='vmamba_base_s2l15', drop_path_rate=0.6),
    neck=dict(in_channels=[128, 256, 512, 1024]))

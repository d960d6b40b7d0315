# vmamba_small_s2l15, Mask R-CNN ms_3x: reported box 49.9 / mask 44.2 (official vssm1/mask_rcnn_vssm_fpn_coco_small_ms_3x.py)
_base_ = ['./_base_/mask_rcnn_fpn_ms_3x_coco.py']
model = dict(
    backbone=dict(type='VMambaBackbone', model_name='vmamba_small_s2l15', drop_path_rate=0.3),
    neck=dict(in_channels=[96, 192, 384, 768]))

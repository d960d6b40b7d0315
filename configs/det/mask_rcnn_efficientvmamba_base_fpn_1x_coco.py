# efficientvmamba_base, Mask R-CNN 1x: reported official Mask R-CNN 1x config (no reported Mask R-CNN result)
_base_ = ['./_base_/mask_rcnn_fpn_1x_coco.py']
model = dict(
    backbone=dict(type='EfficientVMambaBackbone', model_name='efficientvmamba_base', drop_path_rate=0.1),
    neck=dict(in_channels=[96, 192, 384, 768]))

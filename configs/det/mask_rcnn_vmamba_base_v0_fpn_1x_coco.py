# vmamba_base_v0, Mask R-CNN 1x: reported box 48.6 / mask 43.3 (official vssm/mask_rcnn_vssm_fpn_coco_base.py; that config trains with batch 1 x 16 GPUs)
_base_ = ['./_base_/mask_rcnn_fpn_1x_coco.py']
model = dict(
    backbone=dict(type='VMambaBackbone', model_name='vmamba_base_v0', drop_path_rate=0.6),
    neck=dict(in_channels=[128, 256, 512, 1024]))

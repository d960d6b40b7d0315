# vim_small_patch16_224, Mask R-CNN + FPN 1x. Not an official recipe: the official plain-model detectors are ViTDet-style Cascade
# Mask R-CNNs (Vim: detectron2, LBVim: mmdet SimpleFPN, LSJ 1024, 100 / 300 epochs). Here the mixer outputs of blocks
# 5/11/17/23 form a stride 4/8/16/32 pyramid (Vim's segmentation pyramid) for a standard FPN, with the Swin 1x recipe
# and no weight decay on position embeddings, norms, A_log and D.
_base_ = ['./mask_rcnn_vim_tiny_fpn_1x_coco.py']
model = dict(
    backbone=dict(model_name='vim_small_patch16_224'),
    neck=dict(in_channels=[384, 384, 384, 384]))

# lbvim_tiny_patch16_224, Mask R-CNN + FPN 1x. Not an official recipe: the official plain-model detectors are ViTDet-style Cascade
# Mask R-CNNs (Vim: detectron2, LBVim: mmdet SimpleFPN, LSJ 1024, 100 / 300 epochs). Here the mixer outputs of blocks
# 5/11/17/23 form a stride 4/8/16/32 pyramid (Vim's segmentation pyramid) for a standard FPN, with the Swin 1x recipe
# and no weight decay on position embeddings, norms, A_log and D.
_base_ = ['./_base_/mask_rcnn_fpn_1x_coco.py']
model = dict(
    backbone=dict(_delete_=True, type='LBVimBackbone', model_name='lbvim_tiny_patch16_224', drop_path_rate=0.1, pyramid='deconv',
                  pyramid_norm_cfg=dict(type='SyncBN', requires_grad=True), pretrained=None),
    neck=dict(in_channels=[192, 192, 192, 192]))
optim_wrapper = dict(
    paramwise_cfg=dict(
        custom_keys={k: dict(decay_mult=0.) for k in ('pos_embed', 'cls_token', 'norm', 'A_log', 'A_b_log', '.D', '.D_b')}))

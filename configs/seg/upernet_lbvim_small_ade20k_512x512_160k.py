# LBVim recipe (official LBMamba segmentation/, mmseg 1.x): UperNet fed with the four stride-16 mixer outputs of blocks
# 5/11/17/23, each through a fresh LayerNorm; AdamW lr 6e-5, wd 0.01 without decay on pos_embed / norms / A_log / D,
# 1500-iteration warmup then poly, 160k iterations, 2 GPUs x 8 images, sliding-window test (stride 341).
# LBVim-S (lbvim_small_patch16_224): results in arXiv 2506.15976 (tables not reproduced in our specs)
_base_ = ['./upernet_lbvim_tiny_ade20k_512x512_160k.py']
model = dict(
    backbone=dict(model_name='lbvim_small_patch16_224'),
    decode_head=dict(in_channels=[384, 384, 384, 384]),
    auxiliary_head=dict(in_channels=384))

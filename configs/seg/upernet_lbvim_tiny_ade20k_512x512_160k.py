# LBVim recipe (official LBMamba segmentation/, mmseg 1.x): UperNet fed with the four stride-16 mixer outputs of blocks
# 5/11/17/23, each through a fresh LayerNorm; AdamW lr 6e-5, wd 0.01 without decay on pos_embed / norms / A_log / D,
# 1500-iteration warmup then poly, 160k iterations, 2 GPUs x 8 images, sliding-window test (stride 341).
# LBVim-T (lbvim_tiny_patch16_224): results in arXiv 2506.15976 (tables not reproduced in our specs)
_base_ = ['./_base_/upernet_plain_ade20k_512x512.py']
model = dict(
    backbone=dict(type='LBVimBackbone', model_name='lbvim_tiny_patch16_224', drop_path_rate=0.05, pyramid=None),
    decode_head=dict(in_channels=[192, 192, 192, 192]),
    auxiliary_head=dict(in_channels=192))
train_dataloader = dict(batch_size=8)
optim_wrapper = dict(
    paramwise_cfg=dict(
        custom_keys={k: dict(decay_mult=0.) for k in ('pos_embed', 'norm', 'A_log', '.D')}))

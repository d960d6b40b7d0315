# Vim recipe (official seg/, mmseg 0.29): UperNet on the mixer outputs of blocks 5/11/17/23, turned into a stride 4/8/16/32
# pyramid (2x ConvT + SyncBN + GELU / ConvT / identity / max-pool), AdamW with layer-wise lr decay, 1500-iteration
# warmup then poly, 60k iterations, 4 GPUs x 8 images. Not reproduced here: the official run's RoPE / class-token-free
# backbones (our weights are the released mid-class-token models).
# Vim-S: reported 44.9 mIoU (paper, not re-verified); lr 1e-4, layer decay 0.95 as launched; wd 0.05 and decode
# channels 384 are our choice (not stated in the official launch script)
_base_ = ['./upernet_vim_tiny_ade20k_512x512_60k.py']
model = dict(
    backbone=dict(model_name='vim_small_patch16_224'),
    decode_head=dict(in_channels=[384, 384, 384, 384], channels=384),
    auxiliary_head=dict(in_channels=384, channels=192))
optim_wrapper = dict(
    optimizer=dict(lr=0.0001, weight_decay=0.05),
    paramwise_cfg=dict(layer_decay_rate=0.95))

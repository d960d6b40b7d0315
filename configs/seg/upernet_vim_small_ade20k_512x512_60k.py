# Vim recipe (official seg/, mmseg 0.29): UperNet on the mixer outputs of blocks 5/11/17/23, turned into a stride 4/8/16/32
# pyramid (2x ConvT + SyncBN + GELU / ConvT / identity / max-pool), AdamW with layer-wise lr decay, 1500-iteration
# warmup then poly, 60k iterations, 4 GPUs x 8 images. Not reproduced here: the official run's RoPE / class-token-free
# backbones (our weights are the released mid-class-token models).
# Vim-S: reported 44.9 mIoU (paper, not re-verified); lr 1e-4, layer decay 0.95 as launched; wd 0.05 and decode
# channels 384 are our choice (not stated in the official launch script)
_base_ = ['./_base_/upernet_plain_ade20k_512x512.py']
model = dict(
    backbone=dict(type='VimBackbone', model_name='vim_small_patch16_224', drop_path_rate=0.1, pyramid='deconv',
                  pyramid_norm_cfg=dict(type='SyncBN', requires_grad=True)),
    decode_head=dict(in_channels=[384, 384, 384, 384], channels=384),
    auxiliary_head=dict(in_channels=384, channels=192))
train_dataloader = dict(batch_size=8)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='MambaLayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
        layer_decay_rate=0.95,
        custom_keys={k: dict(decay_mult=0.) for k in ('pos_embed', 'cls_token', 'norm', 'A_log', 'A_b_log', '.D', '.D_b')}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=60000, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=60000, val_interval=6000)
default_hooks = dict(checkpoint=dict(interval=6000))

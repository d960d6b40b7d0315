# Vanilla-VMamba-S: official vssm/upernet_vssm_4xb4-160k_ade20k-512x512_small.py; reported 49.5 SS / 50.5 MS
# (drop path: the classification value; the v0 seg config keeps the backbone default)
_base_ = ['./_base_/upernet_ade20k_512x512_160k.py']
model = dict(
    backbone=dict(type='VMambaBackbone', model_name='vmamba_small_v0', drop_path_rate=0.3),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))

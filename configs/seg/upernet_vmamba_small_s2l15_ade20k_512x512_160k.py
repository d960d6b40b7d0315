# VMamba-S[s2l15]: official vssm1/upernet_vssm_4xb4-160k_ade20k-512x512_small.py; reported 50.6 SS / 51.2 MS
_base_ = ['./_base_/upernet_ade20k_512x512_160k.py']
model = dict(
    backbone=dict(type='VMambaBackbone', model_name='vmamba_small_s2l15', drop_path_rate=0.3),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))

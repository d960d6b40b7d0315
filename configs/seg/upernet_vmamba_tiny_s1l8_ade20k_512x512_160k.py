# VMamba-T[s1l8]: official vssm1/upernet_vssm_4xb4-160k_ade20k-512x512_tiny.py; reported 47.9 mIoU SS / 48.8 MS
_base_ = ['./_base_/upernet_ade20k_512x512_160k.py']
model = dict(
    backbone=dict(type='VMambaBackbone', model_name='vmamba_tiny_s1l8', drop_path_rate=0.2),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))

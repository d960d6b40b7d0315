# VMamba-B[s2l15]: official vssm1/upernet_vssm_4xb4-160k_ade20k-512x512_base.py; reported 51.0 SS / 51.6 MS
_base_ = ['./_base_/upernet_ade20k_512x512_160k.py']
model = dict(
    backbone=dict(type='VMambaBackbone', model_name='vmamba_base_s2l15', drop_path_rate=0.6),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))

# Vanilla-VMamba-B: official vssm/upernet_vssm_4xb4-160k_ade20k-512x512_base.py; reported 50.0 SS / 51.3 MS
# (drop path: the classification value; the v0 seg config keeps the backbone default)
_base_ = ['./_base_/upernet_ade20k_512x512_160k.py']
model = dict(
    backbone=dict(type='VMambaBackbone', model_name='vmamba_base_v0', drop_path_rate=0.5),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))

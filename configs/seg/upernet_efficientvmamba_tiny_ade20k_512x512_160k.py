# EfficientVMamba-T: the official repository has no segmentation config or result; VMamba's recipe
_base_ = ['./_base_/upernet_ade20k_512x512_160k.py']
model = dict(
    backbone=dict(type='EfficientVMambaBackbone', model_name='efficientvmamba_tiny', drop_path_rate=0.1),
    decode_head=dict(in_channels=[48, 96, 192, 384]),
    auxiliary_head=dict(in_channels=192))

# EfficientVMamba-S: the official repository has no segmentation config or result; VMamba's recipe
_base_ = ['./_base_/upernet_ade20k_512x512_160k.py']
model = dict(
    backbone=dict(type='EfficientVMambaBackbone', model_name='efficientvmamba_small', drop_path_rate=0.1),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256))

# EfficientVMamba-B: no official segmentation config (the paper quotes ADE20K 46.5 mIoU, setup not given); VMamba's recipe
_base_ = ['./_base_/upernet_ade20k_512x512_160k.py']
model = dict(
    backbone=dict(type='EfficientVMambaBackbone', model_name='efficientvmamba_base', drop_path_rate=0.1),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))

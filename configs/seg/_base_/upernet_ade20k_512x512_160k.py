# UperNet (+ FCN auxiliary head on output 2) on ADE20K, 512x512 crops, 160k iterations: mmseg's Swin recipe, which the
# official VMamba segmentation configs inherit unchanged (segmentation/configs/vssm1/*.py):
# AdamW lr 6e-5, betas (0.9, 0.999), weight decay 0.01 (none on keys containing 'norm'), LinearLR warmup for 1500
# iterations from 1e-6, then PolyLR (power 1) to 0; batch 2 per GPU (official runs: 8 GPUs), SyncBN in the heads.
# Per-model files set the backbone and the head input channels. Data root: tools/mm_train.py --data-root.
_base_ = ['mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py']
custom_imports = dict(imports=['vmamba.adapters'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='VMambaBackbone',
        model_name='vmamba_tiny_s1l8',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        pretrained=None,  # converted classification weights: --cfg-options model.backbone.pretrained=PATH
    ),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))

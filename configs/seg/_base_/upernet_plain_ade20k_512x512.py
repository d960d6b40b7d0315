# Shared by the plain (Vim / LBVim) UperNet configs: the backbone is built for 512x512 position embeddings (classification
# weights are resampled on load; other sizes are resampled on the fly), tested with 512x512 sliding windows, stride 341
# (the official Vim and LBVim setting).
_base_ = ['./upernet_ade20k_512x512_160k.py']
model = dict(
    backbone=dict(_delete_=True, type='VimBackbone', model_name='vim_tiny_patch16_224', img_size=512,
                  drop_path_rate=0.1, pretrained=None),
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341)))

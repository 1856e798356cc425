# ZSSeg's stage (b) model (zero_shot_maskformer_R101c): ResNet-101 with the deep stem and
# multi-grid (1, 2, 4) last stage, frozen BN as detectron2's, ImageNet-normalised input;
# MaskFormer proposal head (100 queries, 6 decoder layers) whose queries reach text space
# through a 2-layer MLP; text features of the stage-(a) prompt through CLIP ViT-B/16 and
# the CLIP crop ensemble at test time (crops re-normalised with CLIP's statistics).
_base_ = ['./models/maskformer_proposal_head.py']
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],  # ImageNet, for the backbone
    bgr_to_rgb=True, pad_val=0, seg_pad_val=255, size=(512, 512),
    test_cfg=dict(size_divisor=32))
model = dict(
    type='ZSSegSegmentor',
    data_preprocessor=data_preprocessor,
    seen_classes=None,  # set by the dataset config, as decode_head.num_classes and its class weights
    ensemble_lambda=0.7,
    mask_threshold=0.5,
    text_encoder=dict(type='POMPTextEncoder', dataset_name=None, clip_model='ViT-B-16',
                      clip_pretrained='openai', prompt=None, init_words=None),
    # detectron2's DeepLab R-103 as zsseg builds it: deep stem 64-64-128 (STEM_OUT_CHANNELS 128),
    # stride in the 3x3 (STRIDE_IN_1X1 False: style 'pytorch'), res5 stride 2 with dilations
    # 1, 2, 4 (RES5_MULTI_GRID), frozen BN (RESNETS.NORM FrozenBN), no frozen stage (FREEZE_AT 0);
    # weights: detectron2://DeepLab/R-103.pkl through `python -m pomp_seg.zsseg_checkpoint backbone`
    backbone=dict(
        type='ResNetV1c', depth=101, num_stages=4, out_indices=(0, 1, 2, 3), stem_channels=128,
        dilations=(1, 1, 1, 1), strides=(1, 2, 2, 2), multi_grid=(1, 2, 4),
        norm_cfg=dict(type='BN', requires_grad=False), norm_eval=True, style='pytorch',
        contract_dilation=True, frozen_stages=-1,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/R-103_mmseg.pth')),
    decode_head=dict(
        embed_dims=512, embed_layers=2, embed_hidden_dims=1024,
        in_channels=[256, 512, 1024, 2048], in_index=[0, 1, 2, 3], feat_channels=256,
        out_channels=256, num_queries=100,
        pixel_decoder=dict(norm_cfg=dict(type='GN', num_groups=32)),
        enforce_decoder_input_project=False,
        positional_encoding=dict(num_feats=128, normalize=True),
        transformer_decoder=dict(num_layers=6, layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=256, num_heads=8, attn_drop=0.1, proj_drop=0.1),
            cross_attn_cfg=dict(embed_dims=256, num_heads=8, attn_drop=0.1, proj_drop=0.1),
            ffn_cfg=dict(embed_dims=256, feedforward_channels=2048, ffn_drop=0.1)))),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
# AdamW 1e-4, backbone x0.1, no decay on norms and query embeddings, full-model gradient
# clipping at 0.01, polynomial decay (power 0.9) to 0: ZSSeg's WarmupPolyLR without warm-up.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    clip_grad=dict(max_norm=0.01, norm_type=2),
    paramwise_cfg=dict(norm_decay_mult=0.0,
                       custom_keys={'backbone': dict(lr_mult=0.1), 'query_embed': dict(decay_mult=0.0)}))
max_iters = 20000
param_scheduler = [dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=max_iters, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=5000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=5000),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False))

# Stage (b) on the synthetic world: a tiny MaskFormer-style proposal network trained on the
# seen classes, text features from the stage-(a) prompt, CLIP crop ensemble at test time.
_base_ = ['./_base_/datasets/world_seg.py', './_base_/clip_preprocessor.py',
          'mmseg::_base_/default_runtime.py', './_base_/models/maskformer_proposal_head.py']
dims = 32
model = dict(
    type='ZSSegSegmentor',
    data_preprocessor={{_base_.data_preprocessor}},
    seen_classes={{_base_.data_root}},
    # λ: 0.7 (VOC) left the query classifier's confident seen scores winning on unseen objects
    # for one of two seeds (unseen mIoU 23.6 / 0.5); 0.9 gave 19.7 / 14.7 (world val split)
    ensemble_lambda=0.9,
    min_crop_size=64,  # keep object size: the world CLIP reads 'small' / 'large' from pixel size
    text_encoder=dict(
        type='POMPTextEncoder',
        vocabulary={{_base_.data_root}},
        clip_model='pomp-world',
        clip_pretrained='pomp_world/weights/pomp_world_clip.pt',
        prompt='work_dirs/zsseg-prompt_world/prompt.pth',  # stage (a) output
        init_words=None),
    backbone=dict(
        type='ResNetV1c', depth=18, stem_channels=16, base_channels=16, num_stages=4,
        out_indices=(0, 1, 2, 3), norm_cfg=dict(type='BN', requires_grad=True), style='pytorch'),
    decode_head=dict(
        embed_dims=64,  # text embedding size of the CLIP (pomp-world: 64, ViT-B/16: 512)
        embed_layers=1,  # a linear query-to-text map (ZSSeg: 2-layer MLP) for this tiny head
        num_classes=_base_.num_seen,
        in_channels=[16, 32, 64, 128], in_index=[0, 1, 2, 3],
        feat_channels=dims, out_channels=dims, num_queries=10,
        pixel_decoder=dict(norm_cfg=dict(type='GN', num_groups=8)),
        enforce_decoder_input_project=True,
        positional_encoding=dict(num_feats=dims // 2, normalize=True),
        transformer_decoder=dict(num_layers=2, layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=dims, num_heads=4, attn_drop=0.0, proj_drop=0.0),
            cross_attn_cfg=dict(embed_dims=dims, num_heads=4, attn_drop=0.0, proj_drop=0.0),
            ffn_cfg=dict(embed_dims=dims, feedforward_channels=2 * dims, ffn_drop=0.0))),
        loss_cls=dict(class_weight=[1.0] * _base_.num_seen + [0.1])),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=4e-3, weight_decay=1e-4),
                     clip_grad=dict(max_norm=1.0, norm_type=2))
max_iters = 600
train_dataloader = dict(batch_size=4)
param_scheduler = [dict(type='PolyLR', eta_min=1e-5, power=0.9, begin=0, end=max_iters, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=2),
    visualization=dict(type='SegVisualizationHook', draw=False))
env_cfg = dict(cudnn_benchmark=False)

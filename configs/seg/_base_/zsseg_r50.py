# ZSSeg-style stage (b) at full size: ResNet-50 + MaskFormer proposal head (100 queries),
# text features of the stage-(a) prompt through CLIP ViT-B/16, CLIP crop ensemble at test.
custom_imports = dict(imports=['pomp_seg'], allow_failed_imports=False)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[122.770938, 116.7460125, 104.09373615],
    std=[68.5005327, 66.6321579, 70.32316305],
    bgr_to_rgb=True, pad_val=0, seg_pad_val=255, size=(512, 512))
num_seen = 15
model = dict(
    type='ZSSegSegmentor',
    data_preprocessor=data_preprocessor,
    seen_classes=None,  # set by the dataset config
    ensemble_lambda=0.7,
    text_encoder=dict(type='POMPTextEncoder', dataset_name=None, clip_model='ViT-B-16',
                      clip_pretrained='openai', prompt=None, init_words=None),
    backbone=dict(
        type='ResNet', depth=50, num_stages=4, out_indices=(0, 1, 2, 3), dilations=(1, 1, 1, 1),
        strides=(1, 2, 2, 2), norm_cfg=dict(type='SyncBN', requires_grad=True), norm_eval=True,
        style='pytorch', init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50')),
    decode_head=dict(
        type='MaskProposalHead', embed_dims=512, temperature=100.0, num_classes=num_seen,
        in_channels=[256, 512, 1024, 2048], in_index=[0, 1, 2, 3], feat_channels=256,
        out_channels=256, num_queries=100,
        pixel_decoder=dict(type='mmdet.PixelDecoder', norm_cfg=dict(type='GN', num_groups=32),
                           act_cfg=dict(type='ReLU')),
        enforce_decoder_input_project=False,
        positional_encoding=dict(num_feats=128, normalize=True),
        transformer_decoder=dict(
            return_intermediate=True, num_layers=6,
            layer_cfg=dict(
                self_attn_cfg=dict(embed_dims=256, num_heads=8, attn_drop=0.1, proj_drop=0.1,
                                   dropout_layer=None, batch_first=True),
                cross_attn_cfg=dict(embed_dims=256, num_heads=8, attn_drop=0.1, proj_drop=0.1,
                                    dropout_layer=None, batch_first=True),
                ffn_cfg=dict(embed_dims=256, feedforward_channels=2048, num_fcs=2,
                             act_cfg=dict(type='ReLU', inplace=True), ffn_drop=0.1,
                             dropout_layer=None, add_identity=True)),
            init_cfg=None),
        loss_cls=dict(type='mmdet.CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0,
                      reduction='mean', class_weight=[1.0] * num_seen + [0.1]),
        loss_mask=dict(type='mmdet.FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                       reduction='mean', loss_weight=20.0),
        loss_dice=dict(type='mmdet.DiceLoss', use_sigmoid=True, activate=True, reduction='mean',
                       naive_dice=True, eps=1.0, loss_weight=1.0),
        train_cfg=dict(
            assigner=dict(type='mmdet.HungarianAssigner', match_costs=[
                dict(type='mmdet.ClassificationCost', weight=1.0),
                dict(type='mmdet.FocalLossCost', weight=20.0, binary_input=True),
                dict(type='mmdet.DiceCost', weight=1.0, pred_act=True, eps=1.0)]),
            sampler=dict(type='mmdet.MaskPseudoSampler'))),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))

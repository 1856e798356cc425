# The MaskFormer proposal head every stage-(b) model shares (mmseg's MaskFormerHead with
# text-embedding classes, pomp_seg.MaskProposalHead): MaskFormer's losses and matcher,
# the decoder layers' fixed parts. A model file sets the sizes; a dataset config sets
# num_classes and loss_cls.class_weight from its num_seen; the dataset file imports pomp_seg.
model = dict(decode_head=dict(
    type='MaskProposalHead', temperature=100.0,
    pixel_decoder=dict(type='mmdet.PixelDecoder', act_cfg=dict(type='ReLU')),
    transformer_decoder=dict(
        return_intermediate=True,
        layer_cfg=dict(
            self_attn_cfg=dict(dropout_layer=None, batch_first=True),
            cross_attn_cfg=dict(dropout_layer=None, batch_first=True),
            ffn_cfg=dict(num_fcs=2, act_cfg=dict(type='ReLU', inplace=True), dropout_layer=None,
                         add_identity=True)),
        init_cfg=None),
    loss_cls=dict(type='mmdet.CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0, reduction='mean'),
    loss_mask=dict(type='mmdet.FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                   reduction='mean', loss_weight=20.0),
    loss_dice=dict(type='mmdet.DiceLoss', use_sigmoid=True, activate=True, reduction='mean',
                   naive_dice=True, eps=1.0, loss_weight=1.0),
    train_cfg=dict(
        assigner=dict(type='mmdet.HungarianAssigner', match_costs=[
            dict(type='mmdet.ClassificationCost', weight=1.0),
            dict(type='mmdet.FocalLossCost', weight=20.0, binary_input=True),
            dict(type='mmdet.DiceCost', weight=1.0, pred_act=True, eps=1.0)]),
        sampler=dict(type='mmdet.MaskPseudoSampler'))))

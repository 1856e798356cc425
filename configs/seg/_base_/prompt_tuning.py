# Stage (a) without the dataset: CLIP ViT-B/16, the POMP release prompt, SGD on the ctx only.
custom_imports = dict(imports=['pomp_seg'], allow_failed_imports=False)
model = dict(
    type='PromptTuner', class_split=None, clip_model='ViT-B-16', clip_pretrained='openai',
    prompt='checkpoints/pomp_vit_b16_in21k.pth.tar',
    data_preprocessor=dict(type='SegDataPreProcessor',
                           mean=[122.770938, 116.7460125, 104.09373615],
                           std=[68.5005327, 66.6321579, 70.32316305], bgr_to_rgb=True,
                           pad_val=0, seg_pad_val=255, size=(512, 512)))
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.002, momentum=0.9))
param_scheduler = [dict(type='CosineAnnealingLR', T_max=2000, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=2000, val_interval=10 ** 9)
custom_hooks = [dict(type='SavePromptHook')]

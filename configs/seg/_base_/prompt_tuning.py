# Stage (a) without the dataset, ZSSeg's zero_shot_proposal_classification_learn_prompt: CLIP
# ViT-B/16 and the POMP release prompt; ZSSeg's (image, class) records (the dataset configs
# wrap their set in ClassRecordDataset, SAMPLE_PER_CLASS records per seen class), each
# cropped from the full image for its class (any non-empty mask: min_pixels=1), a
# random-resized crop of its box, the rest of the crop filled with the mean; SGD lr 0.02,
# momentum 0.9, weight decay 5e-4, batch 32 crops (4 records x 8 GPUs), 100 iterations at
# 0.005x the lr, cosine decay. crops_per_image=1 applies when records are off
# (train_dataloader.dataset.sample_per_class=None: one crop of a random seen class per image).
custom_imports = dict(imports=['pomp_seg'], allow_failed_imports=False)
model = dict(
    type='PromptTuner', class_split=None, clip_model='ViT-B-16', clip_pretrained='openai',
    prompt='checkpoints/pomp_vit_b16_in21k.pth.tar',
    min_pixels=1, crops_per_image=1, random_resized_crop=dict(scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)),
    data_preprocessor=dict(type='SegDataPreProcessor',
                           mean=[122.770938, 116.7460125, 104.09373615],
                           std=[68.5005327, 66.6321579, 70.32316305], bgr_to_rgb=True,
                           pad_val=0, seg_pad_val=255, size_divisor=32))
full_image_pipeline = [  # no resize: crops come from the full image
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
optim_wrapper = dict(type='OptimWrapper',
                     optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=5e-4))
max_iters = 3200
param_scheduler = [
    dict(type='ConstantLR', factor=0.005, begin=0, end=100, by_epoch=False),
    dict(type='CosineAnnealingLR', T_max=max_iters, begin=0, end=max_iters, eta_min=0.0, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=10 ** 9)
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=1000),
                     logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
                     visualization=dict(type='SegVisualizationHook', draw=False))
custom_hooks = [dict(type='SavePromptHook')]

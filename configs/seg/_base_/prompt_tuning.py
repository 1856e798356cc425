# Stage (a) without the dataset, ZSSeg's zero_shot_proposal_classification_learn_prompt: CLIP
# ViT-B/16 and the POMP release prompt; ZSSeg's (image, class) records (a stage-(a) config
# wraps its dataset's training splits in ClassRecordDataset, sample_per_class records per seen
# class), each cut by RecordMaskCrop as ZSSeg's mapper cuts it (the mask's box, a random-resized
# crop to 244 x 224, the mask resized nearest; a view without the class is replaced by another
# record), flipped, then filled outside the mask with CLIP's mean in normalised units
# (fill='normalised_mean', ZSSeg's light grey; fill='mean' is the mean colour) and classified at
# that size, logits at ZSSeg's fixed temperature 100. SGD lr 0.02, momentum 0.9, weight
# decay 5e-4, batch 32 views (4 records x 8 GPUs), 100 iterations at 0.005x the lr, cosine decay.
_base_ = ['./clip_preprocessor.py']
model = dict(
    type='PromptTuner', class_split=None, clip_model='ViT-B-16', clip_pretrained='openai',
    prompt='checkpoints/pomp_vit_b16_in21k.pth.tar',
    min_pixels=1, crop_in_pipeline=True, fill='normalised_mean', temperature=100.0,
    data_preprocessor=_base_.data_preprocessor)
record_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RecordMaskCrop', size=(244, 224), scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), drop_empty=True),
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

# Stage (a) on the synthetic world: tune the prompt on GT masked crops of seen classes.
# The tuned prompt is written to <work_dir>/prompt.pth.
# Whole images (every seen crop of 8 scenes a step), not ZSSeg's per-class records: the
# world's 120 training scenes hold only 21-32 records per seen class, so a cap of 32 or 128
# would drop none, and batches of records would cut the crops per step from ~27 to 8 (the
# measured world figures use this setting; ClassRecordDataset with sample_per_class=-1
# would give the records).
_base_ = ['./_base_/datasets/world_seg.py', './_base_/clip_preprocessor.py',
          'mmseg::_base_/default_runtime.py']
model = dict(
    type='PromptTuner',
    class_split={{_base_.data_root}},  # the folder of classes.json
    clip_model='pomp-world',
    clip_pretrained='pomp_world/weights/pomp_world_clip.pt',
    prompt=None,  # a POMP prompt file; None = initialise from init_words
    init_words='a photo of a',
    min_crop_size=64,  # keep object size: the world CLIP reads 'small' / 'large' from pixel size
    fill='mean', temperature=None,  # the mean colour and CLIP's logit scale, as the world figures were measured
    data_preprocessor={{_base_.data_preprocessor}})
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.002, momentum=0.9))
param_scheduler = [dict(type='CosineAnnealingLR', T_max=60, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=60, val_interval=1000000)
val_dataloader = val_cfg = val_evaluator = test_dataloader = test_cfg = test_evaluator = None
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=30),
    visualization=dict(type='SegVisualizationHook', draw=False))
custom_hooks = [dict(type='SavePromptHook')]
env_cfg = dict(cudnn_benchmark=False)

# Stage (b) on COCO-Stuff 164K (156 seen / 15 unseen), ZSSeg's zero_shot_maskformer_R101c_bs32_60k:
# 640-px crops and test size, 60k iterations at batch 32 (4 images x 8 GPUs), queries and
# crops classified with the stage-(a) prompt; λ = 0.8.
_base_ = ['mmseg::_base_/datasets/coco-stuff164k.py', 'mmseg::_base_/default_runtime.py',
          './_base_/zsseg_r101c.py']
crop_size = (640, 640)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomChoiceResize', scales=[int(640 * x * 0.1) for x in range(5, 16)],
         resize_type='ResizeShortestEdge', max_size=2560),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=1.0),
    dict(type='PhotoMetricDistortion'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeShortestEdge', scale=640, max_size=2560),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
# drop_all_ignore: images whose labels are all unseen / unlabelled are left out, as ZSSeg's
# prepare_coco_stuff_164k_sem_seg.py writes no annotation for them; listing 118k annotations
# takes minutes per process: class_count_file=PATH caches the lists (shared with stage (a))
train_dataloader = dict(batch_size=4, dataset=dict(type='ZeroShotCOCOStuffDataset', ignore_unseen=True,
                                                   drop_all_ignore=True, class_count_file=None,
                                                   pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(type='ZeroShotCOCOStuffDataset', pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='SeenUnseenIoUMetric')
test_evaluator = val_evaluator
model = dict(
    data_preprocessor=dict(size=crop_size),
    seen_classes='ZeroShotCOCOStuffDataset', ensemble_lambda=0.8,
    text_encoder=dict(dataset_name='ZeroShotCOCOStuffDataset',
                      prompt='work_dirs/zsseg-prompt_coco-stuff164k/prompt.pth'),  # stage (a)
    decode_head=dict(num_classes=156, loss_cls=dict(class_weight=[1.0] * 156 + [0.1])))
max_iters = 60000
param_scheduler = [dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=max_iters, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=5000)

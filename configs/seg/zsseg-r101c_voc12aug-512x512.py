# Stage (b) on Pascal VOC 2012 (15 seen / 5 unseen), ZSSeg's zero_shot_maskformer_R101c_bs16_20k:
# the 10,582-image trainaug set (mmseg's aug layout: SegmentationClass train.txt +
# SegmentationClassAug aug.txt), unseen pixels ignored; 20k iterations at batch 16
# (2 images x 8 GPUs); queries classified with the hand template "a sculpture of a {}.",
# crops with the stage-(a) prompt (ZSSeg's separate region adapter); λ = 0.7.
_base_ = ['mmseg::_base_/datasets/pascal_voc12_aug.py', 'mmseg::_base_/default_runtime.py',
          './_base_/zsseg_r101c.py']
crop_size = (512, 512)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomChoiceResize', scales=[int(640 * x * 0.1) for x in range(5, 16)],
         resize_type='ResizeShortestEdge', max_size=2048),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=1.0),
    dict(type='PhotoMetricDistortion'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeShortestEdge', scale=512, max_size=2048),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
# drop_all_ignore: images of unseen classes and background only are left out, as ZSSeg's
# prepare_voc_sem_seg.py writes no annotation for them
voc_train = dict(type='ZeroShotVOCDataset', ignore_unseen=True, drop_all_ignore=True,
                 data_root={{_base_.data_root}}, pipeline=train_pipeline)
train_dataloader = dict(
    batch_size=2,
    dataset=dict(type='ConcatDataset', datasets=[
        dict(voc_train, data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'),
             ann_file='ImageSets/Segmentation/train.txt'),
        dict(voc_train, data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClassAug'),
             ann_file='ImageSets/Segmentation/aug.txt')]))
val_dataloader = dict(dataset=dict(type='ZeroShotVOCDataset', pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='SeenUnseenIoUMetric')
test_evaluator = val_evaluator
model = dict(
    seen_classes='ZeroShotVOCDataset', ensemble_lambda=0.7,
    text_encoder=dict(dataset_name='ZeroShotVOCDataset', templates=['a sculpture of a {}.']),
    region_text_encoder=dict(type='POMPTextEncoder',
                             prompt='work_dirs/zsseg-prompt_voc12aug/prompt.pth'),  # stage (a)
    decode_head=dict(num_classes=15, loss_cls=dict(class_weight=[1.0] * 15 + [0.1])))

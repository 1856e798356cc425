# Pascal VOC 2012 trainaug with ZSSeg's 15 seen / 5 unseen split (voc-11k-15), in mmseg's aug
# layout (SegmentationClass train.txt + SegmentationClassAug aug.txt), unseen pixels ignored
# in training. The class facts both stages read (num_seen, sample_per_class), the training
# splits (stage (a) wraps them in ClassRecordDataset) and ZSSeg's stage-(b) loaders: short edge
# 320-960 px, 512-px crops, test short edge 512.
_base_ = ['mmseg::_base_/datasets/pascal_voc12_aug.py', './zsseg_augmentation.py']
custom_imports = dict(imports=['pomp_seg'], allow_failed_imports=False)
dataset_type = 'ZeroShotVOCDataset'
num_seen = 15
sample_per_class = 128  # stage (a): ZSSeg's SAMPLE_PER_CLASS
crop_size = (512, 512)
sizes = dict(RandomChoiceResize=dict(max_size=2048), RandomCrop=dict(crop_size=crop_size),
             ResizeShortestEdge=dict(scale=512, max_size=2048))
train_pipeline = [dict(t, **sizes.get(t['type'], {})) for t in _base_.zsseg_train_pipeline]
test_pipeline = [dict(t, **sizes.get(t['type'], {})) for t in _base_.zsseg_test_pipeline]
train_datasets = [
    dict(type=dataset_type, ignore_unseen=True, data_root=_base_.data_root, ann_file='ImageSets/Segmentation/train.txt',
         data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass')),
    dict(type=dataset_type, ignore_unseen=True, data_root=_base_.data_root, ann_file='ImageSets/Segmentation/aug.txt',
         data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClassAug'))]
# drop_all_ignore: images of unseen classes and background only are left out, as ZSSeg's
# prepare_voc_sem_seg.py writes no annotation for them
train_dataloader = dict(batch_size=2, dataset=dict(type='ConcatDataset', datasets=[
    dict(d, drop_all_ignore=True, pipeline=train_pipeline) for d in train_datasets]))
val_dataloader = dict(dataset=dict(type=dataset_type, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='SeenUnseenIoUMetric')
test_evaluator = val_evaluator

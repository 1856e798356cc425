# Stage (a) on Pascal VOC trainaug (seen classes): tune the POMP prompt on masked crops,
# 3,200 iterations as ZSSeg, on its 128 (image, class) records per seen class drawn once
# with seed 0 (SAMPLE_PER_CLASS; sample_per_class=None trains on whole images instead).
# Output: <work_dir>/prompt.pth, the region prompt of stage (b).
_base_ = ['mmseg::_base_/datasets/pascal_voc12_aug.py', 'mmseg::_base_/default_runtime.py',
          './_base_/prompt_tuning.py']
model = dict(class_split='ZeroShotVOCDataset')
voc_train = dict(type='ZeroShotVOCDataset', ignore_unseen=True, data_root={{_base_.data_root}},
                 pipeline={{_base_.full_image_pipeline}})
train_dataloader = dict(
    batch_size=4,
    dataset=dict(_delete_=True, type='ClassRecordDataset', sample_per_class=128, seed=0, replace=True,
                 dataset=dict(type='ConcatDataset', datasets=[
                     dict(voc_train, data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'),
                          ann_file='ImageSets/Segmentation/train.txt'),
                     dict(voc_train, data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClassAug'),
                          ann_file='ImageSets/Segmentation/aug.txt')])))
val_dataloader = None
val_cfg = None
val_evaluator = None
test_dataloader = None
test_cfg = None
test_evaluator = None

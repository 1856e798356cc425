# Stage (a) on Pascal VOC trainaug (seen classes): tune the POMP prompt on masked crops,
# 3,200 iterations as ZSSeg. Output: <work_dir>/prompt.pth, the region prompt of stage (b).
_base_ = ['mmseg::_base_/datasets/pascal_voc12_aug.py', 'mmseg::_base_/default_runtime.py',
          './_base_/prompt_tuning.py']
model = dict(class_split='ZeroShotVOCDataset')
voc_train = dict(type='ZeroShotVOCDataset', ignore_unseen=True, data_root={{_base_.data_root}},
                 pipeline={{_base_.full_image_pipeline}})
train_dataloader = dict(
    batch_size=4,
    dataset=dict(type='ConcatDataset', datasets=[
        dict(voc_train, data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'),
             ann_file='ImageSets/Segmentation/train.txt'),
        dict(voc_train, data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClassAug'),
             ann_file='ImageSets/Segmentation/aug.txt')]))
val_dataloader = None
val_cfg = None
val_evaluator = None
test_dataloader = None
test_cfg = None
test_evaluator = None

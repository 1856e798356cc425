# Stage (a) on Pascal VOC trainaug (seen classes): tune the POMP prompt on masked views,
# 3,200 iterations as ZSSeg, on its 128 (image, class) records per seen class drawn once
# with seed 0 (SAMPLE_PER_CLASS). Output: <work_dir>/prompt.pth, the region prompt of stage (b).
_base_ = ['./_base_/datasets/voc12aug_zsseg.py', 'mmseg::_base_/default_runtime.py',
          './_base_/prompt_tuning.py']
model = dict(class_split=_base_.dataset_type)
train_dataloader = dict(batch_size=4, dataset=dict(
    _delete_=True, type='ClassRecordDataset', sample_per_class=_base_.sample_per_class, seed=0, replace=True,
    dataset=dict(type='ConcatDataset', datasets=[dict(d, pipeline=_base_.record_pipeline)
                                                 for d in _base_.train_datasets])))
val_dataloader = val_cfg = val_evaluator = test_dataloader = test_cfg = test_evaluator = None

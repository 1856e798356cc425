# Stage (a) on COCO-Stuff 164K (seen classes): tune the POMP prompt on masked views,
# 16,000 iterations as ZSSeg, on its 32 (image, class) records per seen class drawn once
# with seed 0 (SAMPLE_PER_CLASS); the label lists come from the dataset's class_count_file.
# Output: <work_dir>/prompt.pth, read by stage (b).
_base_ = ['./_base_/datasets/coco-stuff164k_zsseg.py', 'mmseg::_base_/default_runtime.py',
          './_base_/prompt_tuning.py']
model = dict(class_split=_base_.dataset_type)
train_dataloader = dict(batch_size=4, dataset=dict(
    _delete_=True, type='ClassRecordDataset', sample_per_class=_base_.sample_per_class, seed=0, replace=True,
    class_count_file=_base_.class_count_file,
    dataset=dict(_base_.train_datasets[0], pipeline=_base_.record_pipeline)))
max_iters = 16000
param_scheduler = [_base_.param_scheduler[0], dict(_base_.param_scheduler[1], T_max=max_iters, end=max_iters)]
train_cfg = dict(max_iters=max_iters)
val_dataloader = val_cfg = val_evaluator = test_dataloader = test_cfg = test_evaluator = None

# Stage (a) on COCO-Stuff 164K (seen classes): tune the POMP prompt on masked crops,
# 16,000 iterations as ZSSeg, on its 32 (image, class) records per seen class drawn once
# with seed 0 (SAMPLE_PER_CLASS; sample_per_class=None trains on whole images instead).
# Listing the classes of 118k annotations takes minutes: class_count_file caches them.
# Output: <work_dir>/prompt.pth, read by stage (b).
_base_ = ['mmseg::_base_/datasets/coco-stuff164k.py', 'mmseg::_base_/default_runtime.py',
          './_base_/prompt_tuning.py']
model = dict(class_split='ZeroShotCOCOStuffDataset')
train_dataloader = dict(
    batch_size=4,
    dataset=dict(_delete_=True, type='ClassRecordDataset', sample_per_class=32, seed=0, replace=True,
                 class_count_file=None,
                 dataset=dict(type='ZeroShotCOCOStuffDataset', ignore_unseen=True, data_root={{_base_.data_root}},
                              data_prefix=dict(img_path='images/train2017', seg_map_path='annotations/train2017'),
                              pipeline={{_base_.full_image_pipeline}})))
max_iters = 16000
param_scheduler = [
    dict(type='ConstantLR', factor=0.005, begin=0, end=100, by_epoch=False),
    dict(type='CosineAnnealingLR', T_max=max_iters, begin=0, end=max_iters, eta_min=0.0, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=10 ** 9)
val_dataloader = None
val_cfg = None
val_evaluator = None
test_dataloader = None
test_cfg = None
test_evaluator = None

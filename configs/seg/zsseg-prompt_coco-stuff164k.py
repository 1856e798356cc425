# Stage (a) on COCO-Stuff 164K (seen classes): tune the POMP prompt on masked crops,
# 16,000 iterations as ZSSeg. Output: <work_dir>/prompt.pth, read by stage (b).
_base_ = ['mmseg::_base_/datasets/coco-stuff164k.py', 'mmseg::_base_/default_runtime.py',
          './_base_/prompt_tuning.py']
model = dict(class_split='ZeroShotCOCOStuffDataset')
train_dataloader = dict(batch_size=4, dataset=dict(type='ZeroShotCOCOStuffDataset', ignore_unseen=True,
                                                   pipeline={{_base_.full_image_pipeline}}))
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

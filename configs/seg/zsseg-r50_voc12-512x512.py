# Stage (b) on Pascal VOC 2012 (15 seen / 5 unseen), λ = 0.7.
_base_ = ['mmseg::_base_/datasets/pascal_voc12.py', 'mmseg::_base_/default_runtime.py',
          'mmseg::_base_/schedules/schedule_20k.py', './_base_/zsseg_r50.py']
model = dict(seen_classes='ZeroShotVOCDataset', ensemble_lambda=0.7,
             text_encoder=dict(dataset_name='ZeroShotVOCDataset',
                               prompt='work_dirs/zsseg-prompt_voc12/prompt.pth'),
             decode_head=dict(num_classes=15, loss_cls=dict(class_weight=[1.0] * 15 + [0.1])))
train_dataloader = dict(dataset=dict(type='ZeroShotVOCDataset', ignore_unseen=True))
val_dataloader = dict(dataset=dict(type='ZeroShotVOCDataset'))
test_dataloader = val_dataloader
optim_wrapper = dict(_delete_=True, type='OptimWrapper',
                     optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4),
                     clip_grad=dict(max_norm=0.01, norm_type=2),
                     paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.1)}))
val_evaluator = dict(type='SeenUnseenIoUMetric')
test_evaluator = val_evaluator

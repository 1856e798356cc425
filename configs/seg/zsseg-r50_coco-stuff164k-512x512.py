# Stage (b) on COCO-Stuff 164K (156 seen / 15 unseen), λ = 0.8.
_base_ = ['mmseg::_base_/datasets/coco-stuff164k.py', 'mmseg::_base_/default_runtime.py',
          'mmseg::_base_/schedules/schedule_80k.py', './_base_/zsseg_r50.py']
model = dict(seen_classes='ZeroShotCOCOStuffDataset', ensemble_lambda=0.8,
             text_encoder=dict(dataset_name='ZeroShotCOCOStuffDataset',
                               prompt='work_dirs/zsseg-prompt_coco-stuff164k/prompt.pth'),
             decode_head=dict(num_classes=156, loss_cls=dict(class_weight=[1.0] * 156 + [0.1])))
train_dataloader = dict(dataset=dict(type='ZeroShotCOCOStuffDataset', ignore_unseen=True))
val_dataloader = dict(dataset=dict(type='ZeroShotCOCOStuffDataset'))
test_dataloader = val_dataloader
optim_wrapper = dict(_delete_=True, type='OptimWrapper',
                     optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4),
                     clip_grad=dict(max_norm=0.01, norm_type=2),
                     paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.1)}))
val_evaluator = dict(type='SeenUnseenIoUMetric')
test_evaluator = val_evaluator

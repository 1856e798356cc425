# Stage (a) on coco-stuff164k: tune the POMP prompt on GT masked crops of the seen classes.
# Output: <work_dir>/prompt.pth, read by stage (b).
_base_ = ['mmseg::_base_/datasets/coco-stuff164k.py', 'mmseg::_base_/default_runtime.py',
          './_base_/prompt_tuning.py']
model = dict(class_split='ZeroShotCOCOStuffDataset')
train_dataloader = dict(batch_size=8, dataset=dict(type='ZeroShotCOCOStuffDataset', ignore_unseen=True))
val_dataloader = None
val_cfg = None
val_evaluator = None
test_dataloader = None
test_cfg = None
test_evaluator = None
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=1000),
                     visualization=dict(type='SegVisualizationHook', draw=False))

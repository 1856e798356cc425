# The synthetic world's segmentation scenes (pomp_world; tools/make_world.py).
# Training sees seen-class labels only: unseen pixels are ignored when loaded.
custom_imports = dict(imports=['pomp_seg'], allow_failed_imports=False)
dataset_type = 'WorldSegDataset'
data_root = 'output/world/segmentation'
num_seen = 15  # seen classes of the world's default 20-class segmentation vocabulary
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=8, num_workers=0,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, ignore_unseen=True,
                 data_prefix=dict(img_path='img_dir/train', seg_map_path='ann_dir/train'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4, num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root,
                 data_prefix=dict(img_path='img_dir/val', seg_map_path='ann_dir/val'),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='SeenUnseenIoUMetric')
test_evaluator = val_evaluator

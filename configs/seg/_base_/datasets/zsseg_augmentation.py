# ZSSeg's stage-(b) pipelines (its Base-VOC11K-20 / COCO-Stuff configs): the short edge a random
# choice of 320-960 px, a random crop, colour distortion, flip; tests resize the short edge.
# The sizes are a dataset's: its file fills the None values, keyed by transform type.
zsseg_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomChoiceResize', scales=[int(640 * x * 0.1) for x in range(5, 16)],
         resize_type='ResizeShortestEdge', max_size=None),
    dict(type='RandomCrop', crop_size=None, cat_max_ratio=1.0),
    dict(type='PhotoMetricDistortion'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
zsseg_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeShortestEdge', scale=None, max_size=None),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]

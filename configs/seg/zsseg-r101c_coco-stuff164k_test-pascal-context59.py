# Cross-dataset test (ZSSeg's pcontext-59/cross_dataset_test_only): the COCO-Stuff model on
# PASCAL Context-59 at 512 px; every class is ensembled as unseen, λ = 0.4, mask threshold 0.5.
# Test only (tools/test_seg.py).
_base_ = ['./zsseg-r101c_coco-stuff164k-640x640.py']
model = dict(text_encoder=dict(dataset_name='pascal_context_59'), ensemble_seen=False,
             ensemble_lambda=0.4, mask_threshold=0.5)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeShortestEdge', scale=512, max_size=2048),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
test_dataloader = dict(
    batch_size=1, num_workers=4,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(_delete_=True, type='PascalContextDataset59', data_root='data/VOCdevkit/VOC2010',
                 reduce_zero_label=True, ann_file='ImageSets/SegmentationContext/val.txt',
                 data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClassContext'),
                 pipeline=test_pipeline))

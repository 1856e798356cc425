# Cross-dataset test (ZSSeg's ade20k-150/cross_dataset_test_only): the COCO-Stuff model on
# ADE20K-150 at 512 px; every class is ensembled as unseen, λ = 0.5, mask threshold 0.4.
# Test only (tools/test_seg.py).
_base_ = ['./zsseg-r101c_coco-stuff164k-640x640.py']
model = dict(text_encoder=dict(dataset_name='ade'), ensemble_seen=False, ensemble_lambda=0.5,
             mask_threshold=0.4)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeShortestEdge', scale=512, max_size=2048),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
test_dataloader = dict(
    batch_size=1, num_workers=4,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(_delete_=True, type='ADE20KDataset', data_root='data/ade/ADEChallengeData2016',
                 reduce_zero_label=True,
                 data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
                 pipeline=test_pipeline))

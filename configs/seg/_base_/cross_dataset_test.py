# ZSSeg's cross-dataset tests ({ade20k-150,pcontext-59}/cross_dataset_test_only): the COCO-Stuff
# model on another dataset at 512 px, every class ensembled as unseen. Test only
# (tools/test_seg.py); a test config sets the dataset, its vocabulary, λ and the mask threshold.
_base_ = ['../zsseg-r101c_coco-stuff164k-640x640.py']
model = dict(ensemble_seen=False)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeShortestEdge', scale=512, max_size=2048),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
test_dataloader = dict(batch_size=1, num_workers=4, sampler=dict(type='DefaultSampler', shuffle=False),
                       dataset=dict(_delete_=True, reduce_zero_label=True, pipeline=test_pipeline))

# Cross-dataset test: the COCO-Stuff model on PASCAL Context-59 (test only).
_base_ = ['./zsseg-r50_coco-stuff164k-512x512.py']
model = dict(text_encoder=dict(dataset_name='pascal_context_59'))
test_dataloader = dict(
    batch_size=1, num_workers=4,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(_delete_=True, type='PascalContextDataset59', data_root='data/VOCdevkit/VOC2010',
                 reduce_zero_label=True, ann_file='ImageSets/SegmentationContext/val.txt',
                 data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClassContext'),
                 pipeline={{_base_.test_pipeline}}))

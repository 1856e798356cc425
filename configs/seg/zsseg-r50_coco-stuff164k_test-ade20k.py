# Cross-dataset test: the COCO-Stuff model on ADE20K-150. Classes in COCO-Stuff's seen set
# are ensembled as seen, the others as unseen. Test only (tools/test_seg.py).
_base_ = ['./zsseg-r50_coco-stuff164k-512x512.py']
model = dict(text_encoder=dict(dataset_name='ade'))
test_dataloader = dict(
    batch_size=1, num_workers=4,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(_delete_=True, type='ADE20KDataset', data_root='data/ade/ADEChallengeData2016',
                 reduce_zero_label=True,
                 data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
                 pipeline={{_base_.test_pipeline}}))

# Cross-dataset test (ZSSeg's pcontext-59/cross_dataset_test_only): the COCO-Stuff model on
# PASCAL Context-59; λ = 0.4, mask threshold 0.5.
_base_ = ['./_base_/cross_dataset_test.py']
model = dict(text_encoder=dict(dataset_name='pascal_context_59'), ensemble_lambda=0.4, mask_threshold=0.5)
test_dataloader = dict(dataset=dict(
    type='PascalContextDataset59', data_root='data/VOCdevkit/VOC2010',
    ann_file='ImageSets/SegmentationContext/val.txt',
    data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClassContext')))

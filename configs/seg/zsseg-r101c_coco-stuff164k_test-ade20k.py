# Cross-dataset test (ZSSeg's ade20k-150/cross_dataset_test_only): the COCO-Stuff model on
# ADE20K-150; λ = 0.5, mask threshold 0.4.
_base_ = ['./_base_/cross_dataset_test.py']
model = dict(text_encoder=dict(dataset_name='ade'), ensemble_lambda=0.5, mask_threshold=0.4)
test_dataloader = dict(dataset=dict(
    type='ADE20KDataset', data_root='data/ade/ADEChallengeData2016',
    data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation')))

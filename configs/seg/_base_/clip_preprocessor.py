# Images normalised with CLIP's statistics: the crop classifier feeds them to CLIP as they are.
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[122.770938, 116.7460125, 104.09373615],
    std=[68.5005327, 66.6321579, 70.32316305],
    bgr_to_rgb=True, pad_val=0, seg_pad_val=255, size_divisor=32)

"""Stage (a)'s record view, ZSSeg's by default (``RecordMaskCrop``: its box with the clipped far
edge, the random-resized crop's fallback, a 244 x 224 view with the mask resized nearest, a view
without the class dropped and another record loaded) and ours as options (``drop_empty=False``,
a square ``size``, ``fill='mean'``), against hand computations."""
import numpy as np
import pytest
import torch
from mmengine.structures import PixelData

from tests.frameworks import require

require("mmseg.models")
from mmcv.transforms import BaseTransform  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmseg.registry import DATASETS, MODELS, TRANSFORMS  # noqa: E402
from mmseg.structures import SegDataSample  # noqa: E402

import pomp_seg  # noqa: E402,F401
from pomp_seg.clip import CLIP_MEAN  # noqa: E402
from pomp_seg.crop_classifier import encode_any_size  # noqa: E402
from pomp_seg.record_crop import RecordMaskCrop, random_resized_box, record_box  # noqa: E402
from tests.seg.seg_fixtures import make_voc  # noqa: E402


@pytest.fixture(autouse=True)
def mmseg_scope():
    init_default_scope("mmseg")


def test_the_box_loses_the_last_row_and_column_as_zssegs():
    mask = np.zeros((9, 12), bool)
    mask[2:5, 3:7] = True
    assert record_box(mask) == (2, 3, 3, 4)  # inside the image: the tight box
    mask[6:9, 8:12] = True  # now reaches the last row and column
    assert record_box(mask) == (2, 3, 8 - 2, 11 - 3)  # ends at H - 1 / W - 1, not H / W
    one = np.zeros((9, 12), bool)
    one[8, 11] = True
    assert record_box(one) == (8, 11, 1, 1)  # never empty
    with pytest.raises(ValueError, match="non-empty mask"):
        record_box(np.zeros((3, 3), bool))


def test_the_random_crop_falls_back_to_the_centre_at_the_nearest_aspect():
    # 10 x 100 at full scale fits no aspect in [3/4, 4/3]: ten failed tries, then the centre
    # cut to aspect 4/3: h = 10, w = round(10 * 4 / 3) = 13, left = (100 - 13) // 2
    assert random_resized_box(10, 100, (1.0, 1.0), (3 / 4, 4 / 3), np.random.RandomState(0)) == (0, 43, 10, 13)
    assert random_resized_box(100, 10, (1.0, 1.0), (3 / 4, 4 / 3), np.random.RandomState(0)) == (43, 0, 13, 10)
    top, left, h, w = random_resized_box(40, 30, (0.5, 0.5), (1.0, 1.0), np.random.RandomState(3))
    assert h == w == round((0.5 * 1200) ** 0.5) and 0 <= top <= 40 - h and 0 <= left <= 30 - w


def _results(h=12, w=16):
    rng = np.random.default_rng(0)
    seg = np.full((h, w), 255, np.uint8)
    seg[2:10, 4:12] = 3
    seg[2:6, 4:8] = 1
    return dict(img=rng.integers(0, 255, (h, w, 3), dtype=np.uint8), gt_seg_map=seg,
                seg_fields=["gt_seg_map"], category_id=3)


def test_the_view_is_height_by_width_with_the_labels_resized_nearest():
    results = _results()
    window = results["gt_seg_map"][2:10, 4:12].copy()
    out = RecordMaskCrop(size=(4, 2)).view(results, (0, 0, 8, 8))  # the whole box, 8 x 8 -> 4 x 2
    assert out["img"].shape == (4, 2, 3) and out["img_shape"] == (4, 2)
    assert np.array_equal(out["gt_seg_map"], window[0::2, 0::4])  # torch's nearest: floor(i * scale)
    flat = _results()
    flat["img"][:] = 77
    assert (RecordMaskCrop(size=(244, 224)).view(flat, (1, 2, 5, 6))["img"] == 77).all()  # bilinear keeps a constant


def test_a_view_without_the_class_is_dropped_unless_asked_to_keep_it():
    assert RecordMaskCrop().view(_results(), (0, 0, 4, 4)) is None  # the box's corner holds class 1 only
    kept = RecordMaskCrop(drop_empty=False).view(_results(), (0, 0, 4, 4))
    assert kept["img_shape"] == (244, 224) and (kept["gt_seg_map"] == 1).all()
    assert RecordMaskCrop().view(_results(), (4, 4, 4, 4))["img_shape"] == (244, 224)
    with pytest.raises(KeyError, match="ClassRecordDataset"):
        RecordMaskCrop()({k: v for k, v in _results().items() if k != "category_id"})


@TRANSFORMS.register_module()
class _DropT1(BaseTransform):
    """Drops image t1, as RecordMaskCrop drops a view that missed its class."""

    def transform(self, results):
        return None if results["img_path"].endswith("t1.jpg") else results


def test_a_dropped_record_is_replaced_by_another(tmp_path):
    voc = make_voc(tmp_path, train={"t1": [1], "t2": [2, 3]}, aug={}, val={"v1": [1]})
    ds = DATASETS.build(dict(
        type="ClassRecordDataset", sample_per_class=-1, dataset=dict(
            type="ZeroShotVOCDataset", data_root=str(voc), ann_file="ImageSets/Segmentation/train.txt",
            data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClass"),
            pipeline=[dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"), dict(type="_DropT1"),
                      dict(type="PackSegInputs")])))
    assert ds.records == [(0, 0), (1, 1), (1, 2)]  # t1: aeroplane; t2: bicycle, bird
    np.random.seed(0)
    for _ in range(5):
        item = ds[0]  # t1's record: always replaced by one of t2's
        assert item["data_samples"].metainfo["img_path"].endswith("t2.jpg")
        assert item["data_samples"].metainfo["category_id"] in (1, 2)
    ds.max_refetch = 0
    with pytest.raises(RuntimeError, match="returned None for 1 records"):
        ds[0]


def _tuner(**kw):
    return MODELS.build(dict(type="PromptTuner", class_split="ZeroShotVOCDataset", clip_model="pomp-tiny",
                             clip_pretrained=None, init_words="a photo of a", min_pixels=2, **kw))


def _view_batch():
    inputs = torch.randn(2, 3, 40, 36)  # padded: the views are 30 x 28 and 40 x 36
    samples = []
    for shape, record, pixels in (((30, 28), 4, 5), ((40, 36), 6, 1)):
        seg = torch.full((1, 40, 36), 255)
        seg[0, 3:8, 2] = record
        seg[0, 10, 10:10 + pixels] = 9
        meta = dict(img_shape=shape, category_id=record)
        samples.append(SegDataSample(gt_sem_seg=PixelData(data=seg), metainfo=meta))
    samples[1].gt_sem_seg.data[0, 3:8, 2] = 255
    samples[1].gt_sem_seg.data[0, 20, 20] = 6  # one pixel < min_pixels: no view
    return inputs, samples


@pytest.mark.parametrize("fill,value", [("normalised_mean", [c / 255 for c in CLIP_MEAN]), ("mean", [0.0] * 3)])
def test_views_are_filled_outside_their_class_at_their_own_size(fill, value):
    model = _tuner(crop_in_pipeline=True, fill=fill)
    inputs, samples = _view_batch()
    crops, logits, labels = model.crop_logits(inputs, samples)
    assert crops.shape == (1, 3, 30, 28) and logits.shape == (1, 15) and labels == [4]
    clip = model.crops.to_clip(inputs[0, :, :30, :28])
    mask = samples[0].gt_sem_seg.data[0, :30, :28] == 4
    expected = torch.where(mask, clip, torch.tensor(value).view(3, 1, 1))
    torch.testing.assert_close(crops[0], expected)
    text = torch.nn.functional.normalize(model.text(model.prompt, [model.classes[i] for i in model.seen]), dim=-1)
    feats = torch.nn.functional.normalize(encode_any_size(model.crops.visual, crops), dim=-1)
    torch.testing.assert_close(logits, model.crops.temperature * feats @ text.t())


def test_a_view_needs_a_record_and_the_fill_a_known_name():
    model = _tuner(crop_in_pipeline=True)
    inputs, samples = _view_batch()
    samples[0] = SegDataSample(gt_sem_seg=samples[0].gt_sem_seg, metainfo=dict(img_shape=(30, 28)))
    with pytest.raises(ValueError, match="crop_in_pipeline=True needs ClassRecordDataset records"):
        model.crop_logits(inputs, samples)
    with pytest.raises(ValueError, match="fill must be one of"):
        _tuner(fill="grey")


def test_box_crops_take_the_fill_too():
    model = _tuner(min_crop_size=0)
    seg = torch.full((1, 20, 20), 255)
    seg[0, 4:12, 6:10] = 0
    seg[0, 4:6, 6:8] = 255  # a hole inside the box: filled
    sample = SegDataSample(gt_sem_seg=PixelData(data=seg))
    crops, _, labels = model.crop_logits(torch.randn(1, 3, 20, 20), [sample])
    assert labels == [0] and crops.shape == (1, 3, 32, 32)
    grey = torch.tensor([c / 255 for c in CLIP_MEAN])
    torch.testing.assert_close(crops[0, :, 0, 0], grey)  # the hole's corner: the fill after the resize


def test_encode_any_size_is_clips_own_at_its_size():
    model = _tuner()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(encode_any_size(model.crops.visual, x), model.crops.visual(x))
    assert encode_any_size(model.crops.visual, torch.randn(2, 3, 40, 32)).shape == (2, 48)

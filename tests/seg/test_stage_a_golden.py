"""Stage (a) against ZSSeg's own code: the view of one (image, class) record and the prompt
learner's logits for it, from ``tests/golden/make_zsseg_stage_a_golden.py`` (ZSSeg's dataset
mapper and ``ProposalClipClassifier``, a tiny random CLIP in OpenAI's layout); pomp_seg's
``RecordMaskCrop`` + ``PromptTuner(crop_in_pipeline=True)`` must give the same to 1e-4, and
changing the fill, the crop geometry or the temperature must not."""
import json

import numpy as np
import pytest
import torch

from tests.frameworks import require

require("mmseg.models")
import open_clip  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmcv.transforms import LoadImageFromFile, RandomFlip  # noqa: E402
from mmseg.datasets.transforms import LoadAnnotations, PackSegInputs  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402

import pomp_seg  # noqa: E402,F401
from pomp_seg.clip import CLIP_MEAN, CLIP_STD  # noqa: E402
from pomp_seg.record_crop import RecordMaskCrop, random_resized_box, record_box  # noqa: E402
from tests.seg.seg_fixtures import ROOT  # noqa: E402

GOLDEN = ROOT / "tests" / "fixtures" / "golden" / "zsseg_stage_a"
TINY = "pomp-zsseg-stage-a"


@pytest.fixture(scope="module")
def golden():
    if not (GOLDEN / "golden.pt").is_file():
        pytest.fail(f"{GOLDEN} is missing: run tests/golden/make_zsseg_stage_a_golden.py --zsseg PATH")
    init_default_scope("mmseg")
    open_clip.add_model_config(GOLDEN / f"{TINY}.json")  # registered under the file's stem
    record = json.loads((GOLDEN / "record.json").read_text())
    return record, torch.load(GOLDEN / "golden.pt")


def _tuner(**kw):
    return MODELS.build(dict(
        type="PromptTuner", class_split=str(GOLDEN / "classes.json"), clip_model=TINY,
        clip_pretrained=str(GOLDEN / "clip.pt"), prompt=str(GOLDEN / "prompt.pth"), min_pixels=1,
        crop_in_pipeline=True, data_preprocessor=dict(
            type="SegDataPreProcessor", mean=CLIP_MEAN, std=CLIP_STD, bgr_to_rgb=True, pad_val=0,
            seg_pad_val=255, size_divisor=32), **kw))


def _loaded(record):
    results = dict(img_path=str(GOLDEN / "image.png"), seg_map_path=str(GOLDEN / "ann.png"),
                   reduce_zero_label=False, seg_fields=[], category_id=record["category_id"],
                   label_map={c: 255 for c in json.loads((GOLDEN / "classes.json").read_text())["unseen"]})
    return LoadAnnotations()(LoadImageFromFile()(results))


def _ours(record, draws, crop=None, **tuner):
    view = RecordMaskCrop(size=tuple(draws["size"]) if crop is None else crop)
    results = view.view(_loaded(record), tuple(draws["crop"]))
    if draws["flip"]:
        results = RandomFlip(prob=1.0, direction="horizontal")(results)
    packed = PackSegInputs()(results)
    packed["data_samples"].set_metainfo(dict(category_id=record["category_id"]))  # as ClassRecordDataset does
    model = _tuner(**tuner)
    batch = model.data_preprocessor(dict(inputs=[packed["inputs"]], data_samples=[packed["data_samples"]]))
    crops, logits, labels = model.crop_logits(batch["inputs"], batch["data_samples"])
    return crops[0], logits[0], model.loss(batch["inputs"], batch["data_samples"])["loss_prompt"]


def test_the_view_and_logits_are_zssegs(golden):
    record, out = golden
    kept = record["kept"]
    assert kept["size"] == [244, 224] and record["min_size_train"] == [224, 244]  # (h, w) from its (w, h)
    view, logits, loss = _ours(record, kept)
    assert view.shape == out["view"].shape == (3, 244, 224)
    torch.testing.assert_close(view, out["view"], atol=1e-4, rtol=0)
    torch.testing.assert_close(logits, out["logits"], atol=1e-4, rtol=0)
    torch.testing.assert_close(loss, out["loss"], atol=1e-4, rtol=0)


def test_the_box_and_draws_are_zssegs(golden):
    record, _ = golden
    ann = _loaded(record)["gt_seg_map"]
    for draws in (record["kept"], record["missed"]):
        assert list(record_box(ann == record["category_id"])) == draws["box"]
        rng = np.random.RandomState(draws["seed"])
        rng.choice((1.0, 1.0))  # CropImageWithMask draws its expand ratio first
        assert list(random_resized_box(*draws["box"][2:], (0.08, 1.0), (3 / 4, 4 / 3), rng)) == draws["crop"]
        assert (rng.uniform() < 0.5) == draws["flip"]  # then detectron2's RandomFlip


def test_a_view_that_misses_the_class_is_dropped_as_zssegs(golden):
    record, _ = golden
    missed = record["missed"]
    assert RecordMaskCrop().view(_loaded(record), tuple(missed["crop"])) is None
    kept = RecordMaskCrop(drop_empty=False).view(_loaded(record), tuple(missed["crop"]))
    assert kept["img_shape"] == (244, 224) and not (kept["gt_seg_map"] == record["category_id"]).any()


@pytest.mark.parametrize("change", ["fill", "geometry", "temperature"])
def test_our_former_fill_geometry_or_temperature_breaks_the_golden(golden, change):
    record, out = golden
    if change == "fill":
        view, logits, _ = _ours(record, record["kept"], fill="mean")
        assert view.shape == out["view"].shape
        assert (view - out["view"]).abs().max() > 0.1
    elif change == "geometry":
        view, logits, _ = _ours(record, record["kept"], crop=(224, 224))
        assert view.shape != out["view"].shape
    else:  # CLIP's logit scale, 100.03 in float16, for ZSSeg's fixed 100
        view, logits, _ = _ours(record, record["kept"], temperature=None)
        torch.testing.assert_close(view, out["view"], atol=1e-4, rtol=0)
    assert (logits - out["logits"]).abs().max() > 1e-3

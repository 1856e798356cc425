"""pomp_seg.metric and pomp_seg.crop_classifier: seen / unseen mIoU, hIoU and per-class IoU
against a hand count over several images (absent classes, a class predicted but never
present, ignored pixels), and the masked crops / CLIP crop probabilities against a hand
slicing of non-square, off-centre masks."""
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.frameworks import require

require("mmseg.models")
from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.structures import PixelData  # noqa: E402
from mmseg.registry import METRICS  # noqa: E402
from mmseg.structures import SegDataSample  # noqa: E402

from pomp_seg.clip import CLIP_MEAN, CLIP_STD  # noqa: E402
from pomp_seg.crop_classifier import CLIPCropClassifier, encode_any_size, masked_crops  # noqa: E402
from pomp_seg.metric import harmonic_iou  # noqa: E402

CLASSES = ("a", "b", "c", "d", "e", "f")
# image 1 (2 x 5) and image 2 (3 x 3); 255 = ignored. Class e is nowhere (absent from
# both: excluded from the means), class f only predicted (IoU 0: counts).
GT = [np.array([[0, 0, 1, 1, 2], [2, 3, 3, 255, 0]]), np.array([[1, 1, 1], [3, 3, 0], [255, 2, 2]])]
PRED = [np.array([[0, 1, 1, 1, 2], [2, 2, 3, 0, 0]]), np.array([[1, 5, 1], [3, 0, 0], [2, 2, 2]])]


@pytest.fixture(autouse=True)
def mmseg_scope():
    init_default_scope("mmseg")


def hand_iou():
    """Intersections and unions summed over the images (not a mean of per-image IoUs)."""
    inter, union = np.zeros(len(CLASSES)), np.zeros(len(CLASSES))
    for gt, pred in zip(GT, PRED):
        keep = gt != 255
        for c in range(len(CLASSES)):
            g, p = (gt == c) & keep, (pred == c) & keep
            inter[c] += (g & p).sum()
            union[c] += (g | p).sum()
    with np.errstate(invalid="ignore"):
        return inter / union * 100


def run_metric(**kw):
    metric = METRICS.build(dict(type="SeenUnseenIoUMetric", **kw))
    metric.dataset_meta = dict(classes=CLASSES, unseen_classes=("c", "f"))
    samples = []
    for gt, pred in zip(GT, PRED):
        s = SegDataSample()
        s.pred_sem_seg = PixelData(data=torch.from_numpy(pred)[None])
        s.gt_sem_seg = PixelData(data=torch.from_numpy(gt)[None])
        samples.append(s.to_dict())
    metric.process([], samples)
    return metric.compute_metrics(metric.results)


def test_seen_unseen_and_harmonic_iou_over_images():
    res = run_metric()
    iou = hand_iou()
    assert math.isnan(iou[4]) and iou[5] == 0
    seen = np.nanmean(iou[[0, 1, 3, 4]])  # e absent: not a zero
    unseen = np.mean(iou[[2, 5]])  # f predicted only: a zero
    assert res["mIoU_seen"] == pytest.approx(seen, abs=0.006)
    assert res["mIoU_unseen"] == pytest.approx(unseen, abs=0.006)
    assert res["hIoU"] == pytest.approx(2 * seen * unseen / (seen + unseen), abs=0.006)
    for name, v in zip(CLASSES, iou):
        if not math.isnan(v):
            assert res[f"IoU.{name}"] == pytest.approx(v, abs=0.006)
    assert math.isnan(res["IoU.e"])
    assert res["mIoU"] == pytest.approx(np.nanmean(iou), abs=0.006)


def test_reported_values_are_rounded_to_two_decimals_and_absent_classes_raise_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0 / 0 of the absent class and an empty seen list: silent
        res = run_metric()
        none_seen = run_metric(unseen_classes=list(CLASSES))
    iou = hand_iou()
    seen, unseen = np.nanmean(iou[[0, 1, 3, 4]]), np.mean(iou[[2, 5]])
    assert res["mIoU_seen"] == round(seen, 2) and res["mIoU_unseen"] == round(unseen, 2)
    assert res["hIoU"] == round(2 * seen * unseen / (seen + unseen), 2)
    assert round(seen, 3) != round(seen, 2)
    other = run_metric(unseen_classes=["b", "f"])
    seen, unseen = np.nanmean(iou[[0, 2, 3, 4]]), np.mean(iou[[1, 5]])  # 63.33, 33.33
    assert other["mIoU_unseen"] == round(unseen, 2) and round(unseen, 3) != round(unseen, 2)
    assert other["hIoU"] == round(2 * seen * unseen / (seen + unseen), 2)
    assert res["IoU.b"] == round(iou[1], 2) and round(iou[1], 3) != round(iou[1], 2)
    assert math.isnan(none_seen["mIoU_seen"])


def test_unseen_classes_given_by_name_override_the_dataset():
    res = run_metric(unseen_classes=["a", "d"])
    iou = hand_iou()
    assert res["mIoU_unseen"] == pytest.approx(np.mean(iou[[0, 3]]), abs=0.006)
    assert res["mIoU_seen"] == pytest.approx(np.nanmean(iou[[1, 2, 4, 5]]), abs=0.006)
    with pytest.raises(ValueError, match=r"\['zebra'\]"):
        run_metric(unseen_classes=["a", "zebra"])


def test_all_classes_unseen_gives_a_nan_seen_miou():
    res = run_metric(unseen_classes=list(CLASSES))
    assert math.isnan(res["mIoU_seen"])
    assert res["mIoU_unseen"] == pytest.approx(np.nanmean(hand_iou()), abs=0.006)


def test_unseen_classes_absent_everywhere_give_nan_unseen_miou_and_hiou_without_a_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy's "Mean of empty slice"
        res = run_metric(unseen_classes=["e"])  # e occurs in no label and no prediction
    assert math.isnan(res["mIoU_unseen"]) and math.isnan(res["hIoU"])  # not measured, not 0
    assert res["mIoU_seen"] == pytest.approx(np.mean(hand_iou()[[0, 1, 2, 3, 5]]), abs=0.006)


@pytest.mark.parametrize("seen, unseen", [(float("nan"), 40.0), (40.0, float("nan")), (0.0, float("nan"))])
def test_harmonic_iou_of_an_unmeasured_group_is_nan(seen, unseen):
    assert math.isnan(harmonic_iou(seen, unseen))


@pytest.mark.parametrize("seen, unseen, want", [(60.0, 20.0, 30.0), (20.0, 60.0, 30.0), (50.0, 50.0, 50.0),
                                                (0.0, 0.0, 0.0), (0.0, 40.0, 0.0), (10.0, 90.0, 18.0),
                                                (0.3, 0.6, 0.4), (0.5, 0.0, 0.0)])
def test_harmonic_iou_table(seen, unseen, want):
    assert harmonic_iou(seen, unseen) == pytest.approx(want)


# ------------------------------------------------------------------ crops
def ramp(h, w):
    return torch.arange(3 * h * w, dtype=torch.float32).reshape(3, h, w) / 10 - 5


def test_masked_crop_is_the_masked_tight_box_resized():
    img = ramp(9, 13)
    mask = torch.zeros(9, 13, dtype=torch.bool)
    mask[2:5, 3:10] = True  # rows 2-4, columns 3-9: a 3 x 7 box
    mask[3, 5] = False
    mask[6, 8] = True  # one pixel further down: the box is rows 2-6
    crop = masked_crops(img, mask[None], 7, mode="bilinear")[0]
    box = (img * mask)[:, 2:7, 3:10]
    torch.testing.assert_close(crop, F.interpolate(box[None], size=(7, 7), mode="bilinear",
                                                   align_corners=False)[0])
    near = masked_crops(img, mask[None], 5, mode="nearest")[0]  # default bicubic elsewhere
    torch.testing.assert_close(near, F.interpolate(box[None], size=(5, 5), mode="nearest")[0])


def test_masked_crop_at_its_own_size_keeps_the_pixels():
    img = ramp(8, 11)
    mask = torch.zeros(8, 11, dtype=torch.bool)
    mask[1:6, 4:9] = True  # 5 x 5
    crop = masked_crops(img, mask[None], 5)[0]
    torch.testing.assert_close(crop, img[:, 1:6, 4:9])


def test_masked_crops_fill_the_outside_with_a_per_channel_colour_and_skip_empty_masks():
    img = ramp(9, 13)
    masks = torch.zeros(3, 9, 13, dtype=torch.bool)
    masks[1, 2:7, 3:10] = True  # mask 0 is empty: it must not stop the later ones
    masks[1, 4, 5] = False
    masks[2, 0:3, 0:2] = True
    fill = torch.tensor([0.5, -1.0, 2.0])
    crops = masked_crops(img, masks, 4, mode="bilinear", fill=fill.double())
    assert crops.dtype == torch.float32  # the fill takes the image's type
    f = fill.view(3, 1, 1)
    torch.testing.assert_close(crops[0], f.expand(3, 4, 4))  # empty: all fill
    for i, (y0, y1, x0, x1) in ((1, (2, 7, 3, 10)), (2, (0, 3, 0, 2))):
        filled = torch.where(masks[i], img, f)[:, y0:y1, x0:x1]
        want = F.interpolate(filled[None], size=(4, 4), mode="bilinear", align_corners=False)[0]
        torch.testing.assert_close(crops[i], want)
    plain = masked_crops(img, masks, 4, mode="bilinear")
    assert plain[0].abs().sum() == 0
    torch.testing.assert_close(plain[1], F.interpolate((img * masks[1])[None, :, 2:7, 3:10], size=(4, 4),
                                                       mode="bilinear", align_corners=False)[0])


def test_min_crop_size_reaches_past_the_bottom_right_corner():
    img = ramp(10, 12)
    mask = torch.zeros(10, 12, dtype=torch.bool)
    mask[9, 10:12] = True  # 1 x 2 in the corner: 6 rows and 5 columns to grow, half past the edge
    crop = masked_crops(img, mask[None], 7, min_crop_size=7)[0]
    canvas = torch.zeros(3, 30, 32)
    canvas[:, 10:20, 10:22] = img * mask
    y0, x0 = 9 - 6 // 2, 10 - 5 // 2
    torch.testing.assert_close(crop, canvas[:, 10 + y0:10 + y0 + 7, 10 + x0:10 + x0 + 7])


class PatchVisual(torch.nn.Module):
    """A stand-in ViT: patch means (4 x 3 patches of the channel mean) weight the positional
    embedding's patch rows, plus its class row, so a resized embedding shows in the output."""
    grid_size = (2, 3)
    patch_size = (4, 3)

    def __init__(self):
        super().__init__()
        self.positional_embedding = torch.nn.Parameter(
            torch.arange(7 * 5, dtype=torch.float32).reshape(7, 5).sin())

    def forward(self, x):
        tokens = F.avg_pool2d(x.mean(1, keepdim=True), (4, 3)).flatten(1)  # [N, gh * gw], row-major
        return tokens @ self.positional_embedding[1:] + self.positional_embedding[0]


def test_encode_any_size_resizes_the_patch_grid_of_the_positional_embedding():
    vis = PatchVisual()
    g = torch.Generator().manual_seed(4)
    own = torch.randn(2, 3, 8, 9, generator=g)
    torch.testing.assert_close(encode_any_size(vis, own), vis(own))
    pos = vis.positional_embedding.detach().clone()
    for h, w in ((12, 6), (13, 17)):  # a 3 x 2 grid (transposed) and 3 x 5 (remainders cut off)
        x = torch.randn(2, 3, h, w, generator=g)
        gh, gw = h // 4, w // 3
        cols = []
        for d in range(5):  # each channel's 2 x 3 grid, resized on its own
            grid = pos[1:, d].reshape(1, 1, 2, 3)
            cols.append(F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False).flatten())
        resized = torch.stack(cols, dim=1)
        tokens = F.avg_pool2d(x.mean(1, keepdim=True), (4, 3)).flatten(1)
        with torch.no_grad():
            got = encode_any_size(vis, x)
        torch.testing.assert_close(got, tokens @ resized + pos[0])
    torch.testing.assert_close(vis.positional_embedding.detach(), pos)  # the tower keeps its own


@pytest.mark.parametrize("min_size", [6, 7])
def test_min_crop_size_grows_the_box_around_its_centre(min_size):
    img = ramp(10, 12)
    mask = torch.zeros(10, 12, dtype=torch.bool)
    mask[0:2, 7:10] = True  # 2 x 3 at the top edge
    crop = masked_crops(img, mask[None], min_size, min_crop_size=min_size)[0]
    canvas = torch.zeros(3, 30, 32)  # the image inside a zero border of 10
    canvas[:, 10:20, 10:22] = img * mask
    gy, gx = min_size - 2, min_size - 3
    y0, x0 = 0 - gy // 2, 7 - gx // 2
    want = canvas[:, 10 + y0:10 + y0 + min_size, 10 + x0:10 + x0 + min_size]
    torch.testing.assert_close(crop, want)  # no resize: the grown box is min_size square


class MeanVisual(torch.nn.Module):
    """A stand-in CLIP visual tower: per-channel means of the crop, mapped to 4 dims."""
    image_size = (6, 6)

    def __init__(self):
        super().__init__()
        self.proj = torch.tensor([[1.0, 0.0, 2.0, -1.0], [0.0, 1.0, -1.0, 0.5], [0.5, -2.0, 0.0, 1.0]])

    def forward(self, x):
        return x.mean(dim=(2, 3)) @ self.proj


def test_crop_classifier_renormalises_crops_and_softmaxes_over_classes():
    mean, std = (120.0, 110.0, 100.0), (60.0, 55.0, 50.0)
    clf = CLIPCropClassifier(MeanVisual(), logit_scale=20.0, input_mean=mean, input_std=std)
    img = ramp(9, 12) / 5
    masks = torch.zeros(3, 9, 12, dtype=torch.bool)
    masks[0, 1:4, 2:9] = True
    masks[2, 5:9, 0:3] = True  # mask 1 is empty
    text = F.normalize(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.3, -1.0, 0.0, 2.0]]), dim=1)
    probs, valid = clf(img, masks, text)
    assert valid.tolist() == [True, False, True]
    raw = img * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    clip_img = (raw - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)
    rows = []
    for m in masks[[0, 2]]:
        crop = masked_crops(clip_img, m[None], 6)
        f = F.normalize(MeanVisual()(crop), dim=1)
        rows.append((20.0 * f @ text.t()).softmax(dim=1)[0])
    torch.testing.assert_close(probs, torch.stack(rows), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(probs.sum(1), torch.ones(2))
    hot = CLIPCropClassifier(MeanVisual(), logit_scale=20.0, temperature=50.0, input_mean=mean, input_std=std)
    assert hot.temperature == 50.0 and not torch.allclose(hot(img, masks, text)[0], probs)
    none, valid = clf(img, torch.zeros(2, 9, 12, dtype=torch.bool), text)
    assert none.shape == (0, 3) and not valid.any()


def test_crop_classifier_default_statistics_are_clips():
    clf = CLIPCropClassifier(MeanVisual(), logit_scale=10.0)
    x = ramp(4, 5)
    torch.testing.assert_close(clf.to_clip(x), x)  # CLIP-normalised in, unchanged
    assert clf.input_size == 6 and clf.min_crop_size == 0 and clf.temperature == 10.0


def test_crop_classifier_passes_its_min_crop_size_and_fill_and_keeps_no_buffers_in_its_state():
    mean, std = (120.0, 110.0, 100.0), (60.0, 55.0, 50.0)
    clf = CLIPCropClassifier(MeanVisual(), logit_scale=20.0, min_crop_size=8, input_mean=mean, input_std=std)
    img = ramp(9, 12) / 5
    masks = torch.zeros(2, 9, 12, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True  # 2 x 3: grown to 8 x 8
    masks[1, 0:9, 3:12] = True
    fill = torch.tensor([0.2, -0.4, 0.1])
    torch.testing.assert_close(clf.crops(img, masks), masked_crops(clf.to_clip(img), masks, 6, 8))
    torch.testing.assert_close(clf.crops(img, masks, fill=fill), masked_crops(clf.to_clip(img), masks, 6, 8, fill=fill))
    assert not torch.allclose(clf.crops(img, masks), masked_crops(clf.to_clip(img), masks, 6))
    assert list(clf.state_dict()) == [k for k in clf.state_dict() if k.startswith("visual.")]
    assert "renorm_scale" not in clf.state_dict() and "renorm_shift" not in clf.state_dict()


@pytest.mark.parametrize("image_size, want", [(7, 7), ((6, 9), 6), ([5, 5], 5)])
def test_crop_classifier_input_size_is_the_towers_height(image_size, want):
    vis = MeanVisual()
    vis.image_size = image_size
    assert CLIPCropClassifier(vis, logit_scale=1.0).input_size == want

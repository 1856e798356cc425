"""pomp_seg.record_crop by value: ZSSeg's record box on non-square masks (the far edge clipped
to H - 1 / W - 1, never empty), the random-resized crop replayed draw by draw from the same
numpy generator (ten tries, then the centre at the nearest allowed aspect; what it leaves of
the generator for the flip that follows), the view's window, its PIL-bilinear image and
nearest label maps, the defaults and the error messages in full."""
import math

import numpy as np
import pytest
from PIL import Image

from tests.frameworks import require

require("mmseg.models")
from pomp_seg.record_crop import RecordMaskCrop, random_resized_box, record_box, resize_view  # noqa: E402

RATIO = (3 / 4, 4 / 3)


@pytest.mark.parametrize("shape, rows, cols, box", [
    ((7, 15), (1, 4), (10, 14), (1, 10, 3, 4)),  # tight: ends one before H - 1 / W - 1
    ((7, 15), (4, 7), (2, 5), (4, 2, 2, 3)),  # reaches the last row (6): ends at 6, one row lost
    ((7, 15), (0, 3), (9, 15), (0, 9, 3, 5)),  # reaches the last column (14): one column lost
    ((11, 5), (2, 11), (0, 5), (2, 0, 8, 4)),  # both, on a tall image
    ((7, 15), (6, 7), (14, 15), (6, 14, 1, 1)),  # the last pixel alone: 0 x 0 grown to 1 x 1
    ((7, 15), (3, 4), (0, 15), (3, 0, 1, 14)),  # one row, every column
])
def test_record_box_by_hand(shape, rows, cols, box):
    mask = np.zeros(shape, bool)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = True
    assert record_box(mask) == box


def test_record_box_spans_every_part_of_the_mask_and_refuses_an_empty_one():
    mask = np.zeros((9, 13), bool)
    mask[1, 7] = mask[5, 2] = mask[3, 10] = True  # three pixels: rows 1..5, columns 2..10
    assert record_box(mask) == (1, 2, 5, 9)
    with pytest.raises(ValueError, match=r"^record_box needs a non-empty mask: the record's class is not in its "
                                         r"annotation$"):
        record_box(np.zeros((4, 6), bool))


def replay(height, width, scale, ratio, seed):
    """torchvision's RandomResizedCrop rule on numpy draws, by hand: (box, tries, generator left)."""
    rng = np.random.RandomState(seed)
    for tries in range(1, 11):
        area = height * width * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 1 <= w <= width and 1 <= h <= height:
            left = rng.randint(0, width - w + 1)  # ZSSeg draws the left edge first
            top = rng.randint(0, height - h + 1)
            return (top, left, h, w), tries, rng
    return None, 10, rng


@pytest.mark.parametrize("height, width, seed", [(26, 39, 1), (26, 39, 6), (40, 17, 3), (57, 83, 11), (9, 31, 4)])
def test_random_resized_box_replays_the_draws(height, width, seed):
    want, _, left = replay(height, width, (0.08, 1.0), RATIO, seed)
    assert want is not None
    rng = np.random.RandomState(seed)
    assert random_resized_box(height, width, (0.08, 1.0), RATIO, rng) == want
    assert rng.uniform() == left.uniform()  # the next draw (the flip's) is the same


def test_random_resized_box_uses_scale_and_ratio_in_their_order():
    # a narrow scale and ratio window, so a swapped bound or a wrong draw gives another box
    rng = np.random.RandomState(2)
    want, _, _ = replay(50, 70, (0.3, 0.6), (0.9, 1.6), 2)
    assert random_resized_box(50, 70, (0.3, 0.6), (0.9, 1.6), rng) == want
    h, w = want[2:]
    assert 0.3 * 3500 * 0.8 <= h * w <= 0.6 * 3500 * 1.2 and 0.8 <= w / h <= 1.8


def test_an_exact_fit_is_taken_on_the_first_try():
    # scale 1 and aspect 1 on a square: w = h = the side, which fits (<=, not <): top = left = 0
    # after two uniform and two integer draws, not the fallback's twenty uniform draws
    for side in (1, 6):
        rng, after = np.random.RandomState(5), np.random.RandomState(5)
        assert random_resized_box(side, side, (1.0, 1.0), (1.0, 1.0), rng) == (0, 0, side, side)
        after.uniform(), after.uniform(), after.randint(0, 1), after.randint(0, 1)
        assert rng.uniform() == after.uniform()
    # 6 x 9 at scale 1 and aspect 1.5: w = 9, h = 6, both on the edge
    assert random_resized_box(6, 9, (1.0, 1.0), (1.5, 1.5), np.random.RandomState(0)) == (0, 0, 6, 9)


@pytest.mark.parametrize("height, width, scale, ratio, box", [
    (1, 1, 0.1, 1.0, (0, 0, 1, 1)),  # w = h = round(0.32) = 0: the whole pixel
    (1, 10, 0.1, 9.0, (0, 0, 1, 9)),  # w = 3 but h = round(1 / 3) = 0: the centre at aspect 9
    (10, 1, 0.1, 1 / 9, (0, 0, 9, 1)),  # h = 3 but w = 0: the centre at aspect 1 / 9
])
def test_a_zero_sized_draw_is_no_fit(height, width, scale, ratio, box):
    rng, after = np.random.RandomState(0), np.random.RandomState(0)
    assert random_resized_box(height, width, (scale, scale), (ratio, ratio), rng) == box
    after.uniform(size=20)  # ten tries of two draws each, all missed
    assert rng.uniform() == after.uniform()


@pytest.mark.parametrize("height, width, box", [
    (10, 100, (0, 43, 10, 13)),  # too wide: h = 10, w = round(10 * 4 / 3) = 13, centred
    (100, 10, (43, 0, 13, 10)),  # too tall: w = 10, h = round(10 / (3 / 4)) = 13
    (31, 30, (0, 0, 31, 30)),  # an allowed aspect: the whole area
    (11, 60, (0, 22, 11, 15)),  # odd margins: (60 - 15) // 2 = 22
])
def test_the_fallback_is_the_centre_at_the_nearest_aspect(height, width, box):
    # scale 4: no draw fits (w * h = 4 x the area), so the ten tries always fail
    assert random_resized_box(height, width, (4.0, 4.0), RATIO, np.random.RandomState(0)) == box


def test_ten_tries_and_not_eleven():
    # a seed whose first ten draws miss a 10 x 40 area and whose eleventh would fit it
    seed = next(s for s in range(1000) if replay(10, 40, (0.08, 1.0), RATIO, s)[0] is None
                and _fits_eleventh(10, 40, s))
    rng = np.random.RandomState(seed)
    assert random_resized_box(10, 40, (0.08, 1.0), RATIO, rng) == (0, 13, 10, 13)  # the centre, 4/3 wide
    left = np.random.RandomState(seed)
    left.uniform(size=20)
    assert rng.uniform() == left.uniform()


def _fits_eleventh(height, width, seed):
    rng = np.random.RandomState(seed)
    rng.uniform(size=20)
    area = height * width * rng.uniform(0.08, 1.0)
    aspect = math.exp(rng.uniform(math.log(RATIO[0]), math.log(RATIO[1])))
    w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
    return 1 <= w <= width and 1 <= h <= height


@pytest.fixture
def global_numpy_rng():
    """numpy's global generator, restored afterwards (the transform draws from it, as ZSSeg's do)."""
    state = np.random.get_state()
    yield np.random
    np.random.set_state(state)


def test_without_a_generator_the_global_numpy_one_draws(global_numpy_rng):
    global_numpy_rng.seed(7)
    assert random_resized_box(26, 39, (0.08, 1.0), RATIO) == replay(26, 39, (0.08, 1.0), RATIO, 7)[0]


def test_resize_view_is_pil_bilinear_for_the_image_and_torch_nearest_for_the_labels():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (8, 5, 3), dtype=np.uint8)
    seg = np.arange(40, dtype=np.uint8).reshape(8, 5)
    edge = (np.arange(40, dtype=np.int32).reshape(8, 5) * 1000)
    out, maps = resize_view(img, {"gt_seg_map": seg, "gt_edge_map": edge}, (3, 7))
    want = np.asarray(Image.fromarray(img).resize((7, 3), Image.BILINEAR))
    assert out.shape == (3, 7, 3) and np.array_equal(out, want)
    assert not np.array_equal(out, np.asarray(Image.fromarray(img).resize((7, 3), Image.BICUBIC)))
    # nearest: source row floor(i * 8 / 3) = 0, 2, 5; column floor(j * 5 / 7) = 0, 0, 1, 2, 2, 3, 4
    rows, cols = [0, 2, 5], [0, 0, 1, 2, 2, 3, 4]
    assert np.array_equal(maps["gt_seg_map"], seg[np.ix_(rows, cols)]) and maps["gt_seg_map"].dtype == np.uint8
    assert np.array_equal(maps["gt_edge_map"], edge[np.ix_(rows, cols)]) and maps["gt_edge_map"].dtype == np.int32
    assert sorted(maps) == ["gt_edge_map", "gt_seg_map"]


def _record(h=12, w=16):
    """An image whose pixels say where they are, the record's class 3 in rows 2..9, columns 4..11
    (class 1 in its top-left corner) and a second label map."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([yy * 10, xx * 10, (yy + xx) % 7], -1).astype(np.uint8)
    seg = np.full((h, w), 255, np.uint8)
    seg[2:10, 4:12] = 3
    seg[2:6, 4:8] = 1
    other = (yy * w + xx).astype(np.uint8)
    return dict(img=img, gt_seg_map=seg, other_map=other, seg_fields=["gt_seg_map", "other_map"], category_id=3)


def test_the_view_is_the_window_at_the_crop_inside_the_box():
    results = _record()
    img, seg, other = results["img"].copy(), results["gt_seg_map"].copy(), results["other_map"].copy()
    # the box is (2, 4, 8, 8); the crop (3, 1, 5, 6) inside it is rows 5..9, columns 5..10;
    # at its own size the resize keeps it as it is
    out = RecordMaskCrop(size=(5, 6)).view(results, (3, 1, 5, 6))
    assert out is results  # the results dict, updated
    assert np.array_equal(out["img"], img[5:10, 5:11]) and out["img_shape"] == (5, 6)
    assert np.array_equal(out["gt_seg_map"], seg[5:10, 5:11])
    assert np.array_equal(out["other_map"], other[5:10, 5:11])  # every seg field is cut the same


def test_without_seg_fields_only_the_labels_are_cut():
    results = _record()
    del results["seg_fields"]
    seg = results["gt_seg_map"].copy()
    out = RecordMaskCrop(size=(4, 3)).view(results, (4, 5, 4, 3))
    assert np.array_equal(out["gt_seg_map"], seg[6:10, 9:12]) and out["other_map"].shape == (12, 16)


def test_a_view_without_the_class_is_none_and_kept_on_request():
    # the crop (0, 0, 4, 4) is the box's corner, class 1 only
    assert RecordMaskCrop(size=(6, 5)).view(_record(), (0, 0, 4, 4)) is None
    kept = RecordMaskCrop(size=(6, 5), drop_empty=False).view(_record(), (0, 0, 4, 4))
    assert kept["img_shape"] == (6, 5) and (kept["gt_seg_map"] == 1).all()
    one = RecordMaskCrop(size=(6, 5)).view(_record(), (0, 3, 4, 2))  # one column of class 3
    assert one is not None and (one["gt_seg_map"][:, -1] == 3).all()


def test_transform_views_a_random_part_of_the_records_box(global_numpy_rng):
    # a 6 x 9 box, scale 1 and aspect 1.5: the crop is the whole box on the first try
    results = _record()
    results["gt_seg_map"][:] = 255
    results["gt_seg_map"][3:9, 2:11] = 3
    img = results["img"].copy()
    out = RecordMaskCrop(size=(6, 9), scale=(1.0, 1.0), ratio=(1.5, 1.5))(results)
    assert np.array_equal(out["img"], img[3:9, 2:11]) and (out["gt_seg_map"] == 3).all()
    with pytest.raises(KeyError, match=r"^\"RecordMaskCrop crops a record's class: wrap the dataset in "
                                       r"ClassRecordDataset with sample_per_class set \(its items carry "
                                       r"category_id\)\"$"):
        RecordMaskCrop()({k: v for k, v in _record().items() if k != "category_id"})


@pytest.mark.parametrize("seed", [3, 4])
def test_transform_draws_from_the_global_numpy_generator_with_its_scale_and_ratio(global_numpy_rng, seed):
    global_numpy_rng.seed(seed)
    out = RecordMaskCrop(size=(7, 5), scale=(0.2, 0.5), ratio=(0.6, 1.1))(_record())
    top, left, h, w = replay(8, 8, (0.2, 0.5), (0.6, 1.1), seed)[0]  # inside the 8 x 8 box at (2, 4)
    record = _record()
    img = np.asarray(Image.fromarray(record["img"][2 + top:2 + top + h, 4 + left:4 + left + w]).resize((5, 7),
                                                                                                         Image.BILINEAR))
    assert out is not None and np.array_equal(out["img"], img)


def test_defaults_are_zssegs_and_the_repr_names_them():
    t = RecordMaskCrop()
    assert (t.size, t.scale, t.ratio, t.drop_empty) == ((244, 224), (0.08, 1.0), (0.75, 4 / 3), True)
    assert repr(t) == "RecordMaskCrop(size=(244, 224), scale=(0.08, 1.0), ratio=(0.75, 1.3333333333333333), " \
                      "drop_empty=True)"
    t = RecordMaskCrop(size=[20, 30], scale=[0.5, 0.9], ratio=[1, 2], drop_empty=False)
    assert repr(t) == "RecordMaskCrop(size=(20, 30), scale=(0.5, 0.9), ratio=(1, 2), drop_empty=False)"
    out = RecordMaskCrop().view(_record(), (4, 4, 4, 4))
    assert out["img"].shape == (244, 224, 3) and out["gt_seg_map"].shape == (244, 224)

"""pomp_det's key maps and data helpers, by value: Detic's config aliases (table-driven against
their documented targets), the Detic checkpoint key map, the federated weights (images per
class, not boxes), the multi-dataset sampler's weights and repeat factors (Detic's
custom_dataset_dataloader.py formulas) and the per-dataset batches."""
import contextlib
import itertools
import json
import logging
import math

import pytest
import torch

from tests.frameworks import require

require("detectron2")
from pomp_core.durable import atomic_write_json  # noqa: E402
from pomp_det.cfg_loader import get_pomp_cfg  # noqa: E402
from pomp_det.data import category_counts as cc  # noqa: E402
from pomp_det.data.multi_dataset import (GroupedByDataset, MultiDatasetSampler,  # noqa: E402
                                         repeat_factors_from_image_labels)
from pomp_det.detic_checkpoint import EMBEDDINGS_KEY, detic_embeddings, map_keys, our_key  # noqa: E402
from pomp_det.detic_keys import ALIASES, FIXED, flatten, translate  # noqa: E402

pytestmark = pytest.mark.usefixtures("global_rng_kept")  # tests/conftest.py

# ------------------------------------------------------------------ Detic config keys
# Detic's key, a value, and what pomp_det's config must hold (written from Detic's
# defaults.py / ZeroShotClassifier, not from detic_keys.py)
DETIC_KEYS = [
    ("MODEL.ROI_BOX_HEAD.ZEROSHOT_WEIGHT_PATH", "x.npy", {"MODEL.POMP.EMBEDDINGS": "x.npy"}),
    ("MODEL.ROI_BOX_HEAD.ZEROSHOT_WEIGHT_DIM", 1024, {"MODEL.POMP.EMBED_DIM": 1024}),
    ("MODEL.ROI_BOX_HEAD.NORM_TEMP", 30.0, {"MODEL.POMP.TEMPERATURE": 30.0}),
    ("MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE", False, {"MODEL.POMP.USE_SIGMOID_CE": False}),
    ("MODEL.ROI_BOX_HEAD.USE_FED_LOSS", False, {"MODEL.POMP.USE_FED_LOSS": False}),
    ("MODEL.ROI_BOX_HEAD.FED_LOSS_NUM_CAT", 25, {"MODEL.POMP.FED_LOSS_NUM_CLASSES": 25}),
    ("MODEL.ROI_BOX_HEAD.FED_LOSS_FREQ_WEIGHT", 0.25, {"MODEL.POMP.FED_LOSS_FREQ_WEIGHT": 0.25}),
    ("MODEL.ROI_BOX_HEAD.CAT_FREQ_PATH", "c.json", {"MODEL.POMP.CAT_FREQ_PATH": "c.json"}),
    ("MODEL.ROI_BOX_HEAD.MULT_PROPOSAL_SCORE", False, {"MODEL.POMP.MULT_PROPOSAL_SCORE": False}),
    ("MODEL.ROI_BOX_HEAD.IMAGE_LABEL_LOSS", "max_score", {"MODEL.POMP.IMAGE_LABEL_LOSS": "max_score"}),
    ("MODEL.ROI_BOX_HEAD.IMAGE_LOSS_WEIGHT", 0.2, {"MODEL.POMP.IMAGE_LABEL_WEIGHT": 0.2}),
    ("MODEL.ROI_BOX_HEAD.WS_NUM_PROPS", 32, {"MODEL.POMP.IMAGE_LABEL_TOPK": 32}),
    # Detic: a negative USE_BIAS is a learned bias starting there; 0 = none
    ("MODEL.ROI_BOX_HEAD.USE_BIAS", -20.0, {"MODEL.POMP.USE_BIAS": True, "MODEL.POMP.BIAS_INIT": -20.0}),
    ("MODEL.ROI_BOX_HEAD.USE_BIAS", 0.0, {"MODEL.POMP.USE_BIAS": False, "MODEL.POMP.BIAS_INIT": 0.0}),
    ("DATALOADER.DATASET_BS", [8, 32], {"DATALOADER.DATASET_BATCH_SIZE": [8, 32]}),
    ("DATALOADER.DATASET_ANN", ["box", "image"], {"DATALOADER.DATASET_ANN_TYPE": ["box", "image"]}),
    ("WITH_IMAGE_LABELS", True, {"DATALOADER.MULTI_DATASET": True}),
    ("DATALOADER.DATASET_INPUT_SIZE", [640, 320], {"INPUT.DATASET_INPUT_SIZE": [640, 320]}),
    ("DATALOADER.DATASET_INPUT_SCALE", [[0.1, 2.0], [0.5, 1.5]],
     {"INPUT.DATASET_INPUT_SCALE": [[0.1, 2.0], [0.5, 1.5]]}),
    ("DATALOADER.DATASET_MIN_SIZES", [[640, 800], [320, 400]], {"INPUT.DATASET_MIN_SIZE": [[640, 800], [320, 400]]}),
    ("DATALOADER.DATASET_MAX_SIZES", [1333, 667], {"INPUT.DATASET_MAX_SIZE": [1333, 667]}),
    ("MODEL.TEST_CLASSIFIERS", ["a.npy", "b.npy"], {"MODEL.POMP.TEST_VOCABULARIES": ["a.npy", "b.npy"]}),
    ("DATALOADER.SAMPLER_TRAIN", "MultiDatasetSampler", {"DATALOADER.MULTI_DATASET": True}),
    ("DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler",
     {"DATALOADER.SAMPLER_TRAIN": "RepeatFactorTrainingSampler"}),
]


@pytest.mark.parametrize("key, value, want", DETIC_KEYS)
def test_detic_key_means_its_pomp_key(key, value, want):
    assert translate({key: value}) == want
    cfg = get_pomp_cfg()
    for k in want:  # every target exists in pomp_det's config
        node = cfg
        for part in k.split("."):
            node = node[part]


def test_every_alias_is_in_the_table():
    # the table holds every plain rename plus the two keys converted by value
    assert {k for k, _, _ in DETIC_KEYS} - set(ALIASES) == {"MODEL.ROI_BOX_HEAD.USE_BIAS", "DATALOADER.SAMPLER_TRAIN"}
    assert set(ALIASES) <= {k for k, _, _ in DETIC_KEYS}


@pytest.mark.parametrize("key, value", sorted(FIXED.items()))
def test_fixed_detic_keys_pass_at_pomps_value_and_are_refused_otherwise(key, value):
    assert translate({key: value}) == {}
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        translate({key: not value})


def test_other_keys_pass_unchanged_and_custom_aug_is_mapped_or_refused():
    assert translate({"SOLVER.BASE_LR": 0.01, "MODEL.POMP.TEMPERATURE": 5.0}) == {
        "SOLVER.BASE_LR": 0.01, "MODEL.POMP.TEMPERATURE": 5.0}
    assert translate({"INPUT.CUSTOM_AUG": "EfficientDetResizeCrop"}) == {"INPUT.DATASET_AUG": "resize_scale_crop"}
    with pytest.raises(ValueError, match="INPUT.DATASET_AUG takes resize_scale_crop or resize_shortest_edge"):
        translate({"INPUT.CUSTOM_AUG": "DETRCrop"})
    assert flatten({"A": {"B": 1, "C": {"D": [2]}}, "E": 3}) == {"A.B": 1, "A.C.D": [2], "E": 3}


def test_a_detic_yaml_and_opts_load_as_pomp_keys(tmp_path):
    yaml = tmp_path / "detic.yaml"
    yaml.write_text("MODEL:\n  ROI_BOX_HEAD:\n    NORM_TEMP: 20.0\n    USE_BIAS: -4.6\n"
                    "WITH_IMAGE_LABELS: True\n")
    cfg = get_pomp_cfg()
    cfg.merge_from_file(str(yaml))
    cfg.merge_from_list(["MODEL.ROI_BOX_HEAD.WS_NUM_PROPS", "64"])
    p = cfg.MODEL.POMP
    assert (p.TEMPERATURE, p.USE_BIAS, p.BIAS_INIT, p.IMAGE_LABEL_TOPK) == (20.0, True, -4.6, 64)
    assert cfg.DATALOADER.MULTI_DATASET is True


# ------------------------------------------------------------------ Detic checkpoint keys
@pytest.mark.parametrize("detic, ours", [
    ("roi_heads.box_predictor.0.cls_score.cls_bias", "roi_heads.box_predictor.0.cls_score.bias"),
    ("roi_heads.box_predictor.2.cls_score.cls_bias", "roi_heads.box_predictor.2.cls_score.bias"),
    ("roi_heads.box_predictor.1.cls_score.linear.weight", "roi_heads.box_predictor.1.cls_score.linear.weight"),
    ("roi_heads.box_predictor.0.cls_score.zs_weight", None),
    ("roi_heads.box_predictor.1.freq_weight", None),
    ("backbone.bottom_up.base.fc.weight", None),
    ("backbone.bottom_up.base.fc.bias", None),
    ("backbone.bottom_up.base.fc.extra.weight", "backbone.bottom_up.base.fc.extra.weight"),
    ("backbone.bottom_up.base.layer1.0.conv1.weight", "backbone.bottom_up.base.layer1.0.conv1.weight"),
    ("proposal_generator.centernet_head.agn_hm.bias", "proposal_generator.centernet_head.agn_hm.bias"),
    ("x.roi_heads.box_predictor.0.cls_score.cls_bias.y", "x.roi_heads.box_predictor.0.cls_score.cls_bias.y"),
])
def test_our_key_table(detic, ours):
    assert our_key(detic) == ours


def test_map_keys_reports_each_kind():
    detic = {"a.weight": (3, 4), "roi_heads.box_predictor.0.cls_score.cls_bias": (1,),
             "roi_heads.box_predictor.0.freq_weight": (7,), "b.weight": (2, 2), "c.weight": (5,),
             "backbone.bottom_up.base.fc.weight": (10, 4)}
    ours = {"a.weight": (3, 4), "roi_heads.box_predictor.0.cls_score.bias": (1,), "b.weight": (2, 3),
            "d.weight": (1,), "e.bias": (2,)}
    r = map_keys(detic, ours)
    assert r.mapped == {"a.weight": "a.weight",
                        "roi_heads.box_predictor.0.cls_score.cls_bias": "roi_heads.box_predictor.0.cls_score.bias"}
    assert sorted(r.set_aside) == ["backbone.bottom_up.base.fc.weight", "roi_heads.box_predictor.0.freq_weight"]
    assert "federated" in r.set_aside["roi_heads.box_predictor.0.freq_weight"]
    assert "ImageNet-21K" in r.set_aside["backbone.bottom_up.base.fc.weight"]
    assert r.unexpected == ["c.weight"]
    assert r.wrong_shape == [("b.weight", (2, 2), (2, 3))]
    assert r.missing == ["d.weight", "e.bias"]  # b.weight is filled, though of another shape
    assert not r.ok
    s = r.summary().splitlines()
    assert s[0] == "2 mapped, 2 set aside, 1 unexpected, 2 missing, 1 of another shape"
    assert s[1:] == ["  unexpected: c.weight", "  missing: d.weight", "  missing: e.bias",
                     "  shape: b.weight (2, 2) -> ours (2, 3)"]
    assert map_keys({"a.weight": (3, 4)}, {"a.weight": (3, 4)}).ok


def test_detic_embeddings_drop_the_background_column_and_transpose():
    zs = torch.arange(4 * 6, dtype=torch.float16).reshape(4, 6)  # D = 4, C + 1 = 6
    emb = detic_embeddings({EMBEDDINGS_KEY: zs})
    assert emb.dtype == torch.float32 and emb.shape == (5, 4)
    torch.testing.assert_close(emb, zs[:, :5].t().float())
    with pytest.raises(KeyError, match="zs_weight"):
        detic_embeddings({})


# ------------------------------------------------------------------ category counts
def test_image_counts_count_images_not_boxes():
    records = [{"annotations": [{"category_id": 0}, {"category_id": 0}, {"category_id": 2}]},
               {"annotations": [{"category_id": 2}, {"category_id": 5}, {"category_id": -1}]},
               {"annotations": []}, {}]
    assert cc.category_image_counts(records, 4).tolist() == [1.0, 0.0, 2.0, 0.0]


def lvis_json(tmp_path):
    data = {"categories": [{"id": 3, "name": "c", "frequency": "r"}, {"id": 1, "name": "a", "frequency": "f"},
                           {"id": 2, "name": "b"}],
            "annotations": [{"image_id": 10, "category_id": 1}, {"image_id": 10, "category_id": 1},
                            {"image_id": 11, "category_id": 1}, {"image_id": 11, "category_id": 3}]}
    path = tmp_path / "train.json"
    path.write_text(json.dumps(data))
    return path


def test_cat_info_counts_images_and_instances_sorted_by_id(tmp_path):
    info = cc.make_cat_info(lvis_json(tmp_path))
    assert info == [{"id": 1, "name": "a", "frequency": "f", "image_count": 2, "instance_count": 3},
                    {"id": 2, "name": "b", "image_count": 0, "instance_count": 0},
                    {"id": 3, "name": "c", "frequency": "r", "image_count": 1, "instance_count": 1}]
    out = tmp_path / "info.json"
    shuffled = [info[2], info[0], info[1]]
    atomic_write_json(out, shuffled)
    assert cc.load_cat_info_counts(out).tolist() == [2.0, 0.0, 1.0]  # ordered by id, not by file
    assert cc.cat_info_counts(str(out), 3).tolist() == [2.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="has 3 categories but the classifier has 4"):
        cc.cat_info_counts(str(out), 4)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": 1}]))
    with pytest.raises(ValueError, match="not a category-info file"):
        cc.load_cat_info_counts(bad)
    with pytest.raises(FileNotFoundError, match="CAT_FREQ_PATH"):
        cc.cat_info_counts(str(tmp_path / "none.json"), 3)


def test_cat_info_main_writes_next_to_the_source_by_default(tmp_path, capsys):
    src = lvis_json(tmp_path)
    cc.main([str(src)])
    written = tmp_path / "train_cat_info.json"
    assert capsys.readouterr().out.strip() == str(written)
    assert [c["image_count"] for c in json.loads(written.read_text())] == [2, 0, 1]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cc.main([str(tmp_path / "missing.json")])


def test_builtin_lvis_counts_are_used_for_lvis_v1_only():
    counts = cc.cat_info_counts("", cc.LVIS_V1_NUM_CLASSES)
    assert counts.shape == (1203,) and counts.min() >= 1 and counts.dtype == torch.float32
    assert torch.equal(counts, cc.builtin_lvis_v1_counts())


def test_federated_weight_is_the_count_to_the_power(tmp_path):
    out = tmp_path / "info.json"
    atomic_write_json(out, [{"id": i, "image_count": n} for i, n in enumerate([16, 0, 81, 1])])
    cfg = get_pomp_cfg()
    cfg.MODEL.POMP.FED_LOSS_WEIGHTS, cfg.MODEL.POMP.CAT_FREQ_PATH = "cat_info", str(out)
    cfg.MODEL.POMP.FED_LOSS_FREQ_WEIGHT = 0.25
    torch.testing.assert_close(cc.federated_class_weight(cfg, 4), torch.tensor([2.0, 0.0, 3.0, 1.0]))
    cfg.MODEL.POMP.FED_LOSS_WEIGHTS, cfg.DATASETS.TRAIN = "train_boxes", ()
    torch.testing.assert_close(cc.federated_class_weight(cfg, 3), torch.ones(3))
    cfg.MODEL.POMP.FED_LOSS_WEIGHTS = "boxes"
    with pytest.raises(ValueError, match="cat_info or train_boxes"):
        cc.federated_class_weight(cfg, 3)


def test_default_federated_weight_power_is_detics():
    assert get_pomp_cfg().MODEL.POMP.FED_LOSS_FREQ_WEIGHT == 0.5


def test_train_box_counts_sum_box_datasets_and_skip_image_labelled(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    names = ["_values_boxes_a", "_values_boxes_b", "_values_tags"]
    recs = {names[0]: [{"annotations": [{"category_id": 1}, {"category_id": 1}]}, {"annotations": [{"category_id": 0}]}],
            names[1]: [{"annotations": [{"category_id": 1}, {"category_id": 2}]}],
            names[2]: [{"annotations": [{"category_id": 0}]}]}
    for n in names:
        if n not in DatasetCatalog:
            DatasetCatalog.register(n, lambda n=n: recs[n])
    MetadataCatalog.get(names[2]).set(ann_type="image")
    assert cc.train_box_counts(names, 3).tolist() == [1.0, 2.0, 1.0]
    assert MetadataCatalog.get(names[0]).category_image_counts == [1.0, 1.0, 0.0]  # cached


# ------------------------------------------------------------------ multi-dataset sampling
def test_sampler_weights_are_detics_formula_with_repeat_factors():
    rf = torch.tensor([1.0, 3.0, 2.0])
    s = MultiDatasetSampler(sizes=[3, 5], ratios=[1.0, 4.0], repeat_factors=[rf, None])
    # dataset d: max(sizes) / size_d x ratio_d / sum(ratios), x rf renormalised to mean 1
    first = 5 / 3 * 1 / 5 * rf * (3 / 6)
    second = torch.full((5,), 5 / 5 * 4 / 5)
    torch.testing.assert_close(s.weights, torch.cat([first, second]))
    share = float(s.weights[:3].sum() / s.weights.sum())
    assert share == pytest.approx(1 / 5)  # the dataset's ratio, whatever its size or factors


def test_sampler_ranks_take_interleaved_slices_of_one_stream(monkeypatch):
    from detectron2.utils import comm

    full = list(itertools.islice(iter(MultiDatasetSampler([4, 6], [1, 1], seed=3)), 30))
    monkeypatch.setattr(comm, "get_world_size", lambda: 3)
    monkeypatch.setattr(comm, "get_rank", lambda: 1)
    mine = list(itertools.islice(iter(MultiDatasetSampler([4, 6], [1, 1], seed=3)), 10))
    assert mine == full[1::3]


def test_repeat_factors_from_image_labels_by_hand():
    dicts = [{"pos_category_ids": [0, 1]}, {"pos_category_ids": [1]}, {"pos_category_ids": [1, 2]},
             {"pos_category_ids": []}, {"pos_category_ids": [1]}]
    t = 0.5
    freq = {0: 1 / 5, 1: 4 / 5, 2: 1 / 5}
    rep = {c: max(1.0, math.sqrt(t / f)) for c, f in freq.items()}  # 0, 2: 1.58; 1: 1
    want = [max(rep[0], rep[1]), rep[1], max(rep[1], rep[2]), 1.0, rep[1]]
    got = repeat_factors_from_image_labels(dicts, t)
    torch.testing.assert_close(got, torch.tensor(want))
    assert got[0] > 1.5 and got[1] == 1.0


def test_grouping_by_dataset_and_orientation():
    shapes = [(0, 30, 20), (0, 20, 30), (1, 40, 10), (0, 31, 20), (0, 20, 31), (1, 10, 40),
              (0, 50, 20), (0, 21, 30), (0, 22, 30), (1, 40, 12)]
    items = [{"dataset_source": s, "width": w, "height": h, "i": k} for k, (s, w, h) in enumerate(shapes)]
    grouped = list(GroupedByDataset(items, batch_sizes=[3, 2], aspect_ratio_grouping=True))
    assert [[d["i"] for d in b] for b in grouped] == [[0, 3, 6], [1, 4, 7], [2, 9]]
    plain = list(GroupedByDataset(items, batch_sizes=[3, 2]))
    assert [[d["i"] for d in b] for b in plain] == [[0, 1, 3], [2, 5], [4, 6, 7]]


class _Heads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.box_predictor = torch.nn.ModuleList([torch.nn.Module()])
        self.box_predictor[0].cls_score = torch.nn.Module()
        self.box_predictor[0].cls_score.bias = torch.nn.Parameter(torch.zeros(1))
        self.vocabulary = None

    def set_class_embeddings(self, emb):
        self.vocabulary = emb


class _Detector(torch.nn.Module):
    """Keys as a converted Detic checkpoint fills them (one conv, one cascade stage's bias)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 3, 1)
        self.roi_heads = _Heads()


def detic_state():
    g = torch.Generator().manual_seed(0)
    return {"conv.weight": torch.randn(3, 2, 1, 1, generator=g), "conv.bias": torch.randn(3, generator=g),
            "roi_heads.box_predictor.0.cls_score.cls_bias": torch.tensor([-4.6]),
            EMBEDDINGS_KEY: torch.randn(6, 4, generator=g),  # D = 6, C + 1 = 4
            "roi_heads.box_predictor.0.freq_weight": torch.ones(3)}


def test_read_convert_and_load_a_detic_checkpoint(tmp_path):
    from pomp_det.detic_checkpoint import convert, load_detic_checkpoint, read_checkpoint

    state = detic_state()
    torch.save({"model": state, "iteration": 5}, tmp_path / "detic.pth")
    torch.save(state, tmp_path / "bare.pth")
    for name in ("detic.pth", "bare.pth"):
        read = read_checkpoint(str(tmp_path / name))
        assert sorted(read) == sorted(state) and all(torch.equal(read[k], state[k]) for k in state)
    model = _Detector()
    converted, report = convert(state, model)
    assert sorted(converted) == ["conv.bias", "conv.weight", "roi_heads.box_predictor.0.cls_score.bias"]
    assert report.ok and len(report.set_aside) == 2
    report = load_detic_checkpoint(model, str(tmp_path / "detic.pth"))
    assert torch.equal(model.conv.weight, state["conv.weight"])
    assert float(model.roi_heads.box_predictor[0].cls_score.bias) == pytest.approx(-4.6)
    torch.testing.assert_close(model.roi_heads.vocabulary, state[EMBEDDINGS_KEY][:, :3].t())
    other = _Detector()
    load_detic_checkpoint(other, str(tmp_path / "detic.pth"), use_embeddings=False)
    assert other.roi_heads.vocabulary is None
    del state["conv.bias"]
    with pytest.raises(ValueError, match="missing: conv.bias"):
        convert(state, _Detector())


def test_read_checkpoint_errors(tmp_path):
    from pomp_det.detic_checkpoint import read_checkpoint

    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="no state dict"):
        read_checkpoint(str(tmp_path / "list.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a plain tensor checkpoint"):
        read_checkpoint(str(tmp_path / "junk.pth"))


class _Messages(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())  # a bad format raises here, in the test


@contextlib.contextmanager
def logged(name, level=logging.INFO):
    """The messages ``name``'s logger emits inside the block (its own handler: whatever
    another test did to propagation)."""
    log, handler = logging.getLogger(name), _Messages()
    old = log.level
    log.addHandler(handler)
    log.setLevel(level)
    try:
        yield handler.messages
    finally:
        log.removeHandler(handler)
        log.setLevel(old)


# ------------------------------------------------------------------ Detic config keys: refusals and values
# (key, value) pomp_det refuses, and words the one-line reason must hold (docs/detection.md's
# "Detic's config keys": DETR and Swin are not ported, C4 heads neither, captions neither)
REFUSED = [
    ({"MODEL.META_ARCHITECTURE": "DeformableDetr"}, "MODEL.META_ARCHITECTURE DeformableDetr", "Deformable DETR"),
    ({"MODEL.BACKBONE.NAME": "build_swintransformer_fpn_backbone"}, "build_swintransformer_fpn_backbone", "Swin"),
    ({"MODEL.ROI_HEADS.NAME": "CustomRes5ROIHeads"}, "CustomRes5ROIHeads", "C4 heads"),
    ({"INPUT.CUSTOM_AUG": "DETR"}, "INPUT.CUSTOM_AUG DETR", "Deformable DETR"),
    ({"SOLVER.CUSTOM_MULTIPLIER": 0.1}, "SOLVER.CUSTOM_MULTIPLIER is", "Deformable DETR"),  # a key of its own
    ({"SOLVER.CUSTOM_MULTIPLIER_NAME": ["x"]}, "SOLVER.CUSTOM_MULTIPLIER_NAME is", "Deformable DETR"),
    ({"MODEL.DETR.NUM_OBJECT_QUERIES": 300}, "MODEL.DETR.NUM_OBJECT_QUERIES", "Deformable DETR"),  # by prefix
    ({"MODEL.SWIN.SIZE": "B-22k"}, "MODEL.SWIN.SIZE", "Swin"),
    ({"MODEL.SYNC_CAPTION_BATCH": True}, "MODEL.SYNC_CAPTION_BATCH", "captions"),
    ({"MODEL.TIMM.PRETRAINED": True}, "MODEL.TIMM.PRETRAINED", "MODEL.TIMM.CHECKPOINT"),
    ({"DATALOADER.DATASET_ANN": ["box", "caption"]}, "DATALOADER.DATASET_ANN ['box', 'caption']", "captions"),
]


@pytest.mark.parametrize("flat, names, why", REFUSED)
def test_refused_detic_keys_and_values_say_why(flat, names, why):
    from pomp_det.detic_keys import UnsupportedDeticKey

    with pytest.raises(UnsupportedDeticKey) as e:
        translate({"SOLVER.BASE_LR": 0.01, **flat})
    msg = str(e.value)
    assert msg.startswith("Detic's ") and names in msg and why in msg and "\n" not in msg
    assert isinstance(e.value, ValueError)


def test_values_of_refused_keys_that_pomp_det_has_pass():
    # the same keys with a value pomp_det does build go across
    assert translate({"MODEL.META_ARCHITECTURE": "GeneralizedRCNN", "INPUT.CUSTOM_AUG": "ResizeShortestEdge",
                      "DATALOADER.DATASET_ANN": ["image", "box"], "MODEL.ROI_HEADS.NAME": ["not", "a name"]}) == {
        "MODEL.META_ARCHITECTURE": "GeneralizedRCNN", "INPUT.DATASET_AUG": "resize_shortest_edge",
        "DATALOADER.DATASET_ANN_TYPE": ["image", "box"], "MODEL.ROI_HEADS.NAME": ["not", "a name"]}
    assert translate({"INPUT.CUSTOM_AUG": ""}) == {"INPUT.DATASET_AUG": "resize_shortest_edge"}  # Detic: the default


def test_detic_class_names_become_pomp_dets_registered_ones():
    import pomp_det  # noqa: F401  (registers the classes)
    from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, ROI_HEADS_REGISTRY

    got = translate({"MODEL.META_ARCHITECTURE": "CustomRCNN", "MODEL.ROI_HEADS.NAME": "DeticCascadeROIHeads",
                     "MODEL.BACKBONE.NAME": "build_p67_timm_fpn_backbone"})
    assert set(got) == {"MODEL.META_ARCHITECTURE", "MODEL.ROI_HEADS.NAME", "MODEL.BACKBONE.NAME"}
    META_ARCH_REGISTRY.get(got["MODEL.META_ARCHITECTURE"])
    ROI_HEADS_REGISTRY.get(got["MODEL.ROI_HEADS.NAME"])
    BACKBONE_REGISTRY.get(got["MODEL.BACKBONE.NAME"])
    assert got["MODEL.ROI_HEADS.NAME"] == "PompCascadeROIHeads"


@pytest.mark.parametrize("key", ["MODEL.CENTERNET.NUM_CLASSES", "SOLVER.USE_CUSTOM_SOLVER", "MODEL.RESET_CLS_TESTS",
                                 "MODEL.TEST_NUM_CLASSES"])
def test_keys_without_effect_are_accepted_and_dropped(key):
    assert translate({key: 1, "SOLVER.BASE_LR": 0.5}) == {"SOLVER.BASE_LR": 0.5}


def test_single_dataset_input_sizes_unless_the_per_dataset_lists_are_given():
    # Detic's INPUT.TRAIN_SIZE / SCALE_RANGE: one dataset's; DATASET_INPUT_SIZE / SCALE win
    assert translate({"INPUT.TRAIN_SIZE": 640}) == {"INPUT.DATASET_INPUT_SIZE": [640]}
    assert translate({"INPUT.SCALE_RANGE": (0.1, 2.0)}) == {"INPUT.DATASET_INPUT_SCALE": [[0.1, 2.0]]}
    both = {"DATALOADER.DATASET_INPUT_SIZE": [896, 448], "INPUT.TRAIN_SIZE": 640,
            "DATALOADER.DATASET_INPUT_SCALE": [[0.5, 1.5]], "INPUT.SCALE_RANGE": (0.1, 2.0)}
    assert translate(both) == {"INPUT.DATASET_INPUT_SIZE": [896, 448], "INPUT.DATASET_INPUT_SCALE": [[0.5, 1.5]]}


# ------------------------------------------------------------------ Detic checkpoints: what is refused
class _NotATensor:
    pass


def test_read_checkpoint_refuses_pickled_objects(tmp_path):
    """Only tensors and plain containers load (torch.load(weights_only=True)): a checkpoint
    carrying an arbitrary object could run code when unpickled."""
    from pomp_det.detic_checkpoint import read_checkpoint

    torch.save({"model": {"a": torch.zeros(2)}, "extra": _NotATensor()}, tmp_path / "obj.pth")
    with pytest.raises(ValueError, match="not a plain tensor checkpoint"):
        read_checkpoint(str(tmp_path / "obj.pth"))


def test_convert_refusal_names_the_config_and_lists_the_report():
    from pomp_det.detic_checkpoint import convert

    state = detic_state()
    state["stray.weight"] = torch.zeros(2)
    del state["conv.bias"]
    state["conv.weight"] = torch.zeros(3, 2, 3, 3)
    with pytest.raises(ValueError) as e:
        convert(state, _Detector())
    want = map_keys({k: tuple(v.shape) for k, v in state.items()},
                    {k: tuple(v.shape) for k, v in _Detector().state_dict().items()})
    assert want.unexpected == ["stray.weight"] and want.missing == ["conv.bias"] and len(want.wrong_shape) == 1
    assert str(e.value) == ("the Detic checkpoint does not fit this model (built from configs/det/centernet2/?):\n"
                            + want.summary())


def test_map_keys_fills_a_renamed_key_of_another_shape():
    """A renamed Detic key of the wrong shape is reported once, as misshapen, not as missing."""
    detic = {"roi_heads.box_predictor.1.cls_score.cls_bias": (2,)}
    r = map_keys(detic, {"roi_heads.box_predictor.1.cls_score.bias": (1,)})
    assert r.wrong_shape == [("roi_heads.box_predictor.1.cls_score.cls_bias", (2,), (1,))]
    assert r.missing == [] and r.mapped == {} and r.unexpected == []


# ------------------------------------------------------------------ category counts: edges and messages
def test_image_counts_keep_the_last_class_and_drop_the_ones_past_it():
    records = [{"annotations": [{"category_id": 3}, {"category_id": 4}]}, {"annotations": [{"category_id": 3}]}]
    assert cc.category_image_counts(records, 4).tolist() == [0.0, 0.0, 0.0, 2.0]


def test_cat_info_counts_expand_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    atomic_write_json(tmp_path / "info.json", [{"id": 2, "image_count": 7}, {"id": 1, "image_count": 3}])
    assert cc.cat_info_counts("~/info.json", 2).tolist() == [3.0, 7.0]


def test_builtin_lvis_counts_log_that_they_stand_in():
    with logged(cc.__name__) as got:
        cc.cat_info_counts("", cc.LVIS_V1_NUM_CLASSES)
        cc.cat_info_counts("/nonexistent/cat_info.json", cc.LVIS_V1_NUM_CLASSES)
    assert got == ["federated loss: CAT_FREQ_PATH not found, using the builtin LVIS v1 image counts",
                   "federated loss: /nonexistent/cat_info.json not found, using the builtin LVIS v1 image counts"]


def test_a_missing_cat_info_file_says_how_to_write_it(tmp_path):
    path = str(tmp_path / "none.json")
    with pytest.raises(FileNotFoundError) as e:
        cc.cat_info_counts(path, 3)
    assert str(e.value) == (
        f"federated loss: category-info file '{path}' (MODEL.POMP.CAT_FREQ_PATH) does not exist and the "
        "vocabulary (3 classes) is not LVIS v1's: write it with `python -m pomp_det.data.category_counts "
        "<training json> --out <path>`, or set MODEL.POMP.FED_LOSS_WEIGHTS train_boxes to count the training boxes")


def test_load_cat_info_refuses_what_is_not_a_list_of_counts(tmp_path):
    for bad in ({"id": 1, "image_count": 2}, [{"image_count": 2}], [{"id": 1, "image_count": 2}, {"id": 2}]):
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError) as e:
            cc.load_cat_info_counts(path)
        assert str(e.value) == (f"{path} is not a category-info file ([{{'id', 'image_count', ...}}, ...]); "
                                "write one with `python -m pomp_det.data.category_counts <train json>`")


def test_cat_info_main_writes_where_out_says(tmp_path, capsys):
    src = lvis_json(tmp_path)
    out = tmp_path / "elsewhere" / "info.json"
    out.parent.mkdir()
    cc.main([str(src), "--out", str(out)])
    assert capsys.readouterr().out.strip() == str(out)
    assert [c["instance_count"] for c in json.loads(out.read_text())] == [3, 0, 1]
    assert not (tmp_path / "train_cat_info.json").exists()


_COUNT_RECORDS = {}


def _register_count_datasets():
    from detectron2.data import DatasetCatalog, MetadataCatalog

    names = ["_values_counts_a", "_values_counts_tags", "_values_counts_b"]
    _COUNT_RECORDS.update({
        names[0]: [{"annotations": [{"category_id": 1}, {"category_id": 1}]}, {"annotations": [{"category_id": 0}]},
                   {"annotations": [{"category_id": 1}, {"category_id": 2}]}],
        names[1]: [{"annotations": [{"category_id": 0}]}] * 5,
        names[2]: [{"annotations": [{"category_id": 2}]}, {"annotations": [{"category_id": 0}, {"category_id": 2}]}]})
    for n in names:
        if n not in DatasetCatalog:
            DatasetCatalog.register(n, lambda n=n: _COUNT_RECORDS[n])
        if n in MetadataCatalog.list():
            MetadataCatalog.remove(n)  # no cached counts from an earlier test
    MetadataCatalog.get(names[1]).set(ann_type="image")
    return names


def test_federated_weight_from_the_training_boxes_skips_image_labels_in_the_middle():
    """Image counts of the box datasets (an image-labelled one between them), to the power."""
    names = _register_count_datasets()
    cfg = get_pomp_cfg()
    cfg.MODEL.POMP.FED_LOSS_WEIGHTS, cfg.DATASETS.TRAIN = "train_boxes", tuple(names)
    cfg.MODEL.POMP.FED_LOSS_FREQ_WEIGHT = 0.5
    with logged(cc.__name__) as messages:
        got = cc.federated_class_weight(cfg, 4)
    # class 0: 1 + 1 images, class 1: 2, class 2: 1 + 2, class 3: none
    torch.testing.assert_close(got, torch.tensor([2.0, 2.0, 3.0, 0.0]).sqrt())
    assert messages == ["federated loss: 3 of 4 classes can be drawn"]


def test_train_box_counts_refuse_a_cached_count_of_another_size():
    from detectron2.data import MetadataCatalog

    names = _register_count_datasets()
    MetadataCatalog.get(names[2]).set(category_image_counts=[5.0, 0.0, 2.0])  # cached for 3 classes
    with pytest.raises(ValueError) as e:
        cc.train_box_counts(names, 4)
    assert str(e.value) == (f"dataset '{names[2]}' has 3 categories but the classifier has 4: "
                            "MODEL.ROI_HEADS.NUM_CLASSES must match it")
    # a cached count is used as it is, not recounted
    assert cc.train_box_counts(names[2:], 3).tolist() == [5.0, 0.0, 2.0]  # the data: 1, 0, 2


# ------------------------------------------------------------------ multi-dataset: augmentations, notes, loader
def test_dataset_augmentations_are_each_datasets_own():
    from detectron2.data import transforms as T

    from pomp_det.data.multi_dataset import dataset_augmentations

    cfg = get_pomp_cfg()
    cfg.INPUT.DATASET_AUG = "resize_scale_crop"
    cfg.INPUT.DATASET_INPUT_SIZE, cfg.INPUT.DATASET_INPUT_SCALE = [640, 320], [[0.1, 2.0], [0.5, 1.5]]
    resize, crop, flip = dataset_augmentations(cfg, 1)
    assert isinstance(resize, T.ResizeScale) and isinstance(crop, T.FixedSizeCrop) and isinstance(flip, T.RandomFlip)
    assert (resize.min_scale, resize.max_scale, resize.target_height, resize.target_width) == (0.5, 1.5, 320, 320)
    assert tuple(crop.crop_size) == (320, 320) and crop.pad is False
    assert (flip.prob, flip.horizontal, flip.vertical) == (0.5, True, False)
    cfg.INPUT.DATASET_AUG = "resize_shortest_edge"
    cfg.INPUT.DATASET_MIN_SIZE, cfg.INPUT.DATASET_MAX_SIZE = [[640, 800], [320, 400, 480]], [1333, 667]
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
    resize, flip = dataset_augmentations(cfg, 1)
    assert isinstance(resize, T.ResizeShortestEdge) and isinstance(flip, T.RandomFlip)
    assert (tuple(resize.short_edge_length), resize.max_size, resize.sample_style) == ((320, 400, 480), 667, "choice")
    cfg.INPUT.DATASET_AUG = "lsj"
    with pytest.raises(ValueError, match="INPUT.DATASET_AUG is 'lsj'"):
        dataset_augmentations(cfg, 0)


def test_batch_size_note_by_hand():
    from pomp_det.data.multi_dataset import batch_size_note

    cfg = get_pomp_cfg()
    cfg.DATALOADER.DATASET_BATCH_SIZE, cfg.DATALOADER.DATASET_ANN_TYPE = [8, 32], ["box", "image"]
    cfg.SOLVER.IMS_PER_BATCH = 64  # the recipe: 8 per process x 8 processes
    assert batch_size_note(cfg, 8) == ""
    assert batch_size_note(cfg, 2) == (
        "DATALOADER.DATASET_BATCH_SIZE [8, 32] is per process: the recipe's global batch (SOLVER.IMS_PER_BATCH 64) "
        "is 8 x 8 processes; with 2 it is 16 (box) / 64 (image) images at the recipe's learning rate. To scale "
        "the LR and schedule linearly instead, set SOLVER.REFERENCE_WORLD_SIZE 8 (docs/detection.md)")


_LOADER_RECORDS = {}


def _loader_cfg(tmp_path):
    """Two tiny datasets: 4 box images of 40 x 30 (one without boxes), 2 image-labelled of 20 x 24."""
    import numpy as np
    from detectron2.data import DatasetCatalog
    from detectron2.structures import BoxMode
    from PIL import Image

    def image(name, w, h):
        path = tmp_path / name
        Image.fromarray(np.full((h, w, 3), 90, dtype=np.uint8)).save(path)
        return str(path)

    def box(c):
        return {"bbox": [2.0, 3.0, 20.0, 15.0], "bbox_mode": BoxMode.XYWH_ABS, "category_id": c, "iscrowd": 0}

    cats = [[0], [0, 1], [], [0]]
    _LOADER_RECORDS["_values_md_boxes"] = [
        {"file_name": image(f"b{i}.png", 40, 30), "image_id": i, "width": 40, "height": 30,
         "annotations": [box(c) for c in cs]} for i, cs in enumerate(cats)]
    _LOADER_RECORDS["_values_md_tags"] = [
        {"file_name": image(f"t{i}.png", 20, 24), "image_id": 10 + i, "width": 20, "height": 24,
         "pos_category_ids": p, "annotations": []} for i, p in enumerate([[1], [0, 1]])]
    for n in _LOADER_RECORDS:
        if n not in DatasetCatalog:
            DatasetCatalog.register(n, lambda n=n: [dict(r) for r in _LOADER_RECORDS[n]])
    cfg = get_pomp_cfg()
    cfg.DATASETS.TRAIN = ("_values_md_boxes", "_values_md_tags")
    cfg.DATALOADER.DATASET_RATIO, cfg.DATALOADER.DATASET_BATCH_SIZE = [1.0, 3.0], [2, 1]
    cfg.DATALOADER.DATASET_ANN_TYPE, cfg.DATALOADER.USE_RFS = ["box", "image"], [True, True]
    cfg.DATALOADER.REPEAT_THRESHOLD, cfg.DATALOADER.NUM_WORKERS = 0.8, 0
    cfg.DATALOADER.ASPECT_RATIO_GROUPING, cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = True, True
    cfg.INPUT.DATASET_AUG = "resize_scale_crop"
    cfg.INPUT.DATASET_INPUT_SIZE, cfg.INPUT.DATASET_INPUT_SCALE = [32, 16], [[1.0, 1.0], [1.0, 1.0]]
    cfg.SOLVER.IMS_PER_BATCH, cfg.SEED = 4, 0  # 2 per process: the recipe had 2 processes
    return cfg


def test_multi_dataset_loader_by_hand(tmp_path):
    from pomp_det.data.multi_dataset import batch_size_note, build_multi_dataset_train_loader

    cfg = _loader_cfg(tmp_path)
    with logged("pomp_det.data.multi_dataset") as messages:
        loader = build_multi_dataset_train_loader(cfg)
    assert messages == [batch_size_note(cfg, 1)] and messages[0]
    assert isinstance(loader, GroupedByDataset) and loader.batch_sizes == [2, 1] and loader.grouping is True
    sampler = loader.items.sampler
    assert isinstance(sampler, MultiDatasetSampler) and sampler.sizes == [3, 2] and sampler.seed == 0
    # repeat factors (t = 0.8): boxes, class 0 in 3 / 3 images -> 1, class 1 in 1 / 3 -> sqrt(2.4);
    # image labels, class 1 in 2 / 2 -> 1, class 0 in 1 / 2 -> sqrt(1.6); the empty box image is dropped
    rf_box = torch.tensor([1.0, math.sqrt(2.4), 1.0])
    rf_tag = torch.tensor([1.0, math.sqrt(1.6)])
    want = torch.cat([3 / 3 * 1 / 4 * rf_box * 3 / rf_box.sum(), 3 / 2 * 3 / 4 * rf_tag * 2 / rf_tag.sum()])
    torch.testing.assert_close(sampler.weights, want.float())
    # each dataset's own mapper: 40 x 30 -> fit in 32 x 32 -> 32 x 24; 20 x 24 -> in 16 x 16 -> 13 x 16
    items = [loader.items.dataset[i] for i in range(5)]
    assert [d["dataset_source"] for d in items] == [0, 0, 0, 1, 1]
    assert [d["ann_type"] for d in items] == ["box"] * 3 + ["image"] * 2
    assert [tuple(d["image"].shape) for d in items] == [(3, 24, 32)] * 3 + [(3, 16, 13)] * 2
    assert [len(d["instances"]) for d in items] == [1, 2, 1, 0, 0]
    batch = next(iter(loader))
    assert len(batch) == loader.batch_sizes[batch[0]["dataset_source"]]
    assert len({d["dataset_source"] for d in batch}) == 1 and all(isinstance(d, dict) for d in batch)
    cfg.SEED = -1  # a seed drawn once, shared by the ranks
    assert 0 <= build_multi_dataset_train_loader(cfg).items.sampler.seed < 2 ** 31


def test_multi_dataset_loader_needs_one_entry_per_dataset(tmp_path):
    from pomp_det.data.multi_dataset import build_multi_dataset_train_loader

    cfg = _loader_cfg(tmp_path)
    cfg.INPUT.DATASET_INPUT_SIZE = [32]
    with pytest.raises(ValueError) as e:
        build_multi_dataset_train_loader(cfg)
    assert str(e.value) == ("['INPUT.DATASET_INPUT_SIZE'] need one entry per training dataset "
                            "(2: ['_values_md_boxes', '_values_md_tags'])")
    cfg = _loader_cfg(tmp_path)
    cfg.INPUT.DATASET_AUG = "resize_shortest_edge"
    cfg.INPUT.DATASET_MIN_SIZE, cfg.INPUT.DATASET_MAX_SIZE = [[32], [16]], [40]
    cfg.DATALOADER.USE_RFS = [False]
    with pytest.raises(ValueError, match=r"\['DATALOADER.USE_RFS', 'INPUT.DATASET_MAX_SIZE'\] need one entry"):
        build_multi_dataset_train_loader(cfg)


def test_multi_dataset_loader_without_repeat_factors_and_filtering(tmp_path):
    from pomp_det.data.multi_dataset import build_multi_dataset_train_loader

    cfg = _loader_cfg(tmp_path)
    cfg.DATALOADER.USE_RFS, cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = [False, True], False
    sampler = build_multi_dataset_train_loader(cfg).items.sampler
    assert sampler.sizes == [4, 2]  # the box image without boxes is kept
    rf_tag = torch.tensor([1.0, math.sqrt(1.6)])
    want = torch.cat([torch.full((4,), 4 / 4 * 1 / 4), 4 / 2 * 3 / 4 * rf_tag * 2 / rf_tag.sum()])
    torch.testing.assert_close(sampler.weights, want.float())


def test_grouping_puts_square_images_with_the_portrait_ones():
    items = [{"dataset_source": 0, "width": w, "height": h, "i": k} for k, (w, h) in enumerate(
        [(30, 30), (40, 20), (20, 40), (50, 20)])]
    grouped = list(GroupedByDataset(items, batch_sizes=[2], aspect_ratio_grouping=True))
    assert [[d["i"] for d in b] for b in grouped] == [[0, 2], [1, 3]]


def _tiny_detic_checkpoint(tmp_path):
    """A Detic-style checkpoint of the world's tiny Faster R-CNN (D = 6, 3 classes) with its
    zs_weight [D, C + 1], and the model's own keys."""
    from pathlib import Path

    from detectron2.modeling import build_model

    from pomp_det import load_pomp_cfg

    config = Path(__file__).resolve().parents[2] / "configs/det/world/Base-world-tiny.yaml"
    cfg = load_pomp_cfg(str(config), ["MODEL.POMP.RANDOM_EMBEDDINGS_SEED", "0", "MODEL.POMP.USE_FED_LOSS", "False",
                                      "MODEL.POMP.EMBED_DIM", "6", "MODEL.ROI_HEADS.NUM_CLASSES", "3"])
    ours = build_model(cfg).state_dict()
    g = torch.Generator().manual_seed(1)
    state = {k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone() for k, v in ours.items()}
    zs = torch.randn(6, 4, generator=g)
    state[EMBEDDINGS_KEY] = zs
    torch.save({"model": state, "iteration": 7}, tmp_path / "detic.pth")
    return config, ours, state, zs


def test_detic_checkpoint_main_writes_the_model_and_the_embeddings(tmp_path, capsys):
    import numpy as np

    from pomp_det.detic_checkpoint import main

    config, ours, state, zs = _tiny_detic_checkpoint(tmp_path)
    out, npy = tmp_path / "d2.pth", tmp_path / "emb.npy"
    main([str(tmp_path / "detic.pth"), "--out", str(out), "--embeddings-out", str(npy), "--config-file", str(config)])
    written = torch.load(out, weights_only=True)
    assert set(written) == {"model"} and set(written["model"]) == set(ours)
    assert all(torch.equal(written["model"][k], state[k]) for k in ours)
    emb = np.load(npy)  # [C, D]: zs_weight without the background column, transposed
    assert emb.dtype == np.float32 and np.array_equal(emb, zs[:, :3].t().numpy())
    report = map_keys({k: tuple(v.shape) for k, v in state.items()}, {k: tuple(v.shape) for k, v in ours.items()})
    assert report.ok and list(report.set_aside) == [EMBEDDINGS_KEY]
    assert capsys.readouterr().out.splitlines() == report.summary().splitlines() + [f"wrote {out} and {npy} ((3, 6))"]
    # without --embeddings-out: the checkpoint only; opts after the positional reach the config
    main([str(tmp_path / "detic.pth"), "--out", str(tmp_path / "only.pth"), "--config-file", str(config),
          "MODEL.ROI_BOX_HEAD.FC_DIM", "256"])
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {tmp_path / 'only.pth'}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d2.pth", "detic.pth", "emb.npy", "only.pth"]
    with pytest.raises(ValueError, match="of another shape"):  # an override that changes the model is seen
        main([str(tmp_path / "detic.pth"), "--out", str(tmp_path / "x.pth"), "--config-file", str(config),
              "MODEL.ROI_BOX_HEAD.FC_DIM", "128"])
    with pytest.raises(SystemExit):  # --out is required
        main([str(tmp_path / "detic.pth"), "--config-file", str(config)])


# ------------------------------------------------------------------ category counts: builtin LVIS v1 numbers, command
def test_builtin_counts_are_lvis_v1s_by_their_frequency_groups():
    counts = cc.cat_info_counts("", 1203)  # LVIS v1's 1,203 classes, rare included
    assert counts[:3].tolist() == [64.0, 364.0, 1911.0]  # aerosol can, air conditioner, airplane
    # LVIS v1 groups its classes by training images: 337 rare (1-10), 461 common (11-100), 405 frequent
    groups = [int((counts <= 10).sum()), int(((counts > 10) & (counts <= 100)).sum()), int((counts > 100).sum())]
    assert groups == [337, 461, 405] and counts.min() == 1
    with pytest.raises(FileNotFoundError) as e:  # one class short of LVIS v1: no stand-in
        cc.cat_info_counts("", 1202)
    assert "category-info file '' (MODEL.POMP.CAT_FREQ_PATH) does not exist and the vocabulary (1202 classes)" in str(
        e.value)


def test_a_cat_info_file_wins_over_the_builtin_counts_for_lvis_v1(tmp_path):
    path = tmp_path / "info.json"
    atomic_write_json(path, [{"id": i + 1, "image_count": (i * 7) % 5} for i in range(1203)])
    counts = cc.cat_info_counts(str(path), 1203)
    assert counts.tolist() == [float((i * 7) % 5) for i in range(1203)]
    atomic_write_json(path, [{"id": 1, "image_count": 2}])
    with pytest.raises(ValueError) as e:  # a file of another vocabulary is refused, not replaced by the builtin
        cc.cat_info_counts(str(path), 1203)
    assert str(e.value) == (f"category-info file '{path}' has 1 categories but the classifier has 1203: "
                            "MODEL.ROI_HEADS.NUM_CLASSES must match it")


def test_federated_weight_from_a_cat_info_file_logs_the_drawable_classes(tmp_path):
    path = tmp_path / "info.json"
    atomic_write_json(path, [{"id": i, "image_count": n} for i, n in enumerate([8, 0, 27, 0, 1])])
    cfg = get_pomp_cfg()
    cfg.MODEL.POMP.FED_LOSS_WEIGHTS, cfg.MODEL.POMP.CAT_FREQ_PATH = "cat_info", str(path)
    cfg.MODEL.POMP.FED_LOSS_FREQ_WEIGHT = 1 / 3
    with logged(cc.__name__) as messages:
        got = cc.federated_class_weight(cfg, 5)
    torch.testing.assert_close(got, torch.tensor([2.0, 0.0, 3.0, 0.0, 1.0]))
    assert messages == ["federated loss: 3 of 5 classes can be drawn"]
    cfg.MODEL.POMP.FED_LOSS_WEIGHTS = "Cat_Info"  # the source names are exact
    with pytest.raises(ValueError) as e:
        cc.federated_class_weight(cfg, 5)
    assert str(e.value) == "MODEL.POMP.FED_LOSS_WEIGHTS is 'Cat_Info': use cat_info or train_boxes"


def test_cat_info_main_help_and_missing_source_in_full(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cc.main(["--help"])
    assert e.value.code == 0
    text = f" {' '.join(capsys.readouterr().out.split())} "
    for part in ("write Detic's category-info file (federated-loss weights)",
                 "src the full training json, e.g. datasets/lvis/lvis_v1_train.json",
                 "--out OUT default: <src>_cat_info.json next to it (Detic's name)"):
        assert f" {part} " in text, part  # whole words: a prefix or suffix glued on fails
    src = tmp_path / "missing.json"
    with pytest.raises(FileNotFoundError) as e:
        cc.main([str(src)])
    assert str(e.value) == f"'{src}' does not exist (the LVIS training json, see docs/detection.md)"


# ------------------------------------------------------------------ multi-dataset: the sampler's stream and messages
def test_sampler_stream_is_torch_multinomial_by_hand_from_the_seed():
    """Rounds of len(weights) draws with replacement from one generator seeded once: the same
    numbers whatever the process, so the ranks' interleaved slices never overlap."""
    s = MultiDatasetSampler([2, 3], [3.0, 1.0], seed=11)
    assert s.seed == 11 and MultiDatasetSampler([2, 3], [3.0, 1.0]).seed == 0  # seed 0 by default
    w = torch.tensor([3 / 2 * 3 / 4] * 2 + [3 / 3 * 1 / 4] * 3)
    torch.testing.assert_close(s.weights, w)
    g = torch.Generator().manual_seed(11)
    want = [i for _ in range(4) for i in torch.multinomial(w, 5, replacement=True, generator=g).tolist()]
    assert list(itertools.islice(iter(s), 20)) == want
    g = torch.Generator().manual_seed(0)
    default = MultiDatasetSampler([2, 3], [3.0, 1.0])
    assert list(itertools.islice(iter(default), 5)) == torch.multinomial(w, 5, replacement=True, generator=g).tolist()


def test_sampler_repeat_factors_of_the_second_dataset_only_and_seed_as_int():
    rf = torch.tensor([2.0, 1.0, 1.0, 4.0])
    s = MultiDatasetSampler(sizes=[1, 4], ratios=[1, 1], seed=5.0, repeat_factors=[None, rf])
    # the second dataset: 4 / 4 x 1 / 2, x rf / mean(rf) (mean 2); the first: 4 / 1 x 1 / 2
    torch.testing.assert_close(s.weights, torch.tensor([2.0, 0.5, 0.25, 0.25, 1.0]))
    assert type(s.seed) is int and s.seed == 5


def test_sampler_messages_in_full():
    with pytest.raises(ValueError) as e:
        MultiDatasetSampler(sizes=[5, 20, 3], ratios=[1, 2])
    assert str(e.value) == "3 datasets but 2 ratios (DATALOADER.DATASET_RATIO)"
    with pytest.raises(ValueError) as e:
        MultiDatasetSampler(sizes=[1, 0], ratios=[1, 1])
    assert str(e.value) == "a training dataset is empty (sizes [1, 0])"
    MultiDatasetSampler(sizes=[1, 1], ratios=[1, 1])  # one item each is a dataset


def test_repeat_factors_of_one_image_labelled_dataset_with_a_class_in_every_image():
    # t = 0.25: class 0 in 4 / 4 images -> 1; class 3 in 1 / 4 -> max(1, sqrt(1)) = 1; class 5 in 2 / 4 -> 1
    dicts = [{"pos_category_ids": [0, 3]}, {"pos_category_ids": [0]}, {"pos_category_ids": [0, 5]},
             {"pos_category_ids": [5, 0]}]
    assert repeat_factors_from_image_labels(dicts, 0.25).tolist() == [1.0, 1.0, 1.0, 1.0]
    # t = 1.0: class 3 -> sqrt(4) = 2, class 5 -> sqrt(2), class 0 -> 1; the largest of each image's
    torch.testing.assert_close(repeat_factors_from_image_labels(dicts, 1.0),
                               torch.tensor([2.0, 1.0, math.sqrt(2.0), math.sqrt(2.0)]))


def test_dataset_augmentations_message_in_full():
    from pomp_det.data.multi_dataset import dataset_augmentations

    cfg = get_pomp_cfg()
    cfg.INPUT.DATASET_AUG = "Resize_Scale_Crop"
    with pytest.raises(ValueError) as e:
        dataset_augmentations(cfg, 0)
    assert str(e.value) == ("INPUT.DATASET_AUG is 'Resize_Scale_Crop': use resize_scale_crop (Detic's) or "
                            "resize_shortest_edge")


def test_multi_dataset_loader_workers_collation_and_seeding(tmp_path):
    """The DataLoader yields one mapped dict at a time (no collation: GroupedByDataset batches),
    with the configured workers, each reseeded as detectron2's loaders are."""
    from detectron2.data.build import worker_init_reset_seed

    from pomp_det.data.multi_dataset import build_multi_dataset_train_loader

    cfg = _loader_cfg(tmp_path)
    cfg.DATALOADER.NUM_WORKERS, cfg.SEED = 2, 7
    inner = build_multi_dataset_train_loader(cfg).items  # not iterated: no worker starts
    assert inner.num_workers == 2 and inner.worker_init_fn is worker_init_reset_seed
    assert inner.collate_fn([{"a": 1}, {"b": 2}]) == {"a": 1} and inner.sampler.seed == 7
    cfg.DATALOADER.NUM_WORKERS = 0
    d = next(iter(build_multi_dataset_train_loader(cfg).items))
    assert type(d) is dict and type(d["dataset_source"]) is int and d["image"].dim() == 3

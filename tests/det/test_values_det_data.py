"""pomp_det's key maps and data helpers, by value: Detic's config aliases (table-driven against
their documented targets), the Detic checkpoint key map, the federated weights (images per
class, not boxes), the multi-dataset sampler's weights and repeat factors (Detic's
custom_dataset_dataloader.py formulas) and the per-dataset batches."""
import json
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

    import itertools

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

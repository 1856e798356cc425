"""Detic's recipe in pomp_det: federated sampling count and weights (category-info file,
builtin LVIS v1 counts), the image-label losses, loss keys shared by box and image batches,
and ROI heads chosen from the base config."""
import itertools
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.frameworks import require

require("detectron2")
from detectron2.layers import ShapeSpec  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.modeling.box_regression import Box2BoxTransform  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

import pomp_det  # noqa: E402
from pomp_core.durable import atomic_write_json  # noqa: E402
from pomp_det.data import category_counts as cc  # noqa: E402
from pomp_det.fast_rcnn import PompFastRCNNOutputLayers, federated_classes  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "det"


def test_federated_sample_count_counts_the_background_like_detic():
    weight = torch.tensor([0.0, 1, 2, 3, 4, 5, 6, 7, 8])
    torch.manual_seed(0)
    with_bg = federated_classes(torch.tensor([2, 2, 9, 5, 9]), 6, weight)  # 9 = background
    assert sorted(with_bg[:2].tolist()) == [2, 5]
    assert len(with_bg) == 5  # 6 indices: {2, 5}, the background and 3 drawn
    no_bg = federated_classes(torch.tensor([2, 5]), 6, weight)
    assert len(no_bg) == 6 and len(set(no_bg.tolist())) == len(no_bg)
    assert 0 not in federated_classes(torch.tensor([9]), 9, weight).tolist()  # weight 0: never drawn


def _lvis_json(path: Path, counts):
    cats = [{"id": i + 1, "name": f"c{i}", "frequency": "r" if n == 1 else "f"} for i, n in enumerate(counts)]
    anns = [{"id": k + 1, "image_id": img, "category_id": i + 1} for k, (i, img) in
            enumerate((i, img) for i, n in enumerate(counts) for img in range(n) for _ in range(2))]
    path.write_text(json.dumps({"categories": cats, "annotations": anns, "images": []}))


def test_cat_info_file_counts_images_and_feeds_the_weights(tmp_path):
    src = tmp_path / "train.json"
    _lvis_json(src, [3, 1, 0, 5])
    cc.main([str(src)])  # Detic's name next to the json
    out = tmp_path / "train_cat_info.json"
    info = json.loads(out.read_text())
    assert [c["image_count"] for c in info] == [3, 1, 0, 5]
    assert [c["instance_count"] for c in info] == [6, 2, 0, 10]
    cfg = pomp_det.get_pomp_cfg()
    cfg.MODEL.POMP.CAT_FREQ_PATH = str(out)
    w = cc.federated_class_weight(cfg, 4)
    assert torch.allclose(w, torch.tensor([3.0, 1, 0, 5]) ** 0.5)  # the rare class (1 image) is drawn
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        cc.federated_class_weight(cfg, 5)


def test_builtin_lvis_counts_agree_with_the_lvis_frequency_groups():
    """The shipped counts, checked against detectron2's own LVIS v1 categories: LVIS calls a
    class rare below 11 training images, common up to 100, frequent above."""
    from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES
    counts = cc.builtin_lvis_v1_counts()
    assert counts.shape == (1203,)
    bounds = {"r": (1, 10), "c": (11, 100), "f": (101, float("inf"))}
    for c in LVIS_CATEGORIES:
        low, high = bounds[c["frequency"]]
        assert low <= counts[c["id"] - 1] <= high, c["name"]


def test_without_cat_info_lvis_uses_the_builtin_counts_and_others_are_told_the_command(tmp_path):
    cfg = pomp_det.get_pomp_cfg()
    cfg.MODEL.POMP.CAT_FREQ_PATH = str(tmp_path / "absent.json")
    w = cc.federated_class_weight(cfg, 1203)
    assert torch.allclose(w, cc.builtin_lvis_v1_counts() ** 0.5) and (w > 0).all()  # rare classes included
    with pytest.raises(FileNotFoundError, match="pomp_det.data.category_counts"):
        cc.federated_class_weight(cfg, 40)


def test_atomic_json_writes_race_without_error_or_leftovers(tmp_path):
    dst, errors = tmp_path / "x.json", []

    def write(i):
        try:
            for _ in range(20):
                atomic_write_json(dst, {"writer": i, "pad": list(range(2000))})
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    assert json.loads(dst.read_text())["writer"] in range(4)
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def _predictor(how, num_classes=5, dim=4, channels=8):
    emb = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(0))
    return PompFastRCNNOutputLayers(ShapeSpec(channels=channels), class_embeddings=emb,
                                    box2box_transform=Box2BoxTransform((10.0, 10.0, 5.0, 5.0)),
                                    cls_agnostic_bbox_reg=True, box_reg_mlp=True,
                                    image_label_loss=how, image_label_weight=0.3)


def _props(boxes):
    p = Instances((100, 100))
    p.proposal_boxes = Boxes(torch.tensor(boxes, dtype=torch.float))
    return p


@pytest.mark.parametrize("how", ["max_size", "max_score"])
def test_image_label_loss_is_detics_per_label_one_hot_bce(how):
    pred = _predictor(how)
    g = torch.Generator().manual_seed(1)
    # image 1: the largest box is the last one, which max_size skips (Detic's rule)
    props = [_props([[0, 0, 10, 10], [0, 0, 50, 40], [0, 0, 30, 30], [0, 0, 90, 90]]),
             _props([[0, 0, 20, 20], [5, 5, 80, 70], [0, 0, 9, 9]])]
    logits = torch.randn(7, 6, generator=g) * 3
    logits[:, -1] = 0
    labels = [[1, 3], [4]]
    loss = pred.image_label_losses((logits, None), props, labels)
    expect, rows = 0.0, logits.split([4, 3])
    for r, lab, size_pick in zip(rows, labels, (1, 1)):
        for c in lab:
            i = size_pick if how == "max_size" else int(r[:, c].argmax())
            t = torch.zeros(6)
            t[c] = 1
            expect += torch.nn.functional.binary_cross_entropy_with_logits(r[i], t, reduction="sum") / len(lab)
    assert loss.item() == pytest.approx(0.3 * expect.item() / 2, rel=1e-5)
    with pytest.raises(ValueError, match="IMAGE_LABEL_LOSS"):
        _predictor("wsddn")


def test_box_regressor_is_detics_two_layer_mlp():
    pred = _predictor("max_size")
    assert [type(m).__name__ for m in pred.bbox_pred] == ["Linear", "ReLU", "Linear"]
    assert pred.bbox_pred[0].in_features == pred.bbox_pred[0].out_features == 8 and pred.bbox_pred[2].out_features == 4


def _world_cfg(heads, extra=()):
    cfg = pomp_det.load_pomp_cfg(str(CONFIGS / "world" / "Base-world-tiny.yaml"), [
        "MODEL.ROI_HEADS.NAME", heads, "MODEL.ROI_HEADS.NUM_CLASSES", "6", "MODEL.POMP.RANDOM_EMBEDDINGS_SEED", "0",
        "MODEL.POMP.FED_LOSS_WEIGHTS", "cat_info", "MODEL.POMP.USE_FED_LOSS", "False",
        "DATASETS.TRAIN", "()", "DATASETS.TEST", "()", "DATALOADER.MULTI_DATASET", "True", *extra])
    return cfg


def _inputs(image_labels: bool, n=2, size=64):
    g = torch.Generator().manual_seed(2)
    out = []
    for i in range(n):
        inst = Instances((size, size))
        inst.gt_boxes = Boxes(torch.empty(0, 4) if image_labels else torch.tensor([[4.0, 6, 40, 50], [20, 10, 60, 30]]))
        inst.gt_classes = torch.empty(0, dtype=torch.long) if image_labels else torch.tensor([i, 3])
        d = {"image": torch.randint(0, 255, (3, size, size), generator=g).float(), "instances": inst,
             "height": size, "width": size}
        if image_labels:
            d.update(ann_type="image", pos_category_ids=[i + 1, 4])
        out.append(d)
    return out


@pytest.mark.parametrize("heads", ["StandardROIHeads", "CascadeROIHeads"])
def test_box_and_image_batches_log_the_same_loss_keys(heads):
    torch.manual_seed(0)
    model = build_model(_world_cfg(heads))
    assert type(model.roi_heads).__name__ == {"StandardROIHeads": "PompROIHeads",
                                              "CascadeROIHeads": "PompCascadeROIHeads"}[heads]
    model.train()
    with EventStorage():
        box = model(_inputs(False))
        model.zero_grad()
        image = model(_inputs(True))
        sum(image.values()).backward()
    assert set(box) == set(image)
    weak = [k for k in image if k.startswith("loss_image_label")]
    assert len(weak) == (3 if heads == "CascadeROIHeads" else 1)
    assert all(image[k] > 0 for k in weak) and all(box[k] == 0 for k in weak)
    assert all(image[k] == 0 for k in image if k.startswith(("loss_cls", "loss_box_reg")))
    # what DDP must be told about (FIND_UNUSED_PARAM): no gradient reaches the box regressor
    reg = model.roi_heads._predictors()[0].bbox_pred
    assert all(p.grad is None or not p.grad.any() for p in reg.parameters())
    assert model.roi_heads._predictors()[0].cls_score.linear.weight.grad.abs().sum() > 0


def test_c4_configs_are_refused_with_the_reason(tmp_path):
    cfg = _world_cfg("Res5ROIHeads")
    with pytest.raises(ValueError, match="Res5ROIHeads.*FPN or cascade"):
        build_model(cfg)


def test_a_projects_own_heads_are_one_registered_subclass_of_ours():
    """A new detector head is one class registered under ROI_HEADS_REGISTRY: built on the POMP
    heads it is taken as named; other registered heads (no POMP classifier) are refused."""
    from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads

    from pomp_det.roi_heads import PompCascadeROIHeads

    class ProjectCascadeHeads(PompCascadeROIHeads):
        pass

    class PlainHeads(StandardROIHeads):
        pass

    for cls in (ProjectCascadeHeads, PlainHeads):
        ROI_HEADS_REGISTRY.register(cls)
    try:
        torch.manual_seed(0)
        assert type(build_model(_world_cfg("ProjectCascadeHeads")).roi_heads) is ProjectCascadeHeads
        with pytest.raises(ValueError, match="PlainHeads is not supported by pomp_det.*subclass pomp_det.roi_heads"):
            build_model(_world_cfg("PlainHeads"))
    finally:
        for cls in (ProjectCascadeHeads, PlainHeads):
            ROI_HEADS_REGISTRY._obj_map.pop(cls.__name__)


def test_detic_config_keys_are_read_as_ours_or_refused(tmp_path):
    yaml = tmp_path / "detic.yaml"
    yaml.write_text("MODEL:\n  ROI_BOX_HEAD:\n    USE_ZEROSHOT_CLS: True\n    ZEROSHOT_WEIGHT_PATH: 'x.npy'\n"
                    "    USE_BIAS: -2.0\n    FED_LOSS_NUM_CAT: 30\n    WS_NUM_PROPS: 64\n    IMAGE_LOSS_WEIGHT: 0.2\n"
                    "DATALOADER:\n  SAMPLER_TRAIN: MultiDatasetSampler\n  DATASET_BS: [4, 8]\n  DATASET_ANN: ['box', 'image']\nWITH_IMAGE_LABELS: True\n")
    cfg = pomp_det.load_pomp_cfg(str(yaml), ["MODEL.ROI_BOX_HEAD.NORM_TEMP", "20.0",
                                             "MODEL.ROI_BOX_HEAD.CAT_FREQ_PATH", "c.json"])
    p = cfg.MODEL.POMP
    assert (p.EMBEDDINGS, p.USE_BIAS, p.BIAS_INIT, p.FED_LOSS_NUM_CLASSES, p.IMAGE_LABEL_TOPK) == ("x.npy", True, -2.0, 30, 64)
    assert (p.IMAGE_LABEL_WEIGHT, p.TEMPERATURE, p.CAT_FREQ_PATH) == (0.2, 20.0, "c.json")
    assert list(cfg.DATALOADER.DATASET_BATCH_SIZE) == [4, 8] and cfg.DATALOADER.MULTI_DATASET
    assert cfg.DATALOADER.SAMPLER_TRAIN == "TrainingSampler"  # detectron2's own loader is not asked for it
    cfg = pomp_det.load_pomp_cfg("", ["DATALOADER.DATASET_INPUT_SCALE", "[[0.2, 2.0], [0.5, 1.5]]"])
    assert cfg.INPUT.DATASET_INPUT_SCALE[0] == [0.2, 2.0]
    assert pomp_det.load_pomp_cfg("", ["INPUT.CUSTOM_AUG", "EfficientDetResizeCrop"]).INPUT.DATASET_AUG == "resize_scale_crop"
    with pytest.raises(ValueError, match="CUSTOM_AUG DETR.*CenterNet"):
        pomp_det.load_pomp_cfg("", ["INPUT.CUSTOM_AUG", "DETR"])
    with pytest.raises(ValueError, match="USE_ZEROSHOT_CLS False"):
        pomp_det.load_pomp_cfg("", ["MODEL.ROI_BOX_HEAD.USE_ZEROSHOT_CLS", "False"])


def test_multi_dataset_sampler_repeat_factors_and_rank_slices(monkeypatch):
    from detectron2.utils import comm
    from pomp_det.data.multi_dataset import MultiDatasetSampler, repeat_factors_from_image_labels

    dicts = [{"pos_category_ids": [0]}] * 9 + [{"pos_category_ids": [1, 0]}]  # label 1 in 1 of 10 images
    rf = repeat_factors_from_image_labels(dicts, repeat_thresh=0.4)
    assert rf[:9].tolist() == [1.0] * 9 and rf[9].item() == pytest.approx(2.0)  # sqrt(0.4 / 0.1)
    sampler = MultiDatasetSampler([10, 3], [1, 1], seed=0, repeat_factors=[rf, None])
    draws = list(itertools.islice(sampler._infinite(), 30000))
    first = [i for i in draws if i < 10]
    assert len(first) / len(draws) == pytest.approx(0.5, abs=0.02)  # the ratio holds with repeat factors
    assert first.count(9) / len(first) == pytest.approx(2 / 11, abs=0.02)
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(comm, "get_rank", lambda: 1)
    assert list(itertools.islice(iter(sampler), 50)) == draws[1:100:2]  # rank 1: every 2nd of one stream


def test_batches_group_by_dataset_and_orientation():
    from pomp_det.data.multi_dataset import GroupedByDataset

    items = [{"dataset_source": s, "width": w, "height": 10, "i": k}
             for k, (s, w) in enumerate([(0, 20), (0, 5), (0, 30), (1, 5), (0, 6), (1, 50), (1, 8)])]
    batches = [[d["i"] for d in b] for b in GroupedByDataset(items, [2, 2], aspect_ratio_grouping=True)]
    assert batches == [[0, 2], [1, 4], [3, 6]]


def test_resize_scale_crop_is_detics_scale_jitter():
    from detectron2.data import transforms as T
    from pomp_det.data.multi_dataset import dataset_augmentations

    cfg = pomp_det.get_pomp_cfg()
    cfg.INPUT.DATASET_AUG = "resize_scale_crop"
    cfg.INPUT.DATASET_INPUT_SIZE, cfg.INPUT.DATASET_INPUT_SCALE = [64, 32], [[0.5, 1.5], [1.0, 1.0]]
    sides = []
    for seed in range(20):
        np.random.seed(seed)
        aug = T.AugInput(np.zeros((50, 100, 3), dtype=np.uint8))
        T.AugmentationList(dataset_augmentations(cfg, 0))(aug)
        h, w = aug.image.shape[:2]
        assert h <= 64 and w <= 64 and (h, w) != (50, 100)
        sides.append(w)
    assert min(sides) < 50 and max(sides) == 64  # scaled below the square, or cropped to it
    aug = T.AugInput(np.zeros((50, 100, 3), dtype=np.uint8))
    T.AugmentationList(dataset_augmentations(cfg, 1))(aug)
    assert aug.image.shape[:2] == (16, 32)  # scale 1: fits the 32-px square


def test_cascade_test_score_is_sqrt_of_the_stage_mean_times_objectness(monkeypatch):
    import pomp_det.roi_heads as rh

    torch.manual_seed(0)
    model = build_model(_world_cfg("CascadeROIHeads", ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"])).eval()
    heads, seen, stage_probs = model.roi_heads, {}, []
    real = rh.fast_rcnn_inference
    monkeypatch.setattr(rh, "fast_rcnn_inference", lambda boxes, scores, *a: seen.setdefault("scores", scores) and real(boxes, scores, *a))
    for p in heads._predictors():
        orig = p.predict_probs
        monkeypatch.setattr(p, "predict_probs", lambda pred, props, orig=orig: stage_probs.append(orig(pred, props)) or stage_probs[-1])
    with torch.no_grad():
        images = model.preprocess_image(_inputs(False, n=1))
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features)
        heads._forward_box(features, proposals)
    mean = sum(s[0] for s in stage_probs) / 3
    expect = (mean * proposals[0].objectness_logits.sigmoid()[:, None]).sqrt()
    torch.testing.assert_close(seen["scores"][0], expect)  # Detic's order, not the mean of per-stage products
    assert not torch.allclose(expect, sum((s[0] * proposals[0].objectness_logits.sigmoid()[:, None]).sqrt()
                                          for s in stage_probs) / 3)


def test_builtin_datasets_registered_elsewhere_first_are_left_alone():
    from detectron2.data import MetadataCatalog
    from pomp_det.data.builtin import BUILTIN, register_builtin

    before = {n: MetadataCatalog.get(n).get("json_file") for n in BUILTIN}
    register_builtin("/elsewhere")  # as after `import detic`: the names exist, nothing fails
    assert {n: MetadataCatalog.get(n).get("json_file") for n in BUILTIN} == before

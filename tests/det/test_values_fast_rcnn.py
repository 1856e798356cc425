"""pomp_det.fast_rcnn: the values of the sigmoid CE (with federated classes), the box losses,
the image-label losses (Detic's max_size / max_score box choice) and the test-time scores,
each against a hand computation (Detic's detic_fast_rcnn.py formulas) on asymmetric inputs."""
import math

import pytest
import torch

from tests.frameworks import require

require("detectron2")
from detectron2.layers import ShapeSpec  # noqa: E402
from detectron2.modeling.box_regression import Box2BoxTransform  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from pomp_det.fast_rcnn import PompFastRCNNOutputLayers, federated_classes, selected_proposal  # noqa: E402

C = 5  # foreground classes; column C is the background


@pytest.fixture(autouse=True)
def global_rng_left_as_found():
    """The federated classes and detectron2's proposal sampling draw from torch's global RNG:
    each test leaves it as it found it (other tests, e.g. the golden ones, seed it themselves)."""
    with torch.random.fork_rng(devices=[]):
        yield


def predictor(num_classes=C, **kw):
    kw.setdefault("cls_agnostic_bbox_reg", True)
    with torch.random.fork_rng(devices=[]):  # seeded layers; the global RNG is left as it was
        torch.manual_seed(0)
        return PompFastRCNNOutputLayers(ShapeSpec(channels=6), box2box_transform=Box2BoxTransform((10, 10, 5, 5)),
                                        class_embeddings=torch.randn(num_classes, 4), **kw)


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def bce(x: float, t: float) -> float:
    """Binary cross-entropy of one logit, written out."""
    # -(t log p + (1 - t) log(1 - p)), p = sigmoid(x), in the form that stays finite
    return max(x, 0.0) - x * t + math.log1p(math.exp(-abs(x)))


def hand_sigmoid_ce(logits, gt, classes):
    """Detic: sum over boxes and the used foreground classes of the BCE, / #boxes."""
    total = 0.0
    for i in range(logits.shape[0]):
        for c in classes:
            total += bce(float(logits[i, c]), float(int(gt[i]) == c))
    return total / logits.shape[0]


LOGITS = torch.tensor([[2.0, -1.0, 0.5, -3.0, 1.5, 0.0],
                       [-0.5, 3.0, -2.0, 0.25, -1.0, 0.0],
                       [1.0, 0.0, -0.75, 2.5, -2.0, 0.0],
                       [-1.5, 0.5, 1.25, -0.25, 0.75, 0.0]], dtype=torch.float64)
GT = torch.tensor([0, 3, C, 3])  # class 0, class 3 twice, one background box; 1, 2 and 4 absent


def test_sigmoid_ce_without_federation_sums_classes_and_divides_by_boxes():
    p = predictor(use_fed_loss=False)
    got = p.sigmoid_cross_entropy(LOGITS, GT)
    assert float(got) == pytest.approx(hand_sigmoid_ce(LOGITS, GT, range(C)), rel=1e-6)


@pytest.mark.parametrize("num_sample, weight, used", [
    # 0 and 3 present + the background count towards the budget: 4 leaves room for one drawn
    (4, [0, 0, 0, 0, 2.0], [0, 3, 4]),
    (3, [0, 0, 0, 0, 2.0], [0, 3]),  # present + background fill the budget
    (50, [0, 0, 1.0, 0, 2.0], [0, 2, 3, 4]),  # every class of weight > 0, never weight-0 class 1
    (50, [1.0] * C, list(range(C))),
])
def test_sigmoid_ce_with_federated_classes(num_sample, weight, used):
    p = predictor(use_fed_loss=True, fed_loss_num_classes=num_sample, fed_loss_weight=torch.tensor(weight))
    got = p.sigmoid_cross_entropy(LOGITS, GT)
    assert float(got) == pytest.approx(hand_sigmoid_ce(LOGITS, GT, used), rel=1e-6)


def test_federated_weights_from_a_callable_are_read_at_the_first_loss():
    calls = []

    def source():
        calls.append(1)
        return torch.tensor([0, 0, 0, 0, 3.0])

    p = predictor(use_fed_loss=True, fed_loss_num_classes=4, fed_loss_weight=source)
    assert calls == [] and torch.equal(p.fed_loss_weight, torch.ones(C))  # not read at build time
    got = p.sigmoid_cross_entropy(LOGITS, GT)
    assert calls == [1] and float(got) == pytest.approx(hand_sigmoid_ce(LOGITS, GT, [0, 3, 4]), rel=1e-6)
    p.sigmoid_cross_entropy(LOGITS, GT)
    assert calls == [1]  # read once
    assert torch.equal(p.fed_loss_weight, torch.tensor([0, 0, 0, 0, 3.0]))


def test_federated_classes_when_the_background_is_absent():
    """Without a background box every present class is counted once, the rest is drawn."""
    weight = torch.tensor([0, 1.0, 0, 0, 0, 0, 5.0])
    used = federated_classes(torch.tensor([2, 2, 5]), 4, weight)
    assert sorted(used.tolist()) == [1, 2, 5, 6]
    used = federated_classes(torch.tensor([2, 2, 5]), 3, weight)  # one draw: 1 or 6
    assert set(used.tolist()) - {2, 5} <= {1, 6} and len(used) == 3 and {2, 5} <= set(used.tolist())
    assert federated_classes(torch.tensor([2, 5, 3]), 2, weight).tolist() == [2, 3, 5]


def test_sigmoid_ce_of_no_boxes_is_a_zero_with_a_graph():
    logits = torch.zeros(0, C + 1, requires_grad=True)
    loss = predictor().sigmoid_cross_entropy(logits, torch.zeros(0, dtype=torch.long))
    assert float(loss) == 0 and loss.requires_grad


def proposals_with_targets():
    a = Instances((40, 70))  # non-square image
    a.proposal_boxes = Boxes(torch.tensor([[2.0, 3.0, 30.0, 20.0], [10.0, 5.0, 60.0, 38.0], [0.0, 0.0, 9.0, 9.0]]))
    a.gt_boxes = Boxes(torch.tensor([[4.0, 2.0, 33.0, 24.0], [12.0, 4.0, 58.0, 39.0], [1.0, 1.0, 8.0, 12.0]]))
    a.gt_classes = torch.tensor([1, 4, C])
    b = Instances((50, 30))  # no gt_boxes: every box is background
    b.proposal_boxes = Boxes(torch.tensor([[1.0, 2.0, 20.0, 40.0], [5.0, 5.0, 25.0, 15.0]]))
    b.gt_classes = torch.tensor([C, C])
    return [a, b]


def test_losses_value_with_box_regression_and_loss_weights():
    p = predictor(use_fed_loss=False, loss_weight={"loss_cls": 2.0, "loss_box_reg": 0.5})
    props = proposals_with_targets()
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(5, C + 1, generator=g)
    deltas = torch.randn(5, 4, generator=g)
    with EventStorage():  # detectron2 logs classification stats
        losses = p.losses((scores, deltas), props)
    gt = torch.tensor([1, 4, C, C, C])
    assert float(losses["loss_cls"]) == pytest.approx(2.0 * hand_sigmoid_ce(scores.double(), gt, range(C)), rel=1e-5)
    # smooth L1 with beta 0 (= L1) over the foreground boxes, / all boxes (detectron2)
    fg_props = props[0].proposal_boxes.tensor[:2]
    target = Box2BoxTransform((10, 10, 5, 5)).get_deltas(fg_props, props[0].gt_boxes.tensor[:2])
    box = float((deltas[:2] - target).abs().sum()) / 5
    assert float(losses["loss_box_reg"]) == pytest.approx(0.5 * box, rel=1e-5)


def label_proposals():
    """Two non-square images; the last box is the whole image (ADD_IMAGE_BOX). Image 0: the
    widest box (1) is not the largest (2); image 1 has a single box."""
    a = Instances((60, 90))
    a.proposal_boxes = Boxes(torch.tensor([[0.0, 0.0, 20.0, 20.0],  # 400
                                           [0.0, 10.0, 80.0, 14.0],  # 320, widest
                                           [30.0, 5.0, 55.0, 40.0],  # 875, largest
                                           [5.0, 0.0, 15.0, 58.0],  # 580, tallest
                                           [0.0, 0.0, 90.0, 60.0]]))  # the image
    b = Instances((33, 21))
    b.proposal_boxes = Boxes(torch.tensor([[1.0, 1.0, 20.0, 30.0]]))
    return [a, b]


def hand_image_label_loss(scores, picks_per_image, labels_per_image, weight):
    total = 0.0
    for logits, picks, labels in zip(scores, picks_per_image, labels_per_image):
        for i, label in zip(picks, labels):
            row = sum(bce(float(logits[i, c]), float(c == label)) for c in range(logits.shape[1]))
            total += row / len(labels)
    return total / len(labels_per_image) * weight


def test_image_label_loss_max_size_uses_the_largest_box_but_the_last():
    props = label_proposals()
    g = torch.Generator().manual_seed(2)
    scores = torch.randn(6, C + 1, generator=g, dtype=torch.float64)
    p = predictor()  # defaults: max_size, weight 0.1
    assert p.image_label_loss == "max_size" and p.image_label_weight == 0.1 and p.image_label_topk == 128
    labels = [[1, 3], [4]]
    got = p.image_label_losses((scores, None), props, labels)
    want = hand_image_label_loss([scores[:5], scores[5:]], [[2, 2], [0]], labels, 0.1)
    assert float(got) == pytest.approx(want, rel=1e-6)


def test_image_label_loss_max_score_picks_the_labels_best_box():
    props = label_proposals()
    scores = torch.zeros(6, C + 1, dtype=torch.float64)
    scores[:5, 1] = torch.tensor([0.1, 0.9, 0.3, 0.2, 0.95])  # the whole-image box may win here
    scores[:5, 3] = torch.tensor([0.5, -1.0, 0.2, 0.7, 0.1])
    scores[5] = torch.tensor([0.3, -0.2, 0.1, 0.0, 0.4, -0.5])
    p = predictor(image_label_loss="max_score", image_label_weight=0.3)
    labels = [[1, 3], [4]]
    got = p.image_label_losses((scores, None), props, labels)
    want = hand_image_label_loss([scores[:5], scores[5:]], [[4, 3], [0]], labels, 0.3)
    assert float(got) == pytest.approx(want, rel=1e-6)


def test_image_label_loss_counts_images_without_proposals():
    """Detic averages over all images of the batch, an empty one included."""
    props = label_proposals()
    empty = Instances((10, 10))
    empty.proposal_boxes = Boxes(torch.zeros(0, 4))
    scores = randn(6, C + 1, seed=6, dtype=torch.float64)
    p = predictor()
    two = p.image_label_losses((scores, None), props, [[1], [2]])
    three = p.image_label_losses((scores, None), [props[0], empty, props[1]], [[1], [0], [2]])
    assert float(three) == pytest.approx(float(two) * 2 / 3, rel=1e-6)


@pytest.mark.parametrize("areas, want", [([1.0], 0), ([5.0, 1.0], 0), ([1.0, 5.0], 0),
                                         ([1.0, 4.0, 3.0, 9.0], 1), ([2.0, 1.0, 7.0, 6.9, 8.0], 2)])
def test_selected_proposal_max_size_table(areas, want):
    boxes = torch.tensor([[0.0, 0.0, a, 1.0] for a in areas])  # area = width
    assert selected_proposal(torch.zeros(len(areas), 3), boxes, 0, "max_size") == want


def test_selected_proposal_area_is_width_times_height():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 3.0],  # 30, the widest
                          [0.0, 0.0, 3.0, 11.0],  # 33, the tallest
                          [2.0, 1.0, 8.0, 7.0],  # 36, the largest
                          [0.0, 0.0, 100.0, 100.0]])
    assert selected_proposal(torch.zeros(4, 3), boxes, 0, "max_size") == 2
    inverted = torch.tensor([[5.0, 5.0, 0.0, 0.0], [0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 9.0, 9.0]])
    assert selected_proposal(torch.zeros(3, 3), inverted, 0, "max_size") == 1  # no negative-squared areas
    logits = torch.tensor([[0.0, 5.0], [3.0, 1.0], [1.0, 2.0]])
    assert selected_proposal(logits, inverted, 0, "max_score") == 1
    assert selected_proposal(logits, inverted, 1, "max_score") == 0


def test_predict_probs_is_the_geometric_mean_with_objectness_per_image():
    props = label_proposals()
    props[0].objectness_logits = torch.tensor([0.5, -1.0, 2.0, 0.0, -0.3])
    props[1].objectness_logits = torch.tensor([1.5])
    scores = randn(6, C + 1, seed=7)
    p = predictor()
    probs = p.predict_probs((scores, None), props)
    obj = torch.cat([props[0].objectness_logits, props[1].objectness_logits]).sigmoid()
    want = (scores.sigmoid() * obj[:, None]).sqrt()
    assert [len(x) for x in probs] == [5, 1]
    torch.testing.assert_close(torch.cat(probs), want)
    p.proposal_score_in_probs = False
    torch.testing.assert_close(torch.cat(p.predict_probs((scores, None), props)), scores.sigmoid())
    soft = predictor(use_sigmoid_ce=False, use_fed_loss=False, mult_proposal_score=False)
    out = torch.cat(soft.predict_probs((scores, None), props))
    torch.testing.assert_close(out, torch.softmax(scores, dim=1))


def test_softmax_mode_uses_detectron2s_cross_entropy():
    p = predictor(use_sigmoid_ce=False, use_fed_loss=False)
    props = proposals_with_targets()
    scores = randn(5, C + 1, seed=8)
    with EventStorage():
        losses = p.losses((scores, torch.zeros(5, 4)), props)
    want = torch.nn.functional.cross_entropy(scores, torch.tensor([1, 4, C, C, C]))
    torch.testing.assert_close(losses["loss_cls"], want)


def test_box_reg_mlp_is_detics_two_layer_regressor():
    p = predictor(box_reg_mlp=True)
    mlp = p.bbox_pred
    assert [type(m).__name__ for m in mlp] == ["Linear", "ReLU", "Linear"]
    assert (mlp[0].in_features, mlp[0].out_features, mlp[2].out_features) == (6, 6, 4)
    assert torch.count_nonzero(mlp[2].bias) == 0 and 0 < float(mlp[2].weight.std()) < 0.01
    assert isinstance(predictor().bbox_pred, torch.nn.Linear)


def test_constructor_defaults_and_errors():
    p = predictor()
    assert (p.use_sigmoid_ce, p.use_fed_loss, p.fed_loss_num_classes, p.mult_proposal_score) == (True, True, 50, True)
    assert p.cls_score.temperature == 50.0 and p.num_classes == C
    with pytest.raises(ValueError, match="CLS_AGNOSTIC_BBOX_REG"):
        predictor(box_reg_mlp=True, cls_agnostic_bbox_reg=False)
    with pytest.raises(ValueError, match="IMAGE_LABEL_LOSS"):
        predictor(image_label_loss="wsddn")
    with pytest.raises(ValueError, match="USE_SIGMOID_CE"):
        predictor(use_sigmoid_ce=False, use_fed_loss=True)
    with pytest.raises(ValueError, match="cover 3 classes"):
        p.set_fed_loss_weight(torch.ones(3))


def test_set_class_embeddings_resets_the_class_count_and_weights():
    p = predictor(fed_loss_weight=torch.arange(C).float())
    p.set_class_embeddings(randn(7, 4, seed=9))
    assert p.num_classes == 7 and torch.equal(p.fed_loss_weight, torch.ones(7))
    p.set_class_embeddings(randn(3, 4, seed=10), torch.tensor([1.0, 0.0, 2.0]))
    assert p.num_classes == 3 and p.fed_loss_weight.tolist() == [1.0, 0.0, 2.0]


def pomp_cfg(tmp_path, num_classes=C, **pomp):
    import numpy as np

    from pomp_det.cfg_loader import get_pomp_cfg

    emb = tmp_path / "emb.npy"
    np.save(emb, np.random.default_rng(0).normal(size=(num_classes, 4)).astype(np.float16))
    cfg = get_pomp_cfg()
    cfg.MODEL.POMP.EMBEDDINGS, cfg.MODEL.POMP.EMBED_DIM = str(emb), 4
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = C
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
    for k, v in pomp.items():
        setattr(cfg.MODEL.POMP, k, v)
    return cfg


def test_from_config_reads_every_pomp_key(tmp_path):
    cfg = pomp_cfg(tmp_path, TEMPERATURE=20.0, USE_BIAS=True, BIAS_INIT=-3.0, FED_LOSS_NUM_CLASSES=7,
                   MULT_PROPOSAL_SCORE=False, IMAGE_LABEL_LOSS="max_score", IMAGE_LABEL_TOPK=9,
                   IMAGE_LABEL_WEIGHT=0.3, FED_LOSS_WEIGHTS="train_boxes", FED_LOSS_FREQ_WEIGHT=0.5)
    p = PompFastRCNNOutputLayers(cfg, ShapeSpec(channels=6))
    assert p.cls_score.temperature == 20.0 and float(p.cls_score.bias) == -3.0
    assert (p.fed_loss_num_classes, p.mult_proposal_score, p.proposal_score_in_probs) == (7, False, False)
    assert (p.image_label_loss, p.image_label_topk, p.image_label_weight) == ("max_score", 9, 0.3)
    assert p.use_sigmoid_ce and p.use_fed_loss and isinstance(p.bbox_pred, torch.nn.Sequential)
    want = torch.nn.functional.normalize(torch.from_numpy(__import__("numpy").load(cfg.MODEL.POMP.EMBEDDINGS)).float(), dim=1)
    torch.testing.assert_close(p.cls_score.embeddings, want)
    # the federated weights are read lazily from the config: no training data -> uniform
    assert p._fed_loss_weight_source is not None
    torch.testing.assert_close(p._fed_loss_weight_source(), torch.ones(C))
    plain = PompFastRCNNOutputLayers(pomp_cfg(tmp_path, USE_FED_LOSS=False, BOX_REG_MLP=False), ShapeSpec(channels=6))
    assert plain._fed_loss_weight_source is None and not plain.use_fed_loss
    assert isinstance(plain.bbox_pred, torch.nn.Linear)
    wrong = pomp_cfg(tmp_path)
    wrong.MODEL.ROI_HEADS.NUM_CLASSES = C + 1
    with pytest.raises(ValueError, match=f"NUM_CLASSES is {C + 1}"):
        PompFastRCNNOutputLayers(wrong, ShapeSpec(channels=6))


def test_from_config_overrides_share_the_first_stages_embeddings(tmp_path):
    cfg = pomp_cfg(tmp_path)
    emb = randn(C, 4, seed=11)
    weight = torch.tensor([1.0, 0.0, 2.0, 3.0, 0.5])
    p = PompFastRCNNOutputLayers(cfg, ShapeSpec(channels=6), class_embeddings=emb, fed_loss_weight=weight)
    torch.testing.assert_close(p.cls_score.embeddings, torch.nn.functional.normalize(emb, dim=1))
    assert torch.equal(p.fed_loss_weight, weight) and p._fed_loss_weight_source is None
    # the given embeddings are the vocabulary: the config's file (5 rows) is not read
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    three = PompFastRCNNOutputLayers(cfg, ShapeSpec(channels=6), class_embeddings=emb[:3], fed_loss_weight=weight[:3])
    assert three.num_classes == 3 and torch.equal(three.fed_loss_weight, weight[:3])


def test_selected_proposal_area_uses_each_boxes_own_corners():
    boxes = torch.tensor([[60.0, 0.0, 64.0, 10.0],  # 40, far right: x1 + x0 would make it the largest
                          [0.0, 0.0, 8.0, 8.0],  # 64
                          [5.0, 30.0, 12.0, 40.0],  # 70, the largest; x1 - y0 < 0
                          [0.0, 0.0, 100.0, 100.0]])
    assert selected_proposal(torch.zeros(4, 2), boxes, 0, "max_size") == 2
    degenerate = torch.tensor([[5.0, 0.0, 0.0, 50.0],  # no width, tall
                               [0.0, 0.0, 3.0, 3.0],  # 9
                               [0.0, 5.0, 40.0, 0.0],  # no height, wide
                               [0.0, 0.0, 100.0, 100.0]])
    assert selected_proposal(torch.zeros(4, 2), degenerate, 0, "max_size") == 1


def test_sigmoid_ce_when_no_box_is_background():
    gt = torch.tensor([0, 3, 1, 3])
    p = predictor(use_fed_loss=False)
    assert float(p.sigmoid_cross_entropy(LOGITS, gt)) == pytest.approx(hand_sigmoid_ce(LOGITS, gt, range(C)), rel=1e-6)


def test_losses_of_an_empty_batch_are_zeros():
    p = predictor(use_fed_loss=False)
    with EventStorage():
        losses = p.losses((torch.zeros(0, C + 1, requires_grad=True), torch.zeros(0, 4, requires_grad=True)), [])
    assert set(losses) == {"loss_cls", "loss_box_reg"} and all(float(v) == 0 for v in losses.values())


def test_a_loss_left_out_of_the_loss_weight_dict_counts_once():
    """detectron2's rule: a loss missing from a loss_weight dict has weight 1."""
    p = predictor(use_fed_loss=False, loss_weight={"loss_cls": 3.0})
    props = proposals_with_targets()
    g = torch.Generator().manual_seed(4)
    scores = torch.randn(5, C + 1, generator=g)
    deltas = torch.randn(5, 4, generator=g)
    with EventStorage():
        losses = p.losses((scores, deltas), props)
    gt = torch.tensor([1, 4, C, C, C])
    assert float(losses["loss_cls"]) == pytest.approx(3.0 * hand_sigmoid_ce(scores.double(), gt, range(C)), rel=1e-5)
    target = Box2BoxTransform((10, 10, 5, 5)).get_deltas(props[0].proposal_boxes.tensor[:2], props[0].gt_boxes.tensor[:2])
    assert float(losses["loss_box_reg"]) == pytest.approx(float((deltas[:2] - target).abs().sum()) / 5, rel=1e-5)


def test_image_label_loss_of_a_single_image_is_its_own_mean():
    """One image: the mean over its labels (a repeated label counts twice), x the weight."""
    props = label_proposals()[:1]
    scores = torch.randn(5, C + 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    p = predictor(image_label_weight=0.5)
    labels = [[0, 2, 2]]
    got = p.image_label_losses((scores, None), props, labels)
    assert float(got) == pytest.approx(hand_image_label_loss([scores], [[2, 2, 2]], labels, 0.5), rel=1e-6)


def test_federated_draw_is_detics_under_the_same_seed():
    """Detic draws over C + 1 columns (the background's at weight 0), the present classes'
    zeroed, without replacement: under one seed the same classes come out."""
    weight = torch.tensor([0.5, 1.0, 2.0, 0.0, 3.0, 1.5])  # C = 6; class 3 has weight 0
    gt = torch.tensor([1, 6, 1, 4])  # classes 1 and 4 and the background: 3 of the 5
    for seed in range(6):
        with torch.random.fork_rng(devices=[]):  # federated_classes draws from the global RNG
            torch.manual_seed(seed)
            got = federated_classes(gt, 5, weight)
            ours_next = torch.rand(3)
            torch.manual_seed(seed)
            drawn = torch.multinomial(torch.tensor([0.5, 0.0, 2.0, 0.0, 0.0, 1.5, 0.0]), 2, replacement=False)
            detics_next = torch.rand(3)
        assert got.tolist() == [1, 4] + drawn.tolist()
        # the draw leaves the RNG where Detic's leaves it: the next draws (the next stage's
        # classes, detectron2's sampling) stay Detic's too
        assert torch.equal(ours_next, detics_next)


def test_from_config_softmax_mode_and_the_class_count_message(tmp_path):
    soft = PompFastRCNNOutputLayers(pomp_cfg(tmp_path, USE_SIGMOID_CE=False, USE_FED_LOSS=False), ShapeSpec(channels=6))
    assert soft.use_sigmoid_ce is False and soft.use_fed_loss is False
    wrong = pomp_cfg(tmp_path)  # embeddings [5, 4]
    wrong.MODEL.ROI_HEADS.NUM_CLASSES = C + 1
    with pytest.raises(ValueError) as e:
        PompFastRCNNOutputLayers(wrong, ShapeSpec(channels=6))
    assert str(e.value) == (f"the class embeddings have {C} rows but MODEL.ROI_HEADS.NUM_CLASSES is {C + 1}: "
                            "set NUM_CLASSES to the vocabulary size")


def test_federated_weights_follow_the_predictor_to_its_device():
    p = predictor().to("meta")  # a device other than the weights' own (CPU)
    p.set_fed_loss_weight(torch.arange(C).float())
    assert p.fed_loss_weight.device.type == "meta" and p.fed_loss_weight.shape == (C,)


def test_constructor_defaults_the_bias_and_the_buffers():
    """No class bias by default (its init 0 when on); the federated weights and the class
    embeddings stay out of the state dict: a checkpoint loads under any vocabulary."""
    p = predictor()
    assert p.cls_score.bias is None
    assert float(predictor(use_bias=True).cls_score.bias) == 0.0
    assert not [k for k in p.state_dict() if "fed_loss_weight" in k or "embeddings" in k]
    assert torch.equal(p.fed_loss_weight, torch.ones(C)) and p._fed_loss_weight_source is None


def test_box_reg_mlp_initialisation_is_detics():
    """Detic's regressor: c2_xavier_fill on the hidden layer (uniform within sqrt(3 / fan_in),
    bias 0), N(0, 0.001) on the output (bias 0); not nn.Linear's default init."""
    mlp = predictor(box_reg_mlp=True).bbox_pred
    bound = math.sqrt(3 / 6)
    assert torch.count_nonzero(mlp[0].bias) == 0
    assert float(mlp[0].weight.abs().max()) <= bound and float(mlp[0].weight.abs().max()) > 1 / math.sqrt(6)
    assert 0.0005 < float(mlp[2].weight.std()) < 0.002 and torch.count_nonzero(mlp[2].bias) == 0


def test_from_config_box_reg_mlp_needs_class_agnostic_regression(tmp_path):
    """MODEL.POMP.BOX_REG_MLP applies to class-agnostic regression only: with per-class boxes
    the predictor keeps detectron2's linear regressor (4 per class), no error."""
    cfg = pomp_cfg(tmp_path, BOX_REG_MLP=True)
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = False
    p = PompFastRCNNOutputLayers(cfg, ShapeSpec(channels=6))
    assert isinstance(p.bbox_pred, torch.nn.Linear) and p.bbox_pred.out_features == 4 * C
    off = pomp_cfg(tmp_path, BOX_REG_MLP=False)
    assert isinstance(PompFastRCNNOutputLayers(off, ShapeSpec(channels=6)).bbox_pred, torch.nn.Linear)


def test_from_config_defaults_are_the_pomp_configs(tmp_path):
    """Built from get_pomp_cfg()'s defaults: the predictor's settings are the config's (written
    out here), not the constructor's keyword defaults where they differ (BIAS_INIT)."""
    cfg = pomp_cfg(tmp_path, USE_BIAS=True, FED_LOSS_WEIGHTS="train_boxes")
    p = PompFastRCNNOutputLayers(cfg, ShapeSpec(channels=6))
    assert p.cls_score.temperature == 50.0 and float(p.cls_score.bias) == pytest.approx(-4.6)
    assert (p.use_sigmoid_ce, p.use_fed_loss, p.fed_loss_num_classes) == (True, True, 50)
    assert (p.mult_proposal_score, p.proposal_score_in_probs) == (True, True)
    assert (p.image_label_loss, p.image_label_topk, p.image_label_weight) == ("max_size", 128, 0.1)
    assert isinstance(p.bbox_pred, torch.nn.Sequential) and p.num_classes == C
    # the weights' source reads the config as built, not as changed afterwards
    cfg.MODEL.POMP.FED_LOSS_WEIGHTS = "nonsense"
    torch.testing.assert_close(p._fed_loss_weight_source(), torch.ones(C))


def test_from_config_honours_an_explicit_federated_weight(tmp_path):
    """fed_loss_weight given without class_embeddings: the given weights, not the config's
    lazy source (which would replace them at the first loss)."""
    weight = torch.tensor([1.0, 0.0, 2.0, 3.0, 0.5])
    p = PompFastRCNNOutputLayers(pomp_cfg(tmp_path, FED_LOSS_WEIGHTS="train_boxes"), ShapeSpec(channels=6),
                                 fed_loss_weight=weight)
    assert torch.equal(p.fed_loss_weight, weight) and p._fed_loss_weight_source is None
    source = lambda: torch.arange(C, dtype=torch.float)  # noqa: E731
    p = PompFastRCNNOutputLayers(pomp_cfg(tmp_path), ShapeSpec(channels=6), fed_loss_weight=source)
    assert p._fed_loss_weight_source is source

"""pomp_det.roi_heads: the image-label losses of the standard and cascade heads (each stage on
the boxes the previous stage refined, Detic's top-k proposals clipped to the image) and the
cascade's test score (sqrt of the stages' mean probability x objectness), against a hand
composition of the heads' parts on tiny, non-square inputs."""
import math

import pytest
import torch

from tests.frameworks import require

require("detectron2")
from detectron2.layers import ShapeSpec  # noqa: E402
from detectron2.modeling.box_regression import Box2BoxTransform  # noqa: E402
from detectron2.modeling.matcher import Matcher  # noqa: E402
from detectron2.modeling.poolers import ROIPooler  # noqa: E402
from detectron2.modeling.roi_heads import FastRCNNConvFCHead  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from pomp_det.fast_rcnn import PompFastRCNNOutputLayers  # noqa: E402
from pomp_det.roi_heads import PompCascadeROIHeads, PompROIHeads  # noqa: E402

C, CH, TOPK = 4, 3, 4


@pytest.fixture(autouse=True)
def global_rng_left_as_found():
    """The federated classes and detectron2's proposal sampling draw from torch's global RNG:
    each test leaves it as it found it (other tests, e.g. the golden ones, seed it themselves)."""
    with torch.random.fork_rng(devices=[]):
        yield
WEIGHTS = [(10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0)]


def parts(stages):
    with torch.random.fork_rng(devices=[]):  # seeded layers; the global RNG is left as it was
        torch.manual_seed(0)
        emb = torch.randn(C, 5)
        heads = [FastRCNNConvFCHead(ShapeSpec(channels=CH, height=3, width=3), conv_dims=[], fc_dims=[6])
                 for _ in range(stages)]
        predictors = [PompFastRCNNOutputLayers(ShapeSpec(channels=6), box2box_transform=Box2BoxTransform(w),
                                               class_embeddings=emb, cls_agnostic_bbox_reg=True,
                                               use_fed_loss=False, image_label_topk=TOPK, image_label_weight=0.25,
                                               test_score_thresh=0.0, test_nms_thresh=1.0, test_topk_per_image=1000)
                      for w in WEIGHTS[:stages]]
        for pr in predictors:  # deltas large enough that each stage moves the boxes
            torch.nn.init.normal_(pr.bbox_pred.weight, std=2.0)
    pooler = ROIPooler(output_size=3, scales=(1 / 4,), sampling_ratio=0, pooler_type="ROIAlignV2")
    common = dict(box_in_features=["p2"], box_pooler=pooler, num_classes=C, batch_size_per_image=8,
                  positive_fraction=0.5, image_label_training=True)
    return heads, predictors, common


def cascade():
    heads, predictors, common = parts(3)
    for p in predictors:
        p.proposal_score_in_probs = False
    return PompCascadeROIHeads(box_heads=heads, box_predictors=predictors,
                               proposal_matchers=[Matcher([0.5], [0, 1]) for _ in range(3)], **common)


def standard():
    heads, predictors, common = parts(1)
    return PompROIHeads(box_head=heads[0], box_predictor=predictors[0], proposal_matcher=Matcher([0.5], [0, 1]),
                        **common)


def inputs():
    g = torch.Generator().manual_seed(3)
    features = {"p2": torch.randn(2, CH, 12, 17, generator=g)}  # images of 44 x 66 and 40 x 52
    # 6 proposals: the last two fall outside the top 4; clipped, the 4th is the largest (the
    # max-size pick of a top 5), the 3rd the largest but the last (of the top 4), the 2nd the
    # largest of the top 3 but the last
    a = Instances((44, 66))
    a.proposal_boxes = Boxes(torch.tensor([[2.0, 3.0, 30.0, 20.0], [-5.0, 10.0, 30.0, 50.0],  # clipped
                                           [20.0, 1.0, 70.0, 30.0], [1.0, 1.0, 60.0, 42.0],
                                           [0.0, 0.0, 66.0, 44.0], [5.0, 5.0, 9.0, 9.0]]))
    a.objectness_logits = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -1.0])
    b = Instances((40, 52))
    b.proposal_boxes = Boxes(torch.tensor([[3.0, 4.0, 25.0, 30.0], [10.0, 2.0, 50.0, 12.0], [0.0, 0.0, 52.0, 40.0]]))
    b.objectness_logits = torch.tensor([0.3, -0.2, 0.8])
    return features, [a, b]


def bce(x, t):
    # -(t log p + (1 - t) log(1 - p)), p = sigmoid(x), in the form that stays finite
    return max(x, 0.0) - x * t + math.log1p(math.exp(-abs(x)))


def weak_loss(scores_per_image, boxes_per_image, labels, weight):
    """Detic's max_size loss, by hand: the largest box but the last, one-hot BCE summed over
    the C + 1 columns, / #labels, / #images, x weight."""
    total = 0.0
    for scores, boxes, image_labels in zip(scores_per_image, boxes_per_image, labels):
        area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).tolist()
        i = max(range(len(area) - 1), key=lambda j: area[j]) if len(area) > 1 else 0
        for label in image_labels:
            total += sum(bce(float(scores[i, c]), float(c == label)) for c in range(C + 1)) / len(image_labels)
    return total / len(labels) * weight


def top_boxes(proposals):
    out = []
    for p in proposals:
        b = p.proposal_boxes.tensor[:TOPK].clone()
        h, w = p.image_size
        b[:, 0::2] = b[:, 0::2].clamp(0, w)
        b[:, 1::2] = b[:, 1::2].clamp(0, h)
        out.append(b)
    return out


def run_stage(model, k, feats, boxes):
    pooled = model.box_pooler([feats["p2"]], [Boxes(b) for b in boxes])
    head = model.box_head[k] if isinstance(model.box_head, torch.nn.ModuleList) else model.box_head
    pred = model.box_predictor[k] if isinstance(model.box_predictor, torch.nn.ModuleList) else model.box_predictor
    scores, deltas = pred(head(pooled))
    return pred, scores, deltas


def refine(pred, deltas, boxes, proposals):
    """The next stage's boxes: the deltas applied to ``boxes`` and clipped to each image."""
    new = pred.box2box_transform.apply_deltas(deltas, torch.cat(boxes)).split([len(b) for b in boxes])
    out = []
    for b, p in zip(new, proposals):
        h, w = p.image_size
        b = b.clone()
        b[:, 0::2] = b[:, 0::2].clamp(0, w)
        b[:, 1::2] = b[:, 1::2].clamp(0, h)
        out.append(b)
    return out


LABELS = [[1, 3], [2]]


def test_cascade_image_label_losses_follow_the_refined_boxes():
    model = cascade().train()
    # the heads' top-k is the first stage's (Detic's one WS_NUM_PROPS), whatever the later say
    model.box_predictor[1].image_label_topk, model.box_predictor[2].image_label_topk = 2, 1
    feats, proposals = inputs()
    with EventStorage():
        _, losses = model(None, feats, proposals, image_labels=LABELS)
    boxes = top_boxes(proposals)
    assert [len(b) for b in boxes] == [4, 3]
    stage_losses = []
    with torch.no_grad():
        for k in range(3):
            pred, scores, deltas = run_stage(model, k, feats, boxes)
            n = [len(b) for b in boxes]
            stage_losses.append(weak_loss(scores.double().split(n), boxes, LABELS, 0.25))
            boxes = [b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])] for b in refine(pred, deltas, boxes, proposals)]
    assert len(set(round(v, 6) for v in stage_losses)) == 3  # the stages differ
    for k in range(3):
        assert float(losses[f"loss_image_label_stage{k}"]) == pytest.approx(stage_losses[k], rel=1e-4)
        assert float(losses[f"loss_cls_stage{k}"]) == 0 and float(losses[f"loss_box_reg_stage{k}"]) == 0
    assert set(losses) == {f"loss_{n}_stage{k}" for n in ("image_label", "cls", "box_reg") for k in range(3)}


def test_standard_image_label_loss_on_the_top_clipped_proposals():
    model = standard().train()
    feats, proposals = inputs()
    with EventStorage():
        _, losses = model(None, feats, proposals, image_labels=LABELS)
    boxes = top_boxes(proposals)
    with torch.no_grad():
        _, scores, _ = run_stage(model, 0, feats, boxes)
    want = weak_loss(scores.double().split([4, 3]), boxes, LABELS, 0.25)
    assert float(losses["loss_image_label"]) == pytest.approx(want, rel=1e-4)
    assert set(losses) == {"loss_image_label", "loss_cls", "loss_box_reg"}
    assert float(losses["loss_cls"]) == float(losses["loss_box_reg"]) == 0


def box_targets(proposals):
    targets = []
    for p in proposals:
        t = Instances(p.image_size)
        t.gt_boxes = Boxes(p.proposal_boxes.tensor[:2].clamp(min=0))
        t.gt_classes = torch.tensor([1, 3])
        targets.append(t)
    return targets


def box_batch_losses(model, feats, proposals):
    """A box-supervised training step's losses; detectron2 samples the proposals with torch's
    global RNG, so it is seeded here and restored after."""
    with torch.random.fork_rng(devices=[]), EventStorage():
        torch.manual_seed(0)
        return model(None, feats, proposals, box_targets(proposals))[1]


def test_box_batches_log_the_image_label_keys_as_zeros():
    model = cascade().train()
    feats, proposals = inputs()
    losses = box_batch_losses(model, feats, proposals)
    for k in range(3):
        assert float(losses[f"loss_image_label_stage{k}"]) == 0
        assert float(losses[f"loss_cls_stage{k}"]) > 0
    assert len(losses) == 9


def test_the_image_label_keys_only_with_image_label_training():
    """Built without the flag (its default is off) a head's box batches log detectron2's keys
    only; the standard head with it adds loss_image_label as a zero."""
    heads, predictors, common = parts(1)
    del common["image_label_training"]
    plain = PompROIHeads(box_head=heads[0], box_predictor=predictors[0], proposal_matcher=Matcher([0.5], [0, 1]),
                         **common).train()
    assert plain.image_label_training is False
    feats, proposals = inputs()
    assert set(box_batch_losses(plain, feats, proposals)) == {"loss_cls", "loss_box_reg"}
    losses = box_batch_losses(standard().train(), feats, proposals)
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_image_label"}
    assert float(losses["loss_image_label"]) == 0 and float(losses["loss_cls"]) > 0


@pytest.mark.parametrize("make", [standard, cascade])
def test_image_label_batches_return_the_proposals_untouched(make):
    """The image-label path hands back the proposals it was given, neither cut to the top k
    nor clipped in place (the clipping works on a copy)."""
    model = make().train()
    feats, proposals = inputs()
    before = [p.proposal_boxes.tensor.clone() for p in proposals]
    with EventStorage():
        out, _ = model(None, feats, proposals, image_labels=LABELS)
    assert out is proposals
    for p, b in zip(proposals, before):
        assert torch.equal(p.proposal_boxes.tensor, b)


def test_image_labels_at_test_time_change_nothing():
    model = cascade().eval()
    feats, proposals = inputs()
    with torch.no_grad():
        plain, _ = model(None, feats, proposals)
        labelled, losses = model(None, feats, proposals, image_labels=LABELS)
    assert losses == {}
    for a, b in zip(plain, labelled):
        assert torch.equal(a.scores, b.scores) and torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)


def test_cascade_test_score_is_sqrt_of_the_stage_mean_times_objectness():
    model = cascade().eval()
    feats, proposals = inputs()
    with torch.no_grad():
        out, no_losses = model(None, feats, proposals)
        boxes, probs = [p.proposal_boxes.tensor for p in proposals], []
        for k in range(3):
            pred, scores, deltas = run_stage(model, k, feats, boxes)
            probs.append(scores.sigmoid())
            boxes = refine(pred, deltas, boxes, proposals)
    obj = torch.cat([p.objectness_logits for p in proposals]).sigmoid()
    score = ((probs[0] + probs[1] + probs[2]) / 3 * obj[:, None]).sqrt()[:, :C]
    for i, (start, stop) in enumerate([(0, 6), (6, 9)]):
        want = score[start:stop].flatten().sort(descending=True).values
        got = out[i].scores.sort(descending=True).values
        torch.testing.assert_close(got, want[: len(got)], rtol=1e-5, atol=1e-6)
        assert len(got) == len(want)
        # the boxes are the last stage's (class-agnostic: each proposal's box for every class)
        final = torch.unique(boxes[i], dim=0)
        torch.testing.assert_close(torch.unique(out[i].pred_boxes.tensor, dim=0), final)
    assert no_losses == {}  # no loss keys at test time, image-label training or not


def test_cascade_test_threshold_and_top_k_are_the_last_stages():
    """Detic's cascade thresholds and keeps the top k with the last stage's settings (the
    earlier stages keep 0 and 1000 here)."""
    model = cascade().eval()
    feats, proposals = inputs()
    obj = torch.cat([p.objectness_logits for p in proposals]).sigmoid()
    score = (stage_mean_scores(model, feats, proposals) * obj[:, None]).sqrt()
    image0, image1 = (score[i:j].flatten().sort(descending=True).values for i, j in [(0, 6), (6, 9)])
    thresh = float(image1[2] + image1[3]) / 2  # image 1 keeps 3, image 0 more than the top k
    assert int((image0 > thresh).sum()) > 6
    last = model.box_predictor[-1]
    last.test_score_thresh, last.test_topk_per_image = thresh, 6
    with torch.no_grad():
        out = model(None, feats, proposals)[0]
    torch.testing.assert_close(out[0].scores.sort(descending=True).values, image0[:6], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[1].scores.sort(descending=True).values, image1[:3], rtol=1e-5, atol=1e-6)


def test_cascade_test_score_of_a_single_image():
    model = cascade().eval()
    feats, proposals = inputs()
    feats, proposals = {"p2": feats["p2"][1:]}, proposals[1:]
    with torch.no_grad():
        out = model(None, feats, proposals)[0]
    obj = proposals[0].objectness_logits.sigmoid()
    want = (stage_mean_scores(model, feats, proposals) * obj[:, None]).sqrt().flatten().sort(descending=True).values
    torch.testing.assert_close(out[0].scores.sort(descending=True).values, want, rtol=1e-5, atol=1e-6)


def stage_mean_scores(model, feats, proposals):
    """The stages' mean class probability of each proposal, by hand, no objectness."""
    with torch.no_grad():
        boxes, probs = [p.proposal_boxes.tensor for p in proposals], []
        for k in range(3):
            pred, scores, deltas = run_stage(model, k, feats, boxes)
            probs.append(scores.sigmoid())
            boxes = refine(pred, deltas, boxes, proposals)
    return ((probs[0] + probs[1] + probs[2]) / 3)[:, :C]


def test_cascade_test_score_without_objectness_is_the_stage_mean():
    model = cascade().eval()
    feats, proposals = inputs()
    for p in proposals:
        p.remove("objectness_logits")
    with torch.no_grad():
        out = model(None, feats, proposals)[0]
    want = stage_mean_scores(model, feats, proposals)[:6].flatten().sort(descending=True).values
    torch.testing.assert_close(out[0].scores.sort(descending=True).values, want, rtol=1e-5, atol=1e-6)


def test_cascade_first_stages_mult_proposal_score_decides_the_test_score():
    """The first stage's MULT_PROPOSAL_SCORE switches objectness off for the whole cascade,
    whatever the later stages say; the first stage on, the later ones off, it stays on."""
    feats, proposals = inputs()
    model = cascade().eval()
    model.box_predictor[0].mult_proposal_score = False  # stages 1 and 2 keep True
    with torch.no_grad():
        out = model(None, feats, proposals)[0]
    mean = stage_mean_scores(model, feats, proposals)
    for i, (start, stop) in enumerate([(0, 6), (6, 9)]):
        want = mean[start:stop].flatten().sort(descending=True).values
        torch.testing.assert_close(out[i].scores.sort(descending=True).values, want, rtol=1e-5, atol=1e-6)
    model = cascade().eval()
    for pred in model.box_predictor[1:]:
        pred.mult_proposal_score = False
    with torch.no_grad():
        out = model(None, feats, proposals)[0]
    obj = torch.cat([p.objectness_logits for p in proposals]).sigmoid()
    want = (mean * obj[:, None]).sqrt()[:6].flatten().sort(descending=True).values
    torch.testing.assert_close(out[0].scores.sort(descending=True).values, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", [standard, cascade])
def test_image_label_batches_give_the_box_regressors_no_gradient(make):
    """The zero box losses of an image-label batch hang on the class logits: after the
    backward every classifier has a gradient, no box regressor has one (Detic trains the
    regressors on box batches only; an optimizer skips parameters without a gradient)."""
    model = make().train()
    feats, proposals = inputs()
    with EventStorage():
        _, losses = model(None, feats, proposals, image_labels=LABELS)
    sum(losses.values()).backward()
    preds = model._predictors()
    assert all(p.bbox_pred.weight.grad is None and p.bbox_pred.bias.grad is None for p in preds)
    assert all(p.cls_score.linear.weight.grad is not None and p.cls_score.linear.weight.grad.abs().sum() > 0
               for p in preds)


def test_image_label_batches_of_a_mask_model_log_a_zero_mask_loss(tmp_path):
    cfg = heads_cfg(tmp_path, "PompROIHeads", **{"MODEL.MASK_ON": True, "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK": True})
    heads = build_heads(cfg).train()
    feats, proposals = inputs()
    with EventStorage():
        _, losses = heads(None, feats, proposals, image_labels=LABELS)
    assert set(losses) == {"loss_image_label", "loss_cls", "loss_box_reg", "loss_mask"}
    assert float(losses["loss_mask"]) == 0 and losses["loss_mask"].requires_grad
    cfg = heads_cfg(tmp_path, "PompCascadeROIHeads", **{"MODEL.MASK_ON": True,
                                                         "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK": True})
    heads = build_heads(cfg).train()
    with EventStorage():
        _, losses = heads(None, feats, proposals, image_labels=LABELS)
    assert float(losses["loss_mask"]) == 0 and len(losses) == 10


def build_heads(cfg):
    """build_roi_heads on one p2 level, its layers seeded without touching the global RNG."""
    from detectron2.modeling.roi_heads import build_roi_heads

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_roi_heads(cfg, {"p2": ShapeSpec(channels=CH, stride=4)})


# the first stage's weights differ from ROI_BOX_HEAD.BBOX_REG_WEIGHTS (10, 10, 5, 5), the
# weights a stage would get without its own Box2BoxTransform
CFG_WEIGHTS = [(8.0, 12.0, 4.0, 6.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0)]


def heads_cfg(tmp_path, name, **extra):
    import numpy as np

    from pomp_det.cfg_loader import get_pomp_cfg

    emb = tmp_path / "emb.npy"
    np.save(emb, np.random.default_rng(0).normal(size=(C, 5)).astype(np.float16))
    cfg = get_pomp_cfg()
    cfg.MODEL.ROI_HEADS.NAME, cfg.MODEL.ROI_HEADS.NUM_CLASSES = name, C
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2"]
    cfg.MODEL.ROI_BOX_HEAD.NAME, cfg.MODEL.ROI_BOX_HEAD.NUM_FC = "FastRCNNConvFCHead", 1
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM, cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 6, 3
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
    cfg.MODEL.POMP.EMBEDDINGS, cfg.MODEL.POMP.EMBED_DIM = str(emb), 5
    cfg.MODEL.POMP.FED_LOSS_WEIGHTS, cfg.DATASETS.TRAIN = "train_boxes", ()
    cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS = CFG_WEIGHTS
    cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS = (0.5, 0.6, 0.7)
    for k, v in extra.items():
        node, *path = k.split(".")
        target = cfg
        for part in [node, *path][:-1]:
            target = target[part]
        target[k.split(".")[-1]] = v
    return cfg


def test_cascade_heads_from_a_config_share_one_vocabulary_and_weight_source(tmp_path, monkeypatch):
    import pomp_det.fast_rcnn

    reads = []
    read = pomp_det.fast_rcnn.embeddings_from_config
    monkeypatch.setattr(pomp_det.fast_rcnn, "embeddings_from_config", lambda cfg: reads.append(1) or read(cfg))
    cfg = heads_cfg(tmp_path, "PompCascadeROIHeads", **{"DATALOADER.MULTI_DATASET": True})
    heads = build_heads(cfg)
    preds = list(heads.box_predictor)
    assert reads == [1]  # the vocabulary is read (or encoded with CLIP) once, for the first stage
    assert heads.image_label_training and len(preds) == 3
    assert tuple(cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS) == (10.0, 10.0, 5.0, 5.0)
    assert [tuple(p.box2box_transform.weights) for p in preds] == CFG_WEIGHTS
    for p in preds:
        torch.testing.assert_close(p.cls_score.embeddings, preds[0].cls_score.embeddings)
        assert p.proposal_score_in_probs is False and p.mult_proposal_score is True
        assert p._fed_loss_weight_source is preds[0]._fed_loss_weight_source is not None
        torch.testing.assert_close(p._fed_loss_weight_source(), torch.ones(C))
    assert heads._image_label_keys() == ["loss_image_label_stage0", "loss_image_label_stage1",
                                         "loss_image_label_stage2"]
    heads.set_class_embeddings(torch.randn(7, 5, generator=torch.Generator().manual_seed(1)), torch.arange(7.0))
    assert heads.num_classes == 7 and all(p.num_classes == 7 for p in preds)
    assert all(torch.equal(p.fed_loss_weight, torch.arange(7.0)) for p in preds)


def test_standard_heads_from_a_config(tmp_path):
    cfg = heads_cfg(tmp_path, "PompROIHeads")
    heads = build_heads(cfg)
    assert not heads.image_label_training
    assert isinstance(heads.box_predictor, PompFastRCNNOutputLayers) and heads.box_predictor.proposal_score_in_probs
    assert heads._predictors() == [heads.box_predictor] and heads._image_label_keys() == ["loss_image_label"]
    mask_cfg = heads_cfg(tmp_path, "PompROIHeads", **{"MODEL.MASK_ON": True, "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK": False})
    masked = build_heads(mask_cfg)
    with pytest.raises(ValueError) as e:
        masked.set_class_embeddings(torch.ones(7, 5))
    assert str(e.value) == ("the mask head predicts one mask per class, so its size is fixed: train with "
                            "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK True to change vocabularies")
    masked.mask_on = False  # masks switched off: the per-class mask head is never run
    masked.set_class_embeddings(torch.ones(7, 5))
    assert masked.num_classes == 7
    custom = build_heads(mask_cfg)
    del custom.mask_head.predictor  # a mask head of another kind, without a per-class predictor
    custom.set_class_embeddings(torch.ones(7, 5))
    assert custom.num_classes == 7
    agnostic = build_heads(heads_cfg(tmp_path, "PompROIHeads", **{"MODEL.MASK_ON": True,
                                                                  "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK": True}))
    agnostic.set_class_embeddings(torch.ones(7, 5))
    assert agnostic.num_classes == 7

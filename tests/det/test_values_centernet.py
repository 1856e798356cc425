"""pomp_det.centernet.proposal_generator: the heatmap / regression targets, the loss
normalisers and the proposals, against a per-location hand computation of CenterNet2's
_get_ground_truth / losses / predict (third_party/CenterNet2 at Detic's commit), on two
levels of odd, non-square sizes, several boxes, an empty image and boundary sizes."""
import math

import numpy as np
import pytest
import torch

from tests.frameworks import require

require("detectron2")
from detectron2.structures import Boxes, ImageList, Instances  # noqa: E402

from pomp_det.centernet.head import CenterNetHead  # noqa: E402
from pomp_det.centernet.losses import heatmap_focal_loss, ltrb_iou_loss  # noqa: E402
from pomp_det.centernet.proposal_generator import CenterNet  # noqa: E402

STRIDES = [4, 8]
SOI = [[0.0, 15.0], [10.0, 1e8]]
SHAPES = [(11, 15), (6, 8)]  # an image of 44 x 60


def generator(**kw):
    with torch.random.fork_rng(devices=[]):  # seeded layers; the global RNG is left as it was
        torch.manual_seed(0)
        head = CenterNetHead(8, 2, norm="", num_box_convs=0)
    return CenterNet(head=head, in_features=["p2", "p3"], strides=STRIDES, sizes_of_interest=SOI, **kw)


def gt(boxes, size=(44, 60)):
    inst = Instances(size)
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    return inst


# box 0: half diagonal exactly 10 (both levels: the bounds are inclusive), box 1: 13 (both),
# box 2: exactly 15 (both), box 3 in image 2: 25 (level 1), box 4: a 3 x 3 box whose one
# regressed location is less than a stride from each side; image 0 of the batch is empty
BOXES = [[], [[3.0, 5.0, 15.0, 21.0], [30.0, 9.0, 54.0, 19.0], [17.0, 20.0, 35.0, 44.0]],
         [[10.0, 4.0, 50.0, 34.0], [41.0, 29.0, 44.0, 32.0]]]


def hand_targets(boxes_per_image, min_overlap=0.8, min_radius=4.0):
    """Per location (image-major, levels in order): the heatmap, the ltrb target in strides
    (-1e8 = none) and the positive indices, written as CenterNet2's loops."""
    delta = (1 - min_overlap) / (1 + min_overlap)
    locs = []
    for (h, w), s, soi in zip(SHAPES, STRIDES, SOI):
        for y in range(h):
            for x in range(w):
                locs.append((x * s + s // 2, y * s + s // 2, s, soi))
    m = len(locs)
    heat, reg, pos = np.zeros(len(boxes_per_image) * m), np.full((len(boxes_per_image) * m, 4), -1e8), []
    for i, boxes in enumerate(boxes_per_image):
        base = 0
        for (h, w), s, (lo, hi) in zip(SHAPES, STRIDES, SOI):
            for x0, y0, x1, y1 in boxes:
                half_diag = math.hypot(x1 - x0, y1 - y0) / 2
                if lo <= half_diag <= hi:
                    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
                    pos.append(i * m + base + int(cy / s) * w + int(cx / s))
            base += h * w
        for k, (x, y, s, (lo, hi)) in enumerate(locs):
            best, best_w, dists = None, None, []
            for x0, y0, x1, y1 in boxes:
                cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
                dx, dy = int(cx / s) * s + s / 2, int(cy / s) * s + s / 2  # the centre's cell
                d2 = 0.0 if (x, y) == (dx, dy) else (x - cx) ** 2 + (y - cy) ** 2
                r2 = max(delta ** 2 * 2 * (x1 - x0) * (y1 - y0), min_radius ** 2)
                wd = d2 / r2
                dists.append(wd)
                ltrb = (x - x0, y - y0, x1 - x, y1 - y)
                near = abs(x - dx) <= s and abs(y - dy) <= s and min(ltrb) > 0
                size = math.hypot(ltrb[0] + ltrb[2], ltrb[1] + ltrb[3]) / 2
                if near and lo <= size <= hi and (best_w is None or wd < best_w):
                    best, best_w = [v / s for v in ltrb], wd
            if dists:
                v = math.exp(-min(dists))
                heat[i * m + k] = v if v >= 1e-4 else 0.0
            if best is not None:
                reg[i * m + k] = best
    return sorted(pos), heat, reg


def feats(batch):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(batch, 8, h, w, generator=g) for h, w in SHAPES]


def test_targets_equal_the_per_location_hand_computation():
    gen = generator()
    f = feats(3)
    pos, heat, reg = gen.targets(gen.grids(f), SHAPES, [gt(b) for b in BOXES])
    want_pos, want_heat, want_reg = hand_targets(BOXES)
    assert sorted(pos.tolist()) == want_pos
    assert len(want_pos) == 2 + 2 + 2 + 1 + 1  # boxes 0-2 on both levels
    np.testing.assert_allclose(heat.numpy(), want_heat, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(reg.numpy(), want_reg, rtol=1e-5, atol=1e-4)
    assert 0 < int((heat > 0).sum()) < heat.numel() and (heat[pos] == 1).all()
    valid = reg.max(1).values >= 0
    assert 6 < int(valid.sum()) < 60  # 3x3 cells near centres, not everywhere


def test_targets_follow_the_gaussian_overlap_and_radius():
    gen = generator(hm_min_overlap=0.6, min_radius=2.0)
    f = feats(3)
    _, heat, reg = gen.targets(gen.grids(f), SHAPES, [gt(b) for b in BOXES])
    _, want_heat, want_reg = hand_targets(BOXES, min_overlap=0.6, min_radius=2.0)
    np.testing.assert_allclose(heat.numpy(), want_heat, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(reg.numpy(), want_reg, rtol=1e-5, atol=1e-4)


def test_grids_are_cell_centres_x_then_y():
    gen = generator()
    grids = gen.grids(feats(1))
    assert grids[0][:3].tolist() == [[2.0, 2.0], [6.0, 2.0], [10.0, 2.0]]
    assert grids[0][15].tolist() == [2.0, 6.0]  # row 2 starts after 15 columns
    assert grids[1][-1].tolist() == [7 * 8 + 4.0, 5 * 8 + 4.0]
    assert [len(g) for g in grids] == [165, 48]


def focal(p_logits, target, pos, alpha=0.25, beta=4.0, gamma=2.0, clamp=1e-4):
    p = np.clip(1 / (1 + np.exp(-p_logits)), clamp, 1 - clamp)
    pos_l = -sum(math.log(p[i]) * (1 - p[i]) ** gamma for i in pos)
    neg_l = -float(np.sum(np.log(1 - p) * p ** gamma * (1 - target) ** beta))
    return alpha * pos_l, (1 - alpha) * neg_l


def iou(pred, target):
    out = []
    for (pl, pt, pr, pb), (tl, tt, tr, tb) in zip(pred, target):
        inter = (min(pl, tl) + min(pr, tr)) * (min(pt, tt) + min(pb, tb))
        union = (pl + pr) * (pt + pb) + (tl + tr) * (tt + tb) - inter
        out.append((inter + 1) / (union + 1))
    return np.array(out)


def giou(pred, target):
    out = []
    for (pl, pt, pr, pb), (tl, tt, tr, tb) in zip(pred, target):
        ap, at = (pl + pr) * (pt + pb), (tl + tr) * (tt + tb)
        inter = (min(pl, tl) + min(pr, tr)) * (min(pt, tt) + min(pb, tb))
        union = ap + at - inter
        iou = (inter + 1) / (union + 1)
        enclose = (max(pl, tl) + max(pr, tr)) * (max(pt, tt) + max(pb, tb))
        out.append(1 - (iou - (enclose - union) / enclose))
    return np.array(out)


def test_losses_normalise_by_positives_and_by_regressed_locations():
    gen = generator(pos_weight=0.5, neg_weight=0.7, reg_weight=3.0, focal_alpha=0.4, focal_beta=3.0,
                    focal_gamma=1.5, loc_loss_type="linear_iou").train()
    f = feats(3)
    images = ImageList(torch.zeros(3, 3, 44, 60), [(44, 60)] * 3)
    _, losses = gen(images, {"p2": f[0], "p3": f[1]}, [gt(b) for b in BOXES])
    heat_l, regs = gen.centernet_head(f)
    heat_p = torch.cat([h.flatten(1) for h in heat_l], 1).reshape(-1).detach().double().numpy()
    reg_p = torch.cat([r.flatten(2) for r in regs], 2).permute(0, 2, 1).reshape(-1, 4).detach().double().numpy()
    pos, heat_t, reg_t = hand_targets(BOXES)
    pos_l, neg_l = focal(heat_p, heat_t, pos, alpha=0.4, beta=3.0, gamma=1.5)
    valid = reg_t.max(1) >= 0
    assert (reg_t[valid].max(1) < 1).any()  # box 4's location counts though under a stride
    reg_l = (1 - iou(reg_p[valid], reg_t[valid])).sum()
    assert isinstance(_[0], Instances) and len(_) == 3
    assert float(losses["loss_centernet_agn_pos"]) == pytest.approx(0.5 * pos_l / len(pos), rel=1e-4)
    assert float(losses["loss_centernet_agn_neg"]) == pytest.approx(0.7 * neg_l / len(pos), rel=1e-4)
    assert float(losses["loss_centernet_loc"]) == pytest.approx(3.0 * reg_l / valid.sum(), rel=1e-4)


def test_losses_of_a_batch_without_boxes_divide_by_one():
    gen = generator().train()
    n = 3 * (165 + 48)
    logits = torch.linspace(-3, 1, n)
    losses = gen.losses(torch.zeros(0, dtype=torch.long), torch.zeros(n), torch.full((n, 4), -1e8),
                        logits, torch.ones(n, 4))
    _, neg = focal(logits.double().numpy(), np.zeros(n), [])
    assert float(losses["loss_centernet_agn_pos"]) == 0
    assert float(losses["loss_centernet_agn_neg"]) == pytest.approx(neg, rel=1e-4)
    assert float(losses["loss_centernet_loc"]) == 0


def test_proposals_by_hand_thresholds_topk_and_scores():
    gen = generator(score_thresh=0.3, pre_nms_topk=(7, 4), post_nms_topk=(9, 5), nms_thresh=(1.0, 1.0))
    grids = [torch.tensor([[2.0, 2.0], [6.0, 2.0], [2.0, 6.0], [6.0, 6.0], [10.0, 2.0], [10.0, 6.0]]),
             torch.tensor([[4.0, 4.0], [12.0, 4.0]])]
    g = torch.Generator().manual_seed(5)
    heat = [torch.tensor([0.9, -0.5, 2.0, -2.0, 0.1, 1.2]).view(1, 1, 2, 3),
            torch.tensor([-0.9, 3.0]).view(1, 1, 1, 2)]  # p = .71 .38 .88 .12 .52 .77 | .29 .95
    regs = [torch.rand(1, 4, 2, 3, generator=g) * 3, torch.rand(1, 4, 1, 2, generator=g) * 2]
    rows = []
    for lvl, (grid, h, r, s) in enumerate(zip(grids, heat, regs, STRIDES)):
        p = h.flatten().sigmoid()
        d = r.flatten(2)[0].t() * s
        order = [i for i in p.argsort(descending=True).tolist() if p[i] > 0.3][:4]  # test topk 4
        for i in order:
            rows.append((float(p[i].sqrt()), (grid[i] - d[i, :2]).tolist() + (grid[i] + d[i, 2:]).tolist()))
    rows.sort(key=lambda r: -r[0])
    rows = rows[:5]
    gen.eval()
    out = gen.predict_proposals(grids, heat, regs, [(12, 16)])[0]
    torch.testing.assert_close(out.objectness_logits.sigmoid(), torch.tensor([r[0] for r in rows]))
    torch.testing.assert_close(out.proposal_boxes.tensor, torch.tensor([r[1] for r in rows]))
    gen.train()  # training: pre 7, post 9: all 6 locations above 0.3
    assert len(gen.predict_proposals(grids, heat, regs, [(12, 16)])[0]) == 6


# CenterNet2's defaults (centernet/config.py at Detic's commit), written out
CENTERNET2_DEFAULTS = {
    "IN_FEATURES": ["p3", "p4", "p5", "p6", "p7"], "FPN_STRIDES": [8, 16, 32, 64, 128], "PRIOR_PROB": 0.01,
    "INFERENCE_TH": 0.05, "NMS_TH_TRAIN": 0.6, "NMS_TH_TEST": 0.6, "PRE_NMS_TOPK_TRAIN": 1000,
    "POST_NMS_TOPK_TRAIN": 100, "PRE_NMS_TOPK_TEST": 1000, "POST_NMS_TOPK_TEST": 100, "NORM": "GN",
    "NUM_BOX_CONVS": 4, "NUM_SHARE_CONVS": 0, "LOC_LOSS_TYPE": "giou", "SIGMOID_CLAMP": 1e-4,
    "HM_MIN_OVERLAP": 0.8, "MIN_RADIUS": 4, "SOI": [[0, 80], [64, 160], [128, 320], [256, 640], [512, 10000000]],
    "POS_WEIGHT": 1.0, "NEG_WEIGHT": 1.0, "REG_WEIGHT": 2.0, "HM_FOCAL_BETA": 4, "HM_FOCAL_ALPHA": 0.25,
    "LOSS_GAMMA": 2.0, "IGNORE_HIGH_FP": -1.0,
}


@pytest.mark.parametrize("key", sorted(CENTERNET2_DEFAULTS))
def test_config_defaults_are_centernet2s(key):
    from pomp_det.cfg_loader import get_pomp_cfg

    assert get_pomp_cfg().MODEL.CENTERNET[key] == CENTERNET2_DEFAULTS[key]


def test_from_config_passes_each_key_to_its_place():
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import build_proposal_generator

    from pomp_det.cfg_loader import get_pomp_cfg

    cfg = get_pomp_cfg()
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = "CenterNet"
    c = cfg.MODEL.CENTERNET
    c.IN_FEATURES, c.FPN_STRIDES, c.SOI = ["p3", "p4"], [8, 16], [[0, 30], [25, 1e8]]
    c.NORM, c.NUM_BOX_CONVS, c.NUM_SHARE_CONVS, c.PRIOR_PROB = "GN", 1, 2, 0.05
    c.HM_MIN_OVERLAP, c.MIN_RADIUS, c.HM_FOCAL_ALPHA, c.HM_FOCAL_BETA, c.LOSS_GAMMA = 0.7, 3, 0.3, 3, 1.5
    c.SIGMOID_CLAMP, c.IGNORE_HIGH_FP, c.POS_WEIGHT, c.NEG_WEIGHT, c.REG_WEIGHT = 1e-3, 0.85, 0.4, 0.6, 1.7
    c.LOC_LOSS_TYPE, c.INFERENCE_TH = "linear_iou", 0.11
    c.PRE_NMS_TOPK_TRAIN, c.PRE_NMS_TOPK_TEST, c.POST_NMS_TOPK_TRAIN, c.POST_NMS_TOPK_TEST = 11, 12, 13, 14
    c.NMS_TH_TRAIN, c.NMS_TH_TEST = 0.55, 0.65
    shapes = {"p3": ShapeSpec(channels=32, stride=8), "p4": ShapeSpec(channels=32, stride=16)}
    gen = build_proposal_generator(cfg, shapes)
    assert (gen.in_features, gen.strides, gen.sizes_of_interest) == (["p3", "p4"], [8, 16], [[0.0, 30.0], [25.0, 1e8]])
    assert gen.delta == pytest.approx(0.3 / 1.7) and gen.min_radius == 3
    assert gen.focal == dict(alpha=0.3, beta=3, gamma=1.5, sigmoid_clamp=1e-3, ignore_high_fp=0.85)
    assert (gen.pos_weight, gen.neg_weight, gen.reg_weight) == (0.4, 0.6, 1.7)
    assert (gen.loc_loss_type, gen.score_thresh) == ("linear_iou", 0.11)
    assert (gen.pre_nms_topk, gen.post_nms_topk, gen.nms_thresh) == ((11, 12), (13, 14), (0.55, 0.65))
    head = gen.centernet_head
    assert len(head.bbox_tower) == 3 and len(head.share_tower) == 6 and len(head.scales) == 2  # conv, GN, ReLU
    assert isinstance(head.bbox_tower[1], torch.nn.GroupNorm)
    assert float(head.agn_hm.bias) == pytest.approx(-math.log(0.95 / 0.05))
    c.IN_FEATURES = ["p3", "p6"]
    with pytest.raises(ValueError) as e:
        build_proposal_generator(cfg, shapes)
    assert str(e.value) == ("MODEL.CENTERNET.IN_FEATURES ['p6'] are not backbone outputs ['p3', 'p4']: use a "
                            "backbone with P6/P7 (e.g. build_pomp_timm_p67_fpn_backbone) or list its levels")
    c.IN_FEATURES = ["p3", "p4"]
    c.NORM = ""  # no norm: conv, ReLU per tower conv
    plain = build_proposal_generator(cfg, shapes).centernet_head
    assert len(plain.bbox_tower) == 2 and not [m for m in plain.modules() if isinstance(m, torch.nn.GroupNorm)]
    c.NORM = "GN"
    with pytest.raises(ValueError, match="equal width"):
        build_proposal_generator(cfg, {"p3": ShapeSpec(channels=16), "p4": ShapeSpec(channels=8)})
    c.WITH_AGN_HM = False
    with pytest.raises(ValueError, match=r"^pomp_det's CenterNet is CenterNet2's proposal network: set "
                       r"MODEL\.CENTERNET\.ONLY_PROPOSAL and WITH_AGN_HM True \(the one-stage per-class "
                       r"detector is not implemented\)$"):
        build_proposal_generator(cfg, shapes)
    with pytest.raises(ValueError, match="one entry per level"):
        CenterNet(head=gen.centernet_head, in_features=["p3"], strides=[8, 16], sizes_of_interest=[[0, 1]])
    with pytest.raises(ValueError) as e:  # levels and strides agree, the size ranges do not
        CenterNet(head=gen.centernet_head, in_features=["p3", "p4"], strides=[8, 16], sizes_of_interest=[[0, 1]])
    assert str(e.value) == ("MODEL.CENTERNET.IN_FEATURES, FPN_STRIDES and SOI need one entry per level, "
                            "got 2, 2 and 1")


def test_targets_of_a_batch_without_boxes_and_grids_of_odd_strides():
    gen = generator()
    f = feats(2)
    pos, heat, reg = gen.targets(gen.grids(f), SHAPES, [gt([]), gt([])])
    assert pos.dtype == torch.long and pos.numel() == 0
    assert heat.abs().sum() == 0 and (reg < 0).all()
    odd = CenterNet(head=gen.centernet_head, in_features=["a", "b"], strides=[3, 5], sizes_of_interest=SOI)
    g = odd.grids([torch.zeros(1, 8, 2, 3), torch.zeros(1, 8, 1, 2)])
    assert g[0].tolist() == [[1, 1], [4, 1], [7, 1], [1, 4], [4, 4], [7, 4]]  # + stride // 2
    assert g[1].tolist() == [[2, 2], [7, 2]]


def test_three_levels_offset_the_positive_indices_by_every_lower_level():
    head = CenterNetHead(8, 3, norm="", num_box_convs=0)
    gen = CenterNet(head=head, in_features=["a", "b", "c"], strides=[4, 8, 16],
                    sizes_of_interest=[[0, 8], [8, 16], [16, 1e8]])
    f = [torch.zeros(1, 8, 11, 15), torch.zeros(1, 8, 6, 8), torch.zeros(1, 8, 3, 4)]
    box = [[4.0, 2.0, 44.0, 32.0]]  # half diagonal 25: level 2 only, centre (24, 17)
    pos, _, _ = gen.targets(gen.grids(f), [x.shape[-2:] for x in f], [gt(box)])
    assert pos.tolist() == [165 + 48 + 1 * 4 + 1]


def test_loss_normalisers_average_over_ranks(monkeypatch):
    """With 2 ranks the sums are all-reduced and divided by the world size (here the other
    rank holds the same counts, so the losses stay those of one rank)."""
    from detectron2.utils import comm

    gen = generator().train()
    f = feats(3)
    images = ImageList(torch.zeros(3, 3, 44, 60), [(44, 60)] * 3)
    _, one = gen(images, {"p2": f[0], "p3": f[1]}, [gt(b) for b in BOXES])
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda x: x.mul_(2))
    _, two = gen(images, {"p2": f[0], "p3": f[1]}, [gt(b) for b in BOXES])
    for k in one:
        assert float(two[k]) == pytest.approx(float(one[k]), rel=1e-6)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda x: x.mul_(4))  # other rank: 3x the counts
    _, more = gen(images, {"p2": f[0], "p3": f[1]}, [gt(b) for b in BOXES])
    assert float(more["loss_centernet_loc"]) == pytest.approx(float(one["loss_centernet_loc"]) / 2, rel=1e-6)


def test_a_single_regressed_location_is_divided_by_one():
    gen = generator().train()
    n = 3 * (165 + 48)
    reg_t = torch.full((n, 4), -1e8)
    reg_t[7] = torch.tensor([0.25, 0.5, 0.5, 0.25])
    reg_p = torch.full((n, 4), 0.5)
    losses = gen.losses(torch.tensor([7]), torch.zeros(n), reg_t, torch.zeros(n), reg_p)
    want = 2.0 * giou(reg_p[7:8].double().numpy(), reg_t[7:8].double().numpy()).sum()
    assert float(losses["loss_centernet_loc"]) == pytest.approx(want, rel=1e-5)


def test_regression_loss_takes_its_type_and_counts_rows_whose_max_is_zero():
    """LOC_LOSS_TYPE reaches the loss (here -log IoU, a prediction not enclosing its target:
    GIoU would differ); CenterNet2 regresses every row whose max is >= 0, a zero row too."""
    gen = generator(loc_loss_type="iou", reg_weight=1.5).train()
    n = 3 * (165 + 48)
    reg_t = torch.full((n, 4), -1e8)
    reg_t[7] = torch.tensor([0.25, 0.5, 0.5, 0.25])
    reg_t[30] = 0.0
    reg_p = torch.full((n, 4), 0.5)
    reg_p[7] = torch.tensor([0.1, 0.9, 0.3, 0.6])
    losses = gen.losses(torch.tensor([7]), torch.zeros(n), reg_t, torch.zeros(n), reg_p)
    rows = [7, 30]
    want = -np.log(iou(reg_p[rows].double().numpy(), reg_t[rows].double().numpy())).sum() / 2
    assert float(losses["loss_centernet_loc"]) == pytest.approx(1.5 * want, rel=1e-5)
    assert want != pytest.approx(giou(reg_p[rows].double().numpy(), reg_t[rows].double().numpy()).sum() / 2)


def test_constructor_defaults_are_centernet2s():
    """The keyword defaults of CenterNet (used when it is built without a config) are
    CenterNet2's config defaults, written out."""
    gen = generator()
    assert gen.delta == pytest.approx(0.2 / 1.8) and gen.min_radius == 4
    assert gen.focal == dict(alpha=0.25, beta=4.0, gamma=2.0, sigmoid_clamp=1e-4, ignore_high_fp=-1.0)
    assert (gen.pos_weight, gen.neg_weight, gen.reg_weight) == (1.0, 1.0, 2.0)
    assert (gen.loc_loss_type, gen.score_thresh) == ("giou", 0.05)
    assert (gen.pre_nms_topk, gen.post_nms_topk, gen.nms_thresh) == ((1000, 1000), (100, 100), (0.6, 0.6))
    assert gen.in_features == ["p2", "p3"] and gen.strides == STRIDES and gen.sizes_of_interest == SOI


def score_logit(heat_logit: float) -> float:
    """logit(sqrt(sigmoid(x))): the objectness_logits of a heatmap logit x, by hand."""
    score = math.sqrt(1 / (1 + math.exp(-heat_logit)))
    return math.log(score / (1 - score))


def edge_case_maps():
    """Level 0 (2 x 2, stride 4): a location exactly at the threshold 0.5 (logit 0), one of
    score 1 (logit 20) with the box [2, -2, 10, 6], one (logit 1) whose box [2, -1, 10, 6]
    overlaps that one with IoU 56 / 64 = 0.875; level 1 (1 x 1, stride 8): inverted distances."""
    grids = [torch.tensor([[2.0, 2.0], [6.0, 2.0], [2.0, 6.0], [6.0, 6.0]]), torch.tensor([[4.0, 4.0]])]
    heat = [torch.tensor([0.0, 20.0, 1.0, -1.0]).view(1, 1, 2, 2), torch.tensor([2.0]).view(1, 1, 1, 1)]
    regs = [torch.zeros(1, 4, 2, 2), torch.tensor([-0.5, 0.0, 0.0, -0.25]).view(1, 4, 1, 1)]
    regs[0][0, :, 0, 0] = 1.0
    regs[0][0, :, 0, 1] = 1.0
    regs[0][0, :, 1, 0] = torch.tensor([0.0, 1.75, 2.0, 0.0])
    return grids, heat, regs


def test_proposals_strict_threshold_min_size_nms_per_mode_and_a_finite_logit():
    """CenterNet2's predict: a location exactly at INFERENCE_TH is dropped (heatmap > th); an
    inverted box keeps 0.01 px each way from its top-left; NMS_TH_TEST (0.5) suppresses what
    NMS_TH_TRAIN (0.9) keeps; a score of 1 gets the logit of 1 - 1e-6, not inf."""
    gen = generator(score_thresh=0.5, pre_nms_topk=(10, 10), post_nms_topk=(10, 10), nms_thresh=(0.9, 0.5))
    grids, heat, regs = edge_case_maps()
    top = float(torch.tensor(1 - 1e-6))  # the clamp bound in float32
    logits = [math.log(top / (1 - top)), score_logit(2.0), score_logit(1.0)]
    boxes = [[2.0, -2.0, 10.0, 6.0], [8.0, 4.0, 8.01, 4.01], [2.0, -1.0, 10.0, 6.0]]
    for training, n in [(False, 2), (True, 3)]:
        gen.train(training)
        out = gen.predict_proposals(grids, heat, regs, [(12, 16)])[0]
        assert out.image_size == (12, 16)
        torch.testing.assert_close(out.proposal_boxes.tensor, torch.tensor(boxes[:n]))
        assert torch.isfinite(out.objectness_logits).all()
        assert out.objectness_logits.tolist() == pytest.approx(logits[:n], rel=1e-4)


def test_proposals_of_half_precision_maps_are_scored_in_float32():
    """Half maps (AMP) give the float32 proposals: sigmoid(9) rounds to 1 in half, whose
    logit would be inf."""
    gen = generator(score_thresh=0.05, nms_thresh=(1.0, 1.0)).eval()
    grids, _, regs = edge_case_maps()
    heat = [torch.tensor([9.0, 3.0, -1.0, 0.5]).view(1, 1, 2, 2), torch.tensor([6.0]).view(1, 1, 1, 1)]
    want = gen.predict_proposals(grids, heat, regs, [(12, 16)])[0]
    got = gen.predict_proposals(grids, [h.half() for h in heat], [r.half() for r in regs], [(12, 16)])[0]
    assert torch.isfinite(got.objectness_logits).all() and got.objectness_logits.dtype == torch.float32
    torch.testing.assert_close(got.objectness_logits, want.objectness_logits)
    torch.testing.assert_close(got.proposal_boxes.tensor, want.proposal_boxes.tensor)
    # 1 - score is ~6e-5 here, held by float32 (spacing 6e-8 near 1) to ~1e-3 relative
    assert float(want.objectness_logits[0]) == pytest.approx(score_logit(9.0), rel=1e-3)


LTRB_PRED = [[1.0, 2.0, 3.0, 0.5], [0.5, 0.25, 2.0, 1.5], [2.0, 2.0, 2.0, 2.0]]
LTRB_TARGET = [[2.0, 1.0, 1.0, 1.5], [0.25, 1.0, 0.5, 3.0], [1.0, 3.0, 0.5, 2.0]]


@pytest.mark.parametrize("kind", ["giou", "iou", "linear_iou"])
def test_ltrb_losses_by_hand_on_boxes_where_the_smoothing_counts(kind):
    """Boxes of a few px^2, asymmetric in every side: the +1 smoothing, each side's min / max
    and the loss form all change the numbers."""
    got = ltrb_iou_loss(torch.tensor(LTRB_PRED, dtype=torch.float64), torch.tensor(LTRB_TARGET, dtype=torch.float64),
                        kind)
    smoothed = iou(LTRB_PRED, LTRB_TARGET)
    want = {"giou": giou(LTRB_PRED, LTRB_TARGET), "iou": -np.log(smoothed), "linear_iou": 1 - smoothed}[kind]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    # the smoothing matters here: row 0's IoU is (3 + 1) / (14.5 + 1), unsmoothed 3 / 14.5
    assert smoothed[0] == pytest.approx(4 / 15.5)


def test_focal_loss_defaults_clamp_high_fp_threshold_and_alpha_zero():
    logits = torch.tensor([12.0, -12.0, 0.0, 1.5, -0.5], dtype=torch.float64)
    target = torch.tensor([1.0, 0.0, 0.3, 0.0, 0.9], dtype=torch.float64)
    pos = torch.tensor([0, 3])
    x, t = logits.numpy(), target.numpy()
    got = heatmap_focal_loss(logits, target, pos)  # defaults: alpha 0.25, beta 4, gamma 2, clamp 1e-4
    assert [float(v) for v in got] == pytest.approx(focal(x, t, [0, 3]), rel=1e-10)
    got = heatmap_focal_loss(logits, target, pos, sigmoid_clamp=1e-2)  # p(12) = 0.99 and p(-12) = 0.01
    assert [float(v) for v in got] == pytest.approx(focal(x, t, [0, 3], clamp=1e-2), rel=1e-10)
    # IGNORE_HIGH_FP 0.5: p = 0.5 (logit 0) is no longer penalised (p < th), nor 0.82 nor 1
    _, neg = heatmap_focal_loss(logits, target, pos, alpha=-1.0, ignore_high_fp=0.5)
    keep = [1, 4]
    _, want = focal(x[keep], t[keep], [], alpha=0.0)
    assert float(neg) == pytest.approx(want, rel=1e-10)
    _, neg = heatmap_focal_loss(logits, target, pos, alpha=-1.0, ignore_high_fp=0.0)  # 0: off, as -1
    assert float(neg) == pytest.approx(focal(x, t, [0, 3], alpha=0.0)[1], rel=1e-10)
    # alpha 0 still weights (CenterNet2: alpha >= 0): no positive term, the negatives in full
    pos_l, neg_l = heatmap_focal_loss(logits, target, pos, alpha=0.0)
    _, full = focal(x, t, [0, 3], alpha=0.0)
    assert float(pos_l) == 0 and float(neg_l) == pytest.approx(full, rel=1e-10)


# level 0 (2 x 3) p = .71 .38 .88 .12 .52 .77, level 1 (1 x 2) p = .29 .60: above 0.3, five
# locations on level 0 and one on level 1, whose .60 ranks below level 0's third best
TOPK_HEAT = [torch.tensor([0.9, -0.5, 2.0, -2.0, 0.1, 1.2]).view(1, 1, 2, 3), torch.tensor([-0.9, 0.405]).view(1, 1, 1, 2)]
TOPK_GRIDS = [torch.tensor([[2.0, 2.0], [6.0, 2.0], [10.0, 2.0], [2.0, 6.0], [6.0, 6.0], [10.0, 6.0]]),
              torch.tensor([[4.0, 4.0], [12.0, 4.0]])]


@pytest.mark.parametrize("pre, post, test_logits", [
    ((7, 2), (9, 9), [2.0, 1.2, 0.405]),  # the test pre-NMS top 2 of level 0 lets level 1's .60 in
    ((7, 7), (9, 2), [2.0, 1.2]),  # the test post-NMS top 2 over both levels
])
def test_pre_and_post_nms_topk_follow_the_mode(pre, post, test_logits):
    gen = generator(score_thresh=0.3, pre_nms_topk=pre, post_nms_topk=post, nms_thresh=(1.0, 1.0))
    regs = [torch.ones(1, 4, 2, 3), torch.ones(1, 4, 1, 2)]
    out = gen.eval().predict_proposals(TOPK_GRIDS, TOPK_HEAT, regs, [(12, 16)])[0]
    want = [math.sqrt(1 / (1 + math.exp(-x))) for x in test_logits]  # the kept heatmap logits
    assert out.objectness_logits.sigmoid().tolist() == pytest.approx(want, rel=1e-5)
    assert len(gen.train().predict_proposals(TOPK_GRIDS, TOPK_HEAT, regs, [(12, 16)])[0]) == 6  # 7 and 9


def test_proposals_of_each_image_come_from_its_own_maps():
    """Two images of a batch, of different sizes: each gets its own size and the proposals of
    its own maps (those of a batch of one)."""
    gen = generator(score_thresh=0.3, nms_thresh=(1.0, 1.0)).eval()
    g = torch.Generator().manual_seed(6)
    heat = [torch.cat([TOPK_HEAT[0], -TOPK_HEAT[0]]), torch.cat([TOPK_HEAT[1], TOPK_HEAT[1] + 1])]
    regs = [torch.rand(2, 4, 2, 3, generator=g) * 2, torch.rand(2, 4, 1, 2, generator=g)]
    out = gen.predict_proposals(TOPK_GRIDS, heat, regs, [(12, 16), (10, 14)])
    assert [o.image_size for o in out] == [(12, 16), (10, 14)]
    for i, size in enumerate([(12, 16), (10, 14)]):
        one = gen.predict_proposals(TOPK_GRIDS, [h[i:i + 1] for h in heat], [r[i:i + 1] for r in regs], [size])[0]
        torch.testing.assert_close(out[i].proposal_boxes.tensor, one.proposal_boxes.tensor)
        torch.testing.assert_close(out[i].objectness_logits, one.objectness_logits)
    assert len(out[0]) != len(out[1])

"""CenterNet2's recipe in pomp_det: the CenterNet proposal generator (losses, targets,
proposals and their scores), Detic's timm ResNet + FPN, the AdamW solver, the recipe configs
(full model, one training step per stage on CPU) and the key map of a released Detic checkpoint."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.frameworks import require

require("detectron2")
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.layers import ShapeSpec  # noqa: E402
from detectron2.modeling import build_model, build_proposal_generator  # noqa: E402
from detectron2.structures import BitMasks, Boxes, ImageList, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

import pomp_det  # noqa: E402
from pomp_det.backbones import TimmResNet  # noqa: E402
from pomp_det.centernet import build_optimizer  # noqa: E402
from pomp_det.centernet.losses import heatmap_focal_loss, ltrb_iou_loss  # noqa: E402
from pomp_det.detic_checkpoint import convert, detic_embeddings, load_detic_checkpoint, map_keys  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
C2 = ROOT / "configs" / "det" / "centernet2"
FIXTURE = ROOT / "tests" / "fixtures" / "detic_c2_r50_lvis_keys.json"


# ---------------------------------------------------------------- losses
def test_heatmap_focal_loss_on_a_tiny_target():
    logits = torch.tensor([0.3, -1.0, 2.0, -3.0])
    target = torch.tensor([1.0, 0.5, 0.0, 0.0])
    pos = torch.tensor([0])
    p = torch.sigmoid(logits)
    want_pos = -math.log(p[0]) * (1 - p[0]) ** 2
    # every location is a negative, weighted by (1 - target)^4 (the centre's weight is 0)
    want_neg = -sum(math.log(1 - p[i]) * p[i] ** 2 * (1 - target[i]) ** 4 for i in range(4))
    got_pos, got_neg = heatmap_focal_loss(logits, target, pos, alpha=-1, beta=4, gamma=2)
    assert got_pos.item() == pytest.approx(float(want_pos), rel=1e-5)
    assert got_neg.item() == pytest.approx(float(want_neg), rel=1e-5)
    a_pos, a_neg = heatmap_focal_loss(logits, target, pos, alpha=0.25)
    assert a_pos.item() == pytest.approx(0.25 * float(want_pos), rel=1e-5)
    assert a_neg.item() == pytest.approx(0.75 * float(want_neg), rel=1e-5)
    # confident negatives (p = 0.88 at index 2) are not penalised above IGNORE_HIGH_FP
    _, high_ignored = heatmap_focal_loss(logits, target, pos, alpha=-1, ignore_high_fp=0.85)
    without_2 = want_neg + math.log(1 - p[2]) * p[2] ** 2
    assert high_ignored.item() == pytest.approx(float(without_2), rel=1e-5)


def test_giou_loss_on_ltrb_distances():
    from torchvision.ops import generalized_box_iou_loss

    g = torch.Generator().manual_seed(0)
    pred = torch.rand(7, 4, generator=g) * 300 + 50
    target = torch.rand(7, 4, generator=g) * 300 + 50
    as_xyxy = lambda d: torch.stack([-d[:, 0], -d[:, 1], d[:, 2], d[:, 3]], 1)  # noqa: E731
    want = generalized_box_iou_loss(as_xyxy(pred), as_xyxy(target))
    # CenterNet2 smooths IoU by +1 / +1: negligible for boxes of ~1e5 px^2
    torch.testing.assert_close(ltrb_iou_loss(pred, target), want, atol=1e-4, rtol=1e-4)
    assert ltrb_iou_loss(target, target).abs().max() < 1e-6
    iou = ltrb_iou_loss(pred, target, "linear_iou")
    assert torch.all(ltrb_iou_loss(pred, target) >= iou - 1e-6)  # the enclosure term only adds
    with pytest.raises(ValueError, match="LOC_LOSS_TYPE"):
        ltrb_iou_loss(pred, target, "l1")


# ---------------------------------------------------------------- the proposal generator
def centernet_cfg(**over):
    cfg = pomp_det.get_pomp_cfg()
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = "CenterNet"
    c = cfg.MODEL.CENTERNET
    c.IN_FEATURES, c.FPN_STRIDES = ["p3", "p4", "p5"], [8, 16, 32]
    c.SOI = [[0, 24], [16, 48], [40, 1e8]]
    c.NUM_BOX_CONVS, c.INFERENCE_TH = 1, 0.0
    c.PRE_NMS_TOPK_TEST, c.POST_NMS_TOPK_TEST = 50, 20
    for k, v in over.items():
        setattr(c, k, v)
    return cfg


SHAPES = {"p3": ShapeSpec(channels=32, stride=8), "p4": ShapeSpec(channels=32, stride=16),
          "p5": ShapeSpec(channels=32, stride=32)}


def features(h=72, w=104, seed=0):  # odd level sizes: 9x13, 5x7 (padded), 3x4
    g = torch.Generator().manual_seed(seed)
    return {f"p{l}": torch.randn(2, 32, -(-h // 2 ** l), -(-w // 2 ** l), generator=g) for l in (3, 4, 5)}


def test_centernet_is_registered_and_predicts_scored_proposals():
    torch.manual_seed(0)
    gen = build_proposal_generator(centernet_cfg(), SHAPES).eval()
    assert type(gen).__name__ == "CenterNet"
    feats = features()
    images = ImageList(torch.zeros(2, 3, 72, 104), [(72, 104), (60, 90)])
    heat, regs = gen.centernet_head([feats[f] for f in ("p3", "p4", "p5")])
    assert [tuple(h.shape) for h in heat] == [(2, 1, 9, 13), (2, 1, 5, 7), (2, 1, 3, 4)]
    assert [tuple(r.shape) for r in regs] == [(2, 4, 9, 13), (2, 4, 5, 7), (2, 4, 3, 4)]
    assert all((r >= 0).all() for r in regs)
    with torch.no_grad():
        proposals, losses = gen(images, feats)
    assert losses == {}
    # every score is sqrt(heatmap) of some location (CenterNet2's proposal score), sorted, and
    # sigmoid(objectness_logits) gives it back for the second stage's product
    all_scores = torch.cat([h[0].sigmoid().flatten() for h in heat]).sqrt()
    p = proposals[0]
    assert 0 < len(p) <= 20
    s = p.objectness_logits.sigmoid()
    assert torch.all(s[:-1] >= s[1:])
    assert torch.all((s[:, None] - all_scores[None]).abs().min(1).values < 1e-5)
    widths = p.proposal_boxes.tensor[:, 2:] - p.proposal_boxes.tensor[:, :2]
    assert (widths > 0).all()


def test_targets_put_the_peak_at_the_centre_cell_of_the_right_level():
    gen = build_proposal_generator(centernet_cfg(), SHAPES)
    feats = [features()[f] for f in ("p3", "p4", "p5")]
    grids = gen.grids(feats)
    shapes = [tuple(x.shape[-2:]) for x in feats]
    inst = Instances((72, 104))
    # half-diagonal 18 (levels 0 and 1 of SOI [0, 24], [16, 48]); centre (42, 30)
    inst.gt_boxes = Boxes(torch.tensor([[42 - 14.4, 30 - 10.8, 42 + 14.4, 30 + 10.8]]))
    empty = Instances((72, 104))
    empty.gt_boxes = Boxes(torch.zeros(0, 4))
    pos, heat, reg = gen.targets(grids, shapes, [empty, inst])
    m = sum(len(g) for g in grids)
    assert heat.shape == (2 * m,) and reg.shape == (2 * m, 4)
    assert heat[:m].sum() == 0 and (reg[:m] < 0).all()  # the empty image: no targets
    # positives: cell (42 // 8, 30 // 8) = (5, 3) on level 0 and (2, 1) on level 1, image 1
    assert pos.tolist() == [m + 3 * 13 + 5, m + 117 + 1 * 7 + 2]
    assert torch.allclose(heat[pos], torch.ones(2))
    assert heat.max() == 1 and heat.min() == 0
    # the peak regresses the box in strides: (l, t, r, b) from the cell centre (44, 28)
    box = inst.gt_boxes.tensor[0]
    want = torch.stack([44 - box[0], 28 - box[1], box[2] - 44, box[3] - 28]) / 8
    torch.testing.assert_close(reg[pos[0]], want)
    # only the cells of the 3x3 around the centre that lie in the box regress, on the box's
    # levels: all 9 at stride 8, 2 x 2 at stride 16 (x 24 and y 8 fall outside), none at 32
    assert int((reg[m:].max(1).values >= 0).sum()) == 9 + 4
    assert (reg[m + 117 + 35:] < 0).all()


def test_centernet_losses_train_the_heatmap_towards_the_targets():
    torch.manual_seed(0)
    gen = build_proposal_generator(centernet_cfg(IGNORE_HIGH_FP=-1.0), SHAPES).train()
    feats = features(seed=1)
    inst = Instances((72, 104))
    inst.gt_boxes = Boxes(torch.tensor([[20.0, 10.0, 60.0, 50.0], [70.0, 30.0, 100.0, 70.0]]))
    images = ImageList(torch.zeros(2, 3, 72, 104), [(72, 104)] * 2)
    opt = torch.optim.SGD(gen.parameters(), lr=0.05)
    first = None
    for _ in range(15):
        _, losses = gen(images, feats, [inst, inst])
        assert set(losses) == {"loss_centernet_agn_pos", "loss_centernet_agn_neg", "loss_centernet_loc"}
        total = sum(losses.values())
        first = first if first is not None else {k: v.item() for k, v in losses.items()}
        opt.zero_grad()
        total.backward()
        opt.step()
    assert losses["loss_centernet_agn_pos"].item() < first["loss_centernet_agn_pos"]
    assert losses["loss_centernet_loc"].item() < first["loss_centernet_loc"]


def test_bad_centernet_configs_say_what_to_change():
    with pytest.raises(ValueError, match="ONLY_PROPOSAL"):
        build_proposal_generator(centernet_cfg(ONLY_PROPOSAL=False), SHAPES)
    with pytest.raises(ValueError, match="p67"):
        build_proposal_generator(centernet_cfg(IN_FEATURES=["p3", "p6"], FPN_STRIDES=[8, 64],
                                               SOI=[[0, 64], [64, 1e8]]), SHAPES)
    with pytest.raises(ValueError, match="one entry per level"):
        build_proposal_generator(centernet_cfg(FPN_STRIDES=[8, 16]), SHAPES)


# ---------------------------------------------------------------- backbone and solver
def test_timm_resnet_loads_torchvision_and_timm_checkpoints(tmp_path):
    import timm
    import torchvision

    tv = torchvision.models.resnet18(num_classes=7)
    torch.save({"state_dict": {"module." + k: v for k, v in tv.state_dict().items()}}, tmp_path / "tv.pth")
    net = TimmResNet("resnet18", (3, 4, 5), checkpoint=str(tmp_path / "tv.pth"))
    torch.testing.assert_close(net.base.layer3[1].conv2.weight, tv.layer3[1].conv2.weight)
    # FrozenBN keeps the statistics of the checkpoint
    torch.testing.assert_close(net.base.layer1[0].bn1.running_var, tv.layer1[0].bn1.running_var)
    assert net.output_shape()["layer3"].stride == 8 and net.output_shape()["layer5"].channels == 512
    out = net(torch.randn(1, 3, 64, 96))
    assert [tuple(v.shape) for v in out.values()] == [(1, 128, 8, 12), (1, 256, 4, 6), (1, 512, 2, 3)]
    tm = timm.create_model("resnet18", pretrained=False)
    torch.save(tm.state_dict(), tmp_path / "timm.pth")
    net = TimmResNet("resnet18", (3, 4, 5), checkpoint=str(tmp_path / "timm.pth"), norm="BN")
    torch.testing.assert_close(net.base.conv1.weight, tm.conv1.weight)
    with pytest.raises(ValueError, match="ResNet-50 of timm or torchvision"):
        TimmResNet("resnet34", (3, 4, 5), checkpoint=str(tmp_path / "timm.pth"))
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        TimmResNet("resnet18", (3, 4, 5), checkpoint=str(tmp_path / "missing.pth"))


def test_adamw_solver_with_backbone_multiplier_and_clipping():
    cfg = pomp_det.get_pomp_cfg()
    cfg.SOLVER.OPTIMIZER, cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY = "ADAMW", 2e-4, 1e-4
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    model = torch.nn.ModuleDict({"backbone": torch.nn.Linear(3, 3), "head": torch.nn.Linear(3, 2)})
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.AdamW)
    lrs = sorted(g["lr"] for g in opt.param_groups)
    assert lrs == pytest.approx([2e-5, 2e-5, 2e-4, 2e-4])
    assert all(g["weight_decay"] == 1e-4 for g in opt.param_groups)
    # per-parameter value clipping (detectron2's default: 1.0), skipping parameters without a
    # gradient (the box regressor on an image-label batch)
    model["head"](torch.ones(1, 3) * 100).sum().backward()
    opt.step()
    assert model["head"].weight.grad.abs().max() == 1.0 and model["backbone"].weight.grad is None
    cfg.SOLVER.OPTIMIZER = "LAMB"
    with pytest.raises(ValueError, match="SGD or ADAMW"):
        build_optimizer(cfg, model)


# ---------------------------------------------------------------- the recipe on CPU
SMALL = ["MODEL.DEVICE", "cpu", "MODEL.TIMM.CHECKPOINT", "", "DATASETS.TRAIN", "()", "DATASETS.TEST", "()",
         "MODEL.CENTERNET.PRE_NMS_TOPK_TRAIN", "300", "MODEL.CENTERNET.POST_NMS_TOPK_TRAIN", "64",
         "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "SOLVER.AMP.ENABLED", "False"]


def recipe_cfg(name, emb, extra=()):
    return pomp_det.load_pomp_cfg(str(C2 / name), SMALL + [
        "MODEL.POMP.EMBEDDINGS", str(emb), "MODEL.POMP.CAT_FREQ_PATH", str(emb.with_name("cat_info.json")), *extra])


def lvis_batch(n=2, size=(160, 224), ann_type="box"):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        h, w = size
        inst = Instances(size)
        xy = torch.randint(0, min(h, w) // 2, (3, 2), generator=g).float()
        boxes = torch.cat([xy, xy + 24 + torch.randint(0, 60, (3, 2), generator=g)], 1)
        boxes[:, 2::2] = boxes[:, 2::2].clamp(max=w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(max=h)
        inst.gt_boxes = Boxes(boxes)
        inst.gt_classes = torch.randint(0, 1203, (3,), generator=g)
        masks = torch.zeros(3, h, w, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
            masks[i, y0:y1, x0:x1] = True
        inst.gt_masks = BitMasks(masks)
        d = {"image": torch.randint(0, 255, (3, h, w), generator=g).float(), "height": h, "width": w,
             "instances": inst if ann_type == "box" else Instances(size, gt_boxes=Boxes(torch.zeros(0, 4)),
                                                                  gt_classes=torch.zeros(0, dtype=torch.long))}
        if ann_type == "image":
            d["ann_type"], d["pos_category_ids"] = "image", [int(c) for c in inst.gt_classes]
        out.append(d)
    return out


def one_step(model, cfg, batch):
    model.train()
    opt = build_optimizer(cfg, model)
    with EventStorage():
        losses = model(batch)
    opt.zero_grad()
    sum(losses.values()).backward()
    opt.step()
    return losses


@pytest.fixture(scope="module")
def lvis_embeddings(tmp_path_factory):
    """Random LVIS-sized class embeddings, and a category-info file (federated-loss weights)
    next to them with uneven image counts."""
    path = tmp_path_factory.mktemp("c2") / "lvis_emb.npy"
    np.save(path, np.random.default_rng(0).normal(size=(1203, 512)).astype(np.float16))
    info = [{"id": i + 1, "image_count": (i * 7) % 50 + 1} for i in range(1203)]
    path.with_name("cat_info.json").write_text(json.dumps(info))
    return path


@pytest.fixture(scope="module")
def boxsup(lvis_embeddings, tmp_path_factory):
    """The stage-1 model after one training step, saved as its OUTPUT_DIR's model_final.pth."""
    torch.manual_seed(0)
    cfg = recipe_cfg("BoxSup-C2_Lbase_pomp_R5021k_640b64_4x.yaml", lvis_embeddings)
    model = build_model(cfg)
    losses = one_step(model, cfg, lvis_batch())
    out = tmp_path_factory.mktemp("boxsup")
    DetectionCheckpointer(model, save_dir=str(out)).save("model_final")
    return cfg, model, losses, out / "model_final.pth"


def test_boxsup_stage_builds_detics_model_and_trains(boxsup):
    cfg, model, losses, _ = boxsup
    assert type(model.proposal_generator).__name__ == "CenterNet"
    assert type(model.roi_heads).__name__ == "PompCascadeROIHeads" and len(model.roi_heads.box_predictor) == 3
    assert model.backbone.output_shape().keys() == {"p3", "p4", "p5", "p6", "p7"}
    assert cfg.SOLVER.OPTIMIZER == "ADAMW" and cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupCosineLR"
    # detectron2's loader (a global batch of 64, repeat factors), Detic's 640-px resize-and-crop
    assert cfg.SOLVER.IMS_PER_BATCH == 64 and not cfg.DATALOADER.MULTI_DATASET
    assert cfg.DATALOADER.SAMPLER_TRAIN == "RepeatFactorTrainingSampler"
    assert cfg.INPUT.DATASET_AUG == "resize_scale_crop" and cfg.INPUT.DATASET_INPUT_SIZE[0] == 640
    assert cfg.INPUT.DATASET_INPUT_SCALE[0] == [0.1, 2.0]
    assert {"loss_centernet_agn_pos", "loss_centernet_loc", "loss_cls_stage2", "loss_mask"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    model.eval()
    with torch.no_grad():
        out = model(lvis_batch(n=1))[0]["instances"]
    assert out.has("pred_masks") and (len(out) == 0 or float(out.scores.max()) <= 1.0)


def test_image_label_finetune_starts_from_the_boxsup_weights(boxsup, lvis_embeddings):
    _, stage1, _, weights = boxsup
    cfg = recipe_cfg("Detic_LbaseI_pomp_R5021k_640b64_4x_ft4x_max-size.yaml", lvis_embeddings,
                     ["MODEL.WEIGHTS", str(weights)])
    assert cfg.DATALOADER.MULTI_DATASET and cfg.SOLVER.WARMUP_ITERS == 1000
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    name = "proposal_generator.centernet_head.agn_hm.weight"
    torch.testing.assert_close(model.state_dict()[name], stage1.state_dict()[name])
    losses = one_step(model, cfg, lvis_batch(ann_type="image"))
    assert sum(v for k, v in losses.items() if k.startswith("loss_image_label")) > 0
    assert all(v == 0 for k, v in losses.items() if k.startswith("loss_centernet"))
    losses = one_step(model, cfg, lvis_batch())
    assert losses["loss_centernet_loc"] > 0


# ---------------------------------------------------------------- Detic's released checkpoint
def test_detic_checkpoint_keys_map_onto_our_model(boxsup, tmp_path):
    _, model, _, _ = boxsup
    fixture = {k: tuple(s) for k, s in json.loads(FIXTURE.read_text())["state_dict"]}
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    report = map_keys(fixture, ours)
    assert report.ok, report.summary()
    assert not report.missing and not report.unexpected
    assert set(report.mapped) | set(report.set_aside) == set(fixture)
    assert sorted(k.rsplit(".", 1)[-1] for k in report.set_aside) == ["bias", "freq_weight", "freq_weight",
                                                                      "freq_weight", "weight", "zs_weight",
                                                                      "zs_weight", "zs_weight"]
    # a checkpoint written from the fixture loads, values and Detic's vocabulary included
    g = torch.Generator().manual_seed(0)
    # large tensors as stride-0 views: the file stores one element for each
    state = {k: torch.randn(s, generator=g) if math.prod(s) < 5e4 else torch.full((1,), 0.5).expand(s)
             for k, s in fixture.items()}
    torch.save({"model": state, "iteration": 90000}, tmp_path / "detic.pth")
    load_detic_checkpoint(model, str(tmp_path / "detic.pth"))
    name = "proposal_generator.centernet_head.scales.3.scale"
    torch.testing.assert_close(model.state_dict()[name], state[name])
    emb = model.roi_heads.box_predictor[2].cls_score.embeddings
    torch.testing.assert_close(emb, torch.nn.functional.normalize(detic_embeddings(state), dim=1))
    assert emb.shape == (1203, 512)
    # the command of docs/detection.md: a detectron2 checkpoint and Detic's embeddings as .npy
    from pomp_det.detic_checkpoint import main

    main([str(tmp_path / "detic.pth"), "--out", str(tmp_path / "d2.pth"), "--embeddings-out", str(tmp_path / "detic.npy"),
          "--config-file", str(C2 / "Detic_LbaseI_pomp_R5021k_640b64_4x_ft4x_max-size.yaml")])
    written = torch.load(tmp_path / "d2.pth", weights_only=True)["model"]
    torch.testing.assert_close(written[name], state[name])
    assert np.load(tmp_path / "detic.npy").shape == (1203, 512)
    # a checkpoint without a part of our model is refused, naming it
    del state["proposal_generator.centernet_head.agn_hm.bias"]
    with pytest.raises(ValueError, match="missing: proposal_generator.centernet_head.agn_hm.bias"):
        convert(state, model)

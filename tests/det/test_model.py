"""pomp_det models built from configs: a model-zoo config with the POMP classifier swapped in,
vocabulary swap on a trained model, cascade heads, and the bad-input errors."""
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.frameworks import require

require("detectron2")
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import BitMasks, Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

import pomp_det  # noqa: E402
from pomp_det.vocabulary import check_dataset_vocabulary, model_num_classes, set_vocabulary  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "det"
SMALL = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "INPUT.MIN_SIZE_TRAIN", "(96,)",
         "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128",
         "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200",
         "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50", "MODEL.RPN.PRE_NMS_TOPK_TEST", "200",
         "MODEL.RPN.POST_NMS_TOPK_TEST", "50", "DATASETS.TRAIN", "()", "DATASETS.TEST", "()",
         "MODEL.BACKBONE.FREEZE_AT", "0", "MODEL.POMP.FED_LOSS_WEIGHTS", "train_boxes"]


def zoo_cfg(tmp_path, zoo_name, num_classes, dim=32, extra=()):
    emb = tmp_path / "emb.npy"
    np.save(emb, np.random.default_rng(0).normal(size=(num_classes, dim)).astype(np.float16))
    yaml = tmp_path / "pomp_zoo.yaml"
    yaml.write_text(f'_BASE_: ["zoo:{zoo_name}", "{CONFIGS / "Base-POMP.yaml"}"]\n')
    opts = SMALL + ["MODEL.POMP.EMBEDDINGS", str(emb), "MODEL.POMP.EMBED_DIM", str(dim),
                    "MODEL.ROI_HEADS.NUM_CLASSES", str(num_classes), *extra]
    return pomp_det.load_pomp_cfg(str(yaml), opts)


def batch(num_classes, n=2, size=96):
    g = torch.Generator().manual_seed(0)
    inputs = []
    for _ in range(n):
        inst = Instances((size, size))
        xy = torch.randint(0, size // 2, (3, 2), generator=g).float()
        boxes = torch.cat([xy, xy + 20 + torch.randint(0, size // 3, (3, 2), generator=g)], 1).clamp(max=size)
        inst.gt_boxes = Boxes(boxes)
        inst.gt_classes = torch.randint(0, num_classes, (3,), generator=g)
        masks = torch.zeros(3, size, size, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
            masks[i, y0:y1, x0:x1] = True
        inst.gt_masks = BitMasks(masks)
        inputs.append({"image": torch.randint(0, 255, (3, size, size), generator=g).float(),
                       "instances": inst, "height": size, "width": size})
    return inputs


def train_step(model, num_classes):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.train()
    with EventStorage():
        losses = model(batch(num_classes))
    loss = sum(losses.values())
    opt.zero_grad()
    loss.backward()
    opt.step()
    return losses


@pytest.mark.parametrize("zoo_name", ["COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"])
def test_model_zoo_config_with_pomp_classifier_trains_and_infers(tmp_path, zoo_name):
    torch.manual_seed(0)
    cfg = zoo_cfg(tmp_path, zoo_name, num_classes=7)
    assert cfg.MODEL.RESNETS.DEPTH == 50 and cfg.MODEL.MASK_ON  # the zoo config was read
    model = build_model(cfg)
    heads = model.roi_heads
    assert type(heads).__name__ == "PompROIHeads"
    assert heads.box_predictor.cls_score.embeddings.shape == (7, 32)
    assert heads.box_predictor.bbox_pred[-1].out_features == 4  # class-agnostic boxes (Detic's MLP)
    assert heads.mask_head.predictor.out_channels == 1  # class-agnostic masks
    losses = train_step(model, 7)
    assert {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        out = model(batch(7, n=1))[0]["instances"]
    assert out.has("pred_masks") and out.has("scores")
    if len(out):
        assert int(out.pred_classes.max()) < 7 and float(out.scores.max()) <= 1.0


def test_vocabulary_swap_on_trained_model(tmp_path):
    torch.manual_seed(0)
    cfg = zoo_cfg(tmp_path, "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml", num_classes=5,
                  extra=["MODEL.BACKBONE.FREEZE_AT", "5"])
    model = build_model(cfg)
    train_step(model, 5)
    projection = model.roi_heads.box_predictor.cls_score.linear.weight.clone()
    new = tmp_path / "new.npy"
    np.save(new, np.random.default_rng(1).normal(size=(11, 32)).astype(np.float16))
    assert set_vocabulary(model, cfg, str(new)) is None
    assert model_num_classes(model) == 11 and model.roi_heads.box_predictor.num_classes == 11
    # the trained weights stay; only the vocabulary changed
    assert torch.equal(model.roi_heads.box_predictor.cls_score.linear.weight, projection)
    model.eval()
    with torch.no_grad():
        out = model(batch(5, n=1))[0]["instances"]
    assert len(out) == 0 or int(out.pred_classes.max()) < 11
    # and training on the new vocabulary works too (labels index the new classes)
    losses = train_step(model, 11)
    assert torch.isfinite(losses["loss_cls"])
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((3, 16), np.float16))
    with pytest.raises(ValueError, match="D=32"):
        set_vocabulary(model, cfg, str(wrong))
    with pytest.raises(ValueError, match="fixed file"):
        set_vocabulary(model, cfg, "cat,dog")


def test_cascade_heads_share_vocabulary_and_keep_objectness(tmp_path):
    torch.manual_seed(0)
    cfg = zoo_cfg(tmp_path, "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml", num_classes=4,
                  extra=["MODEL.ROI_HEADS.NAME", "PompCascadeROIHeads", "MODEL.BACKBONE.FREEZE_AT", "5",
                         # GroupNorm keeps a random R-50's activations finite
                         "MODEL.RESNETS.NORM", "GN", "MODEL.FPN.NORM", "GN",
                         "MODEL.MASK_ON", "False", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"])
    model = build_model(cfg)
    predictors = model.roi_heads.box_predictor
    assert len(predictors) == 3 and all(p.num_classes == 4 for p in predictors)
    losses = train_step(model, 4)
    assert {"loss_cls_stage2", "loss_box_reg_stage2"} <= set(losses)
    model.eval()
    with torch.no_grad():
        out = model(batch(4, n=1))[0]["instances"]
        for p in predictors:  # later stages' proposals carry the RPN objectness: it changes scores
            p.mult_proposal_score = False
        plain = model(batch(4, n=1))[0]["instances"]
    assert len(out) > 0 and float(out.scores.max()) <= 1.0
    assert not torch.allclose(out.scores.sort().values[:5], plain.scores.sort().values[:5])
    model.roi_heads.set_class_embeddings(torch.randn(9, 32))
    assert all(p.num_classes == 9 for p in predictors) and model.roi_heads.num_classes == 9


def test_bad_inputs_give_clear_errors(tmp_path):
    cfg = zoo_cfg(tmp_path, "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml", num_classes=4)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 80
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        build_model(cfg)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 4
    cfg.MODEL.POMP.EMBEDDINGS = str(tmp_path / "missing.npy")
    with pytest.raises(FileNotFoundError, match="export_embeddings"):
        build_model(cfg)
    cfg.MODEL.POMP.EMBEDDINGS = ""
    with pytest.raises(ValueError, match="no class embeddings"):
        build_model(cfg)
    # evaluating a 4-class model on an 80-class dataset without a swap
    cfg.MODEL.POMP.RANDOM_EMBEDDINGS_SEED = 0
    cfg.MODEL.POMP.USE_FED_LOSS = False
    model = build_model(cfg)
    with pytest.raises(ValueError, match="TEST_VOCABULARY"):
        check_dataset_vocabulary(model, "coco_2017_val")

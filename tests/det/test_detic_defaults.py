"""Detic's semantics as the recipe's defaults, each deviation a named option: the test size,
backbone-only fp16 (and a proposal logit that stays finite in half precision), detectron2's
loader with IMS_PER_BATCH and repeat-factor sampling for one dataset, Detic's per-process
multi-dataset batches with the warning and linear scaling, periodic checkpoints; test
vocabularies from a registered COCO-format dataset; the world's missing image labels named."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.frameworks import require

require("detectron2")
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader  # noqa: E402
from detectron2.data.samplers import RepeatFactorTrainingSampler  # noqa: E402
from detectron2.engine import DefaultTrainer  # noqa: E402

import pomp_det  # noqa: E402
from pomp_det.data.multi_dataset import batch_size_note  # noqa: E402
from pomp_det.engine import Trainer  # noqa: E402
from pomp_det.meta_arch import autocast_features  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
C2 = ROOT / "configs" / "det" / "centernet2"
DET = ROOT / "configs" / "det"


def _load(path, *opts):
    return pomp_det.load_pomp_cfg(str(path), list(opts))


def _images(tmp_path, sizes):
    import cv2

    paths = []
    for i, (h, w) in enumerate(sizes):
        p = tmp_path / f"img{i}.png"
        cv2.imwrite(str(p), np.full((h, w, 3), 40 * i, np.uint8))
        paths.append(str(p))
    return paths


# ---------------------------------------------------------------- test size


def test_the_c2_recipe_tests_at_detectron2s_800_1333(tmp_path):
    """Detic's TEST_INPUT_TYPE default: detectron2's mapper, short side 800, long side <= 1333; an
    LVIS-sized 640 x 480 image is tested at 1067 x 800 (the old 640 x 640 gave 640 x 480)."""
    cfg = _load(C2 / "Detic_LbaseI_pomp_R5021k_640b64_4x_ft4x_max-size.yaml", "DATALOADER.NUM_WORKERS", "0")
    (path,) = _images(tmp_path, [(480, 640)])
    DatasetCatalog.register("size_probe", lambda: [{"file_name": path, "image_id": 0, "height": 480, "width": 640}])
    cfg.DATASETS.TEST = ("size_probe",)
    (item,) = next(iter(build_detection_test_loader(cfg, "size_probe")))
    assert tuple(item["image"].shape[1:]) == (800, 1067)


# ---------------------------------------------------------------- fp16


def test_proposal_logits_stay_finite_from_half_precision_heatmaps():
    """Under whole-model autocast the heatmap comes in half, where sigmoid(12) rounds to 1.0 and
    the clamp to 1 - 1e-6 rounds back to 1.0: the logit would be inf. The proposals are taken in
    float32, so it is logit(sqrt(sigmoid(12))) = 12.7."""
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import build_proposal_generator

    cfg = pomp_det.get_pomp_cfg()
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = "CenterNet"
    c = cfg.MODEL.CENTERNET
    c.IN_FEATURES, c.FPN_STRIDES, c.SOI = ["p3"], [8], [[0, 1e8]]
    c.INFERENCE_TH = 0.0
    gen = build_proposal_generator(cfg, {"p3": ShapeSpec(channels=32, stride=8)}).eval()
    heat = torch.tensor([[[[12.0, -3.0, 2.0]]]]).half()
    assert heat.sigmoid()[0, 0, 0, 0].item() == 1.0  # what half precision makes of it
    reg = torch.tensor([[[[1.0, 0.5, 2.0]]] * 4]).half()  # distances, in strides
    grid = torch.tensor([[4.0, 4.0], [12.0, 4.0], [20.0, 4.0]])
    (p,) = gen.predict_proposals([grid], [heat], [reg], [(8, 24)])
    logits = p.objectness_logits
    want = torch.logit(torch.tensor([12.0, 2.0, -3.0]).sigmoid().sqrt())  # sorted by score
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    torch.testing.assert_close(logits, want, atol=2e-3, rtol=0)


def test_backbone_autocast_returns_float_features_computed_in_low_precision():
    """Detic's FP16: the backbone's own forward on its input in the low dtype, the features back
    in float32 for the heads (bfloat16 on CPU here; CUDA float16 in the recipe)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 9, 11)
    run = autocast_features(lambda t: {"p3": conv(t)}, "cpu", torch.bfloat16)
    out = run(x)["p3"]
    exact = conv(x)
    assert out.dtype == torch.float32
    assert 0 < (out - exact).abs().max() < 0.05  # bfloat16's rounding, not float32's
    want = conv(x.bfloat16().float())  # input cast first, as Detic's images.tensor.half()
    assert (out - want).abs().max() < 0.05


def test_fp16_is_off_without_cuda_and_the_c2_recipe_asks_for_it(caplog):
    cfg = _load(C2 / "Base-C2_L_R5021k_640b64_4x.yaml")
    assert cfg.FP16 and not cfg.SOLVER.AMP.ENABLED  # Detic's FP16, not whole-model AMP
    from pomp_det.meta_arch import PompRCNN

    cfg.MODEL.DEVICE = "cpu"
    assert PompRCNN.from_config(_world_like(cfg))["fp16"] is False
    assert "FP16" in caplog.text


def _world_like(cfg):
    """A small detector in the place of the recipe's (same FP16 switch), buildable on CPU."""
    small = _load(DET / "world" / "Base-world-tiny.yaml", "MODEL.POMP.RANDOM_EMBEDDINGS_SEED", "0",
                  "MODEL.ROI_HEADS.NUM_CLASSES", "5", "FP16", str(cfg.FP16), "MODEL.DEVICE", cfg.MODEL.DEVICE)
    return small


@pytest.mark.skipif(not torch.cuda.is_available(), reason="half-precision autocast needs CUDA")
def test_fp16_model_runs_only_the_backbone_in_half_on_cuda():
    from detectron2.modeling import build_model

    cfg = _world_like(pomp_det.get_pomp_cfg())
    cfg.FP16, cfg.MODEL.DEVICE = True, "cuda"
    model = build_model(cfg).eval()
    seen = {}
    model.roi_heads.register_forward_pre_hook(lambda m, a: seen.setdefault("dtype", a[1]["p2"].dtype))
    with torch.no_grad(), torch.autocast("cuda"):  # AMPTrainer's outer autocast
        model([{"image": torch.zeros(3, 64, 96), "height": 64, "width": 96}])
    assert seen["dtype"] == torch.float32


# ---------------------------------------------------------------- loaders and batches


def test_single_dataset_stage_uses_ims_per_batch_rfs_and_detics_resize_crop(tmp_path):
    """BoxSup: detectron2's loader, a global batch of IMS_PER_BATCH, RepeatFactorTrainingSampler
    with LVIS repeat factors, and Detic's resize-and-crop (every image within the crop size)."""
    paths = _images(tmp_path, [(90, 120), (120, 90), (100, 100), (80, 130)])
    cats = [[0], [0], [0], [0, 1]]  # class 1 in a quarter of the images
    records = [{"file_name": p, "image_id": i, "height": h, "width": w,
                "annotations": [{"bbox": [5, 5, 40, 40], "bbox_mode": 0, "category_id": c} for c in cs]}
               for i, (p, (h, w), cs) in enumerate(zip(paths, [(90, 120), (120, 90), (100, 100), (80, 130)], cats))]
    DatasetCatalog.register("boxsup_probe", lambda: records)
    MetadataCatalog.get("boxsup_probe").set(thing_classes=["a", "b"])
    cfg = _load(C2 / "BoxSup-C2_Lbase_pomp_R5021k_640b64_4x.yaml", "DATASETS.TRAIN", '("boxsup_probe",)',
                "SOLVER.IMS_PER_BATCH", "3", "DATALOADER.NUM_WORKERS", "0", "INPUT.DATASET_INPUT_SIZE", "[48]",
                "DATALOADER.REPEAT_THRESHOLD", "0.5", "DATALOADER.ASPECT_RATIO_GROUPING", "False")
    loader = Trainer.build_train_loader(cfg)
    sampler = loader.dataset.sampler  # detectron2's ToIterableDataset over the sampler
    assert isinstance(sampler, RepeatFactorTrainingSampler)
    factors = sampler._int_part + sampler._frac_part
    assert factors.tolist() == pytest.approx([1, 1, 1, 2 ** 0.5])  # sqrt(0.5 / 0.25) for the image of class 1
    batches = [b for _, b in zip(range(4), loader)]
    assert [len(b) for b in batches] == [3] * 4
    assert all(max(d["image"].shape[1:]) <= 48 for b in batches for d in b)


def test_multi_dataset_batches_are_per_process_with_a_warning_and_linear_scaling():
    cfg = _load(C2 / "Detic_LbaseI_pomp_R5021k_640b64_4x_ft4x_max-size.yaml")
    assert batch_size_note(cfg, 8) == ""  # 8 x 8 = IMS_PER_BATCH 64: the recipe
    note = batch_size_note(cfg, 4)
    assert "32 (box) / 128 (image)" in note and "SOLVER.REFERENCE_WORLD_SIZE 8" in note and "\n" not in note
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 8
    scaled = DefaultTrainer.auto_scale_workers(cfg, 4)  # detectron2's linear scaling rule
    assert (scaled.SOLVER.IMS_PER_BATCH, scaled.SOLVER.BASE_LR) == (32, pytest.approx(1e-4))
    assert (scaled.SOLVER.MAX_ITER, scaled.SOLVER.WARMUP_ITERS) == (180000, 2000)
    assert batch_size_note(scaled, 4) == ""
    # the R-CNN recipe: 2 + 8 images per process, so 8 processes make the zoo's batch of 16
    rcnn = _load(DET / "lvis-base-in-l_pomp_mask_rcnn_R50_FPN_4x.yaml")
    assert list(rcnn.DATALOADER.DATASET_BATCH_SIZE) == [2, 8] and rcnn.SOLVER.IMS_PER_BATCH == 16
    assert batch_size_note(rcnn, 8) == "" and "8 (box) / 32 (image)" in batch_size_note(rcnn, 4)


def test_checkpoints_are_periodic_in_every_c2_stage():
    for name in ("BoxSup-C2_Lbase_pomp_R5021k_640b64_4x.yaml", "Detic_LbaseI_pomp_R5021k_640b64_4x_ft4x_max-size.yaml"):
        cfg = _load(C2 / name)
        assert cfg.SOLVER.CHECKPOINT_PERIOD == 5000 and cfg.SOLVER.MAX_ITER == 90000


# ---------------------------------------------------------------- vocabularies and the world


def test_test_vocabulary_from_a_registered_coco_format_dataset_without_loading_it(tmp_path):
    from detectron2.data.datasets import register_coco_instances
    from pomp_det.vocabulary import configure_vocabulary, eval_vocabulary

    ann = tmp_path / "o365_tiny.json"
    cats = [{"id": 7, "name": "traffic_light"}, {"id": 2, "name": "zebra"}, {"id": 5, "name": "tea pot"}]
    ann.write_text(json.dumps({"images": [], "annotations": [], "categories": cats}))
    register_coco_instances("o365_tiny_val", {}, str(ann), str(tmp_path))
    cfg = pomp_det.get_pomp_cfg()
    cfg.MODEL.POMP.PROMPT_WORDS = "a photo of a"
    names = configure_vocabulary(cfg, "o365_tiny_val")
    assert names == ["zebra", "tea pot", "traffic light"]  # id order, as detectron2's loader
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 3
    assert MetadataCatalog.get("o365_tiny_val").get("thing_classes") is None  # not loaded
    cfg.DATASETS.TEST = ("lvis_v1_val", "o365_tiny_val")
    cfg.MODEL.POMP.TEST_VOCABULARIES = ["", "o365_tiny_val"]  # Detic's TEST_CLASSIFIERS
    assert (eval_vocabulary(cfg, "lvis_v1_val"), eval_vocabulary(cfg, "o365_tiny_val")) == ("", "o365_tiny_val")
    cfg.MODEL.POMP.TEST_VOCABULARIES = ["dataset"]
    with pytest.raises(ValueError, match="one per test dataset"):
        eval_vocabulary(cfg, "lvis_v1_val")


def test_world_without_image_labels_names_the_command_that_writes_them(tmp_path):
    from pomp_det.cli import check_cfg_inputs
    from pomp_det.data.world import register_world
    from pomp_world import WorldConfig, write_world
    from pomp_world.image_labels import write_image_labels

    write_world(tmp_path, WorldConfig(det_classes=6, det_images=(3, 2), scene_size=64), parts=("detection",))
    names = register_world(tmp_path, prefix="noimg_world")
    cfg = pomp_det.get_pomp_cfg()
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (names["train_norare"], names["image"]), ()
    with pytest.raises(FileNotFoundError) as err:
        check_cfg_inputs(cfg)
    msg = str(err.value)
    assert "world_image_info.json" in msg and f"python -m pomp_world.image_labels {tmp_path}" in msg
    write_image_labels(tmp_path, per_class=1, size=32)  # the command's work: now it is read
    check_cfg_inputs(cfg)
    assert len(DatasetCatalog.get(names["image"])) == 6

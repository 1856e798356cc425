"""pomp_det as a drop-in with no LVIS files on disk: the model zoo's LVIS Mask R-CNN with
Base-POMP.yaml and a 1,203-row .npy, a cascade zoo config, and the documented demo command
(docs/detection.md, step 5) with the shipped LVIS config."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from tests.frameworks import require

require("detectron2")
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.engine import DefaultPredictor  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

import pomp_det  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CLIP = str(ROOT / "pomp_world/weights/pomp_world_clip.pt")
SMALL = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128"]


def test_lvis_zoo_config_with_a_1203_row_npy_runs_without_lvis_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no datasets/ here: no json, no cat-info file
    np.save("lvis.npy", np.random.default_rng(0).normal(size=(1203, 32)).astype(np.float16))
    Path("my.yaml").write_text(f'_BASE_: ["zoo:LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml", '
                               f'"{ROOT / "configs/det/Base-POMP.yaml"}"]\n')
    cfg = pomp_det.load_pomp_cfg("my.yaml", SMALL + ["MODEL.POMP.EMBEDDINGS", "lvis.npy", "MODEL.POMP.EMBED_DIM", "32"])
    predictor = DefaultPredictor(cfg)
    heads = predictor.model.roi_heads
    assert type(heads).__name__ == "PompROIHeads" and heads.num_classes == 1203
    out = predictor(np.random.default_rng(1).integers(0, 255, (80, 120, 3), dtype=np.uint8))["instances"]
    assert out.pred_masks.shape[1:] == (80, 120)
    # the federated weights are read at the first training loss only: from the category-info file
    Path("datasets/metadata").mkdir(parents=True)
    Path("datasets/metadata/lvis_v1_train_cat_info.json").write_text(
        json.dumps([{"id": i + 1, "image_count": i % 7} for i in range(1203)]))
    weight = heads.box_predictor._fed_loss_weight_source()
    assert torch.allclose(weight, (torch.arange(1203) % 7).float() ** 0.5)


def test_cascade_zoo_config_gets_cascade_pomp_heads(tmp_path):
    np.save(tmp_path / "e.npy", np.ones((80, 16), dtype=np.float16))
    cfg = pomp_det.load_pomp_cfg(str(ROOT / "configs/det/Base-POMP.yaml"), SMALL + [
        "MODEL.POMP.EMBEDDINGS", str(tmp_path / "e.npy"), "MODEL.POMP.EMBED_DIM", "16"],
        zoo_config="Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml")
    heads = build_model(cfg).roi_heads
    assert type(heads).__name__ == "PompCascadeROIHeads" and len(heads._predictors()) == 3


def test_documented_demo_command_runs(tmp_path):
    """Step 5 of docs/detection.md as written, with the shipped tiny CLIP in place of ViT-B/16
    (its prompt saved where the LVIS config names it) and a checkpoint of that model."""
    import pomp_core

    model, tokenizer, _ = pomp_core.load_clip("pomp-world", pretrained=CLIP)
    pomp_core.save_prompt(pomp_core.PromptLearner.from_words("a photo of a", model, tokenizer),
                          tmp_path / "checkpoints/pomp_vit_b16_ctx4.pth.tar")
    tiny = ["MODEL.POMP.CLIP_MODEL", "pomp-world", "MODEL.POMP.CLIP_PRETRAINED", CLIP, "MODEL.POMP.EMBED_DIM", "64",
            "MODEL.POMP.CACHE_DIR", str(tmp_path / "cache"), "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128"]
    config = str(ROOT / "configs/det/lvis-base_pomp_mask_rcnn_R50_FPN_4x.yaml")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        cfg = pomp_det.load_pomp_cfg(config, tiny + ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
        pomp_det.vocabulary.configure_vocabulary(cfg, "zebra,traffic light,teapot")
        Path("output/det/lvis-base_pomp").mkdir(parents=True)
        DetectionCheckpointer(build_model(cfg), save_dir="output/det/lvis-base_pomp").save("model_final")
    finally:
        os.chdir(cwd)
    import cv2

    cv2.imwrite(str(tmp_path / "photo.jpg"), np.random.default_rng(0).integers(0, 255, (90, 110, 3), dtype=np.uint8))
    cmd = [sys.executable, str(ROOT / "tools/demo_det.py"), "--config-file", config, "--input", "photo.jpg",
           "--output", "out/", "--vocabulary", "zebra,traffic light,teapot",
           "MODEL.WEIGHTS", "output/det/lvis-base_pomp/model_final.pth", *tiny]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "photo.jpg:" in run.stdout and (tmp_path / "out/photo.jpg").is_file()
    assert "no LVIS" not in run.stderr and not (tmp_path / "datasets").exists()

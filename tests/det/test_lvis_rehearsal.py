"""A rehearsal of docs/detection.md's LVIS steps 1-4 at tiny scale, offline: an LVIS-v1-format
dataset whose categories are the real 1,203 LVIS v1 categories (detectron2 ships them, with
frequencies and image counts), images rendered from the synthetic world, laid out as
detectron2 expects under ./datasets. The documented commands run with the tiny CLIP and the
tiny backbone in place of ViT-B/16 and R-50; LVISEvaluator reports APr and box and mask AP,
and the cross-dataset config evaluates on a COCO-format set with COCO's 80 names."""
import json
from pathlib import Path

import numpy as np
import pytest

from tests.frameworks import require
from tests.tool_scripts import load_tool

require("detectron2")
require("lvis")
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES  # noqa: E402
from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CLIP = str(ROOT / "pomp_world/weights/pomp_world_clip.pt")
SIZE = 64
# LVIS ids drawn by the scenes: two rare, two common, two frequent
PICK = {f: [c["id"] for c in LVIS_CATEGORIES if c["frequency"] == f][:2] for f in "rcf"}


def _objects(rng, classes, cat_ids):
    from pomp_world.render import render, sample_radius

    objs = []
    for c in rng.choice(len(cat_ids), size=2, replace=False):
        r = sample_radius(classes[c].size, rng)
        objs.append((c, tuple(rng.uniform(r, SIZE - r, 2)), r))
    img, masks = render([(classes[c], ctr, r, 0.0) for c, ctr, r in objs], SIZE, rng)
    anns = []
    for (c, _, _), m in zip(objs, masks):
        import cv2

        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        polys = [p.reshape(-1).astype(float).tolist() for p in contours if len(p) >= 3]
        if m.sum() < 4 or not polys:
            continue
        ys, xs = np.nonzero(m)
        anns.append({"category_id": cat_ids[c], "bbox": [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()),
                     float(ys.max() + 1 - ys.min())], "area": float(m.sum()), "segmentation": polys, "iscrowd": 0})
    return img, anns


def _write_split(root: Path, split: str, n: int, seed: int, cat_ids, categories, coco=False):
    from PIL import Image
    from pomp_world.vocabulary import all_classes

    classes = all_classes()[::97][: len(cat_ids)]  # distinct shapes and colours
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(n):
        img, objs = _objects(rng, classes, cat_ids)
        name = f"{i + (100 if coco else 0):012d}.png"  # COCO's val images share LVIS's folder
        Image.fromarray(img).save(root / "coco" / f"{split}2017" / name)
        entry = {"id": i + 1, "height": SIZE, "width": SIZE}
        if coco:
            entry["file_name"] = name
        else:
            entry.update(coco_url=f"http://images.cocodataset.org/{split}2017/{name}",
                         neg_category_ids=[], not_exhaustive_category_ids=[])
        images.append(entry)
        anns += [{**a, "id": len(anns) + k + 1, "image_id": i + 1} for k, a in enumerate(objs)]
    return {"images": images, "annotations": anns, "categories": categories}


@pytest.fixture(scope="module")
def lvis_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("rehearsal")
    ds = root / "datasets"
    for sub in ("lvis", "coco/train2017", "coco/val2017", "coco/annotations", "metadata"):
        (ds / sub).mkdir(parents=True)
    cats = [{k: c[k] for k in ("id", "name", "synonyms", "frequency", "synset", "def") if k in c}
            for c in LVIS_CATEGORIES]
    ids = PICK["r"] + PICK["c"] + PICK["f"]
    for split, n, seed in (("train", 8, 1), ("val", 4, 2)):
        data = _write_split(ds, split, n, seed, ids, cats)
        (ds / "lvis" / f"lvis_v1_{split}.json").write_text(json.dumps(data))
    coco_cats = [{"id": c["id"], "name": c["name"], "supercategory": "x"} for c in COCO_CATEGORIES if c["isthing"]]
    coco = _write_split(ds, "val", 3, 3, [1, 3, 18, 44, 62, 85], coco_cats, coco=True)  # person, car, dog, ...
    (ds / "coco/annotations/instances_val2017.json").write_text(json.dumps(coco))
    from pomp_core import PromptLearner, load_clip, save_prompt

    model, tokenizer, _ = load_clip("pomp-world", pretrained=CLIP)
    save_prompt(PromptLearner.from_words("a photo of a", model, tokenizer), root / "checkpoints/pomp_vit_b16_ctx4.pth.tar")
    return root


TINY = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.BACKBONE.NAME", "build_tiny_pyramid_backbone",
        "MODEL.FPN.OUT_CHANNELS", "64", "MODEL.ROI_BOX_HEAD.FC_DIM", "128", "MODEL.ROI_MASK_HEAD.CONV_DIM", "32",
        "MODEL.PIXEL_STD", "[57.375, 57.120, 58.395]", "MODEL.ANCHOR_GENERATOR.SIZES", "[[16], [32], [64], [128], [256]]",
        "MODEL.POMP.CLIP_MODEL", "pomp-world", "MODEL.POMP.CLIP_PRETRAINED", CLIP, "MODEL.POMP.EMBED_DIM", "64",
        "INPUT.MIN_SIZE_TRAIN", f"({SIZE},)", "INPUT.MAX_SIZE_TRAIN", str(SIZE), "INPUT.MIN_SIZE_TEST", str(SIZE),
        "INPUT.MAX_SIZE_TEST", str(SIZE), "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
        "MODEL.RPN.POST_NMS_TOPK_TEST", "100", "TEST.DETECTIONS_PER_IMAGE", "100", "SOLVER.BASE_LR", "0.002"]


def test_documented_lvis_steps_at_tiny_scale(lvis_root, monkeypatch):
    export_embeddings, train_net = load_tool("export_embeddings"), load_tool("train_net")
    from pomp_det.data import category_counts, lvis_norare

    monkeypatch.chdir(lvis_root)  # detectron2's builtin datasets resolve ./datasets
    # 1. the base split and the category info
    lvis_norare.main(["datasets/lvis/lvis_v1_train.json"])
    norare = json.loads(Path("datasets/lvis/lvis_v1_train_norare.json").read_text())
    assert norare["annotations"] and not {a["category_id"] for a in norare["annotations"]} & set(PICK["r"])
    category_counts.main(["datasets/lvis/lvis_v1_train.json", "--out", "datasets/metadata/lvis_v1_train_cat_info.json"])
    info = json.loads(Path("datasets/metadata/lvis_v1_train_cat_info.json").read_text())
    assert len(info) == 1203 and info[PICK["r"][0] - 1]["image_count"] > 0  # rare classes counted
    # 2. the embeddings of the 1,203 classes (and COCO's 80, for step 4)
    for vocab, out in (("datasets/lvis/lvis_v1_val.json", "lvis_v1_pomp.npy"),
                       ("datasets/coco/annotations/instances_val2017.json", "coco_pomp.npy")):
        export_embeddings.main(["--model", "pomp-world", "--pretrained", CLIP, "--prompt",
                                "checkpoints/pomp_vit_b16_ctx4.pth.tar", "--vocabulary", vocab,
                                "--out", f"datasets/metadata/{out}"])
    assert np.load("datasets/metadata/lvis_v1_pomp.npy").shape == (1203, 64)
    # 3. train a few iterations on the base classes; the final evaluation is step 4's LVIS AP
    config = str(ROOT / "configs/det/lvis-base_pomp_mask_rcnn_R50_FPN_4x.yaml")
    args = train_net.parser().parse_args(["--config-file", config, *TINY, "SOLVER.MAX_ITER", "3",
                                          "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "1"])
    train_net.main(args)
    metrics = [json.loads(line) for line in Path("output/det/lvis-base_pomp/metrics.json").read_text().splitlines()]
    final = [m for m in metrics if "bbox/APr" in m][-1]
    assert {"bbox/AP", "bbox/APr", "bbox/APc", "bbox/APf", "segm/AP", "segm/APr"} <= set(final)
    # 4. evaluate the trained model, and on COCO with COCO's names
    args = train_net.parser().parse_args(["--eval-only", "--config-file", config, *TINY,
                                          "MODEL.WEIGHTS", "output/det/lvis-base_pomp/model_final.pth"])
    res = train_net.main(args)
    assert "APr" in res["bbox"] and "APr" in res["segm"]
    cross = str(ROOT / "configs/det/cross-coco_pomp_mask_rcnn_R50_FPN_4x.yaml")
    args = train_net.parser().parse_args(["--eval-only", "--config-file", cross, *TINY,
                                          "MODEL.WEIGHTS", "output/det/lvis-base_pomp/model_final.pth"])
    res = train_net.main(args)
    assert {"AP", "AP50"} <= set(res["bbox"]) and "AP" in res["segm"]

"""The world's detection renderings: scenes with boxes and instance masks in LVIS json
(unseen classes have frequency ``r``: rare = novel, so pomp_det's ``*_norare`` split drops
their annotations). Their image-labelled counterpart is :mod:`pomp_world.image_labels`;
``pomp_det.data.world.register_world`` reads both."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List

import numpy as np

from pomp_core.progress import Progress

from .generate import WorldConfig, _rng, _save, _scene, _subset, world_classes


def _mask_polygons(mask: np.ndarray) -> List[List[float]]:
    """COCO/LVIS polygons of a mask's outer contours (detectron2's LVIS loader reads
    polygons only; like COCO polygons they cannot hold holes, so a ring's is filled)."""
    import cv2  # only the detection rendering needs it

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def write_detection(cfg: WorldConfig, out: Path) -> Dict[str, str]:
    classes, seen, unseen = world_classes(cfg)
    rng = _rng(cfg, 4)
    n_unseen = max(1, int(round(cfg.det_classes * cfg.unseen_fraction)))
    vocab = sorted(_subset(unseen, n_unseen, rng) + _subset(seen, cfg.det_classes - n_unseen, rng))
    novel = set(unseen)
    det = out / "detection"
    files = {}
    for split, n_img, key in (("train", cfg.det_images[0], 5), ("val", cfg.det_images[1], 6)):
        images, anns = [], []
        counts = {c: [0, set()] for c in vocab}
        for i in Progress(range(n_img), desc=f"detection {split}", leave=False):
            img, objs = _scene(cfg, vocab, classes, _rng(cfg, key, i))
            name = f"{split}/{i:05d}.png"
            _save(img, det / "images" / name)
            # LVIS v1 images carry coco_url; detectron2's LVIS loader takes <split>/<file> from it
            images.append({"id": i + 1, "file_name": name, "coco_url": f"file://world/{name}",
                           "height": cfg.scene_size, "width": cfg.scene_size,
                           "neg_category_ids": [], "not_exhaustive_category_ids": []})
            for c, m in objs:
                polygons = _mask_polygons(m)
                if m.sum() < 4 or not polygons:
                    continue  # (nearly) fully occluded
                ys, xs = np.nonzero(m)
                x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": vocab.index(c) + 1,
                             "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                             "area": float(m.sum()), "segmentation": polygons, "iscrowd": 0})
                counts[c][0] += 1
                counts[c][1].add(i)
        cats = [{"id": k + 1, "name": classes[c].name.replace(" ", "_"), "synonyms": [classes[c].name],
                 "frequency": "r" if c in novel else ("f" if len(counts[c][1]) > 10 else "c"),
                 "image_count": len(counts[c][1]), "instance_count": counts[c][0]}
                for k, c in enumerate(vocab)]
        path = det / "annotations" / f"world_lvis_{split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"info": {"description": "pomp synthetic world", "world": asdict(cfg)},
                                    "licenses": [], "images": images, "annotations": anns, "categories": cats}))
        files[f"det_{split}"] = str(path)
    files["det_images"] = str(det / "images")
    return files

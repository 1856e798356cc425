"""Image-labelled datasets (Detic's ImageNet-LVIS: images with LVIS category ids, no boxes).

The json follows Detic's ``imagenet/annotations/imagenet_lvis_image_info.json``: ``{"images": [{"id", "file_name",
"height", "width", "pos_category_ids": [LVIS ids, 1-based]}], "categories": [...]}``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.lvis import get_lvis_instances_meta


def load_image_label_json(json_file: str, image_root: str) -> List[Dict]:
    """Dataset dicts with ``pos_category_ids`` (contiguous, 0-based) and ``ann_type="image"``."""
    if not Path(json_file).is_file():
        raise FileNotFoundError(f"image-label file '{json_file}' does not exist (Detic's "
                                "datasets/imagenet/annotations/imagenet_lvis_image_info.json; see docs/detection.md)")
    data = json.loads(Path(json_file).read_text())
    records = []
    for img in data["images"]:
        records.append({"file_name": os.path.join(image_root, img["file_name"]), "image_id": img["id"],
                        "height": img["height"], "width": img["width"], "ann_type": "image",
                        "pos_category_ids": sorted({c - 1 for c in img["pos_category_ids"]}),
                        "annotations": []})  # the mapper then gives empty boxes for the RPN
    return records


def register_image_label_dataset(name: str, json_file: str, image_root: str, thing_classes=None) -> None:
    """Register an image-label dataset; its classes are LVIS v1's unless given."""
    json_file, image_root = str(json_file), str(image_root)
    DatasetCatalog.register(name, lambda: load_image_label_json(json_file, image_root))
    meta = {"thing_classes": thing_classes} if thing_classes else get_lvis_instances_meta("lvis_v1")
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, ann_type="image",
                                  evaluator_type="none", **meta)


def register_builtin_image_labels(root: str) -> None:
    """``imagenet_lvis_v1``: Detic's layout under ``root`` (detectron2's datasets folder)."""
    register_image_label_dataset("imagenet_lvis_v1", os.path.join(root, "imagenet/annotations/imagenet_lvis_image_info.json"),
                                 os.path.join(root, "imagenet/ImageNet-LVIS"))

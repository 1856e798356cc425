"""LVIS-style dataset registration: ``lvis_v1_train_norare`` next to detectron2's builtin
LVIS, and any LVIS-format json of one's own (such as the synthetic world's)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.lvis import get_lvis_instances_meta, load_lvis_json

from .lvis_norare import make_norare_json


def _load_with_norare(json_file: str, image_root: str, name: Optional[str], source: Optional[str]):
    if source is not None and not Path(json_file).is_file():
        make_norare_json(source, json_file)  # generated once from the user's file
    if not Path(json_file).is_file():
        raise FileNotFoundError(f"annotation file '{json_file}' of dataset '{name}' does not exist")
    try:
        return load_lvis_json(json_file, image_root, name)
    except KeyError as e:
        if e.args != ("coco_url",):
            raise
        raise ValueError(
            f"{json_file}: images without 'coco_url'. detectron2's LVIS loader reads image paths "
            "from it (<image_root><split>/<file> from '.../<split>/<file>'), as LVIS v1 images carry "
            "it; add it to each image (a world written before coco_url was added: write it again)") from None


def register_lvis_json(name: str, json_file: str | os.PathLike, image_root: str | os.PathLike,
                       norare_source: Optional[str | os.PathLike] = None) -> None:
    """Register an LVIS-format dataset. Names containing ``lvis_v1`` use detectron2's LVIS v1
    metadata; others read ``thing_classes`` and frequencies from the json's categories.
    ``norare_source``: the full json from which ``json_file`` is generated on first use.

    detectron2 0.6 reads image paths from each image's ``coco_url`` (its last two parts,
    ``<split>/<file>``, joined onto ``image_root``), so ``image_root`` gets a trailing separator.
    """
    json_file, image_root = str(json_file), os.path.join(str(image_root), "")
    builtin = "lvis_v1" in name
    source = str(norare_source) if norare_source else None
    DatasetCatalog.register(name, lambda: _load_with_norare(json_file, image_root,
                                                            name if builtin else None, source))
    meta = get_lvis_instances_meta("lvis_v1") if builtin else _json_meta(source or json_file)
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="lvis", **meta)


def _json_meta(json_file: str) -> dict:
    cats = sorted(json.loads(Path(json_file).read_text())["categories"], key=lambda c: c["id"])
    if [c["id"] for c in cats] != list(range(1, len(cats) + 1)):
        raise ValueError(f"{json_file}: LVIS category ids must be 1..C")
    return {"thing_classes": [c["name"].replace("_", " ") for c in cats],
            "class_frequency": [c.get("frequency", "f") for c in cats]}


def register_builtin_norare(root: str) -> None:
    """``lvis_v1_train_norare`` under ``root`` (detectron2's datasets folder)."""
    src = os.path.join(root, "lvis/lvis_v1_train.json")
    register_lvis_json("lvis_v1_train_norare", os.path.join(root, "lvis/lvis_v1_train_norare.json"),
                       os.path.join(root, "coco"), norare_source=src)


def register_builtin_objects365(root: str) -> None:
    """``objects365_v2_val`` (COCO-format json) for cross-dataset tests."""
    from detectron2.data.datasets import register_coco_instances

    register_coco_instances("objects365_v2_val", {}, os.path.join(root, "objects365/annotations/zhiyuan_objv2_val.json"),
                            os.path.join(root, "objects365/val"))

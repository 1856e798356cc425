"""Register the synthetic world's detection split (pomp_core.world) as LVIS datasets."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict

from detectron2.data import DatasetCatalog, MetadataCatalog

from .lvis import register_lvis_json


def register_world(world_root: str | os.PathLike, prefix: str = "world") -> Dict[str, str]:
    """``<prefix>_train`` (all annotations), ``<prefix>_train_norare`` (novel = rare classes
    dropped, the open-vocabulary base split) and ``<prefix>_val``, from a folder written by
    ``write_world(..., parts=("detection",))``. Returns the dataset names."""
    det = Path(world_root) / "detection"
    ann, images = det / "annotations", det / "images"
    if not (ann / "world_lvis_train.json").is_file():
        raise FileNotFoundError(f"{ann}/world_lvis_train.json does not exist: write the world with "
                                "tools/make_world.py --parts detection")
    names = {"train": f"{prefix}_train", "train_norare": f"{prefix}_train_norare", "val": f"{prefix}_val"}
    if names["val"] in DatasetCatalog.list():
        registered = MetadataCatalog.get(names["val"]).get("json_file")
        if Path(registered or "").resolve() != (ann / "world_lvis_val.json").resolve():
            raise ValueError(f"dataset '{names['val']}' is already registered from {registered}: "
                             f"register {world_root} under another prefix")
        return names
    train = ann / "world_lvis_train.json"
    register_lvis_json(names["train"], train, images)
    register_lvis_json(names["train_norare"], ann / "world_lvis_train_norare.json", images,
                       norare_source=train)
    register_lvis_json(names["val"], ann / "world_lvis_val.json", images)
    return names

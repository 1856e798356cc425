"""Register the synthetic world's detection split as LVIS datasets (written by
``tools/make_world.py --parts detection``, and its image labels by
``python -m pomp_world.image_labels``)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict

from detectron2.data import DatasetCatalog, MetadataCatalog

from .image_labels import register_image_label_dataset
from .lvis import register_lvis_json

IMAGE_LABEL_JSON = "world_image_info.json"  # pomp_world.image_labels.IMAGE_LABEL_JSON


def register_world(world_root: str | os.PathLike, prefix: str = "world") -> Dict[str, str]:
    """``<prefix>_train`` (all annotations), ``<prefix>_train_norare`` (novel = rare classes
    dropped, the open-vocabulary base split), ``<prefix>_val``, and ``<prefix>_image`` (the
    image labels, once written by ``python -m pomp_world.image_labels``), from a folder written by
    ``write_world(..., parts=("detection",))``. Returns the dataset names."""
    det = Path(world_root) / "detection"
    ann, images = det / "annotations", det / "images"
    train = ann / "world_lvis_train.json"
    if not train.is_file():
        raise FileNotFoundError(f"{train} does not exist: write the world with tools/make_world.py --parts detection")
    names = {"train": f"{prefix}_train", "train_norare": f"{prefix}_train_norare", "val": f"{prefix}_val",
             "image": f"{prefix}_image"}
    if names["val"] in DatasetCatalog.list():
        registered = MetadataCatalog.get(names["val"]).get("json_file")
        if Path(registered or "").resolve() != (ann / "world_lvis_val.json").resolve():
            raise ValueError(f"dataset '{names['val']}' is already registered from {registered}: "
                             f"register {world_root} under another prefix")
    else:
        register_lvis_json(names["train"], train, images)
        register_lvis_json(names["train_norare"], ann / "world_lvis_train_norare.json", images,
                           norare_source=train)
        register_lvis_json(names["val"], ann / "world_lvis_val.json", images)
    if names["image"] not in DatasetCatalog.list():
        # registered before it is written (it is read when used): a missing file is then named
        # with the command that writes it
        register_image_label_dataset(names["image"], ann / IMAGE_LABEL_JSON, images,
                                     thing_classes=MetadataCatalog.get(names["train"]).thing_classes)
        MetadataCatalog.get(names["image"]).set(
            missing_hint=f"write the world's image labels with: python -m pomp_world.image_labels {world_root}")
    return names

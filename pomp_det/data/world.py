"""Register the synthetic world's detection split (pomp_core.world) as LVIS datasets, and
write its image-labelled counterpart (Detic's ImageNet-LVIS: single-object images, labels only).

    python -m pomp_det.data.world output/world_det [--per-class 8]   # writes the image labels
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Dict, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

from .category_counts import write_json_atomic
from .image_labels import register_image_label_dataset
from .lvis import register_lvis_json

IMAGE_LABEL_JSON = "world_image_info.json"


def write_world_image_labels(world_root: str | os.PathLike, per_class: int = 8,
                             size: Optional[int] = None) -> Path:
    """Single-object images of every class of the world's detection vocabulary (novel ones
    included, as ImageNet-LVIS covers rare LVIS classes), ``per_class`` each, of ``size`` px
    (default: half the scene size), in Detic's image-info format with 1-based
    ``pos_category_ids``. Returns the json path."""
    import numpy as np
    from PIL import Image
    from pomp_core.world.generate import WorldConfig, render_single, world_classes

    det = Path(world_root) / "detection"
    train = json.loads(_train_json(det).read_text())
    cfg = WorldConfig(**{**train["info"]["world"], "det_images": tuple(train["info"]["world"]["det_images"])})
    by_name = {c.name.replace(" ", "_"): c for c in world_classes(cfg)[0]}
    size = size or cfg.scene_size // 2
    images = []
    for cat in sorted(train["categories"], key=lambda c: c["id"]):
        for i in range(per_class):
            rng = np.random.default_rng([cfg.seed, 11, cat["id"], i])
            name = f"image_labels/{cat['id']:04d}_{i}.png"
            (det / "images" / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(render_single(by_name[cat["name"]], size, rng)).save(det / "images" / name)
            images.append({"id": len(images) + 1, "file_name": name, "height": size, "width": size,
                           "pos_category_ids": [cat["id"]]})
    cats = [{k: c[k] for k in ("id", "name", "frequency")} for c in train["categories"]]
    return write_json_atomic({"images": images, "categories": cats}, det / "annotations" / IMAGE_LABEL_JSON)


def _train_json(det: Path) -> Path:
    path = det / "annotations" / "world_lvis_train.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: write the world with tools/make_world.py --parts detection")
    return path


def register_world(world_root: str | os.PathLike, prefix: str = "world") -> Dict[str, str]:
    """``<prefix>_train`` (all annotations), ``<prefix>_train_norare`` (novel = rare classes
    dropped, the open-vocabulary base split), ``<prefix>_val``, and ``<prefix>_image`` (the
    image labels, read once written by :func:`write_world_image_labels`), from a folder written by
    ``write_world(..., parts=("detection",))``. Returns the dataset names."""
    det = Path(world_root) / "detection"
    ann, images = det / "annotations", det / "images"
    train = _train_json(det)
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
            missing_hint=f"write the world's image labels with: python -m pomp_det.data.world {world_root}")
    return names


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description="write the world's image-labelled images (world_image)")
    ap.add_argument("world", help="a folder written by tools/make_world.py --parts detection")
    ap.add_argument("--per-class", type=int, default=8)
    ap.add_argument("--size", type=int, default=None, help="image side (default: half a scene)")
    args = ap.parse_args(argv)
    print(write_world_image_labels(args.world, args.per_class, args.size))


if __name__ == "__main__":
    main()

"""The image-labelled counterpart of the world's detection split (Detic's ImageNet-LVIS:
single-object images of every class, labels only), written once per world folder:

    python -m pomp_world.image_labels output/world_det [--per-class 8]
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from pomp_core.durable import atomic_write_json

from .generate import WorldConfig, render_single, world_classes

IMAGE_LABEL_JSON = "world_image_info.json"


def write_image_labels(world_root: str | os.PathLike, per_class: int = 8,
                             size: Optional[int] = None) -> Path:
    """Single-object images of every class of the world's detection vocabulary (novel ones
    included, as ImageNet-LVIS covers rare LVIS classes), ``per_class`` each, of ``size`` px
    (default: half the scene size), in Detic's image-info format with 1-based
    ``pos_category_ids``. Returns the json path."""
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
    return atomic_write_json(det / "annotations" / IMAGE_LABEL_JSON, {"images": images, "categories": cats})


def _train_json(det: Path) -> Path:
    path = det / "annotations" / "world_lvis_train.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: write the world with tools/make_world.py --parts detection")
    return path


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description="write the world's image-labelled images (world_image)")
    ap.add_argument("world", help="a folder written by tools/make_world.py --parts detection")
    ap.add_argument("--per-class", type=int, default=8)
    ap.add_argument("--size", type=int, default=None, help="image side (default: half a scene)")
    args = ap.parse_args(argv)
    print(write_image_labels(args.world, args.per_class, args.size))


if __name__ == "__main__":
    main()

"""Per-class image counts: the federated loss's sampling weights.

Detic reads them from a small category-info file (``lvis_v1_train_cat_info.json``:
``[{"id", "name", "image_count", "instance_count", ...}]``), so building a model never parses
the ~1 GB training json. Write it once:

    python -m pomp_det.data.category_counts datasets/lvis/lvis_v1_train.json \\
        --out datasets/metadata/lvis_v1_train_cat_info.json
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from pomp_core.durable import atomic_write_json

logger = logging.getLogger(__name__)
LVIS_V1_NUM_CLASSES = 1203


def category_image_counts(dataset_dicts: Iterable[dict], num_classes: int) -> torch.Tensor:
    """[C] number of images in which each (contiguous) category has a box."""
    counts = torch.zeros(num_classes)
    for record in dataset_dicts:
        cats = {a["category_id"] for a in record.get("annotations", ())}
        for c in cats:
            if 0 <= c < num_classes:
                counts[c] += 1
    return counts


def make_cat_info(lvis_json: str | os.PathLike) -> List[Dict]:
    """Detic's category info of an LVIS-format json: each category with the number of images
    and of instances that carry it, counted from the annotations."""
    data = json.loads(Path(lvis_json).read_text())
    images: Dict[int, set] = {c["id"]: set() for c in data["categories"]}
    instances = {c["id"]: 0 for c in data["categories"]}
    for a in data["annotations"]:
        images[a["category_id"]].add(a["image_id"])
        instances[a["category_id"]] += 1
    return [{**{k: c[k] for k in ("id", "name", "frequency") if k in c},
             "image_count": len(images[c["id"]]), "instance_count": instances[c["id"]]}
            for c in sorted(data["categories"], key=lambda c: c["id"])]


def load_cat_info_counts(path: str | os.PathLike) -> torch.Tensor:
    """[C] image counts from a category-info file, ordered by category id."""
    info = json.loads(Path(path).read_text())
    if not isinstance(info, list) or not all("id" in c and "image_count" in c for c in info):
        raise ValueError(f"{path} is not a category-info file ([{{'id', 'image_count', ...}}, ...]); "
                         "write one with `python -m pomp_det.data.category_counts <train json>`")
    return torch.tensor([float(c["image_count"]) for c in sorted(info, key=lambda c: c["id"])])


def builtin_lvis_v1_counts() -> torch.Tensor:
    """Image counts of the LVIS v1 training set (1,203 classes, rare included), ordered by id.

    Shipped with pomp_det (``lvis_v1_train_image_counts.json``: the numbers of Detic's
    ``lvis_v1_train_cat_info.json`` and of detectron2's later ``LVIS_CATEGORY_IMAGE_COUNT``,
    which agree), because detectron2 0.6, this project's pin, does not carry them."""
    counts = json.loads((Path(__file__).parent / "lvis_v1_train_image_counts.json").read_text())
    return torch.tensor(counts, dtype=torch.float)


def cat_info_counts(path: str, num_classes: int) -> torch.Tensor:
    """Detic's source of the federated weights: the category-info file at ``path``; when it
    is absent and the vocabulary is LVIS v1's, the builtin LVIS v1 counts (the same numbers)."""
    if path and Path(os.path.expanduser(path)).is_file():
        counts = load_cat_info_counts(os.path.expanduser(path))
    elif num_classes == LVIS_V1_NUM_CLASSES:
        logger.info("federated loss: %s not found, using the builtin LVIS v1 image counts", path or "CAT_FREQ_PATH")
        counts = builtin_lvis_v1_counts()
    else:
        raise FileNotFoundError(
            f"federated loss: category-info file '{path}' (MODEL.POMP.CAT_FREQ_PATH) does not exist and "
            f"the vocabulary ({num_classes} classes) is not LVIS v1's: write it with `python -m "
            "pomp_det.data.category_counts <training json> --out <path>`, or set "
            "MODEL.POMP.FED_LOSS_WEIGHTS train_boxes to count the training boxes")
    if counts.numel() != num_classes:
        raise ValueError(f"category-info file '{path}' has {counts.numel()} categories but the "
                         f"classifier has {num_classes}: MODEL.ROI_HEADS.NUM_CLASSES must match it")
    return counts


def train_box_counts(dataset_names: Sequence[str], num_classes: int) -> torch.Tensor:
    """[C] image counts over the box-labelled training datasets; cached in each dataset's
    metadata as ``category_image_counts``."""
    counts = torch.zeros(num_classes)
    for name in dataset_names:
        meta = MetadataCatalog.get(name)
        if meta.get("ann_type", "box") != "box":
            continue  # image-labelled datasets carry no boxes
        if meta.get("category_image_counts") is None:
            meta.set(category_image_counts=category_image_counts(DatasetCatalog.get(name), num_classes).tolist())
        cached = torch.tensor(meta.category_image_counts)
        if cached.numel() != num_classes:
            raise ValueError(f"dataset '{name}' has {cached.numel()} categories but the classifier "
                             f"has {num_classes}: MODEL.ROI_HEADS.NUM_CLASSES must match it")
        counts += cached
    return counts


def federated_class_weight(cfg, num_classes: int) -> torch.Tensor:
    """The federated loss's sampling weights ``image_count ** FED_LOSS_FREQ_WEIGHT`` from the
    source MODEL.POMP.FED_LOSS_WEIGHTS names (see pomp_det/config.py)."""
    p = cfg.MODEL.POMP
    if p.FED_LOSS_WEIGHTS == "cat_info":
        counts = cat_info_counts(p.CAT_FREQ_PATH, num_classes)
    elif p.FED_LOSS_WEIGHTS == "train_boxes":
        # no training datasets (a model trained by hand): every class equally likely
        counts = train_box_counts(cfg.DATASETS.TRAIN, num_classes) if len(cfg.DATASETS.TRAIN) else torch.ones(num_classes)
    else:
        raise ValueError(f"MODEL.POMP.FED_LOSS_WEIGHTS is '{p.FED_LOSS_WEIGHTS}': use cat_info or train_boxes")
    logger.info("federated loss: %d of %d classes can be drawn", int((counts > 0).sum()), num_classes)
    return counts.pow(p.FED_LOSS_FREQ_WEIGHT)


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description="write Detic's category-info file (federated-loss weights)")
    ap.add_argument("src", help="the full training json, e.g. datasets/lvis/lvis_v1_train.json")
    ap.add_argument("--out", help="default: <src>_cat_info.json next to it (Detic's name)")
    args = ap.parse_args(argv)
    src = Path(args.src)
    if not src.is_file():
        raise FileNotFoundError(f"'{src}' does not exist (the LVIS training json, see docs/detection.md)")
    out = Path(args.out) if args.out else src.with_name(f"{src.stem}_cat_info.json")
    print(atomic_write_json(out, make_cat_info(src)))


if __name__ == "__main__":
    from pomp_core.cli import run_tool

    run_tool(main)

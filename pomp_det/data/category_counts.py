"""Per-class image counts of the training annotations (category frequency metadata)."""
from __future__ import annotations

import logging
from typing import Iterable, Sequence

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

logger = logging.getLogger(__name__)


def category_image_counts(dataset_dicts: Iterable[dict], num_classes: int) -> torch.Tensor:
    """[C] number of images in which each (contiguous) category has a box."""
    counts = torch.zeros(num_classes)
    for record in dataset_dicts:
        cats = {a["category_id"] for a in record.get("annotations", ())}
        for c in cats:
            if 0 <= c < num_classes:
                counts[c] += 1
    return counts


def federated_class_weight(dataset_names: Sequence[str], num_classes: int, power: float) -> torch.Tensor:
    """Federated-loss sampling weights ``image_count ** power`` over the box-labelled
    training datasets; cached in each dataset's metadata as ``category_image_counts``."""
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
    logger.info("federated loss: %d of %d classes have training boxes", int((counts > 0).sum()), num_classes)
    return counts.pow(power)

"""Zero-shot classification on images: unit image features and top-1 against class embeddings
(:func:`pomp_core.embeddings.class_embeddings`)."""
from __future__ import annotations

import logging
import os
from typing import Callable, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .images import ImageListDataset, collate_skipping
from .progress import Progress

logger = logging.getLogger(__name__)


@torch.no_grad()
def encode_images(model: nn.Module, root: str | os.PathLike, items: Sequence[Tuple[str, int]],
                  transform: Callable, batch_size: int = 128, workers: int = 0,
                  progress: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm image features [n, D] of the readable items and their indices [n] into ``items``."""
    loader = DataLoader(ImageListDataset(root, items, transform), batch_size=batch_size,
                        num_workers=workers, collate_fn=collate_skipping)
    param = next(model.parameters())  # images in the model's dtype (an fp16 model takes fp16)
    feats, index, skipped = [], [], 0
    for batch in Progress(loader, desc="image features", unit="batch", disable=not progress):
        skipped += int(batch["skipped"])
        if "images" in batch:
            feats.append(F.normalize(model.encode_image(batch["images"][:, 0].to(param.device, param.dtype)).float(), dim=-1).cpu())
            index.append(batch["index"])
    if skipped:
        logger.warning("skipped %d unreadable or missing images under %s", skipped, root)
    if not feats:
        raise RuntimeError(f"none of the {len(items)} images under {root} could be read")
    return torch.cat(feats), torch.cat(index)


def image_features(model: nn.Module, root: str | os.PathLike, items: List[Tuple[str, int]],
                   transform: Callable, batch_size: int = 128, workers: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm image features [n, D] and labels [n] (unreadable images are skipped)."""
    feats, index = encode_images(model, root, items, transform, batch_size, workers)
    return feats, torch.tensor([items[i][1] for i in index.tolist()])


def top1(features: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> float:
    return float(((features @ weights.cpu().t()).argmax(dim=1) == labels).float().mean())

"""Zero-shot classification: a classifier from class names (prompt or template), image features, top-1."""
from __future__ import annotations

import logging
import os
from typing import Callable, List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .embeddings import class_embeddings
from .images import ImageListDataset, collate_skipping
from .progress import Progress
from .prompt import PromptLearner
from .text_encoder import PromptedTextEncoder

logger = logging.getLogger(__name__)

# a soft prompt, a template with "{}" for the name, or several templates whose class
# features are averaged (CLIP's prompt ensemble)
Classifier = Union[PromptLearner, str, Sequence[Union[str, Callable[[str], str]]]]


@torch.no_grad()
def text_classifier(model: nn.Module, tokenizer: Callable, classifier: Classifier, names: List[str]) -> torch.Tensor:
    """Unit-norm class weights [C, D] from a soft prompt, a template or a template ensemble.

    Benchmark class lists may repeat a name (open_clip's ImageNet names hold 'missile'
    and 'sunglasses' twice): each distinct name is encoded once and repeated names share
    a row, so the first of two identical rows wins every tie, as in CLIP's own protocol.
    """
    unique = list(dict.fromkeys(names))
    if isinstance(classifier, PromptLearner):
        weights = class_embeddings(model, tokenizer, classifier, unique)
    else:
        # the template ensemble of open_clip's build_zero_shot_classifier (mean of unit
        # features, renormalised), through the encoder that cuts batches after the EOT
        templates = [classifier] if isinstance(classifier, str) else list(classifier)
        encoder = PromptedTextEncoder(model, tokenizer)
        weights = 0
        for template in Progress(templates, desc="templates", unit="template", disable=len(templates) < 8):
            texts = [template.format(n) if isinstance(template, str) else template(n)
                     for n in (n.replace("_", " ") for n in unique)]
            weights = weights + torch.cat([F.normalize(encoder.encode_ids(tokenizer(texts[i:i + 512])).float(), dim=-1)
                                           for i in range(0, len(texts), 512)])
        weights = F.normalize(weights, dim=-1)
    if len(unique) == len(names):
        return weights
    row = {n: i for i, n in enumerate(unique)}
    return weights[torch.tensor([row[n] for n in names], device=weights.device)]


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

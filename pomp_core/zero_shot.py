"""Zero-shot classification: a classifier from class names (prompt or template), top-1 on images."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .embeddings import class_embeddings
from .prompt import PromptLearner
from .pretrain.data import ImageListDataset, collate_skipping
from .text_encoder import PromptedTextEncoder

Classifier = Union[PromptLearner, str]  # a soft prompt, or a template with "{}" for the name


def read_split_file(path: str | os.PathLike, split: str = "test") -> Tuple[List[Tuple[str, int]], List[str]]:
    """Items and class names of a CoOp-style split file (``{"test": [[path, label, name], ...]}``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file '{path}' does not exist")
    rows = json.loads(path.read_text()).get(split)
    if not rows:
        raise ValueError(f"{path} has no '{split}' items")
    names = {}
    for _, label, name in rows:
        names[label] = name
    classes = [names[i] for i in range(len(names))]
    return [(p, int(y)) for p, y, _ in rows], classes


@torch.no_grad()
def text_classifier(model: nn.Module, tokenizer: Callable, classifier: Classifier, names: List[str]) -> torch.Tensor:
    """Unit-norm class weights [C, D] from a soft prompt or a hand-written template."""
    if isinstance(classifier, PromptLearner):
        return class_embeddings(model, tokenizer, classifier, names)
    texts = [classifier.format(n.replace("_", " ")) for n in names]
    return F.normalize(PromptedTextEncoder(model, tokenizer).encode_ids(tokenizer(texts)).float(), dim=-1)


@torch.no_grad()
def image_features(model: nn.Module, root: str | os.PathLike, items: List[Tuple[str, int]],
                   transform: Callable, batch_size: int = 128, workers: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm image features [n, D] and labels [n] (unreadable images are skipped)."""
    loader = DataLoader(ImageListDataset(root, items, transform), batch_size=batch_size,
                        num_workers=workers, collate_fn=collate_skipping)
    device = next(model.parameters()).device
    feats, labels = [], []
    for batch in loader:
        if "images" in batch:
            feats.append(F.normalize(model.encode_image(batch["images"][:, 0].to(device)).float(), dim=-1).cpu())
            labels.append(batch["labels"])
    return torch.cat(feats), torch.cat(labels)


def top1(features: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> float:
    return float(((features @ weights.cpu().t()).argmax(dim=1) == labels).float().mean())


def evaluate_split(model: nn.Module, tokenizer: Callable, preprocess: Callable, split_file: str | os.PathLike,
                   classifiers: dict, root: Optional[str | os.PathLike] = None) -> dict:
    """Top-1 of each named classifier on the test items of a split file (images read once)."""
    items, names = read_split_file(split_file)
    feats, labels = image_features(model, root or Path(split_file).parent, items, preprocess)
    return {key: top1(feats, labels, text_classifier(model, tokenizer, clf, names))
            for key, clf in classifiers.items()}

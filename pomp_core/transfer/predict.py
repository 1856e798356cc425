"""Top-k classes of single images for a vocabulary, with softmax scores."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, List, Tuple

import torch
from torch import nn

from ..pretrain.data import IMAGE_EXTENSIONS
from ..zero_shot import Classifier, encode_images, text_classifier


def list_images(path: str | os.PathLike) -> Tuple[Path, List[str]]:
    """An image file, or every image under a folder (recursively, sorted): (root, relative paths)."""
    path = Path(path)
    if path.is_file():
        return path.parent, [path.name]
    if not path.is_dir():
        raise FileNotFoundError(f"'{path}' is neither an image file nor a folder")
    files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"folder '{path}' holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return path, files


@torch.no_grad()
def classify(model: nn.Module, tokenizer: Callable, transform: Callable, path: str | os.PathLike,
             classifier: Classifier, names: List[str], topk: int = 5,
             batch_size: int = 64) -> List[Tuple[str, List[Tuple[str, float]]]]:
    """[(image path, [(class name, probability), ...top-k])] for each readable image under ``path``.

    Probabilities are a softmax over the whole vocabulary of the model's scaled cosine
    similarities (CLIP's logit scale)."""
    root, files = list_images(path)
    weights = text_classifier(model, tokenizer, classifier, names).cpu()
    feats, index = encode_images(model, root, [(f, 0) for f in files], transform, batch_size)
    probs = (model.logit_scale.exp().float().cpu() * feats @ weights.t()).softmax(dim=-1)
    top = probs.topk(min(topk, len(names)), dim=-1)
    return [(str(root / files[i]), [(names[c], float(p)) for p, c in zip(ps.tolist(), cs.tolist())])
            for i, ps, cs in zip(index.tolist(), top.values, top.indices)]

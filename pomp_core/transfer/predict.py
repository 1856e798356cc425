"""Top-k classes of single images for a vocabulary, with softmax scores."""
from __future__ import annotations

import os
from typing import Callable, List, Tuple

import torch
from torch import nn

from ..embeddings import Classifier, class_embeddings
from ..images import list_images
from ..zero_shot import encode_images


@torch.no_grad()
def classify(model: nn.Module, tokenizer: Callable, transform: Callable, path: str | os.PathLike,
             classifier: Classifier, names: List[str], topk: int = 5,
             batch_size: int = 64) -> List[Tuple[str, List[Tuple[str, float]]]]:
    """[(image path, [(class name, probability), ...top-k])] for each readable image under ``path``.

    Probabilities are a softmax over the whole vocabulary of the model's scaled cosine
    similarities (CLIP's logit scale)."""
    root, files = list_images(path)
    weights = class_embeddings(model, tokenizer, classifier, names, allow_duplicates=True).cpu()
    feats, index = encode_images(model, root, [(f, 0) for f in files], transform, batch_size)
    probs = (model.logit_scale.exp().float().cpu() * feats @ weights.t()).softmax(dim=-1)
    top = probs.topk(min(topk, len(names)), dim=-1)
    return [(str(root / files[i]), [(names[c], float(p)) for p, c in zip(ps.tolist(), cs.tolist())])
            for i, ps, cs in zip(index.tolist(), top.values, top.indices)]

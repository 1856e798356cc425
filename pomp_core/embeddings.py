"""Class embeddings of a vocabulary with a prompt, and their export for detectors."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .durable import atomic_write
from .progress import Progress
from .prompt import PromptLearner
from .text_encoder import PromptedTextEncoder
from .vocabulary import VocabularySource, load_vocabulary


@torch.no_grad()
def class_embeddings(
    model: nn.Module,
    tokenizer: Callable,
    prompt: PromptLearner,
    names: VocabularySource,
    normalize: bool = True,
    batch_size: int = 256,
    progress: Optional[bool] = None,
    truncate_names: bool = False,
    allow_duplicates: bool = False,
) -> torch.Tensor:
    """Text features [C, D] of the vocabulary ``names`` (list, text file or COCO/LVIS json).

    Names are encoded in batches of similar token length so that each batch is cut
    short after its longest name; rows come back in vocabulary order. A progress bar
    shows for vocabularies of more than one batch unless ``progress=False``.
    ``allow_duplicates``: repeated names are legal (classes indexed by label, as in
    pre-training); by default they raise.
    """
    names = load_vocabulary(names, allow_duplicates)
    if prompt.class_specific and prompt.n_classes != len(names):
        raise ValueError(f"class-specific prompt has {prompt.n_classes} contexts but the "
                         f"vocabulary has {len(names)} names")
    encoder = PromptedTextEncoder(model, tokenizer, truncate_names=truncate_names)
    order = sorted(range(len(names)), key=lambda i: len(encoder.name_tokens(names[i])))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    show = progress if progress is not None else len(chunks) > 1
    out: Optional[torch.Tensor] = None
    for chunk in Progress(chunks, desc="class embeddings", unit="batch", disable=not show):
        idx = torch.tensor(chunk)
        feats = encoder(prompt, [names[i] for i in chunk], class_ids=idx).float()
        if out is None:
            out = feats.new_empty(len(names), feats.shape[1])
        out[idx.to(feats.device)] = feats
    return F.normalize(out, dim=-1) if normalize else out


def save_embeddings(embeddings: torch.Tensor, path: str | os.PathLike, fmt: str = "detic") -> Path:
    """Write [C, D] embeddings as ``.npy``.

    ``detic``: float16, not normalised (what Detic-style detectors load as
    ZERO_SHOT_WEIGHT_PATH and normalise themselves). ``normalized``: float32, unit rows.
    """
    if fmt == "detic":
        array = embeddings.detach().cpu().to(torch.float16).numpy()
    elif fmt == "normalized":
        array = F.normalize(embeddings.detach().cpu().float(), dim=-1).numpy()
    else:
        raise ValueError(f"unknown embedding format '{fmt}': use 'detic' or 'normalized'")
    path = Path(path)
    with atomic_write(path) as f:  # ranks of one run may write the same file at once
        np.save(f, array)
    return path

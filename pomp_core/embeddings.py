"""Class embeddings of a vocabulary with a prompt or templates, and their export for detectors."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .durable import atomic_write
from .progress import Progress
from .prompt import PromptLearner
from .text_encoder import PromptedTextEncoder
from .vocabulary import VocabularySource, load_vocabulary


# A soft prompt, a template with "{}" for the name, or several templates whose class
# features are averaged (CLIP's prompt ensemble).
Classifier = Union[PromptLearner, str, Sequence[Union[str, Callable[[str], str]]]]


@torch.no_grad()
def class_embeddings(
    model: nn.Module,
    tokenizer: Callable,
    prompt: Classifier,
    names: VocabularySource,
    normalize: bool = True,
    batch_size: int = 256,
    progress: Optional[bool] = None,
    truncate_names: bool = False,
    allow_duplicates: bool = False,
) -> torch.Tensor:
    """Text features [C, D] of the vocabulary ``names`` (list, text file or COCO/LVIS json)
    with a soft prompt, a ``"{}"`` template or a template ensemble.

    Prompted names are encoded in batches of similar token length so that each batch is cut
    short after its longest name; rows come back in vocabulary order. A progress bar shows
    for vocabularies of more than one batch unless ``progress=False``. Templates go through
    the same length-aware encoder; an ensemble is open_clip's ``build_zero_shot_classifier``
    (the mean of unit features, renormalised unless ``normalize=False``), transposed.
    ``allow_duplicates``: repeated names are legal (classes indexed by label, as in
    pre-training; benchmark lists such as open_clip's ImageNet names, which hold 'missile'
    twice). Each distinct name is then encoded once and its repeats share the row, so the
    first of two identical rows wins every tie, as in CLIP's own protocol (a class-specific
    prompt encodes every row with its own context). By default repeats raise.
    """
    names = load_vocabulary(names, allow_duplicates)
    if isinstance(prompt, PromptLearner) and prompt.class_specific:
        if prompt.n_classes != len(names):
            raise ValueError(f"class-specific prompt has {prompt.n_classes} contexts but the "
                             f"vocabulary has {len(names)} names")
        return _prompted(model, tokenizer, prompt, names, normalize, batch_size, progress, truncate_names)
    unique = list(dict.fromkeys(names))
    if isinstance(prompt, PromptLearner):
        out = _prompted(model, tokenizer, prompt, unique, normalize, batch_size, progress, truncate_names)
    else:
        out = _template_ensemble(model, tokenizer, [prompt] if isinstance(prompt, str) else list(prompt),
                                 unique, normalize)
    if len(unique) == len(names):
        return out
    row = {n: i for i, n in enumerate(unique)}
    return out[torch.tensor([row[n] for n in names], device=out.device)]


def _prompted(model: nn.Module, tokenizer: Callable, prompt: PromptLearner, names: List[str], normalize: bool,
              batch_size: int, progress: Optional[bool], truncate_names: bool) -> torch.Tensor:
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


def _template_ensemble(model: nn.Module, tokenizer: Callable, templates: List[Union[str, Callable[[str], str]]],
                       names: List[str], normalize: bool) -> torch.Tensor:
    encoder = PromptedTextEncoder(model, tokenizer)
    total = 0
    for template in Progress(templates, desc="templates", unit="template", disable=len(templates) < 8):
        texts = [template.format(n) if isinstance(template, str) else template(n)
                 for n in (n.replace("_", " ") for n in names)]
        total = total + torch.cat([F.normalize(encoder.encode_ids(tokenizer(texts[i:i + 512])).float(), dim=-1)
                                   for i in range(0, len(texts), 512)])
    return F.normalize(total, dim=-1) if normalize else total / len(templates)


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

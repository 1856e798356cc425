"""A POMP text encoder for mmseg, call-compatible with mmseg's ``CLIPTextEncoder``.

``forward()`` takes no arguments and returns ``logit_scale * normalised features``
[C(+1), D] of the configured vocabulary, like ``CLIPTextEncoder``, so it drops into
``MultimodalEncoderDecoder`` (SAN) in place of the template encoder. Features of a frozen
prompt are cached per class name; ``encode(names)`` serves any other vocabulary.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from mmseg.utils import get_classes
from torch import nn

from pomp_core import PromptedTextEncoder, load_vocabulary

from .clip import build_clip, build_prompt
from .datasets import resolve_split


def vocabulary_names(dataset_name: Optional[str] = None,
                     vocabulary: Optional[str | Sequence[str]] = None) -> List[str]:
    """Class names from a dataset (registered here or known to mmseg) or a vocabulary source
    (list, comma string, txt file, COCO/LVIS json, a world classes.json or its folder)."""
    if (dataset_name is None) == (vocabulary is None):
        raise ValueError("give the text encoder exactly one of dataset_name or vocabulary")
    if dataset_name is not None:
        try:
            return resolve_split(dataset_name)[0]
        except ValueError:
            names = list(get_classes(dataset_name))  # mmseg's own names ('ade', 'voc', ...)
            return names[1:] if names[0] == "background" else names
    if isinstance(vocabulary, str) and (vocabulary.endswith("classes.json") or os.path.isdir(vocabulary)):
        return resolve_split(vocabulary)[0]
    return load_vocabulary(vocabulary)


@MODELS.register_module()
class POMPTextEncoder(BaseModule):
    """Class text features from a frozen CLIP text tower and a (POMP) soft prompt.

    Args:
        dataset_name / vocabulary: the class names, as in ``CLIPTextEncoder``.
        clip_model / clip_pretrained: open_clip architecture and weights (tag or file).
        prompt: a prompt file; without one the prompt is initialised from ``init_words``.
        prompt_trusted: unpickle the prompt file fully (raw Dassl checkpoints); trusted files only.
        cache_feature: cache the features of the frozen prompt per class name.
        cat_bg: append a learned background embedding (as ``CLIPTextEncoder`` does for SAN).
        clip: an already loaded ``(model, tokenizer)`` to share, instead of loading one.
    """

    def __init__(self, dataset_name: Optional[str] = None,
                 vocabulary: Optional[str | Sequence[str]] = None,
                 clip_model: str = "ViT-B-16", clip_pretrained: Optional[str] = "openai",
                 prompt: Optional[str] = None, init_words: Optional[str] = None, prompt_trusted: bool = False,
                 cache_feature: bool = True, cat_bg: bool = False,
                 clip: Optional[tuple] = None, init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg)
        self.class_names = vocabulary_names(dataset_name, vocabulary)
        model, tokenizer = clip if clip is not None else build_clip(clip_model, clip_pretrained)
        self.clip = model
        self.prompt = build_prompt(prompt, model, tokenizer, init_words, prompt_trusted)
        self.prompt.requires_grad_(False)
        self.encoder = PromptedTextEncoder(model, tokenizer)
        self.cache_feature = cache_feature
        self._cache: Dict[str, torch.Tensor] = {}
        self.register_buffer("logit_scale", model.logit_scale.detach().clone(), persistent=False)
        self.bg_embed = nn.Parameter(torch.randn(1, self.embed_dims) * self.embed_dims ** -0.5) if cat_bg else None

    @property
    def embed_dims(self) -> int:
        return int(self.clip.text_projection.shape[1])

    def init_weights(self) -> None:
        # The CLIP weights come from the checkpoint it was loaded from; nothing to initialise.
        pass

    def train(self, mode: bool = True) -> "POMPTextEncoder":
        super().train(mode)
        self.clip.eval()  # frozen CLIP: no dropout, no BN statistics updates
        return self

    @torch.no_grad()
    def encode(self, names: Sequence[str]) -> torch.Tensor:
        """Unit-norm features [len(names), D] of the frozen prompt with ``names``."""
        if not self.cache_feature:
            return F.normalize(self.encoder(self.prompt, list(names)).float(), dim=-1)
        missing = [n for n in dict.fromkeys(names) if n not in self._cache]
        if missing:
            feats = F.normalize(self.encoder(self.prompt, missing).float(), dim=-1)
            self._cache.update(zip(missing, feats))
        device = self.logit_scale.device
        return torch.stack([self._cache[n] for n in names]).to(device)

    def forward(self) -> torch.Tensor:
        embeds = self.encode(self.class_names)
        if self.bg_embed is not None:
            embeds = F.normalize(torch.cat([embeds, self.bg_embed]), dim=-1)
        return self.logit_scale.exp() * embeds

"""A POMP text encoder for mmseg, a drop-in for mmseg's ``CLIPTextEncoder``.

``forward()`` takes no arguments and returns ``logit_scale * normalised features``
[C(+1), D] of the configured vocabulary, like ``CLIPTextEncoder``, so it takes that
encoder's place in ``MultimodalEncoderDecoder`` (SAN): change ``type`` and add the prompt
and CLIP source; ``CLIPTextEncoder``'s own arguments are accepted and either used
(``dataset_name``, ``vocabulary``, ``templates``, ``cache_feature``, ``cat_bg``) or checked
against the loaded CLIP (sizes). Only the text tower is a submodule: the state dict holds
no visual weights (a ZSSeg-style segmentor takes the visual tower with :meth:`visual`).
"""
from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from mmseg.utils import get_classes, get_predefined_templates
from torch import nn

from pomp_core import PromptedTextEncoder, class_embeddings, load_vocabulary
from pomp_core.prompt_source import build_prompt

from .clip import build_clip
from .datasets import resolve_split


def encoder_class_names(dataset_name: Optional[str] = None,
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


def _text_modules(model: nn.Module) -> nn.Module:
    """A container registering the text tower of an open_clip CLIP (shared, not copied)."""
    src = model.text if hasattr(model, "text") else model
    text = nn.Module()
    for name in ("token_embedding", "transformer", "ln_final"):
        setattr(text, name, getattr(src, name))
    for name in ("positional_embedding", "text_projection"):
        value = getattr(src, name)
        if isinstance(value, nn.Parameter):
            text.register_parameter(name, value)
        else:  # a Linear projection (some open_clip towers)
            setattr(text, name, value)
    return text


@MODELS.register_module()
class POMPTextEncoder(BaseModule):
    """Class text features from a frozen CLIP text tower and a (POMP) soft prompt.

    Args:
        dataset_name / vocabulary: the class names, as in ``CLIPTextEncoder``.
        clip_model / clip_pretrained: open_clip architecture and weights (tag or file).
        prompt: a prompt file. Without one, a prompt initialised from ``init_words``; with
            neither, the hand ``templates`` (CLIPTextEncoder's template ensemble).
        prompt_trusted: unpickle the prompt file fully (raw Dassl checkpoints); trusted files only.
        templates: a list of '{}' templates or an mmseg name ('vild'); used only without a
            prompt and init_words.
        cache_feature: cache the features of the frozen prompt per class name.
        cat_bg: append a learned background embedding in ``forward()`` (SAN's extra class;
            mmseg's default True). ``class_embeddings()`` never adds it.
        total_vocab_size, context_length, embed_dims, num_layers, num_heads, mlp_ratio,
        output_dims: ``CLIPTextEncoder``'s sizes; None skips a check, a value must match
            the loaded CLIP. ``norm_cfg`` is accepted and unused (CLIP's own LayerNorm).
        clip: an already loaded ``(model, tokenizer)`` to share, instead of loading one.
    """

    def __init__(self, dataset_name: Optional[str] = None,
                 vocabulary: Optional[str | Sequence[str]] = None,
                 clip_model: str = "ViT-B-16", clip_pretrained: Optional[str] = "openai",
                 prompt: Optional[str] = None, init_words: Optional[str] = None, prompt_trusted: bool = False,
                 templates: Optional[str | Sequence[str]] = None,
                 cache_feature: bool = True, cat_bg: bool = True,
                 total_vocab_size: Optional[int] = None, context_length: Optional[int] = None,
                 embed_dims: Optional[int] = None, num_layers: Optional[int] = None,
                 num_heads: Optional[int] = None, mlp_ratio: Optional[float] = None,
                 output_dims: Optional[int] = None, norm_cfg: Optional[dict] = None,
                 clip: Optional[tuple] = None, init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg)
        self.class_names = encoder_class_names(dataset_name, vocabulary)
        model, tokenizer = clip if clip is not None else build_clip(clip_model, clip_pretrained)
        # the whole CLIP stays reachable (visual tower, encode_text) without being a submodule
        self.__dict__["_clip"] = (model, tokenizer)
        self.text = _text_modules(model)
        self._check_sizes(dict(total_vocab_size=total_vocab_size, context_length=context_length,
                               embed_dims=embed_dims, num_layers=num_layers, num_heads=num_heads,
                               mlp_ratio=mlp_ratio, output_dims=output_dims))
        if prompt or init_words:
            self.prompt = build_prompt(model, tokenizer, prompt, init_words, prompt_trusted)
            self.prompt.requires_grad_(False)
            self.templates = None
        elif templates:
            self.prompt = None
            self.templates = list(templates) if not isinstance(templates, str) \
                else list(get_predefined_templates(templates))
        else:
            raise ValueError("no text source: set prompt='path/to/prompt.pth', init_words='a photo of a' "
                             "or templates (a list of '{}' strings or 'vild')")
        self.encoder = PromptedTextEncoder(model, tokenizer)
        self.cache_feature = cache_feature
        self._cache: Dict[str, torch.Tensor] = {}
        self.register_buffer("logit_scale", model.logit_scale.detach().clone(), persistent=False)
        self.bg_embed = nn.Parameter(torch.randn(1, self.embed_dims) * self.embed_dims ** -0.5) if cat_bg else None

    def _check_sizes(self, given: dict) -> None:
        tower = self.text
        width = tower.token_embedding.weight.shape[1]
        actual = dict(total_vocab_size=tower.token_embedding.weight.shape[0],
                      context_length=tower.positional_embedding.shape[0], embed_dims=width,
                      num_layers=len(tower.transformer.resblocks),
                      num_heads=tower.transformer.resblocks[0].attn.num_heads,
                      mlp_ratio=tower.transformer.resblocks[0].mlp.c_fc.out_features / width,
                      output_dims=self.embed_dims)
        wrong = {k: (v, actual[k]) for k, v in given.items() if v is not None and v != actual[k]}
        if wrong:
            raise ValueError("text encoder sizes do not match the loaded CLIP (given, CLIP's): "
                             f"{wrong}; drop these keys from the config or load the CLIP they describe")

    @property
    def clip(self) -> nn.Module:
        return self._clip[0]

    @property
    def tokenizer(self) -> Callable:
        return self._clip[1]

    def visual(self) -> Tuple[nn.Module, float]:
        """The CLIP's visual tower and its logit scale (for classifying crops)."""
        return self.clip.visual, float(self.clip.logit_scale.exp())

    @property
    def embed_dims(self) -> int:
        proj = self.text.text_projection
        return int(proj.shape[1] if isinstance(proj, torch.Tensor) else proj.out_features)

    def init_weights(self) -> None:
        # The CLIP weights come from the checkpoint it was loaded from; nothing to initialise.
        pass

    def train(self, mode: bool = True) -> "POMPTextEncoder":
        super().train(mode)
        self.text.eval()  # frozen CLIP: no dropout
        return self

    def _features(self, names: List[str]) -> torch.Tensor:
        if self.prompt is not None:
            return F.normalize(self.encoder(self.prompt, names).float(), dim=-1)
        return class_embeddings(self.clip, self.tokenizer, self.templates, names, allow_duplicates=True)

    @torch.no_grad()
    def class_embeddings(self, names: Sequence[str]) -> torch.Tensor:
        """Unit-norm features [len(names), D] of the frozen prompt (or templates) with ``names``."""
        device = self.logit_scale.device
        if not self.cache_feature:
            return self._features(list(names)).to(device)
        missing = [n for n in dict.fromkeys(names) if n not in self._cache]
        if missing:
            self._cache.update(zip(missing, self._features(missing)))
        return torch.stack([self._cache[n] for n in names]).to(device)

    def forward(self) -> torch.Tensor:
        embeds = self.class_embeddings(self.class_names)
        if self.bg_embed is not None:
            embeds = F.normalize(torch.cat([embeds, self.bg_embed]), dim=-1)
        return self.logit_scale.exp() * embeds

"""Zero-shot top-1 of several prompts on several datasets, image features read once per dataset."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Union

import open_clip
from torch import nn

from ..embeddings import Classifier, class_embeddings
from ..prompt import PromptLearner
from ..prompt_io import load_prompt
from ..text_tower import text_tower
from ..zero_shot import top1
from .datasets import ClassificationSet
from .feature_cache import FeatureCache

logger = logging.getLogger(__name__)

HAND = "hand"  # CLIP's hand-crafted prompt of each dataset (CoOp's CUSTOM_TEMPLATES)
ENSEMBLE = "ensemble"  # CLIP's 80 ImageNet templates, class features averaged


@dataclass
class PromptSpec:
    """A row of the results table: a label and what builds the classifier."""

    label: str
    source: Union[PromptLearner, str]  # a loaded prompt, a "{}" template, HAND or ENSEMBLE

    def classifier(self, data: ClassificationSet) -> Classifier:
        if self.source == HAND:
            return data.template
        if self.source == ENSEMBLE:
            return open_clip.OPENAI_IMAGENET_TEMPLATES
        return self.source


def parse_prompt(spec: str, trusted: bool = False) -> PromptSpec:
    """``[label=]source``: a prompt file (ours or the release's ``.pth.tar``), a template
    holding ``{}``, ``hand`` (each dataset's CLIP prompt) or ``ensemble`` (80 templates)."""
    label, sep, source = spec.partition("=")
    if not sep or "{" in label:
        label, source = "", spec
    if source == HAND:
        return PromptSpec(label or "CLIP hand prompt", HAND)
    if source == ENSEMBLE:
        return PromptSpec(label or "CLIP 80-template ensemble", ENSEMBLE)
    if "{}" in source and not os.path.isfile(source):
        return PromptSpec(label or f'"{source}"', source)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"prompt '{source}' is neither a prompt file, a template with '{{}}', "
                                f"'{HAND}' nor '{ENSEMBLE}'")
    name = os.path.basename(source)
    return PromptSpec(label or name.split(".")[0], load_prompt(source, trusted=trusted))


def check_prompt_fits(prompt: PromptSpec, model: nn.Module) -> None:
    if isinstance(prompt.source, PromptLearner):
        width = text_tower(model).token_embedding.weight.shape[1]
        if prompt.source.width != width:
            raise ValueError(f"prompt '{prompt.label}' has width {prompt.source.width} but the model's text "
                             f"tower has width {width}: it was trained for another CLIP model")


def evaluate(model: nn.Module, tokenizer: Callable, transform: Callable, datasets: List[ClassificationSet],
             prompts: List[PromptSpec], cache: FeatureCache) -> Dict[str, Dict[str, float]]:
    """``results[prompt label][dataset title]`` = top-1 in [0, 1]."""
    for prompt in prompts:
        check_prompt_fits(prompt, model)
    results: Dict[str, Dict[str, float]] = {p.label: {} for p in prompts}
    for data in datasets:
        feats, labels = cache.features(model, transform, data)
        for prompt in prompts:
            weights = class_embeddings(model, tokenizer, prompt.classifier(data), data.class_names, allow_duplicates=True)
            results[prompt.label][data.title] = top1(feats, labels, weights)
            logger.info("%s on %s: top-1 %.2f%%", prompt.label, data.title, 100 * results[prompt.label][data.title])
    return results

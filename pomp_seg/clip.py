"""The frozen CLIP and the prompt that every pomp_seg component shares."""
from __future__ import annotations

import os
from typing import Callable, Optional, Tuple

from torch import nn

import pomp_core
from pomp_core import PromptLearner, images

# CLIP's pixel statistics (pomp_core.images) on the 0-255 scale of mmseg's
# SegDataPreProcessor (RGB order).
CLIP_MEAN = [255 * m for m in images.CLIP_MEAN]
CLIP_STD = [255 * s for s in images.CLIP_STD]


def build_clip(name: str, pretrained: Optional[str] = None) -> Tuple[nn.Module, Callable]:
    """``(model, tokenizer)`` of a frozen open_clip model; a missing weight file is an error."""
    if pretrained and (os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin"))) \
            and not os.path.isfile(pretrained):
        raise FileNotFoundError(
            f"CLIP weights '{pretrained}' do not exist: set model.text_encoder.clip_pretrained "
            "to an existing file (or an open_clip tag such as 'openai').")
    model, tokenizer, _ = pomp_core.load_clip(name, pretrained=pretrained)
    return model, tokenizer


def build_prompt(prompt: Optional[str], model: nn.Module, tokenizer: Callable,
                 init_words: Optional[str] = None, trusted: bool = False) -> PromptLearner:
    """The POMP prompt file ``prompt``, or (without one) a prompt initialised from ``init_words``.
    ``trusted`` unpickles the file fully (a raw Dassl checkpoint pickles its scheduler)."""
    if prompt:
        if not os.path.isfile(prompt):
            raise FileNotFoundError(
                f"prompt file '{prompt}' does not exist: pass a POMP prompt (tools/pretrain.py "
                "output or the release's .pth.tar), a stage-(a) prompt (work_dir/prompt.pth), "
                "or set prompt=None with init_words='a photo of a'.")
        return pomp_core.load_prompt(prompt, trusted=trusted)
    if not init_words:
        raise ValueError("no prompt: set prompt='path/to/prompt.pth' or init_words='a photo of a'")
    return PromptLearner.from_words(init_words, model, tokenizer)

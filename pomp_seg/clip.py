"""The frozen CLIP that every pomp_seg component shares, and CLIP's pixel statistics for mmseg."""
from __future__ import annotations

import os
from typing import Callable, Optional, Tuple

from torch import nn

import pomp_core
from pomp_core import images

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

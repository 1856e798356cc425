"""A text encoder whose class embeddings are random: the baseline that shows how much of a
zero-shot segmentor's unseen-class accuracy comes from the text features."""
from __future__ import annotations

import zlib
from typing import Sequence

import torch
import torch.nn.functional as F
from mmseg.registry import MODELS

from .text_encoder import POMPTextEncoder


@MODELS.register_module()
class RandomTextEncoder(POMPTextEncoder):
    """``POMPTextEncoder`` (same CLIP for the crop classifier) with one fixed random unit vector
    per class name (seeded by the name), in place of the prompted text features."""

    @torch.no_grad()
    def class_embeddings(self, names: Sequence[str]) -> torch.Tensor:
        rows = []
        for name in names:
            g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
            rows.append(torch.randn(self.embed_dims, generator=g))
        return F.normalize(torch.stack(rows), dim=-1).to(self.logit_scale.device)

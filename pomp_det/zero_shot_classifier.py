"""The zero-shot box classifier: box features scored against frozen class text embeddings."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class ZeroShotClassifier(nn.Module):
    """``logits = T * <normalize(W x), normalize(e_c)>`` for each class c, plus a background
    column of zeros (and an optional learned scalar bias on the class columns).

    ``embeddings`` [C, D] are kept as a non-persistent buffer: the vocabulary comes from the
    config (or :meth:`set_embeddings`), never from a checkpoint, so one trained model serves
    any vocabulary encoded with the same prompt.
    """

    def __init__(self, input_size: int, embeddings: torch.Tensor, temperature: float = 50.0,
                 use_bias: bool = False, bias_init: float = 0.0) -> None:
        super().__init__()
        if embeddings.dim() != 2:
            raise ValueError(f"class embeddings must be [C, D], got shape {tuple(embeddings.shape)}")
        self.linear = nn.Linear(input_size, embeddings.shape[1])
        self.temperature = temperature
        self.bias = nn.Parameter(torch.tensor(float(bias_init))) if use_bias else None
        self.register_buffer("embeddings", torch.empty(0), persistent=False)
        self.set_embeddings(embeddings)

    @property
    def num_classes(self) -> int:
        return self.embeddings.shape[0]

    @property
    def embed_dim(self) -> int:
        return self.linear.out_features

    def set_embeddings(self, embeddings: torch.Tensor) -> None:
        """Replace the vocabulary: [C', D] rows, normalised here."""
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embed_dim:
            raise ValueError(
                f"class embeddings of shape {tuple(embeddings.shape)} do not fit this classifier, "
                f"which projects box features to D={self.embed_dim}: export them with the CLIP "
                f"model the detector was trained with (MODEL.POMP.EMBED_DIM = text embedding size)")
        device = self.linear.weight.device
        self.embeddings = F.normalize(embeddings.detach().float(), dim=1).to(device)

    def forward(self, x: torch.Tensor, embeddings: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[N, input_size] features -> [N, C + 1] logits (last column = background, 0).

        ``embeddings`` [C', D] score against another vocabulary for this call only.
        """
        weight = self.embeddings if embeddings is None else F.normalize(embeddings.float(), dim=1)
        z = F.normalize(self.linear(x), dim=1)
        logits = self.temperature * z @ weight.t().to(z)
        if self.bias is not None:
            logits = logits + self.bias
        return torch.cat([logits, logits.new_zeros(logits.shape[0], 1)], dim=1)

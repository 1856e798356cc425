"""The pieces of an open_clip text tower that prompted encoding needs (token embedding,
transformer, final norm, projection, causal mask), read from ``CLIP`` or ``CustomTextCLIP``."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class TextTower:
    """The pieces of an open_clip text tower that prompted encoding needs.

    Tensors are read from the tower on every access: ``model.to(device / dtype)`` replaces
    buffers such as the causal ``attn_mask`` with new tensors, so a reference taken when the
    encoder was built would stay on the old device (the frameworks move models after
    building them)."""

    def __init__(self, module: nn.Module, pool_type: str, eos_id: Optional[int]) -> None:
        self.module = module
        self.pool_type = pool_type
        self.eos_id = eos_id

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.module.token_embedding

    @property
    def transformer(self) -> nn.Module:
        return self.module.transformer

    @property
    def ln_final(self) -> nn.Module:
        return self.module.ln_final

    @property
    def positional_embedding(self) -> torch.Tensor:
        return self.module.positional_embedding

    @property
    def text_projection(self) -> Optional[torch.Tensor | nn.Module]:
        return self.module.text_projection

    @property
    def attn_mask(self) -> Optional[torch.Tensor]:
        return self.module.attn_mask

    @property
    def context_length(self) -> int:
        return self.positional_embedding.shape[0]

    @property
    def width(self) -> int:
        return self.token_embedding.weight.shape[1]

    def project(self, x: torch.Tensor) -> torch.Tensor:
        if self.text_projection is None:
            return x
        if isinstance(self.text_projection, nn.Module):
            return self.text_projection(x)
        return x @ self.text_projection


def text_tower(model: nn.Module) -> TextTower:
    """The text tower of an open_clip ``CLIP`` or ``CustomTextCLIP`` with a CLIP-style transformer."""
    tower = model.text if hasattr(model, "text") else model
    if not hasattr(tower, "token_embedding") or not hasattr(tower, "positional_embedding"):
        raise TypeError(
            f"{type(tower).__name__} is not a CLIP-style text transformer (Hugging Face text "
            "towers have no token-embedding prompt slot); use an OpenAI-style open_clip model.")
    if getattr(tower, "cls_emb", None) is not None:
        raise TypeError("text towers with a CLS embedding (CoCa) are not supported")
    pool_type = getattr(tower, "pool_type", None) or getattr(model, "text_pool_type", "argmax")
    if pool_type not in ("argmax", "eos"):
        raise TypeError(f"text pool type '{pool_type}' has no EOT feature; need 'argmax' or 'eos'")
    return TextTower(tower, pool_type=pool_type,
                     eos_id=getattr(tower, "eos_id", None) or getattr(model, "text_eos_id", None))

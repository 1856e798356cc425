"""The soft prompt: M learned context vectors in the text tower's token-embedding space."""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from .text_tower import text_tower

POSITIONS = ("end", "middle", "front")


class PromptLearner(nn.Module):
    """Context vectors ``ctx`` of shape [M, width] (shared) or [C, M, width] (class-specific).

    ``position`` says where the class-name tokens go relative to the context:
    ``end`` (``[SOS] ctx name . [EOS]``, the default), ``middle`` (half the context
    before the name, half after) or ``front`` (``[SOS] name ctx . [EOS]``).
    Metadata (model name, init words) travels with the prompt into prompt files.
    """

    def __init__(
        self,
        n_ctx: int = 4,
        width: int = 512,
        position: str = "end",
        class_specific: bool = False,
        n_classes: Optional[int] = None,
        init_std: float = 0.02,
        model_name: Optional[str] = None,
        ctx: Optional[torch.Tensor] = None,
    ) -> None:
        super().__init__()
        if position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got '{position}'")
        if n_ctx < 1:
            raise ValueError(f"a prompt needs at least one context vector, got n_ctx={n_ctx}")
        if class_specific and not n_classes:
            raise ValueError("class-specific contexts need n_classes (one context per class)")
        shape = (n_classes, n_ctx, width) if class_specific else (n_ctx, width)
        if ctx is None:
            ctx = torch.empty(shape).normal_(0.0, init_std)
        elif tuple(ctx.shape) != shape:
            raise ValueError(f"ctx has shape {tuple(ctx.shape)}, expected {shape}")
        self.ctx = nn.Parameter(ctx.detach().clone().float())
        self.position = position
        self.class_specific = class_specific
        self.model_name = model_name
        self.init_words: Optional[str] = None

    @property
    def n_ctx(self) -> int:
        return self.ctx.shape[-2]

    @property
    def width(self) -> int:
        return self.ctx.shape[-1]

    @property
    def n_classes(self) -> Optional[int]:
        return self.ctx.shape[0] if self.class_specific else None

    @classmethod
    def from_words(
        cls,
        words: str,
        model: nn.Module,
        tokenizer: Callable,
        position: str = "end",
        class_specific: bool = False,
        n_classes: Optional[int] = None,
    ) -> "PromptLearner":
        """Initialise the context from the token embeddings of ``words`` (e.g. "a photo of a")."""
        ids = tokenizer.encode(words.replace("_", " "))
        if not ids:
            raise ValueError(f"init words '{words}' tokenize to nothing")
        with torch.no_grad():
            emb = text_tower(model).token_embedding(torch.tensor(ids)).float()
        if class_specific:
            if not n_classes:
                raise ValueError("class-specific contexts need n_classes")
            emb = emb.unsqueeze(0).repeat(n_classes, 1, 1)
        prompt = cls(n_ctx=len(ids), width=emb.shape[-1], position=position,
                     class_specific=class_specific, n_classes=n_classes,
                     model_name=getattr(model, "pomp_model_name", None), ctx=emb)
        prompt.init_words = words
        return prompt

    def context_for(self, class_ids: Optional[torch.Tensor], batch: int) -> torch.Tensor:
        """The [batch, M, width] context rows for the given classes."""
        if not self.class_specific:
            return self.ctx.unsqueeze(0).expand(batch, -1, -1)
        if class_ids is None:
            raise ValueError("class-specific prompts need the class index of every name")
        return self.ctx[class_ids]

    def extra_repr(self) -> str:
        csc = f", class_specific=True, n_classes={self.n_classes}" if self.class_specific else ""
        return f"n_ctx={self.n_ctx}, width={self.width}, position='{self.position}'{csc}"

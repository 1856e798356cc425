"""Text features of (soft prompt, class names) through a frozen open_clip text tower.

Layout (docs/text_encoding.md), class token at the end::

    [SOS] ctx_1 .. ctx_M <name tokens> "." [EOS] pad ...

The token ids are those of the whole string ``"X X .. X {name}."``, tokenized at once as
the POMP release does (CLIP's BPE merges a name's final punctuation with the period:
``"bow (weapon)."`` ends in one ``").</w>"`` token), and the placeholder embeddings are
replaced by the learned vectors. For ``middle`` and ``front`` the release moves the first
``len(tokenize(name))`` tokens after the context (the name, with a merged period if any)
in front of the second half of the context or all of it. The feature is
``ln_final(x)[EOT] @ text_projection``. Because the text transformer is causal, the
positions after a row's EOT never reach its EOT feature, so each row is run only up to
its EOT (``length_aware``: groups of equal length, shared leading positions once):
exact, and most prompts are 10-30 of 77 tokens.
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .length_aware import encode_causal, shared_prefix
from .prompt import PromptLearner
from .text_tower import text_tower

logger = logging.getLogger(__name__)


class PromptedTextEncoder:
    """Turns (prompt, class names) into text features with a frozen CLIP text tower.

    ``truncate_names``: a name whose tokens do not fit the context (77 minus the prompt
    and 3 special tokens) raises a ValueError by default; with True it is cut to fit
    and a warning names it.
    """

    def __init__(self, model: nn.Module, tokenizer: Callable, truncate_names: bool = False) -> None:
        for attr in ("encode", "sot_token_id", "eot_token_id"):
            if not hasattr(tokenizer, attr):
                raise TypeError(f"{type(tokenizer).__name__} is not an open_clip SimpleTokenizer "
                                f"(no '{attr}'); pass open_clip.get_tokenizer(model_name)")
        self.tower = text_tower(model)
        self.tokenizer = tokenizer
        self.truncate_names = truncate_names
        self.min_group_rows = 16  # length groups smaller than this join the next longer one
        self._name_ids: Dict[str, List[int]] = {}
        self._tails: Dict[Tuple[str, int], List[int]] = {}
        (self.placeholder_id,) = tokenizer.encode("X")
        self.dot_ids = tokenizer.encode(".")

    @property
    def causal(self) -> bool:
        return self.tower.attn_mask is not None

    def name_tokens(self, name: str) -> List[int]:
        """Tokens of the name alone: their count is the release's ``name_len``."""
        ids = self._name_ids.get(name)
        if ids is None:
            ids = self._name_ids[name] = self.tokenizer.encode(name.replace("_", " "))
        return ids

    def prompt_tail(self, name: str, n_ctx: int) -> List[int]:
        """Tokens after the context in the whole string ``"X .. X {name}."`` (name and period)."""
        key = (name, n_ctx)
        tail = self._tails.get(key)
        if tail is None:
            text = " ".join(["X"] * n_ctx) + " " + name.replace("_", " ") + "."
            ids = self.tokenizer.encode(text)
            if ids[:n_ctx] != [self.placeholder_id] * n_ctx:
                raise ValueError(f"class name '{name}' merges with the context placeholders "
                                 f"when tokenized ({ids[:n_ctx + 2]}); strip its leading symbols")
            tail = self._tails[key] = ids[n_ctx:]
        return tail

    def max_name_tokens(self, n_ctx: int) -> int:
        """Room for the name and its period between the context and EOT."""
        return self.tower.context_length - n_ctx - 2

    def token_ids(self, names: Sequence[str], n_ctx: int, position: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """Token ids [N, context_length] and the context-slot mask of the prompted names."""
        limit = self.max_name_tokens(n_ctx)
        if limit < 2:
            raise ValueError(f"a prompt of {n_ctx} vectors leaves no room for a class name "
                             f"in a context of {self.tower.context_length} tokens")
        ids = torch.zeros(len(names), self.tower.context_length, dtype=torch.long)
        is_ctx = torch.zeros(len(names), self.tower.context_length, dtype=torch.bool)
        half = n_ctx // 2
        too_long = []
        for row, name in enumerate(names):
            tail = self.prompt_tail(name, n_ctx)
            if len(tail) > limit:
                if not self.truncate_names:
                    raise ValueError(
                        f"class name '{name}' is {len(tail) - 1} tokens; with {n_ctx} context vectors "
                        f"at most {limit - 1} fit in the {self.tower.context_length}-token context. "
                        "Shorten the name, or pass truncate_names=True to cut it to fit.")
                too_long.append(name)
                tail = tail[: limit - len(self.dot_ids)] + self.dot_ids
            # the release's name_len: tokens of the name alone, at most what the tail holds
            name_len = min(len(self.name_tokens(name)), len(tail))
            ctx = [self.placeholder_id] * n_ctx
            if position == "end":
                body, mask = ctx + tail, [1] * n_ctx + [0] * len(tail)
            elif position == "front":
                body = tail[:name_len] + ctx + tail[name_len:]
                mask = [0] * name_len + [1] * n_ctx + [0] * (len(tail) - name_len)
            else:  # middle
                body = ctx[:half] + tail[:name_len] + ctx[half:] + tail[name_len:]
                mask = [1] * half + [0] * name_len + [1] * (n_ctx - half) + [0] * (len(tail) - name_len)
            seq = [self.tokenizer.sot_token_id] + body + [self.tokenizer.eot_token_id]
            ids[row, : len(seq)] = torch.tensor(seq)
            is_ctx[row, 1 : 1 + len(mask)] = torch.tensor(mask, dtype=torch.bool)
        if too_long:
            logger.warning("cut %d class names to %d tokens to fit the context: %s",
                           len(too_long), limit - 1, too_long[:10])
        return ids, is_ctx

    def eot_index(self, ids: torch.Tensor) -> torch.Tensor:
        if self.tower.pool_type == "eos":
            return (ids == self.tower.eos_id).int().argmax(dim=-1)
        return ids.argmax(dim=-1)  # EOT has the largest id in CLIP's vocabulary

    def __call__(
        self,
        prompt: PromptLearner,
        names: Sequence[str],
        class_ids: Optional[torch.Tensor] = None,
        truncate: bool = True,
    ) -> torch.Tensor:
        """Unnormalised text features [N, D] of ``names`` with ``prompt``.

        ``class_ids`` selects the context rows of a class-specific prompt (default: row i
        for name i). ``truncate=False`` runs all context positions (the plain computation).
        """
        tower = self.tower
        if prompt.width != tower.width:
            raise ValueError(
                f"prompt width {prompt.width} does not match the text tower width {tower.width}: "
                "the prompt was trained for another CLIP model; load the model it was made for "
                f"({prompt.model_name or 'see the prompt file metadata'}).")
        device = tower.token_embedding.weight.device
        ids, is_ctx = self.token_ids(names, prompt.n_ctx, prompt.position)
        if truncate and self.causal:  # build embeddings only up to the longest EOT
            length = int(self.eot_index(ids).max()) + 1
            ids, is_ctx = ids[:, :length], is_ctx[:, :length]
        ids, is_ctx = ids.to(device), is_ctx.to(device)
        if prompt.class_specific and class_ids is None:
            class_ids = torch.arange(len(names))
        ctx = prompt.context_for(None if class_ids is None else class_ids.to(prompt.ctx.device), len(names))
        ctx = ctx.to(device=device, dtype=self.cast_dtype)
        # Context slot k of each row takes ctx[k]: gather the vectors into place, then
        # keep the frozen token embeddings everywhere else.
        slot = (is_ctx.cumsum(dim=1) - 1).clamp(min=0)
        ctx_full = torch.gather(ctx, 1, slot.unsqueeze(-1).expand(-1, -1, ctx.shape[-1]))
        x = torch.where(is_ctx.unsqueeze(-1), ctx_full, tower.token_embedding(ids).to(self.cast_dtype))
        # a class-specific context differs by row even where the slots agree
        return self.forward_embeddings(x, ids, truncate, per_row=is_ctx if prompt.class_specific else None,
                                       is_ctx=is_ctx)

    @property
    def cast_dtype(self) -> torch.dtype:
        transformer = self.tower.transformer
        if hasattr(transformer, "get_cast_dtype"):
            return transformer.get_cast_dtype()
        return self.tower.token_embedding.weight.dtype

    def encode_ids(self, ids: torch.Tensor, truncate: bool = True) -> torch.Tensor:
        """Features of plain token ids (``tokenizer(texts)``), equal to ``model.encode_text``
        but length-aware (``forward_embeddings``)."""
        if truncate and self.causal:
            ids = ids[:, : int(self.eot_index(ids).max()) + 1]
        ids = ids.to(self.tower.token_embedding.weight.device)
        return self.forward_embeddings(self.tower.token_embedding(ids).to(self.cast_dtype), ids, truncate)

    def forward_embeddings(self, x: torch.Tensor, ids: torch.Tensor, truncate: bool = True,
                           per_row: Optional[torch.Tensor] = None,
                           is_ctx: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Token embeddings [N, L, W] -> text features [N, D]; ``ids`` locate the EOT.

        With ``truncate`` and a causal tower the encoding is length-aware
        (``pomp_core.length_aware``): rows grouped by length, each group cut after its own
        longest EOT, and the leading positions shared by every row computed once
        (``is_ctx`` marks the context slots, whose vectors are not the ids' embeddings;
        ``per_row`` marks positions whose vectors differ by row even so).
        ``truncate=False`` is the plain computation over all positions.
        """
        tower = self.tower
        eot = self.eot_index(ids)
        if truncate and self.causal:
            return encode_causal(tower, x, eot, shared_prefix(ids, eot, per_row, is_ctx), self.min_group_rows)
        x = x + tower.positional_embedding.to(x.dtype)
        x = tower.transformer(x, attn_mask=tower.attn_mask)
        x = tower.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        return tower.project(x)

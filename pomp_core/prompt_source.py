"""The prompt a command line or a config names: a prompt file, or context vectors
initialised from words (the hand-crafted context such as "a photo of a")."""
from __future__ import annotations

import os
from typing import Callable, Optional

from torch import nn

from .prompt import PromptLearner
from .prompt_io import load_prompt


def build_prompt(model: nn.Module, tokenizer: Callable, prompt: Optional[str | os.PathLike] = None,
                 init_words: Optional[str] = None, trusted: bool = False) -> PromptLearner:
    """The prompt file ``prompt`` if one is given (ours, the POMP release's ``.pth.tar``, or a
    stage-(a) ``prompt.pth``), else a prompt initialised from ``init_words``.
    ``trusted`` unpickles the file fully (a raw Dassl checkpoint pickles its scheduler)."""
    if prompt:
        if not os.path.isfile(prompt):
            raise FileNotFoundError(
                f"prompt file '{prompt}' does not exist: pass a POMP prompt (tools/pretrain.py "
                "output or the release's .pth.tar), a stage-(a) prompt (work_dir/prompt.pth), "
                "or no prompt file and init words such as 'a photo of a'.")
        return load_prompt(prompt, trusted=trusted)
    if not init_words:
        raise ValueError("no prompt: give a prompt file or init words such as 'a photo of a'")
    return PromptLearner.from_words(init_words, model, tokenizer)

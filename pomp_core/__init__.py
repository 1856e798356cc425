"""pomp_core: one pre-trained soft prompt for any classifier built from class names.

The public API (docs/api.md)::

    model, tokenizer, preprocess = pomp_core.load_clip("ViT-B-16-quickgelu", pretrained="openai")
    prompt = pomp_core.load_prompt("prompt.pth.tar")
    emb = pomp_core.class_embeddings(model, tokenizer, prompt, ["cat", "dog"])  # [C, D], unit rows

Everything else is reached through its module (``pomp_core.text_tower``,
``pomp_core.prompt_io.save_release_prompt``, ``pomp_core.pretrain``, ``pomp_core.transfer``, ...).
"""
from .clip_loader import load_clip
from .embeddings import Classifier, class_embeddings, save_embeddings
from .errors import UserError, WeightsUnavailable
from .pretrained import list_pretrained
from .prompt import PromptLearner
from .prompt_io import load_prompt, save_prompt
from .text_encoder import PromptedTextEncoder
from .vocabulary import load_vocabulary

__all__ = [
    "Classifier",
    "PromptLearner",
    "PromptedTextEncoder",
    "UserError",
    "WeightsUnavailable",
    "class_embeddings",
    "list_pretrained",
    "load_clip",
    "load_prompt",
    "load_vocabulary",
    "save_embeddings",
    "save_prompt",
]

"""pomp_core: one pre-trained soft prompt for any classifier built from class names.

Public API::

    model, tokenizer, preprocess = pomp_core.load_clip("ViT-B-16-quickgelu", pretrained="openai")
    prompt = pomp_core.load_prompt("prompt.pth.tar")
    emb = pomp_core.class_embeddings(model, tokenizer, prompt, ["cat", "dog"])  # [C, D], unit rows
"""
from .clip_loader import load_clip, resolve_model_name
from .embeddings import class_embeddings, save_embeddings
from .pretrained import list_pretrained
from .prompt import PromptLearner
from .prompt_io import load_prompt, save_prompt, save_release_prompt
from .text_encoder import PromptedTextEncoder, text_tower
from .vocabulary import load_vocabulary

__all__ = [
    "PromptLearner",
    "PromptedTextEncoder",
    "class_embeddings",
    "list_pretrained",
    "load_clip",
    "load_prompt",
    "load_vocabulary",
    "resolve_model_name",
    "save_embeddings",
    "save_prompt",
    "save_release_prompt",
    "text_tower",
]

"""Class embeddings for the detector: a ready ``.npy``, or a prompt + CLIP + vocabulary
encoded once and cached on disk."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)

# Short names for the demo and configs -> a registered dataset whose classes are used.
BUILTIN_VOCABULARIES = {"lvis": "lvis_v1_val", "coco": "coco_2017_val"}


def load_embedding_file(path: str | os.PathLike) -> torch.Tensor:
    """[C, D] float tensor from a ``.npy`` (Detic's format: float16, rows not normalised)."""
    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        raise FileNotFoundError(
            f"class embedding file '{path}' does not exist: write it with tools/export_embeddings.py "
            "(see docs/detection.md), or set MODEL.POMP.PROMPT to compute it from a prompt")
    array = np.load(path)
    if array.ndim != 2:
        raise ValueError(f"{path} holds an array of shape {array.shape}; class embeddings are [C, D]")
    return torch.from_numpy(array.astype(np.float32))


def _file_digest(path: str) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest() if os.path.isfile(path) else path


def cached_class_embeddings(names: Sequence[str], clip_model: str, clip_pretrained: str,
                      prompt: str = "", prompt_words: str = "",
                      cache_dir: Optional[str] = "~/.cache/pomp/embeddings",
                      prompt_trusted: bool = False) -> torch.Tensor:
    """[C, D] text embeddings (not normalised) of ``names`` with a prompt file or words.

    The result is cached under ``cache_dir`` keyed by the model, the checkpoint and prompt
    contents and the names, so building a detector again does not re-run CLIP. A first build
    and a cached one are the same: the encoding leaves torch's random state as it found it
    (building CLIP draws initial weights, which would shift every module initialised after
    the classifier), and with a cache the values returned are the cache's (float16-rounded).
    """
    import pomp_core
    from pomp_core.embeddings import save_embeddings
    from pomp_core.prompt_source import build_prompt

    if bool(prompt) == bool(prompt_words):
        raise ValueError("set exactly one of MODEL.POMP.PROMPT (a prompt file) and "
                         "MODEL.POMP.PROMPT_WORDS (hand-crafted context such as 'a photo of a')")
    names = pomp_core.vocabulary.check_vocabulary(list(names))
    key = json.dumps([clip_model, _file_digest(clip_pretrained),
                      _file_digest(prompt) if prompt else prompt_words, names])
    cache = None
    if cache_dir:
        digest = hashlib.sha1(key.encode()).hexdigest()[:16]
        cache = Path(os.path.expanduser(cache_dir)) / f"{clip_model}-{len(names)}-{digest}.npy"
        if cache.is_file():
            return load_embedding_file(cache)
    with torch.random.fork_rng(devices=[]):  # CLIP is built on the CPU
        model, tokenizer, _ = pomp_core.load_clip(clip_model, pretrained=clip_pretrained or None)
        learner = build_prompt(model, tokenizer, prompt, prompt_words, prompt_trusted)
        emb = pomp_core.class_embeddings(model, tokenizer, learner, names, normalize=False)
    if cache is not None:
        save_embeddings(emb, cache, fmt="detic")  # atomic: ranks may write it at once
        logger.info("cached %d class embeddings in %s", len(names), cache)
        return load_embedding_file(cache)
    return emb.float()


def random_embeddings(num_classes: int, dim: int, seed: int) -> torch.Tensor:
    """Unit Gaussian rows: a classifier with no knowledge of the class names (a control)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(num_classes, dim, generator=g)


def vocabulary_names(source: str, dataset: Optional[str] = None) -> List[str]:
    """Names from a vocabulary source, or the ``thing_classes`` of a registered dataset."""
    import pomp_core
    from detectron2.data import MetadataCatalog

    if source:
        from detectron2.data import DatasetCatalog

        source_dataset = BUILTIN_VOCABULARIES.get(source, source)
        if source_dataset in DatasetCatalog.list():
            return vocabulary_names("", source_dataset)
        return pomp_core.load_vocabulary(source)
    if not dataset:
        raise ValueError("no vocabulary: set MODEL.POMP.VOCABULARY or DATASETS.TRAIN")
    meta = MetadataCatalog.get(dataset)
    names = meta.get("thing_classes")
    if not names and meta.get("json_file"):
        # a COCO-format dataset sets thing_classes when loaded: its json's categories, in id
        # order as detectron2's loader, without loading the images' records
        return pomp_core.load_vocabulary(meta.json_file)
    if not names:
        raise ValueError(f"dataset '{dataset}' has no thing_classes in its metadata; set "
                         "MODEL.POMP.VOCABULARY to a names file or an annotation json")
    return [n.replace("_", " ") for n in names]


def embeddings_from_config(cfg, names: Optional[Sequence[str]] = None) -> torch.Tensor:
    """The class embeddings a config asks for ([C, D]); ``names`` overrides the vocabulary."""
    p = cfg.MODEL.POMP
    if p.RANDOM_EMBEDDINGS_SEED >= 0:
        n = len(names) if names is not None else cfg.MODEL.ROI_HEADS.NUM_CLASSES
        return random_embeddings(n, p.EMBED_DIM, p.RANDOM_EMBEDDINGS_SEED)
    if p.EMBEDDINGS and names is None:
        if os.path.isfile(os.path.expanduser(p.EMBEDDINGS)) or not (p.PROMPT or p.PROMPT_WORDS):
            return load_embedding_file(p.EMBEDDINGS)
        logger.warning("%s does not exist: encoding the vocabulary with MODEL.POMP.PROMPT instead", p.EMBEDDINGS)
    if not (p.PROMPT or p.PROMPT_WORDS):
        raise ValueError("no class embeddings: set MODEL.POMP.EMBEDDINGS (a [C, D] .npy), or "
                         "MODEL.POMP.PROMPT / PROMPT_WORDS with MODEL.POMP.CLIP_MODEL")
    if names is None:
        train = cfg.DATASETS.TRAIN[0] if len(cfg.DATASETS.TRAIN) else None
        names = vocabulary_names(p.VOCABULARY, train)
    return cached_class_embeddings(names, p.CLIP_MODEL, p.CLIP_PRETRAINED, p.PROMPT, p.PROMPT_WORDS,
                             p.CACHE_DIR, p.PROMPT_TRUSTED)

"""Swap the vocabulary of a built (or trained) detector: names, a dataset, or an embedding file."""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator, List, Optional

import torch
from detectron2.data import MetadataCatalog

from .embeddings import embeddings_from_config, load_embedding_file, vocabulary_names

logger = logging.getLogger(__name__)


def _roi_heads(model: torch.nn.Module):
    model = getattr(model, "module", model)  # DistributedDataParallel
    heads = getattr(model, "roi_heads", None)
    if heads is None or not hasattr(heads, "set_class_embeddings"):
        raise TypeError("this model has no POMP ROI heads (MODEL.ROI_HEADS.NAME PompROIHeads or "
                        "PompCascadeROIHeads): add configs/det/Base-POMP.yaml to its _BASE_")
    return heads


def model_num_classes(model: torch.nn.Module) -> int:
    return _roi_heads(model).num_classes


def set_vocabulary(model: torch.nn.Module, cfg, source: str) -> Optional[List[str]]:
    """Make ``model`` detect the classes of ``source``: ``lvis``/``coco``, a registered dataset
    name, comma-separated names, a names file or annotation json (encoded with the config's
    prompt and CLIP), or a ``.npy`` of embeddings. Returns the class names (None for .npy)."""
    names: Optional[List[str]] = None
    if str(source).endswith(".npy"):
        emb = load_embedding_file(source)
    else:
        names = vocabulary_names(source)
        p = cfg.MODEL.POMP
        if p.EMBEDDINGS and not (p.PROMPT or p.PROMPT_WORDS) and p.RANDOM_EMBEDDINGS_SEED < 0:
            raise ValueError(
                f"cannot encode the vocabulary '{source}': the model's embeddings come from a fixed "
                f"file ({p.EMBEDDINGS}); give MODEL.POMP.PROMPT (the prompt it was trained with) "
                "and MODEL.POMP.CLIP_MODEL, or pass a .npy exported for the new vocabulary")
        emb = embeddings_from_config(cfg, names)
    _roi_heads(model).set_class_embeddings(emb.to(next(model.parameters()).device))
    logger.info("vocabulary set to %d classes from %s", emb.shape[0], source)
    return names


def configure_vocabulary(cfg, source: str) -> Optional[List[str]]:
    """Set an unfrozen ``cfg`` to build its model for ``source`` (as :func:`set_vocabulary`
    takes it) directly: the training embeddings are then never loaded nor encoded. Returns
    the class names (None for a .npy)."""
    p = cfg.MODEL.POMP
    if str(source).endswith(".npy"):
        p.EMBEDDINGS, p.VOCABULARY = str(source), ""
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = load_embedding_file(source).shape[0]
        return None
    if not (p.PROMPT or p.PROMPT_WORDS or p.RANDOM_EMBEDDINGS_SEED >= 0):
        raise ValueError(
            f"cannot encode the vocabulary '{source}': the config gives no prompt (MODEL.POMP.PROMPT, the "
            "prompt the model was trained with, and MODEL.POMP.CLIP_MODEL), only fixed embeddings; "
            "or pass a .npy exported for the new vocabulary")
    names = vocabulary_names(source)
    p.EMBEDDINGS, p.VOCABULARY = "", str(source)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(names)
    return names


def check_dataset_vocabulary(model: torch.nn.Module, dataset: str) -> None:
    """Refuse to evaluate a model whose classifier does not cover the dataset's classes."""
    names = MetadataCatalog.get(dataset).get("thing_classes")
    n = model_num_classes(model)
    if names is not None and len(names) != n:
        raise ValueError(
            f"the model's classifier has {n} classes but dataset '{dataset}' has {len(names)}: "
            f"swap the vocabulary with MODEL.POMP.TEST_VOCABULARY dataset (or a names file / "
            f".npy for '{dataset}'), or evaluate on a dataset of the training vocabulary")


def eval_vocabulary(cfg, dataset: str) -> str:
    """MODEL.POMP.TEST_VOCABULARIES' entry for ``dataset`` (one per DATASETS.TEST), else
    MODEL.POMP.TEST_VOCABULARY."""
    per, tests = list(cfg.MODEL.POMP.TEST_VOCABULARIES), list(cfg.DATASETS.TEST)
    if not per:
        return cfg.MODEL.POMP.TEST_VOCABULARY
    if len(per) != len(tests):
        raise ValueError(f"MODEL.POMP.TEST_VOCABULARIES has {len(per)} entries for {len(tests)} DATASETS.TEST "
                         f"{tests}: give one per test dataset")
    return per[tests.index(dataset)]


@contextlib.contextmanager
def vocabulary_for_dataset(model: torch.nn.Module, cfg, dataset: str) -> Iterator[None]:
    """Within the block the model classifies ``dataset``'s classes per :func:`eval_vocabulary`
    ("" = keep the training vocabulary, "dataset" = the dataset's own classes, else a
    names/.npy source), checked against the dataset; the training vocabulary comes back after."""
    heads = _roi_heads(model)
    predictor = heads._predictors()[0]
    saved = (predictor.cls_score.embeddings.clone(), predictor.fed_loss_weight.clone())
    source = eval_vocabulary(cfg, dataset)
    try:
        if source:
            set_vocabulary(model, cfg, dataset if source == "dataset" else source)
        check_dataset_vocabulary(model, dataset)
        yield
    finally:
        if source:
            heads.set_class_embeddings(*saved)

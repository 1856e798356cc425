"""Classification on the world: pre-train a prompt on the seen classes, zero-shot top-1 on
held-out images of seen and unseen classes."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch

from pomp_core.embeddings import class_embeddings
from pomp_core.pretrain.config import load_config
from pomp_core.pretrain.trainer import Pretrainer
from pomp_core.transfer.datasets import read_split_file
from pomp_core.zero_shot import image_features

from ..tiny_clip import MODEL_NAME, WEIGHTS

HAND_PROMPT = "a photo of a {}."


def pretrain_prompt(config: str, files: Dict[str, str], out: Path, overrides: List[str]) -> Path:
    """The prompt file of a pre-training on the world's seen classes (``config`` + ``overrides``)."""
    torch.set_num_threads(1)  # a pool worker: two jobs share two cores
    cfg = load_config(config, [f"model.name={MODEL_NAME}", f"model.pretrained={WEIGHTS}",
                               f"data.root={files['pretrain_root']}", f"data.names_file={files['pretrain_names']}",
                               f"data.index_cache={out}", f"train.output_dir={out}",
                               f"train.feature_cache_dir={out.parent / 'feature_cache'}"] + overrides)
    trainer = Pretrainer(cfg)
    trainer.setup()
    return trainer.fit()


def evaluate(model: torch.nn.Module, tokenizer: Callable, preprocess: Callable, split_file: str,
             classifiers: Dict[str, object]) -> Dict[str, torch.Tensor]:
    """Per-image correctness [n] (bool) of each named classifier on a split's test items
    (the image tower runs once)."""
    items, names = read_split_file(split_file)
    feats, labels = image_features(model, Path(split_file).parent, items, preprocess)
    return {key: (feats @ class_embeddings(model, tokenizer, clf, names, allow_duplicates=True).t()).argmax(1) == labels
            for key, clf in classifiers.items()}


def paired_margin(correct: torch.Tensor, baseline: torch.Tensor) -> Tuple[float, float]:
    """Mean difference in top-1 over the same images and its standard error: the two
    classifiers share every image, so the paired error is far below that of either accuracy."""
    diff = correct.float() - baseline.float()
    return float(diff.mean()), float(diff.std() / len(diff) ** 0.5)

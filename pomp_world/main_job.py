"""The embedded default: POMP on the synthetic world, end to end, in a few CPU minutes.

1. write the world's classification renderings (seen classes for pre-training, held-out
   seen / unseen evaluation splits);
2. pre-train a prompt on the seen classes with the shipped tiny CLIP (K << N), with and
   without local correction;
3. evaluate zero-shot top-1 on held-out images of seen and unseen classes: hand-crafted
   prompt vs the POMP prompts; write a results table (Markdown, CSV), a bar plot, the
   training curves and the prompts' class embeddings for the unseen vocabulary.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from pomp_core.clip_loader import load_clip
from pomp_core.embeddings import class_embeddings, save_embeddings
from pomp_core.pretrain.config import load_config
from pomp_core.pretrain.trainer import Pretrainer
from pomp_core.prompt_io import load_prompt
from pomp_core.transfer.datasets import read_split_file
from pomp_core.transfer.report import bar_plot, markdown_table, write_csv
from pomp_core.zero_shot import image_features

from . import WorldConfig, write_world
from .tiny_clip import MODEL_NAME, WEIGHTS

logger = logging.getLogger(__name__)
HAND_PROMPT = "a photo of a {}."


def pretrain_prompt(config: str, files: Dict[str, str], out: Path, overrides: List[str]) -> Path:
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


def write_results(results: Dict[str, Dict[str, float]], out: Path, notes: Sequence[str] = ()) -> Path:
    """results[row][split] = top-1; writes results.md (the table, then ``notes``), results.csv and results.png."""
    (out / "results.md").write_text(markdown_table(results) + ("\n" + "\n".join(notes) + "\n" if notes else ""))
    write_csv(results, out / "results.csv")
    bar_plot(results, out / "results.png", "Synthetic world, tiny CLIP: hand-crafted prompt vs POMP (top-1)")
    return out / "results.md"


def run(out: str | Path = "output/world", config: str = "configs/pomp/world_tiny.yaml",
        world: Optional[WorldConfig] = None, overrides: Optional[List[str]] = None) -> Dict[str, dict]:
    """Returns ``{"top1": {row: {split: acc}}, "margin": {prompt row: {split: (mean, standard error)}}}``,
    margins being POMP minus the hand-crafted prompt on the same images."""
    out = Path(out)
    world = world or WorldConfig()
    index = out / "world" / "world.json"
    if index.is_file() and json.loads(index.read_text())["config"] == json.loads(json.dumps(world.__dict__)):
        files = json.loads(index.read_text())["files"]
    else:
        logger.info("writing the synthetic world to %s", out / "world")
        files = write_world(out / "world", world, parts=("classification",))
    prompts = {
        "POMP": pretrain_prompt(config, files, out / "pomp", overrides or []),
        "POMP, no local correction": pretrain_prompt(config, files, out / "pomp_no_correction",
                                                     (overrides or []) + ["sampling.correction=false"]),
    }
    model, tokenizer, preprocess = load_clip(MODEL_NAME, pretrained=str(WEIGHTS))
    classifiers = {f'hand-crafted "{HAND_PROMPT}"': HAND_PROMPT,
                   **{k: load_prompt(p) for k, p in prompts.items()}}
    correct = {split: evaluate(model, tokenizer, preprocess, files[f"eval_{split}"], classifiers)
               for split in ("unseen", "seen")}
    results = {row: {split: float(correct[split][row].float().mean()) for split in correct} for row in classifiers}
    hand = next(iter(classifiers))
    margins = {row: {split: paired_margin(correct[split][row], correct[split][hand]) for split in correct}
               for row in prompts}
    notes = ["Zero-shot top-1 (%) on held-out images. Margins over the hand-crafted prompt, on the same images:"]
    notes += [f"- {row} - hand-crafted, {split}: {100 * mean:+.1f} points "
             f"(paired standard error {100 * se:.1f}, {len(correct[split][row])} images)"
             for row, per in margins.items() for split, (mean, se) in per.items()]
    n_classes = {split: len(read_split_file(files[f"eval_{split}"])[1]) for split in correct}
    table = write_results({row: {f"{s} ({n_classes[s]:,}-way)": v[s] for s in v} for row, v in results.items()},
                          out, notes)
    _, unseen_names = read_split_file(files["eval_unseen"])
    emb = class_embeddings(model, tokenizer, classifiers["POMP"], unseen_names, normalize=False)
    save_embeddings(emb, out / "unseen_classes_pomp.npy")
    logger.info("results: %s", table)
    return {"top1": results, "margin": margins}

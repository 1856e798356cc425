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

import csv
import json
import logging
from pathlib import Path
from typing import Dict, List, Optional

from ..clip_loader import load_clip
from ..embeddings import class_embeddings, save_embeddings
from ..prompt_io import load_prompt
from ..pretrain.config import load_config
from ..pretrain.trainer import Pretrainer
from ..zero_shot import evaluate_split, read_split_file
from .generate import WorldConfig, write_world
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


def write_results(results: Dict[str, Dict[str, float]], out: Path) -> Path:
    """results[row][split] = top-1; writes results.md, results.csv and results.png."""
    splits = list(next(iter(results.values())).keys())
    lines = ["| prompt | " + " | ".join(f"{s} top-1 (%)" for s in splits) + " |",
             "|---|" + "---|" * len(splits)]
    lines += [f"| {row} | " + " | ".join(f"{100 * v[s]:.1f}" for s in splits) + " |" for row, v in results.items()]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prompt"] + splits)
        w.writerows([[row] + [f"{100 * v[s]:.2f}" for s in splits] for row, v in results.items()])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / len(results)
    for k, (row, v) in enumerate(results.items()):
        xs = [i + k * width for i in range(len(splits))]
        bars = ax.bar(xs, [100 * v[s] for s in splits], width, label=row)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks([i + width * (len(results) - 1) / 2 for i in range(len(splits))], splits)
    ax.set_ylabel("zero-shot top-1 (%)")
    ax.set_title("Synthetic world, tiny CLIP: hand-crafted prompt vs POMP")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=110)
    plt.close(fig)
    return out / "results.md"


def run(out: str | Path = "output/world", config: str = "configs/pomp/world_tiny.yaml",
        world: Optional[WorldConfig] = None, overrides: Optional[List[str]] = None) -> Dict[str, Dict[str, float]]:
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
    per_split = {split: evaluate_split(model, tokenizer, preprocess, files[f"eval_{split}"], classifiers)
                 for split in ("unseen", "seen")}
    results = {row: {split: per_split[split][row] for split in per_split} for row in classifiers}
    table = write_results(results, out)
    _, unseen_names = read_split_file(files["eval_unseen"])
    emb = class_embeddings(model, tokenizer, classifiers["POMP"], unseen_names, normalize=False)
    save_embeddings(emb, out / "unseen_classes_pomp.npy")
    logger.info("results: %s", table)
    return results

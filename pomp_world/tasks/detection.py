"""Detection on the world: Detic's recipe (configs/det/world/world-base-img_pomp.yaml: box
labels of the base classes + image labels of all classes, the max-size loss) trained with
one prompt's class embeddings, evaluated on the val scenes with the full vocabulary."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Optional

import torch

from ..tiny_clip import WEIGHTS

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs/det/world/world-base-img_pomp.yaml"
# Detic's baseline classifier (its tools/dump_clip_features.py, --prompt a): "a {}".
HAND_WORDS = "a"


def schedule(iters: int) -> List[str]:
    """Options that run the world configs' schedule in ``iters`` iterations: its one decay at
    80% of the run."""
    return ["SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", f"({int(iters * 0.8)},)"]


def train_detector(world: str | Path, out: str | Path, seed: int, iters: int,
                   prompt: Optional[str] = None, words: Optional[str] = None) -> Dict[str, float]:
    """Box metrics (AP, APr, APc, APf; points) of a detector trained with the class embeddings
    of a prompt file ``prompt`` or of hand-crafted context ``words``."""
    from detectron2.engine import default_setup

    import pomp_det
    from pomp_det.data.world import register_world
    from pomp_det.engine import Trainer

    torch.set_num_threads(1)  # a pool worker: two jobs share two cores
    register_world(world)
    source = ["MODEL.POMP.PROMPT", str(prompt), "MODEL.POMP.PROMPT_WORDS", ""] if prompt else \
        ["MODEL.POMP.PROMPT_WORDS", str(words)]
    cfg = pomp_det.load_pomp_cfg(str(CONFIG), [
        "OUTPUT_DIR", str(out), "SEED", str(seed), *schedule(iters), "SOLVER.WARMUP_ITERS", str(min(50, iters // 6)),
        "MODEL.POMP.CACHE_DIR", str(Path(out) / "cache"), "MODEL.POMP.CLIP_PRETRAINED", str(WEIGHTS), *source])
    cfg.freeze()
    default_setup(cfg, argparse.Namespace(config_file=str(CONFIG), eval_only=False))
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    # the final evaluation's box metrics, as detectron2's EvalHook logs them
    final = [json.loads(line) for line in (Path(out) / "metrics.json").read_text().splitlines() if "bbox/APr" in line][-1]
    return {k: float(final[f"bbox/{k}"]) for k in ("AP", "APr", "APc", "APf")}

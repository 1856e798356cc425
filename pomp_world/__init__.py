"""The synthetic open-vocabulary world: a compositional vocabulary (size x colour x pattern x
shape), its renderer, dataset writers in the formats the real pipelines read (ImageNet-21K
folders and CoOp splits, LVIS json and Detic's image labels, mmseg folders), the tiny CLIP
trained on it and the main job (``tools/demo.py``, its tasks in ``pomp_world.tasks``). A consumer
of pomp_core, and of pomp_det and pomp_seg in the main job's detection and segmentation (imported
there, lazily); nothing in pomp_core, pomp_det or pomp_seg imports it (they read what it writes)."""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Dict, Sequence

from .detection import write_detection
from .generate import WorldConfig, write_classification, write_segmentation

__all__ = ["WorldConfig", "write_world"]


def write_world(out: str | os.PathLike, cfg: WorldConfig = WorldConfig(), parts: Sequence[str] = ("classification", "detection", "segmentation")) -> Dict[str, str]:
    """Write the requested renderings under ``out``; returns the main paths (also in world.json)."""
    out = Path(out)
    files: Dict[str, str] = {}
    writers = {"classification": write_classification, "detection": write_detection,
               "segmentation": write_segmentation}
    for part in parts:
        files.update(writers[part](cfg, out))
    (out / "world.json").write_text(json.dumps({"config": asdict(cfg), "files": files}, indent=1))
    return files

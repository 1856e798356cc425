"""Checks of a detector config's inputs that tools/train_net.py and tools/demo_det.py run
before building a model or spawning processes: one clear error instead of a traceback from
deep inside detectron2 (or one per worker process)."""
from __future__ import annotations

import os
from typing import List, Optional

from pomp_core.cli import require_file
from pomp_core.errors import UserError

EXPORT_HINT = "write it with tools/export_embeddings.py (docs/detection.md)"


def _is_local(path: str) -> bool:
    return bool(path) and "://" not in path


def check_gpus(num_gpus: int) -> None:
    """With CUDA, at most the GPUs there are; without, pomp_det.launch runs CPU processes."""
    import torch

    have = torch.cuda.device_count()
    if have and num_gpus > have:
        raise UserError(f"--num-gpus {num_gpus} asks for {num_gpus} GPUs per machine, this machine has "
                        f"{have} CUDA GPU(s): pass --num-gpus {have}")


def load_cfg_checked(config_file: str, opts: List[str], zoo_config: Optional[str] = None):
    """``load_pomp_cfg``, with yacs' assertions on bad keys and values as user errors."""
    from .cfg_loader import load_pomp_cfg
    from .detic_keys import UnsupportedDeticKey

    if config_file:
        require_file(config_file, "--config-file")
    try:
        return load_pomp_cfg(config_file, opts, zoo_config=zoo_config)
    except AssertionError as err:  # yacs: "Non-existent key: ...", "Override list has odd length"
        raise UserError(f"{err} (the keys are detectron2's defaults and pomp_det/config.py's)") from err
    except UnsupportedDeticKey as err:
        raise UserError(str(err)) from err


def check_cfg_inputs(cfg, datasets: bool = True) -> None:
    """Every file the config names exists: weights, class embeddings, test vocabularies and
    the registered datasets' annotation files."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if _is_local(cfg.MODEL.WEIGHTS):
        require_file(cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS")
    p = cfg.MODEL.POMP
    if p.EMBEDDINGS and p.RANDOM_EMBEDDINGS_SEED < 0:
        require_file(os.path.expanduser(p.EMBEDDINGS), "MODEL.POMP.EMBEDDINGS", EXPORT_HINT)
    named = [("PROMPT", p.PROMPT), ("TEST_VOCABULARY", p.TEST_VOCABULARY)]
    named += [("TEST_VOCABULARIES", v) for v in p.TEST_VOCABULARIES]
    for key, value in named:
        if isinstance(value, str) and value.endswith((".npy", ".pth", ".tar", ".json", ".txt")):
            require_file(value, f"MODEL.POMP.{key}", EXPORT_HINT if value.endswith(".npy") else "")
    if not datasets:
        return
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        if name not in DatasetCatalog.list():
            raise UserError(f"dataset '{name}' is not registered (for the synthetic world, pass --world DIR)")
        meta = MetadataCatalog.get(name)
        json_file = meta.get("json_file")
        if json_file and name.endswith("_norare"):  # written from the full split on first use
            json_file = json_file.replace("_norare", "")
        if json_file:
            require_file(json_file, f"the annotations of dataset '{name}'", meta.get("missing_hint") or
                         "see docs/detection.md for the datasets/ layout (DETECTRON2_DATASETS sets its root)")

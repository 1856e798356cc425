"""Frozen image features of a fixed number of augmented views per image, computed once.

The image tower is frozen, so its features for a given augmented view never change. With
the cache, each image's ``cache_views`` views are encoded once (memory-mapped ``.npy`` on
disk, float16) and every epoch draws ``views`` of them; training then runs only the text
tower. The trade: augmentation diversity is capped at ``cache_views`` views per image
instead of fresh views every epoch, for disk space of ``images x cache_views x D x 2`` bytes.

A cache is built under a unique temporary name and published only when complete, so a
killed build is never read (the next run rebuilds it and removes the dead run's partial
file), and runs sharing a cache folder never write the same file: the first complete
cache is published and a run that finishes later reuses it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional, Protocol, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..durable import atomic_write, fsync_file, kill_point, remove_stale_temporaries, temporary_name
from ..images import ImageListDataset, collate_skipping, sample_seed
from ..progress import Progress

logger = logging.getLogger(__name__)


class FeatureSource(Protocol):
    """What builds a cache: the run's config, its rank, the frozen image tower (a Pretrainer)."""

    cfg: Any
    is_main: bool

    def image_features(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor: ...

    def wait_for_rank0(self) -> None: ...


def build_feature_cache(trainer: FeatureSource, images: ImageListDataset,
                        folder: Path) -> Tuple[np.ndarray, np.ndarray]:
    """Features [n, cache_views, D] and a readable-image mask [n]; rank 0 computes, others wait."""
    cfg = trainer.cfg
    key = hashlib.sha1(json.dumps([cfg.model.name, cfg.model.pretrained, images.root.as_posix(), images.items,
                                   cfg.train.cache_views, cfg.data.image_size, cfg.data.augment, cfg.data.randaugment,
                                   cfg.train.seed]).encode()).hexdigest()[:16]
    path, valid_path = folder / f"{key}.npy", folder / f"{key}.valid.npy"
    if trainer.is_main and not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(folder, path.name)  # partial caches of killed runs
        remove_stale_temporaries(folder, valid_path.name)
        one_view = ImageListDataset(images.root, images.items, images.transform, views=1, seed=images.seed)
        tmp = temporary_name(path, ".tmp.npy")
        feats = None  # allocated once the first batch tells the feature width
        valid = np.zeros(len(images), dtype=bool)
        bar = Progress(total=len(images) * cfg.train.cache_views, desc="feature cache", unit="view")
        for view in range(cfg.train.cache_views):
            one_view.set_epoch(view)
            loader = DataLoader(one_view, batch_size=64, num_workers=cfg.data.workers, collate_fn=collate_skipping)
            for batch in loader:
                if "images" in batch:
                    out = trainer.image_features(batch).cpu().numpy().astype(np.float16)
                    if feats is None:
                        feats = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16,
                                                          shape=(len(images), cfg.train.cache_views, out.shape[1]))
                    feats[batch["index"].numpy(), view] = out
                    valid[batch["index"].numpy()] = True
                    kill_point("feature_cache")
                bar.update(len(batch.get("index", [])) + int(batch["skipped"]))
        bar.close()
        if feats is None:
            raise RuntimeError(f"no readable image among the {len(images)} training images")
        feats.flush()
        del feats
        fsync_file(tmp)
        _publish(tmp, path, valid_path, valid)
        logger.info("feature cache: %s (%d images x %d views)", path, len(images), cfg.train.cache_views)
    trainer.wait_for_rank0()
    return np.load(path, mmap_mode="r"), np.load(valid_path)


def _publish(tmp: Path, path: Path, valid_path: Path, valid: np.ndarray) -> None:
    """Give a complete cache its final name unless another run published one first."""
    if path.is_file():
        tmp.unlink()
        logger.info("feature cache: another run completed %s first; using it", path)
        return
    with atomic_write(valid_path) as f:  # before the features: readers look for the features file
        np.save(f, valid)
    try:
        os.link(tmp, path)  # fails if the name exists: the first complete cache wins
    except FileExistsError:
        logger.info("feature cache: another run completed %s first; using it", path)
    except OSError:  # a filesystem without hard links
        os.replace(tmp, path)
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()


class FeatureCacheDataset(Dataset):
    """Cached features of ``views`` of the cached views per image, drawn per (seed, epoch, i)."""

    def __init__(self, cache: Tuple[np.ndarray, np.ndarray], items: Sequence[Tuple[str, int]],
                 views: int, seed: int) -> None:
        self.features, self.valid = cache
        if views > self.features.shape[1]:
            raise ValueError(f"data.views={views} is more than the {self.features.shape[1]} cached views "
                             "(train.cache_views)")
        self.items, self.views, self.seed, self.epoch = list(items), views, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Optional[Tuple[torch.Tensor, int, int]]:
        if not self.valid[i]:
            return None
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, i))
        pick = torch.randperm(self.features.shape[1], generator=g)[: self.views].sort().values.numpy()
        return torch.from_numpy(np.asarray(self.features[i, pick], dtype=np.float32)), self.items[i][1], i

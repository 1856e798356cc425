"""Image features of evaluation sets, computed once per CLIP model and reused by every prompt.

A dataset's image features depend on the image tower alone (its architecture and
weights), the transform and the images, never on the prompt. They are stored under a
key that hashes all of these, so evaluating another prompt on a seen dataset reads a
file instead of running the image tower, and a different model, weights file or
transform misses. Under torchrun each rank encodes its share of the images and rank 0
writes the gathered features.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn

from ..durable import atomic_torch_save
from ..zero_shot import encode_images
from .datasets import ClassificationSet

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
HASH_CONTENT_BELOW = 256 * 2**20  # weights files smaller than this are identified by content


def weights_identity(pretrained: Optional[str]) -> str:
    """An open_clip tag as is; a local file by content hash when small, else by path, size and
    mtime; random weights (no ``pretrained``) by a fresh id, so they never match another run's cache."""
    if not pretrained:
        return f"random:{uuid.uuid4().hex}"
    if not os.path.isfile(pretrained):
        return f"tag:{pretrained}"
    path = Path(pretrained).resolve()
    stat = path.stat()
    if stat.st_size < HASH_CONTENT_BELOW:
        h = hashlib.sha1()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return f"sha1:{h.hexdigest()}"
    return f"file:{path}:{stat.st_size}:{stat.st_mtime_ns}"


@dataclass(frozen=True)
class ModelIdentity:
    """What the image features depend on besides the images: architecture, weights, transform, dtype."""

    model_name: str
    weights: str
    transform: str
    dtype: str = "torch.float32"

    @classmethod
    def of(cls, model: nn.Module, model_name: str, pretrained: Optional[str], transform: Callable) -> "ModelIdentity":
        return cls(model_name, weights_identity(pretrained), repr(transform), str(next(model.parameters()).dtype))


def dataset_key(identity: ModelIdentity, data: ClassificationSet) -> Tuple[str, Dict]:
    items = hashlib.sha1(json.dumps(data.items).encode()).hexdigest()
    meta = {"version": CACHE_VERSION, **identity.__dict__, "dataset": data.name, "split": data.split,
            "image_root": str(Path(data.image_root).resolve()), "items": items, "n_items": len(data.items)}
    return hashlib.sha1(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:20], meta


def _distributed() -> Tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class FeatureCache:
    """Features [n, D] (float32, unit rows) and labels [n] of a dataset's readable images.

    ``folder=None`` keeps nothing on disk (every call encodes). ``encoded`` counts the
    datasets this process ran the image tower for, so callers and tests can see hits.
    """

    def __init__(self, folder: Optional[str | os.PathLike], identity: ModelIdentity,
                 batch_size: int = 128, workers: int = 0) -> None:
        self.folder = Path(folder) if folder else None
        self.identity, self.batch_size, self.workers = identity, batch_size, workers
        self.encoded = 0

    def path(self, data: ClassificationSet) -> Optional[Path]:
        return self.folder / f"{data.name}_{dataset_key(self.identity, data)[0]}.pt" if self.folder else None

    def features(self, model: nn.Module, transform: Callable, data: ClassificationSet) -> Tuple[torch.Tensor, torch.Tensor]:
        rank, world = _distributed()
        path = self.path(data)
        hit = [path is not None and path.is_file()]
        if world > 1:
            dist.broadcast_object_list(hit, src=0)  # all ranks take the same branch
        if hit[0]:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            logger.info("%s: image features from the cache (%s)", data.name, path.name)
            return stored["features"], stored["labels"]
        logger.info("%s: encoding %d images%s", data.name, len(data.items), f" on {world} ranks" if world > 1 else "")
        feats, index = encode_images(model, data.image_root, data.items[rank::world], transform,
                                     self.batch_size, self.workers, progress=rank == 0)
        index = index * world + rank  # back to positions in data.items
        if world > 1:
            parts = [None] * world
            dist.all_gather_object(parts, (feats, index))
            feats, index = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        order = index.argsort()
        feats, index = feats[order], index[order]
        labels = torch.tensor([data.items[i][1] for i in index.tolist()])
        self.encoded += 1
        if path is not None and rank == 0:
            self._write(path, feats, labels, index, dataset_key(self.identity, data)[1])
        return feats, labels

    @staticmethod
    def _write(path: Path, feats: torch.Tensor, labels: torch.Tensor, index: torch.Tensor, meta: Dict) -> None:
        # readers never see a half-written file; killed runs' temporaries are removed
        atomic_torch_save({"features": feats.contiguous(), "labels": labels, "index": index, "meta": meta}, path)
        logger.info("cached image features %s [%d x %d]", path, *feats.shape)

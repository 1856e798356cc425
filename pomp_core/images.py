"""Images: which files are images, CLIP's normalisation, the evaluation transform, and
datasets over ``(relative path, label)`` lists that skip unreadable files.

CLIP's mean and std are given once, on the 0-1 scale of ``ToTensor``; frameworks that
normalise 0-255 pixels (mmseg's data preprocessors) multiply them by 255.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import transforms as T

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def is_image(path: str | os.PathLike) -> bool:
    """Whether the file name has an image extension (any case)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def list_images(path: str | os.PathLike) -> Tuple[Path, List[str]]:
    """An image file, or every image under a folder (recursively, sorted): (root, relative paths)."""
    path = Path(path)
    if path.is_file():
        return path.parent, [path.name]
    if not path.is_dir():
        raise FileNotFoundError(f"'{path}' is neither an image file nor a folder")
    files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*")
                   if p.is_file() and is_image(p))
    if not files:
        raise ValueError(f"folder '{path}' holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return path, files


def eval_transform(size: int = 224) -> Callable:
    """Resize the short side (bicubic), center crop, CLIP normalisation."""
    return T.Compose([
        T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(CLIP_MEAN, CLIP_STD),
    ])


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A seed for one sample of one epoch, whatever process or worker draws it."""
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2**63)


class ImageListDataset(Dataset):
    """Images of an index split, each as ``views`` augmented copies [V, 3, H, W].

    The augmentation of sample i in epoch e is seeded by (seed, e, i), so it does not
    depend on worker count, process count or where a resumed run restarted.
    An unreadable or corrupt image yields None (counted by :func:`collate_skipping`)
    instead of killing a long run.
    """

    def __init__(self, root: str | os.PathLike, items: Sequence[Tuple[str, int]],
                 transform: Callable, views: int = 1, seed: int = 0) -> None:
        self.root, self.items, self.transform, self.views = Path(root), list(items), transform, views
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Optional[Tuple[torch.Tensor, int, int]]:
        rel, label = self.items[i]
        try:
            with Image.open(self.root / rel) as im:
                image = im.convert("RGB")
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
            logger.debug("skipping unreadable image %s: %s", rel, err)
            return None
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed also queues CUDA seeding, which
            # records a stack trace per call (milliseconds per sample)
            torch.default_generator.manual_seed(sample_seed(self.seed, self.epoch, i))
            views = torch.stack([self.transform(image) for _ in range(self.views)])
        return views, label, i


def collate_skipping(batch: List[Optional[Tuple[torch.Tensor, int, int]]]) -> Dict[str, torch.Tensor]:
    """Stack the readable samples; ``skipped`` counts the unreadable ones."""
    good = [b for b in batch if b is not None]
    out: Dict[str, torch.Tensor] = {"skipped": torch.tensor(len(batch) - len(good))}
    if good:
        out["images"] = torch.stack([b[0] for b in good])
        out["labels"] = torch.tensor([b[1] for b in good])
        out["index"] = torch.tensor([b[2] for b in good])
    return out

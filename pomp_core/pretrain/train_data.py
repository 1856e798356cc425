"""The training data of a run: split index, class names, images (or cached features), the step order."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List

from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from .config import PretrainConfig
from ..images import ImageListDataset, collate_skipping, eval_transform
from .data import SplitIndex, build_split_index, read_class_names, train_transform
from .distributed import ProcessGroup
from .feature_cache import FeatureCacheDataset, FeatureSource, build_feature_cache


class StepSampler(Sampler[int]):
    """Each process's sample order, as ``accumulate`` micro-batches of ``batch_size`` per step.

    The data is dealt to ``world x accumulate`` virtual ranks as DistributedSampler deals it
    to that many processes; micro-batch j of a step on rank r is virtual rank
    ``r * accumulate + j``'s batch of that step. So one process with ``accumulate=A`` sees
    what A processes see, and ``accumulate=1`` is DistributedSampler itself. ``set_start``
    skips the first samples of the current epoch (a resumed run).
    """

    def __init__(self, dataset: Dataset, world: int, rank: int, accumulate: int, batch_size: int,
                 seed: int) -> None:
        self.parts = [DistributedSampler(dataset, num_replicas=world * accumulate, rank=rank * accumulate + j,
                                         shuffle=True, seed=seed, drop_last=True) for j in range(accumulate)]
        self.batch_size = batch_size
        self.steps_per_epoch = self.parts[0].num_samples // batch_size
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        for part in self.parts:
            part.set_epoch(epoch)

    def set_start(self, start: int) -> None:
        self.start = start

    def __iter__(self) -> Iterator[int]:
        orders = [list(part) for part in self.parts]
        b = self.batch_size
        order = [i for s in range(self.steps_per_epoch) for o in orders for i in o[s * b:(s + 1) * b]]
        order, self.start = order[self.start:], 0  # only the resumed epoch starts late
        return iter(order)

    def __len__(self) -> int:
        return self.steps_per_epoch * len(self.parts) * self.batch_size - self.start


@dataclass
class TrainData:
    index: SplitIndex
    class_names: List[str]
    dataset: Dataset
    sampler: StepSampler
    batch_size: int
    workers: int
    pin_memory: bool

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch

    def start_epoch(self, epoch: int, step_in_epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)
        self.sampler.set_start(step_in_epoch * len(self.sampler.parts) * self.batch_size)

    def loader(self) -> DataLoader:
        """Micro-batches in step order (``accumulate`` of them per step)."""
        return DataLoader(self.dataset, batch_size=self.batch_size, sampler=self.sampler,
                          num_workers=self.workers, collate_fn=collate_skipping, drop_last=True,
                          pin_memory=self.pin_memory, persistent_workers=False)


def build_index(cfg: PretrainConfig, group: ProcessGroup) -> SplitIndex:
    """The split index; rank 0 scans (and caches it), the others read its cache."""
    d = cfg.data
    if not d.root:
        raise ValueError("data.root is not set: pass data.root=/path/to/class/folders "
                         "(one folder of images per class)")
    args = (d.root, d.shots, d.val_per_class, d.split_seed, d.index_cache, d.val_root)
    index = build_split_index(*args) if group.is_main else None
    group.wait_for_rank0()
    return index if group.is_main else build_split_index(*args)


def read_names(cfg: PretrainConfig, index: SplitIndex) -> List[str]:
    d = cfg.data
    return read_class_names(index.classes, d.names_file, d.miil_tree, d.wordnet, d.lemmas, d.trusted)


def build_train_data(cfg: PretrainConfig, group: ProcessGroup, index: SplitIndex, class_names: List[str],
                     features: FeatureSource, out: Path) -> TrainData:
    """Images (or their cached features, computed with ``features``) in each rank's step order."""
    d, o = cfg.data, cfg.optim
    if o.accumulate < 1:
        raise ValueError(f"optim.accumulate must be at least 1, got {o.accumulate}")
    transform = train_transform(d.image_size, d.randaugment) if d.augment else eval_transform(d.image_size)
    images = ImageListDataset(index.root, index.train, transform, views=d.views, seed=cfg.train.seed)
    if cfg.train.feature_cache:
        cache = build_feature_cache(features, images, Path(cfg.train.feature_cache_dir or out / "feature_cache"))
        dataset: Dataset = FeatureCacheDataset(cache, index.train, views=d.views, seed=cfg.train.seed)
    else:
        dataset = images
    sampler = StepSampler(dataset, group.world, group.rank, o.accumulate, o.batch_size, cfg.train.seed)
    if sampler.steps_per_epoch == 0:
        per = f"{o.batch_size} per process" + (f" x {o.accumulate} micro-batches" if o.accumulate > 1 else "")
        raise ValueError(f"{len(index.train)} training images give no full batch of {per}: "
                         "lower optim.batch_size" + (" or optim.accumulate" if o.accumulate > 1 else ""))
    return TrainData(index, class_names, dataset, sampler, o.batch_size, d.workers, group.device.type == "cuda")

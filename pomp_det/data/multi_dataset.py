"""Training on several datasets at once (box- and image-labelled), Detic-style: each batch
comes from one dataset, chosen by ratio, with that dataset's batch size and input size."""
from __future__ import annotations

import itertools
import operator
from typing import Dict, Iterable, Iterator, List, Sequence

import torch
from detectron2.data import DatasetFromList, DatasetMapper, MapDataset
from detectron2.data import transforms as T
from detectron2.data.build import get_detection_dataset_dicts, worker_init_reset_seed
from detectron2.data.common import ToIterableDataset
from detectron2.utils import comm


class MultiDatasetSampler(torch.utils.data.Sampler):
    """Endless indices into the concatenation of datasets of ``sizes``: a dataset is drawn
    with probability ``ratio / sum(ratios)``, then one of its items uniformly. Each rank and
    data-loader worker draws its own stream."""

    def __init__(self, sizes: Sequence[int], ratios: Sequence[float], seed: int = 0) -> None:
        if len(sizes) != len(ratios):
            raise ValueError(f"{len(sizes)} datasets but {len(ratios)} ratios (DATALOADER.DATASET_RATIO)")
        if any(s == 0 for s in sizes):
            raise ValueError(f"a training dataset is empty (sizes {list(sizes)})")
        self.sizes, self.seed = list(sizes), seed
        self.probs = torch.tensor(ratios, dtype=torch.float) / float(sum(ratios))
        self.offsets = [0] + list(itertools.accumulate(sizes))[:-1]

    def __iter__(self) -> Iterator[int]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        g = torch.Generator().manual_seed(self.seed + 1000 * comm.get_rank() + worker)
        while True:
            d = int(torch.multinomial(self.probs, 1, generator=g))
            yield self.offsets[d] + int(torch.randint(self.sizes[d], (1,), generator=g))


class GroupedByDataset(torch.utils.data.IterableDataset):
    """Batches of mapped dicts of one ``dataset_source`` each, of that dataset's batch size."""

    def __init__(self, items: Iterable[Dict], batch_sizes: Sequence[int]) -> None:
        self.items, self.batch_sizes = items, list(batch_sizes)

    def __iter__(self) -> Iterator[List[Dict]]:
        buckets: List[List[Dict]] = [[] for _ in self.batch_sizes]
        for d in self.items:
            bucket = buckets[d["dataset_source"]]
            bucket.append(d)
            if len(bucket) == self.batch_sizes[d["dataset_source"]]:
                yield bucket[:]
                del bucket[:]


def build_multi_dataset_train_loader(cfg) -> GroupedByDataset:
    """The loader for DATASETS.TRAIN with DATALOADER.DATASET_* and INPUT.DATASET_* per dataset."""
    names = list(cfg.DATASETS.TRAIN)
    per = {k: list(v) for k, v in (("DATASET_RATIO", cfg.DATALOADER.DATASET_RATIO),
                                     ("DATASET_BATCH_SIZE", cfg.DATALOADER.DATASET_BATCH_SIZE),
                                     ("DATASET_ANN_TYPE", cfg.DATALOADER.DATASET_ANN_TYPE),
                                     ("DATASET_MIN_SIZE", cfg.INPUT.DATASET_MIN_SIZE),
                                     ("DATASET_MAX_SIZE", cfg.INPUT.DATASET_MAX_SIZE))}
    wrong = [k for k, v in per.items() if len(v) != len(names)]
    if wrong:
        raise ValueError(f"{wrong} need one entry per training dataset ({len(names)}: {names})")
    records, sizes, mappers = [], [], []
    for d, (name, ann_type) in enumerate(zip(names, per["DATASET_ANN_TYPE"])):
        dicts = get_detection_dataset_dicts([name], filter_empty=ann_type == "box" and cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
        for r in dicts:
            r["dataset_source"], r["ann_type"] = d, ann_type
        records += dicts
        sizes.append(len(dicts))
        augs = [T.ResizeShortestEdge(per["DATASET_MIN_SIZE"][d], per["DATASET_MAX_SIZE"][d], "choice"),
                T.RandomFlip()]
        mappers.append(DatasetMapper(cfg, True, augmentations=augs))
    dataset = MapDataset(DatasetFromList(records, copy=False), lambda r: mappers[r["dataset_source"]](r))
    sampler = MultiDatasetSampler(sizes, per["DATASET_RATIO"], seed=cfg.SEED if cfg.SEED >= 0 else 0)
    loader = torch.utils.data.DataLoader(ToIterableDataset(dataset, sampler), num_workers=cfg.DATALOADER.NUM_WORKERS,
                                         collate_fn=operator.itemgetter(0), worker_init_fn=worker_init_reset_seed)
    return GroupedByDataset(loader, per["DATASET_BATCH_SIZE"])

"""Training on several datasets at once (box- and image-labelled), as Detic does: each batch
comes from one dataset (and one aspect-ratio group), with that dataset's batch size and input
augmentation; datasets drawn by ratio, images within a dataset optionally by repeat factor."""
from __future__ import annotations

import itertools
import logging
import math
import operator
from collections import defaultdict
from typing import Dict, Iterable, Iterator, List, Optional, Sequence

import torch
from detectron2.data import DatasetFromList, DatasetMapper, MapDataset
from detectron2.data import transforms as T
from detectron2.data.build import get_detection_dataset_dicts, worker_init_reset_seed
from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.utils import comm

logger = logging.getLogger(__name__)


class MultiDatasetSampler(torch.utils.data.Sampler):
    """Detic's sampler: endless indices into the concatenation of datasets of ``sizes``, drawn
    with replacement with per-item weights ``ratio_d / sum(ratios) x max(sizes) / size_d``
    (a dataset is drawn with probability ``ratio / sum(ratios)``) x the item's repeat factor
    (normalised to mean 1 within its dataset). One stream from a seed shared by all ranks,
    each rank taking every world_size-th index."""

    def __init__(self, sizes: Sequence[int], ratios: Sequence[float], seed: int = 0,
                 repeat_factors: Optional[Sequence[Optional[torch.Tensor]]] = None) -> None:
        if len(sizes) != len(ratios):
            raise ValueError(f"{len(sizes)} datasets but {len(ratios)} ratios (DATALOADER.DATASET_RATIO)")
        if any(s == 0 for s in sizes):
            raise ValueError(f"a training dataset is empty (sizes {list(sizes)})")
        self.sizes, self.seed = list(sizes), int(seed)
        weights = []
        for d, (s, r) in enumerate(zip(sizes, ratios)):
            w = torch.full((s,), max(sizes) / s * r / float(sum(ratios)))
            rf = repeat_factors[d] if repeat_factors is not None else None
            if rf is not None:
                w = w * rf.float() * (s / float(rf.sum()))
            weights.append(w)
        self.weights = torch.cat(weights)

    def __iter__(self) -> Iterator[int]:
        yield from itertools.islice(self._infinite(), comm.get_rank(), None, comm.get_world_size())

    def _infinite(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed)
        while True:
            yield from torch.multinomial(self.weights, len(self.weights), replacement=True, generator=g).tolist()


def repeat_factors_from_image_labels(dataset_dicts: Sequence[Dict], repeat_thresh: float) -> torch.Tensor:
    """LVIS repeat factors of image-labelled records (Detic's ``repeat_factors_from_tag_frequency``):
    per image, the largest ``max(1, sqrt(t / f_c))`` over its labels c, f_c the fraction of
    images labelled c."""
    freq: Dict[int, int] = defaultdict(int)
    for d in dataset_dicts:
        for c in d["pos_category_ids"]:
            freq[c] += 1
    rep = {c: max(1.0, math.sqrt(repeat_thresh / (n / len(dataset_dicts)))) for c, n in freq.items()}
    return torch.tensor([max((rep[c] for c in d["pos_category_ids"]), default=1.0) for d in dataset_dicts])


class GroupedByDataset(torch.utils.data.IterableDataset):
    """Batches of mapped dicts of one ``dataset_source`` each, of that dataset's batch size;
    with ``aspect_ratio_grouping`` also of one orientation (landscape or not), as Detic groups."""

    def __init__(self, items: Iterable[Dict], batch_sizes: Sequence[int], aspect_ratio_grouping: bool = False) -> None:
        self.items, self.batch_sizes, self.grouping = items, list(batch_sizes), aspect_ratio_grouping

    def __iter__(self) -> Iterator[List[Dict]]:
        buckets: Dict[tuple, List[Dict]] = defaultdict(list)
        for d in self.items:
            source = d["dataset_source"]
            bucket = buckets[(source, d["width"] > d["height"] if self.grouping else None)]
            bucket.append(d)
            if len(bucket) == self.batch_sizes[source]:
                yield bucket[:]
                del bucket[:]


def dataset_augmentations(cfg, d: int) -> List[T.Augmentation]:
    """The training augmentation of dataset ``d``: INPUT.DATASET_AUG ``resize_scale_crop``
    (Detic's EfficientDetResizeCrop: fit in a square of INPUT_SIZE x a scale drawn from
    INPUT_SCALE, then a random crop of that square) or ``resize_shortest_edge``
    (INPUT.DATASET_MIN_SIZE / MAX_SIZE, sampled as INPUT.MIN_SIZE_TRAIN_SAMPLING); then a
    horizontal flip."""
    aug = cfg.INPUT.DATASET_AUG
    if aug == "resize_scale_crop":
        size, (lo, hi) = cfg.INPUT.DATASET_INPUT_SIZE[d], cfg.INPUT.DATASET_INPUT_SCALE[d]
        return [T.ResizeScale(lo, hi, size, size), T.FixedSizeCrop((size, size), pad=False), T.RandomFlip()]
    if aug == "resize_shortest_edge":
        return [T.ResizeShortestEdge(cfg.INPUT.DATASET_MIN_SIZE[d], cfg.INPUT.DATASET_MAX_SIZE[d],
                                     cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING), T.RandomFlip()]
    raise ValueError(f"INPUT.DATASET_AUG is '{aug}': use resize_scale_crop (Detic's) or resize_shortest_edge")


def batch_size_note(cfg, world_size: int) -> str:
    """Why the global batch differs from the recipe's, or "": DATALOADER.DATASET_BATCH_SIZE is
    per process (Detic's), and the recipe's SOLVER.IMS_PER_BATCH = DATASET_BATCH_SIZE[0] x its
    number of processes."""
    per = list(cfg.DATALOADER.DATASET_BATCH_SIZE)
    recipe = cfg.SOLVER.IMS_PER_BATCH / per[0]
    if recipe == world_size:
        return ""
    batches = " / ".join(f"{world_size * b} ({t})" for b, t in zip(per, cfg.DATALOADER.DATASET_ANN_TYPE))
    return (f"DATALOADER.DATASET_BATCH_SIZE {per} is per process: the recipe's global batch "
            f"(SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH}) is {per[0]} x {recipe:g} processes; with "
            f"{world_size} it is {batches} images at the recipe's learning rate. To scale the LR and "
            f"schedule linearly instead, set SOLVER.REFERENCE_WORLD_SIZE {recipe:g} (docs/detection.md)")


def build_multi_dataset_train_loader(cfg) -> GroupedByDataset:
    """The loader for DATASETS.TRAIN with DATALOADER.DATASET_* and INPUT.DATASET_* per dataset."""
    note = batch_size_note(cfg, comm.get_world_size())
    if note:
        logger.warning(note)
    names = list(cfg.DATASETS.TRAIN)
    per = {k: list(v) for k, v in (("DATALOADER.DATASET_RATIO", cfg.DATALOADER.DATASET_RATIO),
                                     ("DATALOADER.DATASET_BATCH_SIZE", cfg.DATALOADER.DATASET_BATCH_SIZE),
                                     ("DATALOADER.DATASET_ANN_TYPE", cfg.DATALOADER.DATASET_ANN_TYPE),
                                     ("DATALOADER.USE_RFS", cfg.DATALOADER.USE_RFS))}
    per.update({f"INPUT.{k}": list(cfg.INPUT[k]) for k in (
        ("DATASET_INPUT_SIZE", "DATASET_INPUT_SCALE") if cfg.INPUT.DATASET_AUG == "resize_scale_crop"
        else ("DATASET_MIN_SIZE", "DATASET_MAX_SIZE"))})
    wrong = [k for k, v in per.items() if len(v) != len(names)]
    if wrong:
        raise ValueError(f"{wrong} need one entry per training dataset ({len(names)}: {names})")
    records, sizes, mappers, factors = [], [], [], []
    for d, (name, ann_type) in enumerate(zip(names, per["DATALOADER.DATASET_ANN_TYPE"])):
        dicts = get_detection_dataset_dicts([name], filter_empty=ann_type == "box" and cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
        for r in dicts:
            r["dataset_source"], r["ann_type"] = d, ann_type
        records += dicts
        sizes.append(len(dicts))
        mappers.append(DatasetMapper(cfg, True, augmentations=dataset_augmentations(cfg, d)))
        if not per["DATALOADER.USE_RFS"][d]:
            factors.append(None)
        elif ann_type == "box":
            factors.append(RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
                dicts, cfg.DATALOADER.REPEAT_THRESHOLD))
        else:
            factors.append(repeat_factors_from_image_labels(dicts, cfg.DATALOADER.REPEAT_THRESHOLD))
    dataset = MapDataset(DatasetFromList(records, copy=False), lambda r: mappers[r["dataset_source"]](r))
    sampler = MultiDatasetSampler(sizes, per["DATALOADER.DATASET_RATIO"], repeat_factors=factors,
                                  seed=cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed())
    loader = torch.utils.data.DataLoader(dataset, sampler=sampler, num_workers=cfg.DATALOADER.NUM_WORKERS,
                                         collate_fn=operator.itemgetter(0), worker_init_fn=worker_init_reset_seed)
    return GroupedByDataset(loader, per["DATALOADER.DATASET_BATCH_SIZE"], cfg.DATALOADER.ASPECT_RATIO_GROUPING)

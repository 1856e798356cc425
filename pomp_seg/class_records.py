"""ZSSeg's stage-(a) training set: (image, class) records, a fixed number per seen class.

ZSSeg (``mask_former/data/build.py: dataset_sample_per_class``) flattens its segmentation
set into one record per (image, class present in its base-class annotation), files by name,
groups the records by class in order of first appearance, and draws ``SAMPLE_PER_CLASS`` of
each class once, before training, with ``numpy.random.default_rng(SAMPLE_SEED=0)``:
``rng.choice(records, size=N)``, i.e. with replacement; a class with fewer than ``N`` records
keeps all of them.
Its training loader then shuffles that fixed list endlessly (detectron2's ``TrainingSampler``),
one crop per record. :class:`ClassRecordDataset` is that list as an mmengine dataset wrapper:
each item is the wrapped dataset's image whose data sample carries ``category_id``, which
:class:`pomp_seg.prompt_tuning.PromptTuner` crops alone.
"""
from __future__ import annotations

import copy
import json
import os
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import mmcv
import numpy as np
from mmengine import fileio
from mmengine.dist import barrier, get_dist_info
from mmengine.logging import print_log
from mmseg.registry import DATASETS

from pomp_core.durable import atomic_write_text


def raw_label_values(seg_map_path: str) -> List[int]:
    """The distinct values of an annotation file, read as mmseg's ``LoadAnnotations`` reads it."""
    seg = mmcv.imfrombytes(fileio.get(seg_map_path), flag="unchanged", backend="pillow")
    return np.unique(seg).tolist()


def cache_path(cache_file: Optional[str], data_root: Optional[str]) -> Optional[str]:
    """``cache_file``, a relative one taken inside ``data_root`` (so ``--data-root`` moves it too)."""
    if not cache_file or os.path.isabs(cache_file) or not data_root:
        return cache_file or None
    return os.path.join(data_root, cache_file)


def _read_cache(cache_file: str) -> Dict[str, List[int]]:
    if not os.path.isfile(cache_file):
        return {}
    with open(cache_file) as f:
        return json.load(f)


def label_values(paths: Sequence[str], cache_file: Optional[str] = None,
                 data_root: Optional[str] = None) -> Dict[str, List[int]]:
    """:func:`raw_label_values` of each annotation file (keyed by the given paths), through the
    JSON cache ``cache_file`` when given (COCO-Stuff's 118k annotations take minutes to list).

    The cache (:func:`cache_path`) keys files by their path relative to its folder, so it
    stays valid when the data moves with it. Under a process group, rank 0 reads the missing
    files and writes the cache, the other ranks wait at a barrier and then read it: one rank
    lists the annotations, once."""
    cache_file = cache_path(cache_file, data_root)
    if not cache_file:
        return {p: raw_label_values(p) for p in paths}
    folder = os.path.dirname(os.path.abspath(cache_file))
    keys = {p: os.path.relpath(os.path.abspath(p), folder) for p in paths}
    rank, world = get_dist_info()
    if rank == 0:
        cache = _read_cache(cache_file)
        missing = [p for p in paths if keys[p] not in cache]
        for path in missing:
            cache[keys[path]] = raw_label_values(path)
        if missing:
            os.makedirs(folder, exist_ok=True)
            atomic_write_text(cache_file, json.dumps(cache))
    if world > 1:
        barrier()
    if rank != 0:
        cache = _read_cache(cache_file)
    return {p: cache[keys[p]] if keys[p] in cache else raw_label_values(p) for p in paths}


def loaded_labels(values: Sequence[int], reduce_zero_label: bool,
                  label_map: Optional[Mapping[int, int]]) -> List[int]:
    """The labels ``LoadAnnotations`` makes of raw ``values``: 0 and 255 -> 255 and ``v - 1``
    with ``reduce_zero_label``, then ``label_map`` (applied once, not chained)."""
    out = [(255 if v in (0, 255) else v - 1) if reduce_zero_label else v for v in values]
    label_map = label_map or {}
    return sorted({label_map.get(v, v) for v in out})


@DATASETS.register_module()
class ClassRecordDataset:
    """(image, class) records of a segmentation dataset, ``sample_per_class`` of each seen class.

    Args:
        dataset: the wrapped dataset (config or built): a ``BaseSegDataset`` or a
            ``ConcatDataset`` of them (VOC trainaug), whose metainfo has ``classes`` and
            ``unseen_classes``. Records are of seen classes only: a label outside the
            classes (ignore) or of an unseen class makes none.
        sample_per_class: ZSSeg's ``SAMPLE_PER_CLASS`` (VOC 128, COCO-Stuff 32): records drawn
            per class, once, before training; a class with fewer keeps all of its records.
            -1 = every record (ZSSeg's -1). None = off: the wrapped dataset's images as they
            are (one item per image; the model then crops ``crops_per_image`` of its classes).
        seed: the draw's seed (ZSSeg's ``SAMPLE_SEED``, 0).
        replace: draw with replacement, as ZSSeg's ``rng.choice`` does (a record can come twice,
            and a class with exactly ``sample_per_class`` records is drawn from too). False
            draws distinct records.
        class_count_file: a JSON cache of each annotation file's values, read if present and
            written (by rank 0) when new files were read (COCO-Stuff's 118k annotations take
            minutes; ZSSeg precomputes the same with ``tools/mask_cls_collect.py``); a relative
            path is inside the wrapped dataset's ``data_root`` (see :func:`label_values`).
        max_refetch: records tried in a row when the pipeline returns None (mmengine's default).
    """

    def __init__(self, dataset: Union[dict, object], sample_per_class: Optional[int] = None,
                 seed: int = 0, replace: bool = True, class_count_file: Optional[str] = None,
                 max_refetch: int = 1000, lazy_init: bool = False) -> None:
        if sample_per_class is not None and (not isinstance(sample_per_class, int) or sample_per_class == 0
                                             or sample_per_class < -1):
            raise ValueError(f"sample_per_class must be a positive int, -1 (every record) or None (images, "
                             f"no records), got {sample_per_class!r}")
        self.dataset = DATASETS.build(dataset) if isinstance(dataset, dict) else dataset
        self.sample_per_class = sample_per_class
        self.seed = seed
        self.replace = replace
        self.class_count_file = class_count_file
        self.max_refetch = max_refetch
        self._metainfo = self.dataset.metainfo
        if "unseen_classes" not in self._metainfo:
            raise ValueError(f"ClassRecordDataset needs a dataset with a seen/unseen split (metainfo "
                             f"'unseen_classes'), got {type(self.dataset).__name__}; use a dataset of "
                             "pomp_seg.datasets")
        self.records: List[Tuple[int, int]] = []
        self._fully_initialized = False
        if not lazy_init:
            self.full_init()

    @property
    def metainfo(self) -> dict:
        return copy.deepcopy(self._metainfo)

    def full_init(self) -> None:
        if self._fully_initialized:
            return
        self.dataset.full_init()
        if self.sample_per_class is not None:
            self.records = self._sample(self._all_records())
            counts = self.class_counts()
            print_log(f"ClassRecordDataset: {len(self.records)} (image, class) records of {len(counts)} seen "
                      f"classes from {len(self.dataset)} images (sample_per_class={self.sample_per_class}, "
                      f"seed={self.seed}, replace={self.replace}); fewest {min(counts.values(), default=0)}",
                      logger="current")
        self._fully_initialized = True

    def _seen_ids(self) -> set:
        classes = list(self._metainfo["classes"])
        unseen = set(self._metainfo["unseen_classes"])
        return {i for i, c in enumerate(classes) if c not in unseen}

    def _all_records(self) -> List[Tuple[int, int]]:
        """Every (image index, seen class) pair, images by annotation file name, classes ascending.

        ZSSeg's records come in that order (detectron2's ``load_sem_seg`` sorts the files, its
        label-count lists are sorted), so the same seed draws the same records from the same
        annotations, whatever order the split files list the images in."""
        seen = self._seen_ids()
        records = []
        infos = [self.dataset.get_data_info(idx) for idx in range(len(self.dataset))]
        values = label_values([info["seg_map_path"] for info in infos], self.class_count_file,
                              getattr(self.dataset, "data_root", None))
        stem = lambda i: os.path.splitext(os.path.basename(infos[i]["seg_map_path"]))[0]  # noqa: E731
        for idx in sorted(range(len(infos)), key=stem):
            info = infos[idx]
            labels = loaded_labels(values[info["seg_map_path"]], info.get("reduce_zero_label", False),
                                   info.get("label_map"))
            records += [(idx, c) for c in labels if c in seen]
        return records

    def _sample(self, records: List[Tuple[int, int]]) -> List[Tuple[int, int]]:
        if self.sample_per_class == -1:
            return records
        groups: "OrderedDict[int, List[Tuple[int, int]]]" = OrderedDict()
        for rec in records:  # classes in order of first appearance, as ZSSeg's Counter
            groups.setdefault(rec[1], []).append(rec)
        rng = np.random.default_rng(self.seed)
        out: List[Tuple[int, int]] = []
        n = self.sample_per_class
        for group in groups.values():
            if len(group) < n:
                out += group
            else:
                out += [group[i] for i in rng.choice(len(group), size=n, replace=self.replace).tolist()]
        return out

    def class_counts(self) -> Dict[str, int]:
        """Records per class name (for the log and the tests)."""
        classes = self._metainfo["classes"]
        counts: Dict[str, int] = {}
        for _, c in self.records:
            counts[classes[c]] = counts.get(classes[c], 0) + 1
        return counts

    def __len__(self) -> int:
        self.full_init()
        return len(self.dataset) if self.sample_per_class is None else len(self.records)

    def get_data_info(self, idx: int) -> dict:
        self.full_init()
        if self.sample_per_class is None:
            return self.dataset.get_data_info(idx)
        image, category = self.records[idx]
        return dict(self.dataset.get_data_info(image), category_id=category)

    def _pipeline(self, image: int):
        """The pipeline of the (sub-)dataset holding ``image``."""
        if hasattr(self.dataset, "_get_ori_dataset_idx"):  # a ConcatDataset
            part, _ = self.dataset._get_ori_dataset_idx(image)
            return self.dataset.datasets[part].pipeline
        return self.dataset.pipeline

    def __getitem__(self, idx: int) -> dict:
        """The record's item; a record whose pipeline returns None (``RecordMaskCrop``: the
        view missed the class) is replaced by another drawn at random, as ZSSeg's loader does."""
        self.full_init()
        if self.sample_per_class is None:
            return self.dataset[idx]
        for _ in range(self.max_refetch + 1):
            data = self._pipeline(self.records[idx][0])(self.get_data_info(idx))
            if data is not None:
                data["data_samples"].set_metainfo(dict(category_id=self.records[idx][1]))
                return data
            idx = np.random.randint(0, len(self.records))
        raise RuntimeError(f"ClassRecordDataset: the pipeline returned None for {self.max_refetch + 1} records "
                           "in a row; check that the pipeline's crop (RecordMaskCrop) can hold the record's class")

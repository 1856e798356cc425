"""Segmentation datasets with seen/unseen metadata for zero-shot training and testing.

Every dataset here carries ``unseen_classes`` (names) in its metainfo, which the
seen/unseen metric reads. With ``ignore_unseen=True`` (training) the labels of unseen
classes become ``ignore_index`` when the annotation is loaded, so the model never sees them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from mmengine.logging import print_log
from mmseg.datasets import BaseSegDataset, COCOStuffDataset, PascalVOCDataset
from mmseg.registry import DATASETS

from .class_records import label_values, loaded_labels

# The published ZS3Net/ZSSeg splits (zsseg.baseline's configs), in mmseg's class spelling.
VOC_UNSEEN = ("pottedplant", "sheep", "sofa", "train", "tvmonitor")
COCO_STUFF_UNSEEN = ("cow", "giraffe", "suitcase", "frisbee", "skateboard", "carrot", "scissors",
                     "cardboard", "clouds", "grass", "playingfield", "river", "road", "tree",
                     "wall-concrete")


def read_class_split(path: str | os.PathLike) -> Tuple[List[str], List[str]]:
    """``(classes, unseen names)`` from a ``classes.json`` (``classes`` + ``unseen`` indices)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class split file '{path}' does not exist (expected the "
                                "dataset's classes.json with 'classes' and 'unseen' indices)")
    meta = json.loads(path.read_text())
    if "classes" not in meta:
        raise ValueError(f"{path} has no 'classes' list")
    classes = list(meta["classes"])
    return classes, [classes[i] for i in meta.get("unseen", [])]


def resolve_split(spec: str | Sequence[str]) -> Tuple[List[str], List[str]]:
    """``(classes, unseen)`` of a dataset type registered here, a classes.json (or the folder
    holding one, such as the world's segmentation root), or a name list (no unseen classes)."""
    if isinstance(spec, str):
        if os.path.isdir(spec):
            return read_class_split(Path(spec) / "classes.json")
        if spec.endswith(".json") or os.sep in spec:
            return read_class_split(spec)
        cls = DATASETS.get(spec)
        if cls is None or "unseen_classes" not in getattr(cls, "METAINFO", {}):
            known = [name for name in ("ZeroShotVOCDataset", "ZeroShotCOCOStuffDataset")]
            raise ValueError(f"'{spec}' is not a dataset with a seen/unseen split; use one of "
                             f"{known}, a classes.json path or a list of class names")
        return list(cls.METAINFO["classes"]), list(cls.METAINFO["unseen_classes"])
    return list(spec), []


def seen_classes(spec: str | Sequence[str]) -> List[str]:
    classes, unseen = resolve_split(spec)
    return [c for c in classes if c not in set(unseen)]


class ZeroShotSegMixin:
    """Adds ``ignore_unseen``, ``drop_all_ignore`` and a readable error for a missing dataset root.

    ``drop_all_ignore``: leave out images whose loaded labels are all ignore (with
    ``ignore_unseen``: images of unseen classes and background only), as ZSSeg's data
    preparation does (``prepare_voc_sem_seg.py`` writes no annotation for them). Kept, such an
    image trains every query towards "no object" while it shows unseen objects. Listing the
    labels reads every annotation once; ``class_count_file`` caches the lists (the same file
    as stage (a)'s ``ClassRecordDataset``; relative = inside ``data_root``; rank 0 writes it
    and the other ranks read it, see :func:`pomp_seg.class_records.label_values`).
    """

    def __init__(self, *args, ignore_unseen: bool = False, drop_all_ignore: bool = False,
                 class_count_file: Optional[str] = None, **kwargs) -> None:
        self.ignore_unseen = ignore_unseen
        self.drop_all_ignore = drop_all_ignore
        self.class_count_file = class_count_file
        root = kwargs.get("data_root")
        if root is not None and not os.path.isdir(root):
            raise FileNotFoundError(
                f"{type(self).__name__}: data_root '{root}' does not exist; set "
                "train_dataloader.dataset.data_root (and the val/test ones) with --cfg-options, "
                "or prepare the data as docs/segmentation.md describes")
        super().__init__(*args, **kwargs)

    def unseen_ids(self) -> List[int]:
        classes = list(self.metainfo["classes"])
        return [classes.index(c) for c in self.metainfo.get("unseen_classes", ()) if c in classes]

    def load_data_list(self) -> List[dict]:
        data_list = self._with_unseen_ignored(super().load_data_list())
        return self._without_all_ignore(data_list) if self.drop_all_ignore else data_list

    def _without_all_ignore(self, data_list: List[dict]) -> List[dict]:
        values = label_values([info["seg_map_path"] for info in data_list], self.class_count_file, self.data_root)
        n_classes = len(self.metainfo["classes"])
        kept = [info for info in data_list
                if any(0 <= c < n_classes and c != self.ignore_index
                       for c in loaded_labels(values[info["seg_map_path"]], info.get("reduce_zero_label", False),
                                              info.get("label_map")))]
        print_log(f"{type(self).__name__}: {len(data_list) - len(kept)} of {len(data_list)} images have only "
                  "ignored labels and are left out (drop_all_ignore=True, as ZSSeg)", logger="current")
        return kept

    def _with_unseen_ignored(self, data_list: List[dict]) -> List[dict]:
        if not self.ignore_unseen:
            return data_list
        unseen = set(self.unseen_ids())
        # LoadAnnotations applies label_map after reducing the zero label: map the final
        # ids of unseen classes to ignore (composing with any custom-class map).
        base: Optional[Dict[int, int]] = self.label_map
        if base:
            label_map = {old: (self.ignore_index if new in unseen else new) for old, new in base.items()}
        else:
            label_map = {c: self.ignore_index for c in unseen}
        for info in data_list:
            info["label_map"] = label_map
        return data_list


@DATASETS.register_module()
class ZeroShotVOCDataset(ZeroShotSegMixin, PascalVOCDataset):
    """Pascal VOC 2012, 20 object classes (background ignored, as in ZS3Net/ZSSeg), 15 seen / 5 unseen."""

    METAINFO = dict(classes=PascalVOCDataset.METAINFO["classes"][1:],
                    palette=PascalVOCDataset.METAINFO["palette"][1:],
                    unseen_classes=VOC_UNSEEN)

    def __init__(self, reduce_zero_label: bool = True, **kwargs) -> None:
        super().__init__(reduce_zero_label=reduce_zero_label, **kwargs)


@DATASETS.register_module()
class ZeroShotCOCOStuffDataset(ZeroShotSegMixin, COCOStuffDataset):
    """COCO-Stuff 164K, 171 classes, 156 seen / 15 unseen."""

    METAINFO = dict(COCOStuffDataset.METAINFO, unseen_classes=COCO_STUFF_UNSEEN)


@DATASETS.register_module()
class WorldSegDataset(ZeroShotSegMixin, BaseSegDataset):
    """The synthetic world's segmentation scenes; classes and unseen split from ``classes.json``."""

    def __init__(self, data_root: str, img_suffix: str = ".png", seg_map_suffix: str = ".png",
                 metainfo: Optional[dict] = None, **kwargs) -> None:
        if not os.path.isdir(data_root):
            raise FileNotFoundError(f"world segmentation root '{data_root}' does not exist; write it with "
                                    "tools/make_world.py --parts segmentation --out DIR (it is DIR/segmentation)")
        classes, unseen = read_class_split(Path(data_root) / "classes.json")
        metainfo = dict(classes=tuple(classes), unseen_classes=tuple(unseen), **(metainfo or {}))
        super().__init__(data_root=data_root, img_suffix=img_suffix, seg_map_suffix=seg_map_suffix,
                         metainfo=metainfo, **kwargs)

"""ZSSeg's stage-(a) view of an (image, class) record, as a data transform.

ZSSeg's ``mask_former_binary_semantic`` dataset mapper cuts the box of the record's class
mask out of the image (``CropImageWithMask``, expand ratio 1), takes a random-resized crop of
it (``RandomResizedCrop(MIN_SIZE_TRAIN=(224, 244))``: height 244, width 224; the image
resized bilinearly as uint8 by PIL, the labels nearest), flips it, and returns ``None`` when
the view holds no pixel of the class (detectron2 then loads another record).
:class:`RecordMaskCrop` does the same on mmseg's results dict; ``RandomFlip`` follows it in
the pipeline, and :class:`pomp_seg.class_records.ClassRecordDataset` loads another record
for a ``None``. The model (:class:`pomp_seg.prompt_tuning.PromptTuner` with
``crop_in_pipeline=True``) fills the view outside the mask.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from mmcv.transforms import BaseTransform
from mmseg.registry import TRANSFORMS
from PIL import Image

Box = Tuple[int, int, int, int]  # top, left, height, width


def record_box(mask: np.ndarray) -> Box:
    """The box of a non-empty boolean mask [H, W] as ZSSeg's ``CropImageWithMask`` cuts it:
    its ``expand_box`` clips the far edges to ``H - 1`` / ``W - 1``, so a mask that reaches the
    last row or column loses it."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if len(rows) == 0:
        raise ValueError("record_box needs a non-empty mask: the record's class is not in its annotation")
    top, left = int(rows[0]), int(cols[0])
    height = min(mask.shape[0] - 1, int(rows[-1]) + 1) - top
    width = min(mask.shape[1] - 1, int(cols[-1]) + 1) - left
    return top, left, max(height, 1), max(width, 1)


def random_resized_box(height: int, width: int, scale: Tuple[float, float], ratio: Tuple[float, float],
                       rng: np.random.RandomState = np.random) -> Box:
    """A random part of a ``height`` x ``width`` area, ZSSeg's ``RandomResizedCrop`` (torchvision's
    rule): ``scale`` of the area at an aspect ``w / h`` in ``ratio`` (log-uniform), ten tries,
    else the centre cut to the nearest allowed aspect."""
    log_ratio = np.log(np.array(ratio))
    for _ in range(10):
        area = height * width * rng.uniform(scale[0], scale[1])
        aspect = np.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w, h = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left = rng.randint(0, width - w + 1)
            top = rng.randint(0, height - h + 1)
            return int(top), int(left), h, w
    w, h = width, height
    if width / height < min(ratio):
        h = int(round(w / min(ratio)))
    elif width / height > max(ratio):
        w = int(round(h * max(ratio)))
    return (height - h) // 2, (width - w) // 2, h, w


def resize_view(img: np.ndarray, seg_maps: dict, size: Tuple[int, int]) -> Tuple[np.ndarray, dict]:
    """``img`` (uint8 [H, W, 3]) resized to ``size`` (h, w) by PIL's bilinear filter and each
    label map by torch's nearest rule, as detectron2's ``ResizeTransform`` does for ZSSeg."""
    out = np.asarray(Image.fromarray(img).resize((size[1], size[0]), Image.BILINEAR))
    maps = {}
    for key, seg in seg_maps.items():
        t = torch.from_numpy(np.ascontiguousarray(seg)).double()[None, None]
        maps[key] = F.interpolate(t, size=size, mode="nearest")[0, 0].numpy().astype(seg.dtype)
    return out, maps


@TRANSFORMS.register_module()
class RecordMaskCrop(BaseTransform):
    """The random view of the record's class (``results['category_id']``), ZSSeg's stage (a).

    Args:
        size: the view's (height, width). ZSSeg's (244, 224) (its ``MIN_SIZE_TRAIN: (224,244)``
            read as detectron2's (w, h)); (224, 224) gives CLIP's square input.
        scale, ratio: the random-resized crop of the mask's box (torchvision's defaults).
        drop_empty: return None when the view holds none of the class (ZSSeg; the dataset then
            loads another record); False keeps such a view (its crop is all fill).
    """

    def __init__(self, size: Tuple[int, int] = (244, 224), scale: Tuple[float, float] = (0.08, 1.0),
                 ratio: Tuple[float, float] = (3 / 4, 4 / 3), drop_empty: bool = True) -> None:
        self.size = tuple(size)
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.drop_empty = drop_empty

    def view(self, results: dict, crop: Box) -> Optional[dict]:
        """The view at ``crop`` (top, left, height, width inside the record's box)."""
        top, left, height, width = record_box(results["gt_seg_map"] == results["category_id"])
        y0, x0 = top + crop[0], left + crop[1]
        window = (slice(y0, y0 + crop[2]), slice(x0, x0 + crop[3]))
        keys = results.get("seg_fields", ["gt_seg_map"])
        img, maps = resize_view(results["img"][window], {k: results[k][window] for k in keys}, self.size)
        if self.drop_empty and not (maps["gt_seg_map"] == results["category_id"]).any():
            return None
        results.update(maps, img=img, img_shape=img.shape[:2])
        return results

    def transform(self, results: dict) -> Optional[dict]:
        if "category_id" not in results:
            raise KeyError("RecordMaskCrop crops a record's class: wrap the dataset in ClassRecordDataset "
                           "with sample_per_class set (its items carry category_id)")
        _, _, height, width = record_box(results["gt_seg_map"] == results["category_id"])
        return self.view(results, random_resized_box(height, width, self.scale, self.ratio))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(size={self.size}, scale={self.scale}, ratio={self.ratio}, "
                f"drop_empty={self.drop_empty})")

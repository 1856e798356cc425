"""mIoU over seen classes, over unseen classes, their harmonic mean (hIoU), and per-class IoU."""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import numpy as np
from mmseg.evaluation import IoUMetric
from mmseg.registry import METRICS


def harmonic_iou(seen: float, unseen: float) -> float:
    """NaN where either mean is NaN (no class of that group occurs): not measured, not zero."""
    if math.isnan(seen) or math.isnan(unseen):
        return float("nan")
    return 2 * seen * unseen / (seen + unseen) if seen + unseen > 0 else 0.0


def mean_present(iou: np.ndarray) -> float:
    """Mean IoU over the classes that occur (NaN marks the others); NaN, silently, if none does."""
    present = iou[~np.isnan(iou)]
    return float(present.mean()) if len(present) else float("nan")


@METRICS.register_module()
class SeenUnseenIoUMetric(IoUMetric):
    """``IoUMetric`` plus ``mIoU_seen``, ``mIoU_unseen``, ``hIoU`` and ``IoU.<class>`` (percent).

    The unseen classes are ``unseen_classes`` (names) or, by default, the dataset's
    ``unseen_classes`` metainfo (the datasets of ``pomp_seg.datasets`` carry it). Classes
    absent from both prediction and ground truth (IoU 0/0) do not count in the means.
    A dataset without unseen classes (a cross-dataset test) reports mIoU only.
    """

    def __init__(self, unseen_classes: Optional[Sequence[str]] = None, **kwargs) -> None:
        kwargs.setdefault("iou_metrics", ["mIoU"])
        super().__init__(**kwargs)
        self.unseen_classes = None if unseen_classes is None else list(unseen_classes)

    def unseen_ids(self, classes: Sequence[str]) -> List[int]:
        names = self.unseen_classes
        if names is None:
            names = list(self.dataset_meta.get("unseen_classes", ()))
        unknown = [n for n in names if n not in classes]
        if unknown:
            raise ValueError(f"unseen classes {unknown} are not among the dataset's classes")
        return [list(classes).index(n) for n in names]

    def compute_metrics(self, results: list) -> Dict[str, float]:
        metrics = super().compute_metrics(results)
        if self.format_only:
            return metrics
        intersect = sum(r[0] for r in results).numpy().astype(float)
        union = sum(r[1] for r in results).numpy().astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = intersect / union * 100  # NaN where a class is nowhere
        classes = list(self.dataset_meta["classes"])
        unseen = self.unseen_ids(classes)
        seen = [i for i in range(len(classes)) if i not in set(unseen)]
        if unseen:
            s, u = mean_present(iou[seen]), mean_present(iou[unseen])
            metrics.update(mIoU_seen=round(s, 2), mIoU_unseen=round(u, 2), hIoU=round(harmonic_iou(s, u), 2))
        metrics.update({f"IoU.{name}": round(float(v), 2) for name, v in zip(classes, iou)})
        return metrics

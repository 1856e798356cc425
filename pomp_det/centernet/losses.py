"""CenterNet's losses: the heatmap focal loss and the (G)IoU loss on ltrb distances."""
from __future__ import annotations

from typing import Tuple

import torch


def heatmap_focal_loss(logits: torch.Tensor, targets: torch.Tensor, pos_inds: torch.Tensor, *,
                       alpha: float = 0.25, beta: float = 4.0, gamma: float = 2.0,
                       sigmoid_clamp: float = 1e-4, ignore_high_fp: float = -1.0
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
    """CornerNet/CenterNet focal loss on a class-agnostic heatmap, summed (not normalised).

    ``logits`` and ``targets`` [M] (targets in [0, 1], 1 at object centres), ``pos_inds`` the
    positions of the centres. Positives: ``-log(p) (1-p)^gamma``; every position is a negative
    ``-log(1-p) p^gamma (1-target)^beta`` (near a centre it barely counts). Returns
    ``(alpha * pos, (1 - alpha) * neg)``; ``alpha < 0`` leaves both unweighted.
    """
    p = logits.sigmoid().clamp(min=sigmoid_clamp, max=1 - sigmoid_clamp)
    p_pos = p[pos_inds]
    pos = -(torch.log(p_pos) * (1 - p_pos).pow(gamma)).sum()
    neg_terms = torch.log(1 - p) * p.pow(gamma) * (1 - targets).pow(beta)
    if ignore_high_fp > 0:
        # confident negatives are often unlabelled objects: no penalty above the threshold
        neg_terms = neg_terms * (p < ignore_high_fp).float()
    neg = -neg_terms.sum()
    if alpha >= 0:
        pos, neg = alpha * pos, (1 - alpha) * neg
    return pos, neg


def ltrb_iou_loss(pred: torch.Tensor, target: torch.Tensor, loss_type: str = "giou") -> torch.Tensor:
    """Per-row loss between boxes given as distances (left, top, right, bottom) >= 0 from the
    same point: ``1 - GIoU`` ("giou"), ``1 - IoU`` ("linear_iou") or ``-log IoU`` ("iou").
    IoU is smoothed by +1 in numerator and denominator, as CenterNet2 does."""
    pl, pt, pr, pb = pred.unbind(1)
    tl, tt, tr, tb = target.unbind(1)
    area_p = (pl + pr) * (pt + pb)
    area_t = (tl + tr) * (tt + tb)
    inter = (torch.min(pl, tl) + torch.min(pr, tr)) * (torch.min(pt, tt) + torch.min(pb, tb))
    union = area_p + area_t - inter
    iou = (inter + 1.0) / (union + 1.0)
    if loss_type == "iou":
        return -torch.log(iou)
    if loss_type == "linear_iou":
        return 1 - iou
    if loss_type != "giou":
        raise ValueError(f"MODEL.CENTERNET.LOC_LOSS_TYPE {loss_type!r}: use giou, iou or linear_iou")
    enclose = (torch.max(pl, tl) + torch.max(pr, tr)) * (torch.max(pt, tt) + torch.max(pb, tb))
    return 1 - (iou - (enclose - union) / enclose)

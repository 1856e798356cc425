"""Local contrast (K sampled classes per step) and local correction (margin on negatives).

Per step, with in-batch labels ``y_1..y_B``:

* ``K-1`` negatives ``S`` are drawn without replacement from the N classes, once per step
  and shared by the batch (``K >= N`` makes every class a candidate, ``S`` = all N);
* text is encoded once per distinct class of ``{y_i} ∪ S``;
* row i scores ``[s·cos(x_i, w_{y_i}), s·cos(x_i, w_j) + m_ij for j in S]``, target 0,
  with ``j == y_i`` masked out;
* ``m_ij = -log_b(n_i · q_j / (1 - q_{y_i}))``, ``n_i = |S| - r_i`` the row's valid
  negatives (``r_i = 1`` when its own class was drawn) and q the proposal. For the
  uniform proposal this is ``log_b((N-1)/(K-1-r_i))``, the POMP margin; base 10
  reproduces the published values (m = 1.0 at K = 1000, N = 10,450), base e the paper's
  printed equation. When S holds every class the sample is exact and m = 0, so
  ``K = N`` is the full softmax of CoOp.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F


@dataclass
class ContrastBatch:
    """What one step encodes and how its logits are laid out."""

    classes: torch.Tensor  # [U] distinct class ids whose text is encoded this step
    pos_index: torch.Tensor  # [B] row of each image's own class in ``classes``
    neg_index: torch.Tensor  # [K-1] rows of the negatives in ``classes``
    negatives: torch.Tensor  # [K-1] negative class ids
    margin: torch.Tensor  # [B, K-1] additive margin on negative logits (-inf where masked)


def sample_negatives(
    num_classes: int,
    k: int,
    proposal: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """K-1 distinct class ids from the proposal (uniform when None); all N when K >= N."""
    if k < 2:
        raise ValueError(f"K must be at least 2 (one positive and one negative), got {k}")
    if k >= num_classes:
        return torch.arange(num_classes)
    if proposal is None:
        return torch.randperm(num_classes, generator=generator)[: k - 1]
    return torch.multinomial(proposal, k - 1, replacement=False, generator=generator)


def build_contrast_batch(
    labels: torch.Tensor,
    negatives: torch.Tensor,
    num_classes: int,
    proposal: Optional[torch.Tensor] = None,
    log_base: Optional[float] = 10.0,
) -> ContrastBatch:
    """Lay out one step's classes and margins; ``log_base=None`` turns the correction off."""
    labels = labels.cpu()
    negatives = negatives.cpu()
    classes, inverse = torch.unique(torch.cat([labels, negatives]), return_inverse=True)
    pos_index, neg_index = inverse[: len(labels)], inverse[len(labels):]
    own = labels[:, None] == negatives[None, :]  # [B, K-1]
    margin = torch.zeros(own.shape)
    exact = len(negatives) == num_classes
    if log_base is not None and not exact:
        n_valid = (len(negatives) - own.sum(1)).clamp(min=1).double()  # [B]
        if proposal is None:
            log_expected = torch.log(n_valid / (num_classes - 1))[:, None].expand_as(own)
        else:
            q = proposal.cpu().double()
            q_own = q[labels]
            log_expected = torch.log(n_valid[:, None] * q[negatives][None, :] / (1 - q_own[:, None]))
        margin = (-log_expected / math.log(log_base)).float()
    margin = margin.masked_fill(own, float("-inf"))
    return ContrastBatch(classes, pos_index, neg_index, negatives, margin)


def local_contrast_logits(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    batch: ContrastBatch,
    logit_scale: torch.Tensor | float,
) -> torch.Tensor:
    """[B, K] logits: column 0 is the row's own class, then the corrected negatives.

    ``image_features`` [B, D] and ``text_features`` [U, D] (rows as ``batch.classes``)
    are L2-normalised here.
    """
    img = F.normalize(image_features, dim=-1)
    txt = F.normalize(text_features, dim=-1)
    sims = logit_scale * img @ txt.t()  # [B, U]
    pos = sims.gather(1, batch.pos_index.to(sims.device)[:, None])
    neg = sims[:, batch.neg_index.to(sims.device)] + batch.margin.to(sims.device, sims.dtype)
    return torch.cat([pos, neg], dim=1)


def local_contrast_loss(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with the target in column 0."""
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))

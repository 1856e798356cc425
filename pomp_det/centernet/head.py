"""CenterNet's head (proposal mode): a shared conv tower per level, an objectness heatmap and
ltrb box distances (in units of the level's stride) from each location."""
from __future__ import annotations

import math
from typing import List, Tuple

import torch
import torch.nn.functional as F
from detectron2.layers import get_norm
from torch import nn


class Scale(nn.Module):
    """A learned scalar per level on the box distances (as FCOS / CenterNet)."""

    def __init__(self, init: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([init]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def _tower(channels: int, num_convs: int, norm: str) -> nn.Sequential:
    layers: List[nn.Module] = []
    for _ in range(num_convs):
        layers.append(nn.Conv2d(channels, channels, 3, padding=1))
        if norm == "GN" and channels % 32:
            layers.append(nn.GroupNorm(25, channels))  # CenterNet2's fallback for odd widths
        elif norm:
            layers.append(get_norm(norm, channels))
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class CenterNetHead(nn.Module):
    """``share_tower`` -> ``bbox_tower`` -> (``agn_hm`` [1 channel], ``bbox_pred`` [4], ReLU after
    the level's scale). Module names follow CenterNet2's so its checkpoints map one to one
    (``cls_tower`` stays empty: no per-class heatmap in proposal mode)."""

    def __init__(self, in_channels: int, num_levels: int, *, norm: str = "GN", num_box_convs: int = 4,
                 num_share_convs: int = 0, prior_prob: float = 0.01) -> None:
        super().__init__()
        self.cls_tower = nn.Sequential()
        self.bbox_tower = _tower(in_channels, num_box_convs, norm)
        self.share_tower = _tower(in_channels, num_share_convs, norm)
        self.bbox_pred = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.scales = nn.ModuleList([Scale() for _ in range(num_levels)])
        self.agn_hm = nn.Conv2d(in_channels, 1, 3, padding=1)
        for m in [*self.bbox_tower.modules(), *self.share_tower.modules(), self.bbox_pred, self.agn_hm]:
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.constant_(m.bias, 0)
        # distances start at 8 strides; objectness at the prior (few locations are centres)
        nn.init.constant_(self.bbox_pred.bias, 8.0)
        nn.init.constant_(self.agn_hm.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features: List[torch.Tensor]) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Per level: objectness logits [N, 1, H, W] and ltrb distances [N, 4, H, W] (>= 0)."""
        heatmaps, regs = [], []
        for level, x in enumerate(features):
            x = self.bbox_tower(self.share_tower(x))
            heatmaps.append(self.agn_hm(x))
            regs.append(F.relu(self.scales[level](self.bbox_pred(x))))
        return heatmaps, regs

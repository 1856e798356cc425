"""A small convolutional FPN-shaped backbone for CPU-sized experiments (the synthetic world):
detectron2's narrowest ResNet (R-18) costs seconds per iteration on two shared CPU cores."""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn


class TinyPyramid(Backbone):
    """Stages of two 3x3 convs at strides 4, 8, 16, 32 (+ a max-pooled level at 64), every level
    projected to ``out_channels``; outputs are named like FPN's (p2..p6)."""

    def __init__(self, in_channels: int = 3, widths=(32, 48, 64, 96), out_channels: int = 64,
                 norm: str = "BN") -> None:
        super().__init__()
        self.stem = nn.Sequential(
            Conv2d(in_channels, widths[0], 3, stride=2, padding=1, bias=False, norm=get_norm(norm, widths[0]), activation=F.relu),
            Conv2d(widths[0], widths[0], 3, stride=2, padding=1, bias=False, norm=get_norm(norm, widths[0]), activation=F.relu))
        self.stages, self.lateral = nn.ModuleList(), nn.ModuleList()
        prev = widths[0]
        for i, w in enumerate(widths):
            self.stages.append(nn.Sequential(
                Conv2d(prev, w, 3, stride=1 if i == 0 else 2, padding=1, bias=False, norm=get_norm(norm, w), activation=F.relu),
                Conv2d(w, w, 3, padding=1, bias=False, norm=get_norm(norm, w), activation=F.relu)))
            self.lateral.append(Conv2d(w, out_channels, 1))
            prev = w
        self._out_features = [f"p{i}" for i in range(2, 7)]
        self._out_feature_strides = {f"p{i}": 2 ** i for i in range(2, 7)}
        self._out_feature_channels = {f: out_channels for f in self._out_features}
        self._size_divisibility = 64

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        x = self.stem(x)
        out = {}
        for i, (stage, lateral) in enumerate(zip(self.stages, self.lateral)):
            x = stage(x)
            out[f"p{i + 2}"] = lateral(x)
        out["p6"] = F.max_pool2d(out["p5"], kernel_size=1, stride=2)
        return out


@BACKBONE_REGISTRY.register()
def build_tiny_pyramid_backbone(cfg, input_shape: ShapeSpec) -> TinyPyramid:
    return TinyPyramid(input_shape.channels, out_channels=cfg.MODEL.FPN.OUT_CHANNELS, norm=cfg.MODEL.FPN.NORM or "BN")

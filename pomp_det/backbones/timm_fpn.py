"""Detic's ResNet-50 + FPN (``build_p67_timm_fpn_backbone``): a timm ResNet whose stride-8/16/32
outputs feed detectron2's FPN, with P6 and P7 computed from P5 (CenterNet's levels P3-P7).

The bottom-up network is timm's ``resnet50`` (the architecture of Detic's ImageNet-21K
``resnet50_in21k``), its weights read from a local timm or torchvision checkpoint file
(``MODEL.TIMM.CHECKPOINT``; both use the same parameter names). Module names match Detic's
(``backbone.bottom_up.base.*``, ``backbone.top_block.p6/p7``) so its checkpoints load as is.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import fvcore.nn.weight_init as weight_init
import timm
import torch
import torch.nn.functional as F
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, FPN, Backbone
from torch import nn

# Detic's name for the 21K model -> timm's architecture
TIMM_ALIASES = {"resnet50_in21k": "resnet50"}


def _state_dict_of(obj) -> Dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError("the checkpoint holds no state dict of tensors (expected {name: tensor}, "
                         "possibly under 'state_dict' or 'model')")
    return obj


def load_bottom_up_checkpoint(model: nn.Module, path: str) -> List[str]:
    """Load a timm / torchvision ResNet checkpoint file into ``model`` (a timm ResNet without
    classifier). Prefixes ``module.`` / ``model.`` are stripped and the classifier ``fc.*`` is
    dropped; any other difference is an error. Returns the dropped keys."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"MODEL.TIMM.CHECKPOINT {path!r} does not exist: give a local timm or "
                                "torchvision ResNet checkpoint (nothing is downloaded at run time)")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickled objects besides tensors
        raise ValueError(f"{path} is not a plain tensor checkpoint ({e}); re-save its state dict with "
                         "torch.save(model.state_dict(), ...)") from e
    state = {}
    for k, v in _state_dict_of(raw).items():
        for prefix in ("module.", "model."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        state[k] = v
    dropped = sorted(k for k in state if k.startswith("fc."))
    for k in dropped:
        del state[k]
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(f"{path} does not fit timm's ResNet: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}, wrong shape {wrong[:5]} (of {len(missing)}, {len(unexpected)}, "
                         f"{len(wrong)}); is it a ResNet-50 of timm or torchvision?")
    model.load_state_dict(state)
    return dropped


class TimmResNet(Backbone):
    """timm ResNet as a detectron2 bottom-up network: outputs ``layer{l}`` for each of
    ``out_levels`` (Detic's numbering: level 3 = stride 8 = timm's ``layer2``)."""

    def __init__(self, base_name: str = "resnet50", out_levels: Sequence[int] = (3, 4, 5),
                 norm: str = "FrozenBN", freeze_at: int = 0, checkpoint: str = "") -> None:
        super().__init__()
        name = TIMM_ALIASES.get(base_name, base_name)
        if not name.startswith("resnet"):
            raise ValueError(f"MODEL.TIMM.BASE_NAME {base_name!r}: only timm ResNets are supported")
        self.base = timm.create_model(name, pretrained=False, num_classes=0)  # no classifier
        if checkpoint:
            load_bottom_up_checkpoint(self.base, checkpoint)
        # timm's feature_info: the stem, then layer1 .. layer4
        channels = [f["num_chs"] for f in self.base.feature_info]
        strides = [f["reduction"] for f in self.base.feature_info]
        self.out_levels = list(out_levels)
        self._out_features = [f"layer{l}" for l in self.out_levels]
        self._out_feature_channels = {f"layer{l}": channels[l - 1] for l in self.out_levels}
        self._out_feature_strides = {f"layer{l}": strides[l - 1] for l in self.out_levels}
        if freeze_at >= 1:
            self._freeze(self.base.conv1, self.base.bn1)
        if freeze_at >= 2:
            self._freeze(self.base.layer1)
        if norm == "FrozenBN":
            FrozenBatchNorm2d.convert_frozen_batchnorm(self.base)
        elif norm != "BN":
            self.base = _replace_bn(self.base, norm)

    @staticmethod
    def _freeze(*modules: nn.Module) -> None:
        for m in modules:
            for p in m.parameters():
                p.requires_grad = False
            FrozenBatchNorm2d.convert_frozen_batchnorm(m)

    @property
    def size_divisibility(self) -> int:
        return max(self._out_feature_strides.values())

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        b = self.base
        x = b.maxpool(b.act1(b.bn1(b.conv1(x))))
        outs = [x]
        for stage in (b.layer1, b.layer2, b.layer3, b.layer4):
            x = stage(x)
            outs.append(x)
        return {f"layer{l}": outs[l - 1] for l in self.out_levels}


def _replace_bn(module: nn.Module, norm: str) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, get_norm(norm, child.num_features))
        else:
            _replace_bn(child, norm)
    return module


class LastLevelP6P7FromP5(nn.Module):
    """P6 = conv3x3/2(P5), P7 = conv3x3/2(ReLU(P6)) (Detic's ``LastLevelP6P7_P5``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.num_levels = 2
        self.in_feature = "p5"
        self.p6 = nn.Conv2d(channels, channels, 3, 2, 1)
        self.p7 = nn.Conv2d(channels, channels, 3, 2, 1)
        for m in (self.p6, self.p7):
            weight_init.c2_xavier_fill(m)

    def forward(self, p5: torch.Tensor) -> List[torch.Tensor]:
        p6 = self.p6(p5)
        return [p6, self.p7(F.relu(p6))]


@BACKBONE_REGISTRY.register()
def build_pomp_timm_p67_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """``MODEL.BACKBONE.NAME: build_pomp_timm_p67_fpn_backbone``; Detic's
    ``build_p67_timm_fpn_backbone`` under another name (both can be registered at once)."""
    t = cfg.MODEL.TIMM
    bottom_up = TimmResNet(t.BASE_NAME, t.OUT_LEVELS, norm=t.NORM, freeze_at=t.FREEZE_AT, checkpoint=t.CHECKPOINT)
    out = cfg.MODEL.FPN.OUT_CHANNELS
    return FPN(bottom_up=bottom_up, in_features=cfg.MODEL.FPN.IN_FEATURES, out_channels=out,
               norm=cfg.MODEL.FPN.NORM, top_block=LastLevelP6P7FromP5(out), fuse_type=cfg.MODEL.FPN.FUSE_TYPE)

"""GeneralizedRCNN that also trains on image-labelled batches (Detic-style weak supervision)
and, with ``FP16``, runs only its backbone in half precision (Detic's CustomRCNN)."""
from __future__ import annotations

import contextlib
import logging
from typing import Callable, Dict, List

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN

logger = logging.getLogger(__name__)

# detectron2's ROI heads -> their POMP versions: any FPN or cascade config works as it is.
POMP_ROI_HEADS = {"StandardROIHeads": "PompROIHeads", "CascadeROIHeads": "PompCascadeROIHeads"}


def is_pomp_roi_heads(name: str) -> bool:
    """Whether ROI_HEADS.NAME ``name`` is registered heads built on the POMP ones (ours, or a
    project's subclass of them: a new head is one registered class)."""
    from detectron2.modeling import ROI_HEADS_REGISTRY

    from .roi_heads import PompCascadeROIHeads, PompROIHeads

    return name in ROI_HEADS_REGISTRY and issubclass(ROI_HEADS_REGISTRY.get(name), (PompROIHeads, PompCascadeROIHeads))


@META_ARCH_REGISTRY.register()
class PompRCNN(GeneralizedRCNN):
    """A batch whose inputs carry ``ann_type == "image"`` (and ``pos_category_ids``) trains
    only the classifier through the image-label loss: the RPN sees no boxes there, so its
    losses are kept at zero (still in the graph, so every batch logs the same keys).

    ``fp16``: the backbone under autocast, its features cast back to float, everything after
    it in float32 even inside an outer autocast (AMPTrainer's, kept for its loss scaler)."""

    @configurable
    def __init__(self, *, fp16: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.fp16 = fp16
        if fp16:
            # on the instance: the state-dict keys stay the backbone's own
            self.backbone.forward = autocast_features(self.backbone.forward, "cuda", torch.float16)

    @classmethod
    def from_config(cls, cfg):
        fp16 = bool(cfg.FP16)
        if fp16 and torch.device(cfg.MODEL.DEVICE).type != "cuda":
            logger.warning("FP16: the backbone runs in float32 on %s (half precision needs CUDA)", cfg.MODEL.DEVICE)
            fp16 = False
        name = cfg.MODEL.ROI_HEADS.NAME
        if name in POMP_ROI_HEADS:
            cfg = cfg.clone()
            cfg.defrost()
            cfg.MODEL.ROI_HEADS.NAME = POMP_ROI_HEADS[name]
        elif not is_pomp_roi_heads(name):
            raise ValueError(
                f"MODEL.ROI_HEADS.NAME {name} is not supported by pomp_det (C4 / Res5ROIHeads configs "
                f"among them): its POMP heads replace {' and '.join(POMP_ROI_HEADS)}; use an FPN or "
                "cascade config, or register heads of your own that subclass pomp_det.roi_heads' PompROIHeads or "
                "PompCascadeROIHeads")
        return {**super().from_config(cfg), "fp16": fp16}

    def forward(self, batched_inputs: List[Dict]):
        with torch.autocast("cuda", enabled=False) if self.fp16 else contextlib.nullcontext():
            return self._forward(batched_inputs)

    def _forward(self, batched_inputs: List[Dict]):
        if not self.training or batched_inputs[0].get("ann_type", "box") == "box":
            return super().forward(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)
        labels = [x["pos_category_ids"] for x in batched_inputs]
        _, detector_losses = self.roi_heads(images, features, proposals, None, image_labels=labels)
        zeros = {k: v * 0 for k, v in proposal_losses.items()}
        return {**detector_losses, **zeros}


def autocast_features(forward: Callable[[torch.Tensor], Dict[str, torch.Tensor]], device_type: str,
                      dtype: torch.dtype) -> Callable[[torch.Tensor], Dict[str, torch.Tensor]]:
    """``forward`` (a backbone's) on its input cast to ``dtype`` under autocast, returning its
    features as float32: Detic's FP16, so that the heads and losses run in full precision."""
    def run(x: torch.Tensor) -> Dict[str, torch.Tensor]:
        with torch.autocast(device_type, dtype=dtype):
            features = forward(x.to(dtype))
        return {k: v.float() for k, v in features.items()}
    return run

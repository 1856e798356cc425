"""GeneralizedRCNN that also trains on image-labelled batches (Detic-style weak supervision)."""
from __future__ import annotations

from typing import Dict, List

from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN

# detectron2's ROI heads -> their POMP versions: any FPN or cascade config works as it is.
POMP_ROI_HEADS = {"StandardROIHeads": "PompROIHeads", "CascadeROIHeads": "PompCascadeROIHeads"}


@META_ARCH_REGISTRY.register()
class PompRCNN(GeneralizedRCNN):
    """A batch whose inputs carry ``ann_type == "image"`` (and ``pos_category_ids``) trains
    only the classifier through the image-label loss: the RPN sees no boxes there, so its
    losses are kept at zero (still in the graph, so every batch logs the same keys)."""

    @classmethod
    def from_config(cls, cfg):
        name = cfg.MODEL.ROI_HEADS.NAME
        if name in POMP_ROI_HEADS:
            cfg = cfg.clone()
            cfg.defrost()
            cfg.MODEL.ROI_HEADS.NAME = POMP_ROI_HEADS[name]
        elif name not in POMP_ROI_HEADS.values():
            raise ValueError(
                f"MODEL.ROI_HEADS.NAME {name} is not supported by pomp_det (C4 / Res5ROIHeads configs "
                f"among them): its POMP heads replace {' and '.join(POMP_ROI_HEADS)}; use an FPN or "
                "cascade config, or register heads of your own built on pomp_det.fast_rcnn")
        return super().from_config(cfg)

    def forward(self, batched_inputs: List[Dict]):
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

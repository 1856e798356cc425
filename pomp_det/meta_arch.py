"""GeneralizedRCNN that also trains on image-labelled batches (Detic-style weak supervision)."""
from __future__ import annotations

from typing import Dict, List

from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN


@META_ARCH_REGISTRY.register()
class PompRCNN(GeneralizedRCNN):
    """A batch whose inputs carry ``ann_type == "image"`` (and ``pos_category_ids``) trains
    only the classifier through the image-label loss: the RPN sees no boxes there, so its
    losses are kept at zero (still in the graph, so every batch logs the same keys)."""

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

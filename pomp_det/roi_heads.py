"""ROI heads with the POMP box predictor: standard and cascade, with image-label training."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import configurable
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, CascadeROIHeads, StandardROIHeads
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Instances

from .fast_rcnn import PompFastRCNNOutputLayers


class _PompHeadsMixin:
    """What both heads share: vocabulary swap and the image-label (max-size) loss.
    Subclasses list their stages in ``_predictors()`` and ``_box_heads()``."""

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["image_label_training"] = bool(cfg.DATALOADER.MULTI_DATASET)
        return ret

    @configurable
    def __init__(self, *, image_label_training: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.image_label_training = image_label_training

    def set_class_embeddings(self, embeddings: torch.Tensor,
                             fed_loss_weight: Optional[torch.Tensor] = None) -> None:
        """Use a new vocabulary ([C, D] embeddings); every class count follows it."""
        mask_head = getattr(self, "mask_head", None) if getattr(self, "mask_on", False) else None
        if mask_head is not None and getattr(mask_head, "predictor", None) is not None \
                and mask_head.predictor.out_channels != 1:
            raise ValueError("the mask head predicts one mask per class, so its size is fixed: "
                             "train with MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK True to change vocabularies")
        for predictor in self._predictors():
            predictor.set_class_embeddings(embeddings, fed_loss_weight)
        self.num_classes = embeddings.shape[0]

    def _zero_losses(self, like: torch.Tensor, keys: Sequence[str]) -> Dict[str, torch.Tensor]:
        return {k: like.sum() * 0 for k in keys}

    def image_label_losses(self, features: Dict[str, torch.Tensor], proposals: List[Instances],
                           image_labels: Sequence[Sequence[int]]) -> Dict[str, torch.Tensor]:
        """The max-size loss over the top-K proposals of each image, averaged over stages;
        the box-supervised losses are returned as zeros so every batch logs the same keys."""
        predictors = self._predictors()
        topk = predictors[0].image_label_topk
        proposals = [p[:topk] for p in proposals]
        pooled = self.box_pooler([features[f] for f in self.box_in_features],
                                 [p.proposal_boxes for p in proposals])
        loss = 0
        for head, predictor in zip(self._box_heads(), predictors):
            predictions = predictor(head(pooled))
            loss = loss + predictor.image_label_losses(predictions, proposals, image_labels)["loss_image_label"]
        keys = ["loss_cls", "loss_box_reg"] + (["loss_mask"] if self.mask_on else [])
        return {"loss_image_label": loss / len(predictors), **self._zero_losses(pooled, keys)}

    def forward(self, images, features, proposals, targets=None, image_labels=None):
        if self.training and image_labels is not None:
            return proposals, self.image_label_losses(features, proposals, image_labels)
        out, losses = super().forward(images, features, proposals, targets)
        if self.training and self.image_label_training:
            losses["loss_image_label"] = sum(losses.values()) * 0
        return out, losses


@ROI_HEADS_REGISTRY.register()
class PompROIHeads(_PompHeadsMixin, StandardROIHeads):
    """StandardROIHeads whose box predictor is :class:`PompFastRCNNOutputLayers`."""

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictor"] = PompFastRCNNOutputLayers(cfg, ret["box_head"].output_shape)
        return ret

    def _predictors(self):
        return [self.box_predictor]

    def _box_heads(self):
        return [self.box_head]


@ROI_HEADS_REGISTRY.register()
class PompCascadeROIHeads(_PompHeadsMixin, CascadeROIHeads):
    """CascadeROIHeads with a POMP predictor per stage (one class-embedding matrix shared)."""

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        weights = cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS
        first = PompFastRCNNOutputLayers(cfg, ret["box_heads"][0].output_shape,
                                         box2box_transform=Box2BoxTransform(weights=weights[0]))
        predictors = [first]
        for head, w in zip(ret["box_heads"][1:], weights[1:]):
            # the embeddings and federated weights are computed once, for the first stage
            predictors.append(PompFastRCNNOutputLayers(
                cfg, head.output_shape, box2box_transform=Box2BoxTransform(weights=w),
                class_embeddings=first.cls_score.embeddings, fed_loss_weight=first.fed_loss_weight))
        ret["box_predictors"] = predictors
        return ret

    def _predictors(self):
        return list(self.box_predictor)

    def _box_heads(self):
        return list(self.box_head)

    def _forward_box(self, features, proposals, targets=None):
        # Later stages build new proposals from boxes; keep the RPN objectness for scoring.
        self._objectness = [p.objectness_logits for p in proposals] if proposals[0].has("objectness_logits") else None
        try:
            return super()._forward_box(features, proposals, targets)
        finally:
            self._objectness = None

    def _create_proposals_from_boxes(self, boxes, image_sizes):
        proposals = super()._create_proposals_from_boxes(boxes, image_sizes)
        if not self.training and self._objectness is not None:
            for p, obj in zip(proposals, self._objectness):
                p.objectness_logits = obj
        return proposals

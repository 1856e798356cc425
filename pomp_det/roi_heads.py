"""ROI heads with the POMP box predictor: standard and cascade, with image-label training."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import configurable
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, CascadeROIHeads, StandardROIHeads
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.structures import Instances

from .fast_rcnn import PompFastRCNNOutputLayers


class _PompHeadsMixin:
    """What both heads share: vocabulary swap, the image-label path and consistent loss keys.
    Subclasses list their stages in ``_predictors()``, their image-label loss keys in
    ``_image_label_keys()``, and compute ``image_label_losses``."""

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

    def _top_proposals(self, proposals: List[Instances]) -> List[Instances]:
        """Detic's proposals of an image-labelled image: the first IMAGE_LABEL_TOPK (the RPN
        sorts them by objectness), clipped to the image."""
        topk = self._predictors()[0].image_label_topk
        out = []
        for p in proposals:
            p = p[:topk]
            boxes = p.proposal_boxes.clone()
            boxes.clip(p.image_size)
            p.proposal_boxes = boxes
            out.append(p)
        return out

    def _zero_mask_loss(self, like: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"loss_mask": like.sum() * 0} if self.mask_on else {}

    def forward(self, images, features, proposals, targets=None, image_labels=None):
        if self.training and image_labels is not None:
            return proposals, self.image_label_losses(features, self._top_proposals(proposals), image_labels)
        out, losses = super().forward(images, features, proposals, targets)
        if self.training and self.image_label_training:
            # the same keys on every batch: ranks drawing different batch types log together
            zero = sum(losses.values()) * 0
            losses.update({k: zero for k in self._image_label_keys()})
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

    def _image_label_keys(self):
        return ["loss_image_label"]

    def image_label_losses(self, features: Dict[str, torch.Tensor], proposals: List[Instances],
                           image_labels: Sequence[Sequence[int]]) -> Dict[str, torch.Tensor]:
        """The image-label loss (:meth:`PompFastRCNNOutputLayers.image_label_losses`); the
        box-supervised losses as zeros, so every batch logs the same keys."""
        feats = [features[f] for f in self.box_in_features]
        box_features = self.box_head(self.box_pooler(feats, [p.proposal_boxes for p in proposals]))
        predictions = self.box_predictor(box_features)
        zero = predictions[0].sum() * 0
        return {"loss_image_label": self.box_predictor.image_label_losses(predictions, proposals, image_labels),
                "loss_cls": zero, "loss_box_reg": zero, **self._zero_mask_loss(zero)}


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
            # the embeddings are computed once, for the first stage; the federated weights
            # come from the same (lazy) source
            predictors.append(PompFastRCNNOutputLayers(
                cfg, head.output_shape, box2box_transform=Box2BoxTransform(weights=w),
                class_embeddings=first.cls_score.embeddings,
                fed_loss_weight=first._fed_loss_weight_source or first.fed_loss_weight))
        for predictor in predictors:  # objectness multiplies the stages' mean (_forward_box)
            predictor.proposal_score_in_probs = False
        ret["box_predictors"] = predictors
        return ret

    def _predictors(self):
        return list(self.box_predictor)

    def _image_label_keys(self):
        return [f"loss_image_label_stage{k}" for k in range(self.num_cascade_stages)]

    def image_label_losses(self, features: Dict[str, torch.Tensor], proposals: List[Instances],
                           image_labels: Sequence[Sequence[int]]) -> Dict[str, torch.Tensor]:
        """Detic's cascade weak loss: each stage on the boxes the previous stage refined, one
        loss per stage (summed by the trainer); the box losses of each stage as zeros."""
        feats = [features[f] for f in self.box_in_features]
        image_sizes = [p.image_size for p in proposals]
        losses, prev_boxes = {}, None
        for k, predictor in enumerate(self.box_predictor):
            if k > 0:
                proposals = self._create_proposals_from_boxes(prev_boxes, image_sizes)
            predictions = self._run_stage(feats, proposals, k)
            prev_boxes = predictor.predict_boxes(predictions, proposals)
            zero = predictions[0].sum() * 0
            losses.update({f"loss_image_label_stage{k}": predictor.image_label_losses(predictions, proposals, image_labels),
                           f"loss_cls_stage{k}": zero, f"loss_box_reg_stage{k}": zero})
        return {**losses, **self._zero_mask_loss(zero)}

    def _forward_box(self, features, proposals, targets=None):
        if self.training or not self._predictors()[0].mult_proposal_score \
                or not proposals[0].has("objectness_logits"):
            return super()._forward_box(features, proposals, targets)
        # Detic's test score: sqrt(mean over stages of the class probabilities x objectness)
        objectness = [p.objectness_logits.sigmoid() for p in proposals]
        feats = [features[f] for f in self.box_in_features]
        image_sizes = [p.image_size for p in proposals]
        head_outputs, prev_boxes = [], None
        for k, predictor in enumerate(self.box_predictor):
            if k > 0:
                proposals = self._create_proposals_from_boxes(prev_boxes, image_sizes)
            predictions = self._run_stage(feats, proposals, k)
            prev_boxes = predictor.predict_boxes(predictions, proposals)
            head_outputs.append((predictor, predictions, proposals))
        per_stage = [h[0].predict_probs(h[1], h[2]) for h in head_outputs]
        scores = [(sum(stages) / len(per_stage) * obj[:, None]).sqrt()
                  for stages, obj in zip(zip(*per_stage), objectness)]
        predictor, predictions, proposals = head_outputs[-1]
        boxes = predictor.predict_boxes(predictions, proposals)
        return fast_rcnn_inference(boxes, scores, image_sizes, predictor.test_score_thresh,
                                   predictor.test_nms_thresh, predictor.test_topk_per_image)[0]

"""The box predictor: detectron2's FastRCNNOutputLayers with the zero-shot classifier,
sigmoid cross-entropy with federated loss, class-agnostic boxes (Detic's 2-layer MLP), the
image-label losses, and score = sqrt(classification x objectness) at test time."""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers, _log_classification_stats
from detectron2.structures import Instances
from torch import nn

from .data.category_counts import federated_class_weight
from .embeddings import embeddings_from_config
from .zero_shot_classifier import ZeroShotClassifier

IMAGE_LABEL_LOSSES = ("max_size", "max_score")
WeightSource = Union[torch.Tensor, Callable[[], torch.Tensor], None]


def federated_classes(gt_classes: torch.Tensor, num_sample: int, weight: torch.Tensor) -> torch.Tensor:
    """The foreground classes that take part in the loss: every class present in
    ``gt_classes``, topped up by sampling the others with probability proportional to
    ``weight`` ([C]; classes of weight 0 are never drawn). As in Detic, the background label
    (C) counts towards ``num_sample`` when present: 50 classes = present + background + drawn."""
    num_classes = weight.numel()
    appeared = torch.unique(gt_classes)
    present = appeared[(appeared >= 0) & (appeared < num_classes)]
    # over C + 1 columns, background at 0, as Detic draws: the same seed then draws the same
    # classes (multinomial consumes one random number per column)
    prob = torch.cat([weight.float(), weight.new_zeros(1, dtype=torch.float)])
    prob[present] = 0
    n_extra = min(num_sample - appeared.numel(), int((prob > 0).sum()))
    if n_extra <= 0:
        return present
    extra = torch.multinomial(prob, n_extra, replacement=False)
    return torch.cat([present, extra.to(present.device)])


def selected_proposal(logits: torch.Tensor, boxes: torch.Tensor, label: int, how: str) -> int:
    """The proposal an image label supervises (Detic's weak losses): ``max_size`` the largest
    box except the last (Detic's rule: with ADD_IMAGE_BOX the last is the whole image),
    ``max_score`` the highest logit of ``label``."""
    if how == "max_score":
        return int(logits[:, label].argmax())
    area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    return int(area[:-1].argmax()) if len(area) > 1 else 0


class PompFastRCNNOutputLayers(FastRCNNOutputLayers):
    """Box predictor whose ``cls_score`` is a :class:`ZeroShotClassifier`."""

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, class_embeddings: torch.Tensor,
                 temperature: float = 50.0, use_bias: bool = False, bias_init: float = 0.0,
                 use_sigmoid_ce: bool = True, use_fed_loss: bool = True,
                 fed_loss_num_classes: int = 50, fed_loss_weight: WeightSource = None,
                 mult_proposal_score: bool = True, image_label_loss: str = "max_size",
                 image_label_topk: int = 128, image_label_weight: float = 0.1,
                 box_reg_mlp: bool = False, **kwargs) -> None:
        kwargs["num_classes"] = class_embeddings.shape[0]
        super().__init__(input_shape, **kwargs)
        input_size = self.cls_score.in_features
        self.cls_score = ZeroShotClassifier(input_size, class_embeddings, temperature, use_bias, bias_init)
        if box_reg_mlp:
            if self.bbox_pred.out_features != 4:
                raise ValueError("MODEL.POMP.BOX_REG_MLP is Detic's class-agnostic regressor: set "
                                 "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG True (or BOX_REG_MLP False)")
            self.bbox_pred = nn.Sequential(nn.Linear(input_size, input_size), nn.ReLU(inplace=True),
                                           nn.Linear(input_size, 4))
            weight_init.c2_xavier_fill(self.bbox_pred[0])
            nn.init.normal_(self.bbox_pred[-1].weight, std=0.001)
            nn.init.constant_(self.bbox_pred[-1].bias, 0)
        if image_label_loss not in IMAGE_LABEL_LOSSES:
            raise ValueError(f"MODEL.POMP.IMAGE_LABEL_LOSS is '{image_label_loss}': pomp_det has "
                             f"{IMAGE_LABEL_LOSSES} (Detic's wsddn / first / image / min_loss are not ported)")
        self.use_sigmoid_ce = use_sigmoid_ce
        self.use_fed_loss = use_fed_loss
        if use_fed_loss and not use_sigmoid_ce:
            raise ValueError("the federated loss needs MODEL.POMP.USE_SIGMOID_CE True")
        self.fed_loss_num_classes = fed_loss_num_classes
        self.register_buffer("fed_loss_weight", torch.empty(0), persistent=False)
        self.set_fed_loss_weight(None if callable(fed_loss_weight) else fed_loss_weight)
        # a callable is resolved at the first loss: eval and demo never read training data
        self._fed_loss_weight_source = fed_loss_weight if callable(fed_loss_weight) else None
        self.mult_proposal_score = mult_proposal_score
        # cascade heads multiply by objectness after averaging the stages (Detic's order)
        self.proposal_score_in_probs = mult_proposal_score
        self.image_label_loss = image_label_loss
        self.image_label_topk = image_label_topk
        self.image_label_weight = image_label_weight

    @classmethod
    def from_config(cls, cfg, input_shape, **overrides):
        ret = super().from_config(cfg, input_shape)
        ret.pop("num_classes")
        p = cfg.MODEL.POMP
        emb = overrides.pop("class_embeddings", None)
        fed_weight = overrides.pop("fed_loss_weight", None)
        if emb is None:  # cascade stages after the first reuse the first stage's
            emb = embeddings_from_config(cfg)
            if p.USE_FED_LOSS and fed_weight is None:  # an explicit fed_loss_weight is kept
                num_classes, frozen = emb.shape[0], cfg.clone()
                fed_weight = lambda: federated_class_weight(frozen, num_classes)  # noqa: E731
        if emb.shape[0] != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
            raise ValueError(
                f"the class embeddings have {emb.shape[0]} rows but MODEL.ROI_HEADS.NUM_CLASSES is "
                f"{cfg.MODEL.ROI_HEADS.NUM_CLASSES}: set NUM_CLASSES to the vocabulary size")
        ret.update(class_embeddings=emb, temperature=p.TEMPERATURE, use_bias=p.USE_BIAS,
                   bias_init=p.BIAS_INIT, use_sigmoid_ce=p.USE_SIGMOID_CE, use_fed_loss=p.USE_FED_LOSS,
                   fed_loss_num_classes=p.FED_LOSS_NUM_CLASSES, fed_loss_weight=fed_weight,
                   mult_proposal_score=p.MULT_PROPOSAL_SCORE, image_label_loss=p.IMAGE_LABEL_LOSS,
                   image_label_topk=p.IMAGE_LABEL_TOPK, image_label_weight=p.IMAGE_LABEL_WEIGHT,
                   box_reg_mlp=p.BOX_REG_MLP and cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG)
        ret.update(overrides)
        return ret

    def set_fed_loss_weight(self, weight: Optional[torch.Tensor]) -> None:
        """Per-class sampling weights of the federated loss; None = uniform."""
        self._fed_loss_weight_source = None
        if weight is None:
            weight = torch.ones(self.num_classes)
        if weight.numel() != self.num_classes:
            raise ValueError(f"federated-loss weights cover {weight.numel()} classes, the "
                             f"vocabulary has {self.num_classes}")
        self.fed_loss_weight = weight.float().to(self.cls_score.linear.weight.device)

    def set_class_embeddings(self, embeddings: torch.Tensor,
                             fed_loss_weight: Optional[torch.Tensor] = None) -> None:
        """Swap the vocabulary; the class count follows the embeddings."""
        self.cls_score.set_embeddings(embeddings)
        self.num_classes = embeddings.shape[0]
        self.set_fed_loss_weight(fed_loss_weight)

    def sigmoid_cross_entropy(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        """BCE over the foreground columns, summed over the (federated) classes, / #boxes."""
        n, k1 = logits.shape
        if n == 0:
            return logits.sum() * 0
        target = F.one_hot(gt_classes.clamp(max=k1 - 1), k1).float()[:, : k1 - 1]
        fg_logits = logits[:, : k1 - 1]
        weight = torch.ones_like(fg_logits)
        if self.use_fed_loss:
            if self._fed_loss_weight_source is not None:
                self.set_fed_loss_weight(self._fed_loss_weight_source())
            used = federated_classes(gt_classes, self.fed_loss_num_classes, self.fed_loss_weight)
            mask = torch.zeros(k1 - 1, device=logits.device)
            mask[used] = 1
            weight = weight * mask
        loss = F.binary_cross_entropy_with_logits(fg_logits, target, reduction="none")
        return (loss * weight).sum() / n

    def losses(self, predictions, proposals: List[Instances]) -> Dict[str, torch.Tensor]:
        if not self.use_sigmoid_ce:
            return super().losses(predictions, proposals)
        scores, deltas = predictions
        gt_classes = cat([p.gt_classes for p in proposals]) if proposals else torch.empty(0).long()
        _log_classification_stats(scores, gt_classes)
        if proposals:
            proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals])
            gt_boxes = cat([(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor
                            for p in proposals])
        else:
            proposal_boxes = gt_boxes = torch.empty((0, 4), device=deltas.device)
        losses = {"loss_cls": self.sigmoid_cross_entropy(scores, gt_classes),
                  "loss_box_reg": self.box_reg_loss(proposal_boxes, gt_boxes, deltas, gt_classes)}
        return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}

    def image_label_losses(self, predictions, proposals: List[Instances],
                           image_labels: Sequence[Sequence[int]]) -> torch.Tensor:
        """Detic's weak loss: for each label of an image, a one-hot BCE (summed over the C + 1
        columns) on the proposal :func:`selected_proposal` picks, averaged over the labels,
        then over the images, x ``image_label_weight``."""
        scores = predictions[0]
        total = scores.sum() * 0
        for logits, props, labels in zip(scores.split([len(p) for p in proposals]), proposals, image_labels):
            if len(props) == 0:
                continue
            boxes = props.proposal_boxes.tensor
            for label in labels:
                i = selected_proposal(logits, boxes, int(label), self.image_label_loss)
                target = F.one_hot(torch.tensor(int(label), device=logits.device), logits.shape[1]).to(logits)
                total = total + F.binary_cross_entropy_with_logits(logits[i], target, reduction="sum") / len(labels)
        return total / max(len(proposals), 1) * self.image_label_weight

    def predict_probs(self, predictions: Tuple[torch.Tensor, torch.Tensor], proposals: List[Instances]):
        scores = predictions[0]
        n = [len(p) for p in proposals]
        probs = scores.sigmoid() if self.use_sigmoid_ce else F.softmax(scores, dim=-1)
        if self.proposal_score_in_probs and proposals and proposals[0].has("objectness_logits"):
            obj = cat([p.objectness_logits for p in proposals]).sigmoid()
            probs = (probs * obj[:, None]).sqrt()
        return probs.split(n, dim=0)

"""ZSSeg-style two-stage zero-shot segmentor: class-agnostic mask proposals classified by
their query embeddings and by CLIP on masked crops, ensembled (ZSSeg's recipe; docs/segmentation.md)."""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from mmseg.models.segmentors import BaseSegmentor
from mmseg.registry import MODELS
from mmseg.utils import OptConfigType, SampleList
from torch import Tensor

from .crop_classifier import CLIPCropClassifier
from .datasets import seen_classes as resolve_seen


def ensemble_probs(p_mf: Tensor, p_clip: Tensor, is_seen: Tensor, lam: float) -> Tensor:
    """Seen classes ``p_mf^λ p_clip^(1-λ)``, unseen ``p_mf^(1-λ) p_clip^λ`` ([..., C])."""
    seen = p_mf.pow(lam) * p_clip.pow(1 - lam)
    unseen = p_mf.pow(1 - lam) * p_clip.pow(lam)
    return torch.where(is_seen, seen, unseen)


def pixel_scores(probs: Tensor, mask_logits: Tensor) -> Tensor:
    """Per-pixel class scores ``Σ_q p_q(c) sigmoid(mask_q)``: [Q, C], [Q, H, W] -> [C, H, W]."""
    return torch.einsum("qc,qhw->chw", probs, mask_logits.sigmoid())


@MODELS.register_module()
class ZSSegSegmentor(BaseSegmentor):
    """Backbone (+ neck) -> :class:`MaskProposalHead`; text features from ``text_encoder``
    (a frozen prompt, e.g. the stage-(a) one), whose vocabulary is the dataset's classes.

    Training scores queries against the ``seen_classes`` only (labels are remapped to
    that list; unseen pixels are already ignored by the dataset). Testing scores all
    classes and, with ``ensemble_lambda`` set, ensembles with CLIP on masked crops. A
    proposal whose mask is empty after thresholding has no crop: its CLIP probability is
    neutral (1 for every class), as in ZSSeg.

    The backbone sees pixels normalised by ``data_preprocessor`` (ImageNet statistics for an
    ImageNet backbone); CLIP's crops are re-normalised with CLIP's statistics.

    Args:
        seen_classes: names, a dataset type of ``pomp_seg.datasets`` or a classes.json.
        region_text_encoder: a second text encoder (same CLIP, e.g. a separately learned
            prompt) for the CLIP crop classifier (ZSSeg's ``SEPERATE_ADAPTER``); None = the
            query classifier's ``text_encoder``. Its vocabulary follows ``text_encoder``'s.
        ensemble_lambda: λ (0.7 VOC, 0.8 COCO-Stuff); None = query classification only.
        ensemble_seen: False ensembles every class as unseen (ZSSeg's cross-dataset tests,
            whose datasets carry no seen flags).
        mask_threshold: sigmoid level that binarises a proposal for its crop.
        clip_temperature: scale of CLIP's crop logits; None = the CLIP's own logit scale.
        min_crop_size: grow crop boxes to at least this many pixels (0 = ZSSeg's tight box).
        pretrained: backbone weights, as mmseg's ``EncoderDecoder`` takes them (``init_model``
            passes it).
    """

    def __init__(self, backbone: dict, decode_head: dict, text_encoder: dict,
                 seen_classes: str | Sequence[str], neck: OptConfigType = None,
                 region_text_encoder: OptConfigType = None,
                 ensemble_lambda: Optional[float] = 0.7, ensemble_seen: bool = True,
                 mask_threshold: float = 0.5,
                 clip_temperature: Optional[float] = None, min_crop_size: int = 0, train_cfg: OptConfigType = None,
                 test_cfg: OptConfigType = None, data_preprocessor: OptConfigType = None,
                 pretrained: Optional[str] = None, init_cfg: OptConfigType = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if pretrained is not None:
            backbone = dict(backbone, init_cfg=dict(type="Pretrained", checkpoint=pretrained))
        self.backbone = MODELS.build(backbone)
        if neck is not None:
            self.neck = MODELS.build(neck)
        # no background embedding: the proposal head has its own "no object" class
        self.text_encoder = MODELS.build(dict(dict(text_encoder), cat_bg=False))
        self.region_text_encoder = None
        if region_text_encoder is not None:
            region = {k: v for k, v in dict(region_text_encoder).items() if k != "dataset_name"}
            region.update(vocabulary=list(self.text_encoder.class_names), cat_bg=False,
                          clip=(self.text_encoder.clip, self.text_encoder.tokenizer))
            self.region_text_encoder = MODELS.build(region)
        self.decode_head = MODELS.build(decode_head)
        self.align_corners = self.decode_head.align_corners
        self.num_classes = len(self.text_encoder.class_names)
        self.out_channels = self.num_classes
        self.seen_classes = resolve_seen(seen_classes)
        self.ensemble_lambda = ensemble_lambda
        self.ensemble_seen = ensemble_seen
        self.mask_threshold = mask_threshold
        self.crop_classifier = None
        if ensemble_lambda is not None:
            visual, logit_scale = self.text_encoder.visual()
            norm = dict(input_mean=self.data_preprocessor.mean.flatten().tolist(),
                        input_std=self.data_preprocessor.std.flatten().tolist()) \
                if getattr(self.data_preprocessor, "_enable_normalize", False) else {}
            self.crop_classifier = CLIPCropClassifier(visual, logit_scale, clip_temperature, min_crop_size, **norm)
        self.train_cfg = train_cfg
        self.test_cfg = test_cfg

    # -- vocabulary -------------------------------------------------------------------
    def seen_index(self) -> List[int]:
        """Where the seen classes sit in the vocabulary (training needs them all; a
        cross-dataset test vocabulary may hold only some: ``is_seen`` matches by name)."""
        vocab = self.text_encoder.class_names
        missing = [c for c in self.seen_classes if c not in vocab]
        if missing:
            raise ValueError(f"seen classes {missing[:5]} are not in the text encoder's vocabulary; "
                             "to train, seen_classes and text_encoder must describe the same dataset")
        return [vocab.index(c) for c in self.seen_classes]

    def set_vocabulary(self, names: Sequence[str]) -> None:
        """Segment ``names`` from now on (test time: any names; seen ones ensemble as seen)."""
        names = list(names)
        if not names:
            raise ValueError("empty vocabulary: give at least one class name")
        self.text_encoder.class_names = names
        if self.region_text_encoder is not None:
            self.region_text_encoder.class_names = names
        self.num_classes = self.out_channels = len(names)

    def is_seen(self) -> Tensor:
        seen = set(self.seen_classes) if self.ensemble_seen else set()
        return torch.tensor([c in seen for c in self.text_encoder.class_names])

    # -- features ---------------------------------------------------------------------
    def extract_feat(self, inputs: Tensor) -> List[Tensor]:
        x = self.backbone(inputs)
        return self.neck(x) if self.with_neck else x

    def _to_seen_labels(self, data_samples: SampleList) -> SampleList:
        """Full-vocabulary labels -> indices into the seen list; everything else -> ignore."""
        ignore = self.decode_head.ignore_index
        lut = torch.full((256,), ignore, dtype=torch.long)
        lut[torch.tensor(self.seen_index())] = torch.arange(len(self.seen_classes))
        for sample in data_samples:
            seg = sample.gt_sem_seg.data
            sample.gt_sem_seg.data = lut.to(seg.device)[seg.long()].to(seg.dtype)
        return data_samples

    def loss(self, inputs: Tensor, data_samples: SampleList) -> dict:
        x = self.extract_feat(inputs)
        embeds = self.text_encoder.class_embeddings(self.text_encoder.class_names)
        self.decode_head.set_class_embeddings(embeds[self.seen_index()])
        losses = self.decode_head.loss(x, self._to_seen_labels(data_samples), self.train_cfg)
        return {f"decode.{k}": v for k, v in losses.items()}

    def encode_decode(self, inputs: Tensor, batch_img_metas: List[dict]) -> Tensor:
        """Per-pixel class scores [B, C, H, W] over the full vocabulary."""
        x = self.extract_feat(inputs)
        embeds = self.text_encoder.class_embeddings(self.text_encoder.class_names)
        self.decode_head.set_class_embeddings(embeds)
        p_mf, mask_logits = self.decode_head.proposals(x, batch_img_metas, inputs.shape[2:])
        region = self.region_text_encoder
        region_embeds = embeds if region is None else region.class_embeddings(self.text_encoder.class_names)
        out = []
        for b in range(len(inputs)):
            probs = p_mf[b]
            if self.crop_classifier is not None:
                # crops from the image, not its padding (zsseg crops after removing the padding)
                h, w = tuple(batch_img_metas[b].get("img_shape", inputs.shape[2:]))[:2]
                masks = mask_logits[b, :, :h, :w].sigmoid() > self.mask_threshold
                p_valid, valid = self.crop_classifier(inputs[b, :, :h, :w], masks, region_embeds)
                p_clip = torch.ones_like(probs)  # empty proposals: neutral
                p_clip[valid] = p_valid.to(probs.dtype)
                probs = ensemble_probs(probs, p_clip, self.is_seen().to(probs.device), self.ensemble_lambda)
            out.append(pixel_scores(probs, mask_logits[b]))
        return torch.stack(out)

    def predict(self, inputs: Tensor, data_samples: Optional[SampleList] = None) -> SampleList:
        if data_samples is not None:
            metas = [s.metainfo for s in data_samples]
        else:
            metas = [dict(ori_shape=inputs.shape[2:], img_shape=inputs.shape[2:],
                          pad_shape=inputs.shape[2:], padding_size=[0, 0, 0, 0])] * inputs.shape[0]
        return self.postprocess_result(self.encode_decode(inputs, metas), data_samples)

    def _forward(self, inputs: Tensor, data_samples: OptConfigType = None):
        metas = [s.metainfo for s in data_samples] if data_samples else \
            [dict(img_shape=inputs.shape[2:])] * inputs.shape[0]
        return self.encode_decode(inputs, metas)

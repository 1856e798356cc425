"""Class-agnostic mask proposals whose queries are classified against text embeddings.

mmseg's ``MaskFormerHead`` (pixel decoder, DETR decoder, Hungarian matching, mask and
dice losses) with its linear ``cls_embed`` replaced by a :class:`TextEmbeddingClassifier`
with a learned "no object" embedding, so the vocabulary can change between training
(seen classes) and testing (any classes).
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from mmseg.models.decode_heads import MaskFormerHead
from mmseg.registry import MODELS
from mmseg.utils import SampleList
from torch import Tensor

from .text_classifier import TextEmbeddingClassifier

# When the decoder's keys at padded positions are masked (and the positional encoding is
# normalised over the image instead of the padded batch): zsseg never masks; mmseg's
# MaskFormerHead masks at test only (it passes the padded shape only there).
PADDING_MASK = ("never", "test", "always")


@MODELS.register_module()
class MaskProposalHead(MaskFormerHead):
    """``num_classes`` is the size of the training vocabulary (the seen classes): the
    loss uses it as the "no object" label. ``embed_dims`` is the text embedding size;
    ``embed_layers`` / ``embed_hidden_dims`` the depth and width of the query-to-text map
    (ZSSeg: a 2-layer MLP, 1024 wide). ``padding_mask``: ``"never"`` (zsseg's), ``"test"``
    (mmseg's ``MaskFormerHead``: padded keys masked at test, not in training) or ``"always"``."""

    def __init__(self, embed_dims: int, temperature: float = 100.0, embed_layers: int = 2,
                 embed_hidden_dims: int = 1024, padding_mask: str = "never", **kwargs) -> None:
        if padding_mask not in PADDING_MASK:
            raise ValueError(f"padding_mask must be one of {PADDING_MASK}, got {padding_mask!r}")
        super().__init__(**kwargs)
        self.padding_mask = padding_mask
        self.cls_embed = TextEmbeddingClassifier(kwargs["feat_channels"], embed_dims,
                                                 temperature=temperature, no_object=True,
                                                 proj_layers=embed_layers,
                                                 proj_hidden=embed_hidden_dims)

    def set_class_embeddings(self, class_embeds: Tensor) -> None:
        self.cls_embed.set_class_embeddings(class_embeds)

    def forward(self, x: Tuple[Tensor], batch_data_samples: SampleList) -> Tuple[Tensor, Tensor]:
        """mmdet's forward, with the image and padded shapes it masks by set for ``padding_mask``
        (metainfo ``pad_input_shape``: the padded batch shape, set by :meth:`loss` / :meth:`proposals`)."""
        from mmseg.structures import SegDataSample

        samples = []
        for sample in batch_data_samples:
            meta = dict(sample.metainfo)
            padded = meta.get("pad_input_shape", meta["batch_input_shape"])
            if self.padding_mask == "never" or (self.padding_mask == "test" and self.training):
                # equal shapes: mmdet's padding mask is all False (nothing masked)
                meta.update(img_shape=tuple(padded), batch_input_shape=tuple(padded))
            else:
                meta.update(batch_input_shape=tuple(padded))
            samples.append(SegDataSample(metainfo=meta))
        return super().forward(x, samples)

    def loss(self, x: Tuple[Tensor], batch_data_samples: SampleList, train_cfg: dict) -> dict:
        n = self.cls_embed.class_embeds.shape[0]
        if n != self.num_classes:
            raise ValueError(f"training vocabulary has {n} classes but the head was built for "
                             f"num_classes={self.num_classes} (the seen classes); fix decode_head.num_classes")
        for sample in batch_data_samples:  # the preprocessor's padded size (mmseg passes img_shape)
            meta = sample.metainfo
            sample.set_metainfo(dict(pad_input_shape=tuple(meta.get("pad_shape") or meta["img_shape"])))
        return super().loss(x, batch_data_samples, train_cfg)

    def proposals(self, x: Tuple[Tensor], batch_img_metas: List[dict],
                  input_shape: Tuple[int, int]) -> Tuple[Tensor, Tensor]:
        """Class probabilities [B, Q, C] (no-object dropped) and mask logits [B, Q, H, W] at the
        (padded) batch input size ``input_shape``, from the last decoder layer; mmseg's
        ``postprocess_result`` removes the padding."""
        from mmseg.structures import SegDataSample

        samples = [SegDataSample(metainfo=dict(meta, batch_input_shape=tuple(input_shape),
                                               pad_input_shape=tuple(input_shape)))
                   for meta in batch_img_metas]
        all_cls, all_masks = self(x, samples)
        masks = torch.nn.functional.interpolate(all_masks[-1], size=tuple(input_shape),
                                                mode="bilinear", align_corners=False)
        return all_cls[-1].softmax(dim=-1)[..., :-1], masks

"""Score features against class text embeddings: the open-vocabulary replacement of a
decode head's last layer (``conv_seg``) or of a query head's ``cls_embed``."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from mmseg.registry import MODELS
from torch import nn


@MODELS.register_module()
class TextEmbeddingClassifier(nn.Module):
    """``temperature * cos(proj(x), t_c)`` for every class text embedding ``t_c``.

    Features carry their channels in dimension ``channel_dim``: 1 for per-pixel maps
    [B, in_channels, H, W] (-> [B, C, H, W]), -1 for per-query features [..., Q,
    in_channels] (-> [..., Q, C]). ``no_object=True`` appends the score
    of a learned "no object" embedding as the last class (MaskFormer's extra class).
    ``proj_layers`` maps features to text space with a linear layer (1) or an MLP of that
    many layers of width ``proj_hidden`` (default ``in_channels``) with ReLU between them
    (ZSSeg's query head: 2 layers, 1024 wide).
    The vocabulary is the ``class_embeds`` argument, or the one last given to
    :meth:`set_class_embeddings` (for callers such as mmdet heads that pass one tensor).
    """

    def __init__(self, in_channels: int, embed_dims: int, temperature: float = 100.0,
                 no_object: bool = False, channel_dim: int = -1, proj_layers: int = 1,
                 proj_hidden: Optional[int] = None) -> None:
        super().__init__()
        if proj_layers < 1:
            raise ValueError(f"proj_layers must be >= 1, got {proj_layers}")
        self.channel_dim = channel_dim
        self.embed_dims = embed_dims
        if proj_layers == 1:
            self.proj = nn.Linear(in_channels, embed_dims)
        else:
            hidden = proj_hidden or in_channels
            layers: list = []
            for k in range(proj_layers - 1):
                layers += [nn.Linear(in_channels if k == 0 else hidden, hidden), nn.ReLU(inplace=True)]
            self.proj = nn.Sequential(*layers, nn.Linear(hidden, embed_dims))
        self.temperature = temperature
        self.no_object = nn.Parameter(torch.randn(1, embed_dims) * embed_dims ** -0.5) if no_object else None
        self.class_embeds: Optional[torch.Tensor] = None

    def set_class_embeddings(self, class_embeds: torch.Tensor) -> None:
        if class_embeds.dim() != 2 or class_embeds.shape[1] != self.embed_dims:
            raise ValueError(f"class embeddings must be [C, {self.embed_dims}], got "
                             f"{tuple(class_embeds.shape)}: the text encoder's embedding size must "
                             "match the classifier's embed_dims")
        self.class_embeds = class_embeds

    def forward(self, x: torch.Tensor, class_embeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        if class_embeds is not None:
            self.set_class_embeddings(class_embeds)
        if self.class_embeds is None:
            raise RuntimeError("no vocabulary: call set_class_embeddings(text_features) first")
        weight = self.class_embeds
        if self.no_object is not None:
            weight = torch.cat([weight, self.no_object])
        weight = F.normalize(weight, dim=-1)
        feats = F.normalize(self.proj(x.movedim(self.channel_dim, -1)), dim=-1)
        logits = self.temperature * feats @ weight.t()
        return logits.movedim(-1, self.channel_dim)


def make_zero_shot(head: nn.Module, classifier: TextEmbeddingClassifier,
                   class_embeds: torch.Tensor) -> nn.Module:
    """Turn an mmseg decode head (anything with ``conv_seg``) into a zero-shot one: its last
    1x1 conv becomes ``classifier`` over ``class_embeds``; swap the vocabulary later with
    ``head.conv_seg.set_class_embeddings``."""
    if not hasattr(head, "conv_seg"):
        raise TypeError(f"{type(head).__name__} has no conv_seg to replace (not an mmseg BaseDecodeHead)")
    in_channels = classifier.proj.in_features if isinstance(classifier.proj, nn.Linear) else classifier.proj[0].in_features
    if in_channels != head.channels:
        raise ValueError(f"classifier in_channels {in_channels} != head channels {head.channels}")
    classifier.set_class_embeddings(class_embeds)
    classifier.channel_dim = 1
    head.conv_seg = classifier
    head.out_channels = head.num_classes = class_embeds.shape[0]
    return head

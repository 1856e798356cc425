"""Classify masked crops with CLIP: the crop of a mask's box, outside the mask filled with
the mean colour, resized to CLIP's input size (POMP notes, section 8)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def masked_crops(image: torch.Tensor, masks: torch.Tensor, size: int, min_crop_size: int = 0) -> torch.Tensor:
    """[N, 3, size, size] crops of ``image`` [3, H, W] (CLIP-normalised) around each
    boolean mask [N, H, W]. Zero is the mean colour of a normalised image, so the
    pixels outside a mask (and outside the image) are zeroed; an empty mask gives an
    all-mean crop.

    ``min_crop_size`` > 0 grows each side of the box around its centre to at least that
    many pixels before resizing, so objects smaller than it keep their size relative to
    the crop (a CLIP that reads object size, such as the synthetic world's, needs it).
    0 is ZSSeg's tight box.
    """
    crops = image.new_zeros(len(masks), image.shape[0], size, size)
    pad = (min_crop_size + 1) // 2
    padded = F.pad(image, (pad, pad, pad, pad)) if pad else image
    for i, mask in enumerate(masks):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if len(ys) == 0:
            continue
        box = []
        for lo, hi in ((int(ys.min()), int(ys.max()) + 1), (int(xs.min()), int(xs.max()) + 1)):
            grow = max(min_crop_size - (hi - lo), 0)
            box += [lo - grow // 2 + pad, hi + grow - grow // 2 + pad]
        y0, y1, x0, x1 = box
        masked = padded * (F.pad(mask, (pad, pad, pad, pad)) if pad else mask).to(image.dtype)
        crop = masked[:, y0:y1, x0:x1]
        crops[i] = F.interpolate(crop[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    return crops


class CLIPCropClassifier(nn.Module):
    """Class probabilities [N, C] of masked crops against unit text embeddings [C, D].

    ``temperature`` defaults to the CLIP model's own logit scale; ``min_crop_size`` as in
    :func:`masked_crops`.
    """

    def __init__(self, clip_model: nn.Module, temperature: Optional[float] = None,
                 min_crop_size: int = 0) -> None:
        super().__init__()
        self.visual = clip_model.visual
        size = self.visual.image_size
        self.input_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.temperature = float(temperature or clip_model.logit_scale.exp())
        self.min_crop_size = min_crop_size

    def crops(self, image: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return masked_crops(image, masks, self.input_size, self.min_crop_size)

    def image_features(self, crops: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(crops).float(), dim=-1)

    @torch.no_grad()
    def forward(self, image: torch.Tensor, masks: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        feats = self.image_features(self.crops(image, masks))
        return (self.temperature * feats @ text_embeds.t()).softmax(dim=-1)

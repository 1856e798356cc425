"""Classify masked crops with CLIP: the crop of a mask's box, outside the mask filled with
the mean colour, resized to CLIP's input size (ZSSeg's recipe; docs/segmentation.md)."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .clip import CLIP_MEAN, CLIP_STD


def encode_any_size(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """CLIP ViT features of ``images`` [N, 3, H, W] of any size, as ZSSeg's CLIP computes them:
    the patch grid's positional embedding resized bicubically to the input's grid
    (``H // patch`` x ``W // patch``; a 244 x 224 view is 15 x 14 patches of 16 px). At CLIP's
    own size this is ``visual(images)``."""
    grid = tuple(visual.grid_size)
    patch = tuple(visual.patch_size)
    new_grid = (images.shape[-2] // patch[0], images.shape[-1] // patch[1])
    if new_grid == grid:
        return visual(images)
    pos = visual.positional_embedding
    patches = pos[1:].t().reshape(1, -1, *grid)
    patches = F.interpolate(patches, size=new_grid, mode="bicubic", align_corners=False)
    resized = torch.cat([pos[:1], patches.reshape(pos.shape[1], -1).t()])
    return torch.func.functional_call(visual, {"positional_embedding": resized}, (images,))


def masked_crops(image: torch.Tensor, masks: torch.Tensor, size: int, min_crop_size: int = 0,
                 mode: str = "bicubic", fill: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[N, 3, size, size] crops of ``image`` [3, H, W] (CLIP-normalised) around each
    boolean mask [N, H, W]. Zero is the mean colour of a normalised image, so the
    pixels outside a mask (and outside the image) are zeroed; an empty mask gives an
    all-mean crop.

    ``min_crop_size`` > 0 grows each side of the box around its centre to at least that
    many pixels before resizing, so objects smaller than it keep their size relative to
    the crop (a CLIP that reads object size, such as the synthetic world's, needs it).
    0 is ZSSeg's tight box. ``mode``: the resize interpolation (ZSSeg: bicubic). ``fill`` [3]
    (normalised units) replaces the zero fill: the crops of ``image - fill`` plus ``fill``, as
    the resize keeps a constant.
    """
    if fill is not None:
        fill = fill.to(image).view(-1, 1, 1)
        return masked_crops(image - fill, masks, size, min_crop_size, mode) + fill
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
        # align_corners unset: False for the interpolating modes (ZSSeg's), and 'nearest' takes none
        crops[i] = F.interpolate(crop[None], size=(size, size), mode=mode)[0]
    return crops


class CLIPCropClassifier(nn.Module):
    """Class probabilities of masked crops against unit text embeddings [C, D].

    ``visual`` is a CLIP visual tower and ``logit_scale`` its model's scale (the default
    ``temperature``). Images come normalised with ``input_mean`` / ``input_std`` (0-255
    scale, RGB; e.g. ImageNet's for a segmentation backbone) and are re-normalised with
    CLIP's statistics before cropping. ``min_crop_size`` as in :func:`masked_crops`.
    """

    def __init__(self, visual: nn.Module, logit_scale: float, temperature: Optional[float] = None,
                 min_crop_size: int = 0, input_mean: Sequence[float] = CLIP_MEAN,
                 input_std: Sequence[float] = CLIP_STD) -> None:
        super().__init__()
        self.visual = visual
        size = self.visual.image_size
        self.input_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.temperature = float(temperature or logit_scale)
        self.min_crop_size = min_crop_size
        mean, std = torch.as_tensor(input_mean).float(), torch.as_tensor(input_std).float()
        clip_mean, clip_std = torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD)
        # x_clip = (x * std + mean - clip_mean) / clip_std
        self.register_buffer("renorm_scale", (std / clip_std).view(3, 1, 1), persistent=False)
        self.register_buffer("renorm_shift", ((mean - clip_mean) / clip_std).view(3, 1, 1), persistent=False)

    def to_clip(self, image: torch.Tensor) -> torch.Tensor:
        """An image normalised with the input statistics -> normalised with CLIP's."""
        return image * self.renorm_scale + self.renorm_shift

    def crops(self, image: torch.Tensor, masks: torch.Tensor, fill: Optional[torch.Tensor] = None) -> torch.Tensor:
        return masked_crops(self.to_clip(image), masks, self.input_size, self.min_crop_size, fill=fill)

    def image_features(self, crops: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(crops).float(), dim=-1)

    @torch.no_grad()
    def forward(self, image: torch.Tensor, masks: torch.Tensor,
                text_embeds: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(probs [V, C], valid [N])``: probabilities of the ``V`` non-empty masks only
        (``valid`` marks them); an empty mask has no crop to classify."""
        valid = masks.flatten(1).any(dim=1)
        if not valid.any():
            return text_embeds.new_zeros(0, len(text_embeds)), valid
        feats = self.image_features(self.crops(image, masks[valid]))
        return (self.temperature * feats @ text_embeds.t()).softmax(dim=-1), valid

"""Draw a semantic segmentation as a colour overlay with a legend of the classes present."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw


def class_colours(n: int, seed: int = 0) -> np.ndarray:
    """[n, 3] uint8 colours, fixed for a given ``n`` so the same vocabulary always looks alike."""
    return np.random.default_rng(seed).integers(40, 256, size=(n, 3), dtype=np.uint8)


def draw_segmentation(image: np.ndarray, seg: np.ndarray, names: Sequence[str],
                      alpha: float = 0.6, ignore_index: int = 255) -> Image.Image:
    """The RGB ``image`` [H, W, 3] beside its overlay by the label map ``seg`` [H, W],
    above a legend (colour swatch + name) of every class that occurs in ``seg``."""
    colours = class_colours(len(names))
    valid = (seg != ignore_index) & (seg < len(names))
    overlay = image.astype(np.float32).copy()
    overlay[valid] = (1 - alpha) * overlay[valid] + alpha * colours[seg[valid]]
    h, w = seg.shape
    present = [int(c) for c in np.unique(seg[valid])]
    row, width = 14, max(2 * w, 260)
    canvas = Image.new("RGB", (width, h + row * len(present) + 4), (255, 255, 255))
    canvas.paste(Image.fromarray(image.astype(np.uint8)), (0, 0))
    canvas.paste(Image.fromarray(overlay.astype(np.uint8)), (w, 0))
    draw = ImageDraw.Draw(canvas)
    for k, c in enumerate(present):
        y = h + 2 + k * row
        draw.rectangle((2, y, 12, y + 10), fill=tuple(int(v) for v in colours[c]))
        share = 100 * float((seg == c).mean())
        draw.text((16, y - 1), f"{names[c]} ({share:.0f}%)", fill=(0, 0, 0))
    return canvas

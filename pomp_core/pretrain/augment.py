"""Dassl's ``RandAugment2`` (the POMP release's ``randaugment2`` transform), with seedable draws.

Each of ``n`` ops is drawn with replacement from a list of 15 (Invert and Identity
included) and applied on its own with probability ``p``, at a magnitude drawn uniformly
in the op's range; Rotate, Shear and Translate then flip their sign with probability 1/2.
The draws come from ``rng.random()`` in Dassl's order (the n op draws first, then per op:
apply?, magnitude, sign), so a ``random.Random`` replays the release's sequence exactly;
by default they come from torch's CPU generator, which the datasets seed per sample.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Protocol, Tuple

import torch
from PIL import Image, ImageEnhance, ImageOps


class Uniform(Protocol):
    def random(self) -> float: ...


class TorchUniform:
    """``random()`` from torch's default CPU generator."""

    def random(self) -> float:
        return float(torch.rand(()))


def _affine(img: Image.Image, coeffs: Tuple[float, ...]) -> Image.Image:
    return img.transform(img.size, Image.AFFINE, coeffs)


# (name, lowest magnitude, highest magnitude, flips its sign at random, op(img, v))
OPS: List[Tuple[str, float, float, bool, Callable[[Image.Image, float], Image.Image]]] = [
    ("AutoContrast", 0, 1, False, lambda img, v: ImageOps.autocontrast(img)),
    ("Brightness", 0.1, 1.9, False, lambda img, v: ImageEnhance.Brightness(img).enhance(v)),
    ("Color", 0.1, 1.9, False, lambda img, v: ImageEnhance.Color(img).enhance(v)),
    ("Contrast", 0.1, 1.9, False, lambda img, v: ImageEnhance.Contrast(img).enhance(v)),
    ("Equalize", 0, 1, False, lambda img, v: ImageOps.equalize(img)),
    ("Identity", 0, 1, False, lambda img, v: img),
    ("Invert", 0, 1, False, lambda img, v: ImageOps.invert(img)),
    ("Posterize", 4, 8, False, lambda img, v: ImageOps.posterize(img, int(v))),
    ("Rotate", -30, 30, True, lambda img, v: img.rotate(v)),
    ("Sharpness", 0.1, 1.9, False, lambda img, v: ImageEnhance.Sharpness(img).enhance(v)),
    ("ShearX", -0.3, 0.3, True, lambda img, v: _affine(img, (1, v, 0, 0, 1, 0))),
    ("ShearY", -0.3, 0.3, True, lambda img, v: _affine(img, (1, 0, 0, v, 1, 0))),
    ("Solarize", 0, 256, False, lambda img, v: ImageOps.solarize(img, v)),
    ("TranslateX", -0.3, 0.3, True, lambda img, v: _affine(img, (1, 0, v * img.size[0], 0, 1, 0))),
    ("TranslateY", -0.3, 0.3, True, lambda img, v: _affine(img, (1, 0, 0, 0, 1, v * img.size[1]))),
]


class RandAugment2:
    """``n`` ops, each applied with probability ``p`` at a uniform random magnitude."""

    def __init__(self, n: int = 2, p: float = 0.6, rng: Optional[Uniform] = None) -> None:
        self.n, self.p = n, p
        self.rng = rng or TorchUniform()

    def plan(self) -> List[Tuple[str, Optional[float]]]:
        """Draw the ops and magnitudes of one call: (name, value) or (name, None) when skipped."""
        picks = [OPS[int(self.rng.random() * len(OPS))] for _ in range(self.n)]  # random.choices
        out: List[Tuple[str, Optional[float]]] = []
        for name, low, high, signed, _ in picks:
            if self.rng.random() > self.p:
                out.append((name, None))
                continue
            value = self.rng.random() * (high - low) + low
            if signed and self.rng.random() > 0.5:
                value = -value
            out.append((name, value))
        return out

    def __call__(self, img: Image.Image) -> Image.Image:
        ops = {name: op for name, _, _, _, op in OPS}
        for name, value in self.plan():
            if value is not None:
                img = ops[name](img, value)
        return img

    def __repr__(self) -> str:
        return f"RandAugment2(n={self.n}, p={self.p})"

"""Draw the world's objects: a shape mask, filled with a colour pattern, on a noisy background."""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .vocabulary import COLOURS, ObjectClass

SIZE_RADIUS = {"small": (7.0, 10.0), "large": (17.0, 22.0)}  # pixels, whatever the canvas
WHITE = np.array([250, 250, 250], dtype=np.float32)


def _polygon(center: Tuple[float, float], radius: float, n: int, rotation: float, inner: float = 1.0):
    cx, cy = center
    pts = []
    for k in range(n * (2 if inner != 1.0 else 1)):
        r = radius if (k % 2 == 0 or inner == 1.0) else radius * inner
        a = rotation + 2 * math.pi * k / (n * (2 if inner != 1.0 else 1)) - math.pi / 2
        pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return pts


def shape_mask(shape: str, size: int, center: Tuple[float, float], radius: float, rotation: float) -> np.ndarray:
    """Boolean [size, size] mask of one shape."""
    im = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(im)
    cx, cy = center
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if shape == "circle":
        d.ellipse(box, fill=255)
    elif shape == "square":
        d.polygon(_polygon(center, radius * 1.15, 4, rotation + math.pi / 4), fill=255)
    elif shape == "triangle":
        d.polygon(_polygon(center, radius * 1.1, 3, rotation), fill=255)
    elif shape == "diamond":
        pts = [(cx + 0.65 * radius * math.sin(a), cy - radius * math.cos(a))
               for a in (0, math.pi / 2, math.pi, 3 * math.pi / 2)]
        d.polygon(pts, fill=255)
    elif shape == "pentagon":
        d.polygon(_polygon(center, radius, 5, rotation), fill=255)
    elif shape == "hexagon":
        d.polygon(_polygon(center, radius, 6, rotation), fill=255)
    elif shape == "star":
        d.polygon(_polygon(center, radius * 1.1, 5, rotation, inner=0.45), fill=255)
    elif shape == "cross":
        w = radius * 0.38
        d.rectangle((cx - w, cy - radius, cx + w, cy + radius), fill=255)
        d.rectangle((cx - radius, cy - w, cx + radius, cy + w), fill=255)
    elif shape == "ring":
        d.ellipse(box, fill=255)
        r = radius * 0.55
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=0)
    elif shape == "crescent":
        d.ellipse(box, fill=255)
        off = radius * 0.55
        d.ellipse((cx - radius + off, cy - radius - off * 0.3, cx + radius + off, cy + radius - off * 0.3), fill=0)
    elif shape == "arrow":
        h = radius * 0.3
        d.rectangle((cx - radius, cy - h, cx + radius * 0.1, cy + h), fill=255)
        d.polygon([(cx + radius * 0.1, cy - radius * 0.8), (cx + radius, cy), (cx + radius * 0.1, cy + radius * 0.8)],
                  fill=255)
    elif shape == "semicircle":
        d.pieslice((cx - radius, cy - radius * 0.6, cx + radius, cy + radius * 1.4), 180, 360, fill=255)
    else:
        raise ValueError(f"unknown shape '{shape}'")
    return np.asarray(im) > 127


def pattern_fill(pattern: str, colour: str, size: int, mask: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """The RGB fill [size, size, 3] of an object and the mask it actually covers."""
    c = np.array(COLOURS[colour], dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    period = 6
    if pattern == "plain":
        on = np.ones_like(mask)
    elif pattern == "striped":
        on = (yy // (period // 2)) % 2 == 0
    elif pattern == "dotted":
        on = ~(((yy % period) - period // 2) ** 2 + ((xx % period) - period // 2) ** 2 <= 2)
    elif pattern == "checkered":
        on = ((yy // (period // 2)) + (xx // (period // 2))) % 2 == 0
    elif pattern == "gridded":
        on = ~((yy % period == 0) | (xx % period == 0))
    elif pattern == "speckled":
        on = rng.random((size, size)) > 0.3
    elif pattern == "two-tone":
        cols = np.where(mask.any(axis=0))[0]
        mid = (cols.min() + cols.max()) / 2 if len(cols) else size / 2
        on = xx < mid
    elif pattern == "hollow":
        img = Image.fromarray((mask * 255).astype(np.uint8))
        inner = np.asarray(img.filter(ImageFilter.MinFilter(5))) > 127
        mask = mask & ~inner
        on = np.ones_like(mask)
    else:
        raise ValueError(f"unknown pattern '{pattern}'")
    fill = np.where(on[..., None], c, WHITE)
    return fill, mask


def background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A muted random gradient with pixel noise (never pure white, so white parts show)."""
    a, b = rng.uniform(120, 200, 3), rng.uniform(120, 200, 3)
    t = np.linspace(0, 1, size)[:, None, None]
    grad = a * (1 - t) + b * t
    img = np.broadcast_to(grad, (size, size, 3)) + rng.normal(0, 8, (size, size, 3))
    return img.astype(np.float32)


def render(objects: Sequence[Tuple[ObjectClass, Tuple[float, float], float, float]], size: int,
           rng: np.random.Generator) -> Tuple[np.ndarray, List[np.ndarray]]:
    """Draw ``(class, center, radius, rotation)`` objects in order (later ones occlude earlier).

    Returns the uint8 image [size, size, 3] and each object's visible mask.
    """
    img = background(size, rng)
    masks: List[np.ndarray] = []
    for cls, center, radius, rotation in objects:
        mask = shape_mask(cls.shape, size, center, radius, rotation)
        fill, mask = pattern_fill(cls.pattern, cls.colour, size, mask, rng)
        img[mask] = fill[mask]
        masks = [m & ~mask for m in masks]
        masks.append(mask)
    return np.clip(img, 0, 255).astype(np.uint8), masks


def sample_radius(size_word: str, rng: np.random.Generator) -> float:
    lo, hi = SIZE_RADIUS[size_word]
    return float(rng.uniform(lo, hi))

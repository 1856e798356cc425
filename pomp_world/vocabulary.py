"""The synthetic world's classes: size x colour x pattern x shape, and a seen/unseen split."""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Dict, List, Tuple

SIZES = ("small", "large")
COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 60, 220), "yellow": (235, 210, 20),
    "purple": (130, 40, 170), "orange": (245, 130, 20), "pink": (245, 120, 190), "brown": (120, 70, 30),
    "black": (20, 20, 20), "cyan": (20, 200, 210),
}
PATTERNS = ("plain", "striped", "dotted", "checkered", "hollow", "gridded", "speckled", "two-tone")
SHAPES = ("circle", "square", "triangle", "diamond", "pentagon", "hexagon", "star", "cross",
          "ring", "crescent", "arrow", "semicircle")


@dataclass(frozen=True)
class ObjectClass:
    size: str
    colour: str
    pattern: str
    shape: str

    @property
    def name(self) -> str:
        return f"{self.size} {self.colour} {self.pattern} {self.shape}"


def all_classes() -> List[ObjectClass]:
    """Every combination, in a fixed order (1,920 classes)."""
    return [ObjectClass(*c) for c in itertools.product(SIZES, COLOURS, PATTERNS, SHAPES)]


def split_classes(classes: List[ObjectClass], unseen_fraction: float, seed: int) -> Tuple[List[int], List[int]]:
    """Indices of seen and unseen classes. Every attribute value stays among the seen
    classes, so an unseen class is a new combination of known parts."""
    rng = random.Random(seed)
    order = list(range(len(classes)))
    rng.shuffle(order)
    n_unseen = int(round(unseen_fraction * len(classes)))
    unseen = set(order[:n_unseen])
    seen_values = {(field, getattr(classes[i], field)) for i in order[n_unseen:]
                   for field in ("size", "colour", "pattern", "shape")}
    for i in sorted(unseen):  # move back any class carrying a value no seen class has
        c = classes[i]
        if any((f, getattr(c, f)) not in seen_values for f in ("size", "colour", "pattern", "shape")):
            unseen.discard(i)
    return [i for i in range(len(classes)) if i not in unseen], sorted(unseen)

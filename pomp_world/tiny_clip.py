"""Train the small CLIP shipped with the project, contrastively, on captions of world images.

Captions are written in varied phrasings and never in the hand-crafted template that the
evaluation uses as its baseline ("a photo of a {name}."), as a real CLIP has seen the
web's phrasings rather than one template. All classes are captioned (seen and unseen):
the seen/unseen split applies to prompt pre-training and downstream training only.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import List

import numpy as np
import open_clip
import torch

from pomp_core.clip_loader import load_clip
from pomp_core.durable import atomic_torch_save
from pomp_core.images import CLIP_MEAN, CLIP_STD
from pomp_core.progress import Progress
from pomp_core.text_encoder import PromptedTextEncoder

from .generate import WorldConfig, render_single
from .vocabulary import ObjectClass, all_classes

logger = logging.getLogger(__name__)

MODEL_NAME = "pomp-world"
WEIGHTS = Path(__file__).resolve().parent / "weights" / "pomp_world_clip.pt"

# Varied word orders: none puts the four words in the class-name order after "a photo of a",
# as real captions rarely read like the hand-crafted template.
TEMPLATES = (
    "a {colour} {shape} that is {pattern} and {size}",
    "there is a {size} {shape} coloured {colour} with a {pattern} pattern",
    "{pattern} {shape} in {colour}, {size}",
    "the {shape} is {colour}, {pattern} and {size}",
    "{colour} {pattern} {shape}, {size} size",
    "this {size} {shape} is {pattern} and {colour}",
    "a drawing of a {pattern} {colour} {shape} of {size} size",
    "{size} {shape}: {colour}, {pattern}",
    "{shape}, {size}, {pattern} and {colour}",
    "a {size} one: {colour} {shape} with {pattern} fill",
)


def caption(cls: ObjectClass, rng: np.random.Generator) -> str:
    words = {"size": cls.size, "colour": cls.colour, "pattern": cls.pattern, "shape": cls.shape}
    return TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(**words)


def render_pool(classes: List[ObjectClass], per_class: int, size: int, seed: int) -> torch.Tensor:
    """uint8 images [C, per_class, 3, size, size] (seeded apart from the eval renderings)."""
    cfg = WorldConfig(seed=seed)
    pool = torch.empty(len(classes), per_class, 3, size, size, dtype=torch.uint8)
    for c, cls in enumerate(Progress(classes, desc="rendering", unit="class", leave=False)):
        for i in range(per_class):
            rng = np.random.default_rng([cfg.seed, 100, c, i])
            pool[c, i] = torch.from_numpy(render_single(cls, size, rng)).permute(2, 0, 1)
    return pool


def train_tiny_clip(out: str | os.PathLike, steps: int = 1200, batch_size: int = 256,
                    lr: float = 2e-3, per_class: int = 12, seed: int = 0) -> Path:
    """Train ``pomp-world`` from scratch and save its fp16 state dict (OpenAI key layout)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model, tokenizer, _ = load_clip(MODEL_NAME)
    model.train().requires_grad_(True)
    size = model.visual.image_size[0]
    classes = all_classes()
    pool = render_pool(classes, per_class, size, seed)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    text = PromptedTextEncoder(model, tokenizer)
    loss_fn = open_clip.ClipLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    bar = Progress(range(steps), desc="tiny CLIP", unit="step")
    for step in bar:
        cls_idx = rng.choice(len(classes), size=batch_size, replace=False)
        img_idx = rng.integers(per_class, size=batch_size)
        images = (pool[cls_idx, img_idx].float() / 255 - mean) / std
        ids = tokenizer([caption(classes[c], rng) for c in cls_idx])
        img_f = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
        txt_f = torch.nn.functional.normalize(text.encode_ids(ids), dim=-1)
        loss = loss_fn(img_f, txt_f, model.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)  # CLIP caps the scale at 100
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", scale=f"{model.logit_scale.exp().item():.1f}")
    out = Path(out)
    atomic_torch_save({k: v.detach().half() for k, v in model.state_dict().items()}, out)
    logger.info("saved %s (%.1f MB)", out, out.stat().st_size / 2**20)
    return out

"""The world's configuration, its scenes, and two of its renderings (detection's are in
:mod:`pomp_world.detection`; :func:`pomp_world.write_world` writes any of them):

* classification: ``pretrain/`` a folder per seen class + ``names.txt`` (ImageNet-21K layout),
  ``eval/`` images with CoOp-style split files (``split_world_unseen.json``, ``split_world_seen.json``);
* segmentation: scenes with PNG label maps in mmseg's ``img_dir/ann_dir`` layout.

Everything is a function of the seed: the same call writes the same bytes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from pomp_core.progress import Progress

from .render import render, sample_radius
from .vocabulary import ObjectClass, all_classes, split_classes


@dataclass
class WorldConfig:
    seed: int = 0
    unseen_fraction: float = 0.25
    image_size: int = 64  # classification images
    pretrain_per_class: int = 8  # images per seen class for prompt pre-training
    eval_per_class: int = 6  # held-out images per class in the evaluation splits
    eval_classes: int = 0  # classes per evaluation split (seen / unseen), 0 = all (1,440 / 480)
    scene_size: int = 128  # detection / segmentation images
    det_classes: int = 40  # detection vocabulary (a subset, ~25% unseen)
    det_images: Tuple[int, int] = (120, 40)  # train, val scenes
    seg_classes: int = 20
    seg_images: Tuple[int, int] = (120, 40)
    # Share of training-scene objects drawn from the unseen classes. 0: training scenes hold
    # seen classes only. > 0: the real training condition of VOC / COCO-Stuff, unseen objects
    # in training scenes too (the seg datasets' ignore_unseen labels them ignore when
    # loading); 0.25 = every class equally likely (5 of 20). Validation scenes never change.
    seg_train_unseen: float = 0.0


def world_classes(cfg: WorldConfig) -> Tuple[List[ObjectClass], List[int], List[int]]:
    classes = all_classes()
    seen, unseen = split_classes(classes, cfg.unseen_fraction, cfg.seed)
    return classes, seen, unseen


def _rng(cfg: WorldConfig, *key: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, *key])


def render_single(cls: ObjectClass, size: int, rng: np.random.Generator) -> np.ndarray:
    """One object, jittered around the centre, as a uint8 image."""
    c = size / 2
    jitter = size * 0.12
    center = (c + rng.uniform(-jitter, jitter), c + rng.uniform(-jitter, jitter))
    img, _ = render([(cls, center, sample_radius(cls.size, rng), rng.uniform(0, 0.5))], size, rng)
    return img


def _save(img: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, optimize=False)


def _subset(ids: Sequence[int], n: int, rng: np.random.Generator) -> List[int]:
    return sorted(rng.choice(ids, size=min(n, len(ids)), replace=False).tolist()) if n else list(ids)


def write_classification(cfg: WorldConfig, out: Path) -> Dict[str, str]:
    classes, seen, unseen = world_classes(cfg)
    pre = out / "classification" / "pretrain"
    lines = []
    for c in Progress(seen, desc="pretrain images", unit="class", leave=False):
        folder = f"c{c:04d}"
        lines.append(f"{folder} {classes[c].name}")
        for i in range(cfg.pretrain_per_class):
            _save(render_single(classes[c], cfg.image_size, _rng(cfg, 1, c, i)), pre / "images" / folder / f"{i}.png")
    (pre / "names.txt").write_text("\n".join(lines) + "\n")
    files = {"pretrain_root": str(pre / "images"), "pretrain_names": str(pre / "names.txt")}
    ev = out / "classification" / "eval"
    for split, ids, key in (("unseen", unseen, 2), ("seen", seen, 3)):
        chosen = _subset(ids, cfg.eval_classes, _rng(cfg, 90 + key))
        test = []
        for label, c in enumerate(chosen):
            for i in range(cfg.eval_per_class):
                rel = f"images/c{c:04d}/{i}.png"
                _save(render_single(classes[c], cfg.image_size, _rng(cfg, key, c, i)), ev / rel)
                test.append([rel, label, classes[c].name])
        path = ev / f"split_world_{split}.json"
        path.write_text(json.dumps({"train": [], "val": [], "test": test}))
        files[f"eval_{split}"] = str(path)
    return files


def _scene(cfg: WorldConfig, cat_ids: Sequence[int], classes: List[ObjectClass], rng: np.random.Generator,
           probs: Optional[np.ndarray] = None):
    """2-5 objects at random places (overlap allowed; later objects occlude), their classes
    drawn from ``cat_ids`` uniformly or with ``probs``."""
    objs = []
    for _ in range(int(rng.integers(2, 6))):
        c = int(rng.choice(cat_ids, p=probs))
        r = sample_radius(classes[c].size, rng)
        center = tuple(rng.uniform(r, cfg.scene_size - r, 2))
        objs.append((c, center, r, float(rng.uniform(0, 0.5))))
    img, masks = render([(classes[c], ctr, r, rot) for c, ctr, r, rot in objs], cfg.scene_size, rng)
    return img, [(o[0], m) for o, m in zip(objs, masks)]


def _train_classes(vocab: Sequence[int], unseen: set, share: float) -> Tuple[List[int], Optional[np.ndarray]]:
    """Classes of the training scenes and their probabilities: the seen ones uniformly when
    ``share`` is 0, else all of them with ``share`` of the mass spread over the unseen ones."""
    if not 0 <= share < 1:
        raise ValueError(f"seg_train_unseen is the share of unseen objects in training scenes, "
                         f"0 <= share < 1; got {share}")
    seen = [c for c in vocab if c not in unseen]
    if share == 0:
        return seen, None
    n_unseen = len(vocab) - len(seen)
    probs = np.array([share / n_unseen if c in unseen else (1 - share) / len(seen) for c in vocab])
    return list(vocab), probs


def write_segmentation(cfg: WorldConfig, out: Path) -> Dict[str, str]:
    classes, seen, unseen = world_classes(cfg)
    rng = _rng(cfg, 7)
    n_unseen = max(1, int(round(cfg.seg_classes * cfg.unseen_fraction)))
    vocab = sorted(_subset(unseen, n_unseen, rng) + _subset(seen, cfg.seg_classes - n_unseen, rng))
    seg = out / "segmentation"
    # By default unseen classes appear in validation scenes only: a training scene holding an
    # unlabelled unseen object teaches the mask head that it is background (seg_train_unseen).
    train_ids, train_probs = _train_classes(vocab, set(unseen), cfg.seg_train_unseen)
    for split, n_img, key in (("train", cfg.seg_images[0], 8), ("val", cfg.seg_images[1], 9)):
        for i in Progress(range(n_img), desc=f"segmentation {split}", leave=False):
            img, objs = (_scene(cfg, train_ids, classes, _rng(cfg, key, i), train_probs) if split == "train"
                         else _scene(cfg, vocab, classes, _rng(cfg, key, i)))
            label = np.full((cfg.scene_size, cfg.scene_size), 255, dtype=np.uint8)  # 255 = background/ignore
            for c, m in objs:
                label[m] = vocab.index(c)
            _save(img, seg / "img_dir" / split / f"{i:05d}.png")
            _save(label, seg / "ann_dir" / split / f"{i:05d}.png")
    meta = {"classes": [classes[c].name for c in vocab],
            "unseen": [vocab.index(c) for c in vocab if c in set(unseen)], "ignore_index": 255}
    (seg / "classes.json").write_text(json.dumps(meta, indent=1))
    return {"seg_root": str(seg), "seg_classes": str(seg / "classes.json")}

"""ImageNet-21K-style data: a folder per class, class names, few-shot index, multi-view views."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torchvision import transforms as T

from ..durable import atomic_write_text, kill_point
from ..images import CLIP_MEAN, CLIP_STD, is_image
from .augment import RandAugment2

logger = logging.getLogger(__name__)

WNID = re.compile(r"^n\d{8}$")


def list_class_folders(root: str | os.PathLike) -> List[str]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"image root '{root}' does not exist: expected one folder per class "
            "(e.g. ImageNet-21K's n01440764/…jpg), each holding that class's images")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not folders:
        raise ValueError(f"image root '{root}' has no class folders")
    return folders


def read_class_names(
    folders: Sequence[str],
    names_file: Optional[str | os.PathLike] = None,
    miil_tree: Optional[str | os.PathLike] = None,
    wordnet: bool = False,
    lemmas: Optional[str | os.PathLike] = None,
    trusted: bool = False,
) -> List[str]:
    """One name per class folder, from exactly one source.

    * ``names_file``: lines ``<folder> <name>`` (CoOp's ``classnames.txt`` layout), or one
      name per line in sorted-folder order when the lines carry no folder ids;
    * ``miil_tree``: MIIL's ``imagenet21k_miil_tree.pth`` (``class_description`` per wnid);
    * ``wordnet``: the first lemma of each wnid's synset (needs nltk's wordnet data);
    * ``lemmas``: ``<wnid>\t<lemma>, <lemma>, …`` lines, first lemma per wnid (MIIL's
      ``class_description`` naming): timm's ``data/_info/imagenet_synset_to_lemma.txt``,
      or ``"timm"`` for the copy installed with timm, so no MIIL tree file is needed;
    * none: the folder names themselves (underscores read as spaces).
    """
    if sum(map(bool, (names_file, miil_tree, wordnet, lemmas))) > 1:
        raise ValueError("give at most one of names_file, miil_tree, wordnet and lemmas")
    if names_file:
        path = Path(names_file)
        if not path.is_file():
            raise FileNotFoundError(f"class names file '{path}' does not exist")
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
        pairs = [ln.split(maxsplit=1) for ln in lines]
        if all(len(p) == 2 and p[0] in set(folders) for p in pairs):
            mapping = {k: v for k, v in pairs}
        elif len(lines) == len(folders):
            mapping = dict(zip(folders, lines))
        else:
            raise ValueError(
                f"{path} has {len(lines)} lines for {len(folders)} class folders: write one "
                "'<folder> <name>' line per folder, or exactly one name per folder in sorted order")
    elif miil_tree:
        try:
            tree = torch.load(miil_tree, map_location="cpu", weights_only=not trusted)
        except pickle.UnpicklingError as err:
            raise ValueError(f"{miil_tree} holds objects a safe load refuses; if you trust the file, "
                             "set data.trusted=true (unpickling runs code)") from err
        if not isinstance(tree, dict) or "class_description" not in tree:
            raise ValueError(f"{miil_tree} is not MIIL's imagenet21k tree (no 'class_description')")
        mapping = dict(tree["class_description"])
    elif lemmas:
        mapping = read_lemmas(lemmas)
    elif wordnet:
        from nltk.corpus import wordnet as wn  # optional dependency

        mapping = {f: wn.synset_from_pos_and_offset("n", int(f[1:])).lemma_names()[0]
                   for f in folders if WNID.match(f)}
    else:
        mapping = {f: f for f in folders}
    missing = [f for f in folders if f not in mapping]
    if missing:
        raise ValueError(f"no class name for {len(missing)} folders, e.g. {missing[:5]}: "
                         "the names source does not cover the image folders")
    return [mapping[f].replace("_", " ").strip() for f in folders]


def timm_info_file(name: str) -> Path:
    """A file of timm's ``data/_info`` (ImageNet synset lists shipped with timm)."""
    import timm.data

    path = Path(timm.data.__file__).parent / "_info" / name
    if not path.is_file():
        raise FileNotFoundError(f"timm {timm.__version__} ships no data/_info/{name}")
    return path


def read_lemmas(source: str | os.PathLike) -> Dict[str, str]:
    """wnid -> first lemma from ``<wnid>\t<lemma>, <lemma>, …`` lines (``"timm"``: timm's copy)."""
    path = timm_info_file("imagenet_synset_to_lemma.txt") if str(source) == "timm" else Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"lemma file '{path}' does not exist (data.lemmas=timm reads timm's copy)")
    mapping = {}
    for line in path.read_text().splitlines():
        wnid, _, lemma_list = line.partition("\t")
        if lemma_list:
            mapping[wnid.strip()] = lemma_list.split(",")[0].strip()
    if not mapping:
        raise ValueError(f"{path} has no '<wnid>\\t<lemmas>' lines")
    return mapping


@dataclass
class SplitIndex:
    """Relative image paths and labels of a few-shot train split and a held-out val split."""

    root: str
    classes: List[str]
    train: List[Tuple[str, int]]
    val: List[Tuple[str, int]]
    val_root: Optional[str] = None  # where the val paths are relative to (default: root)


def build_split_index(
    root: str | os.PathLike,
    shots: int = 16,
    val_per_class: int = 0,
    seed: int = 42,
    cache_dir: Optional[str | os.PathLike] = None,
    val_root: Optional[str | os.PathLike] = None,
) -> SplitIndex:
    """Pick ``shots`` training images per class (all of them for smaller classes) and
    ``val_per_class`` held-out ones, seeded.

    ``val_root`` (MIIL's separate ``imagenet21k_val``, same class folders): validation
    images come from there instead (``val_per_class`` of each class, all when 0) and
    nothing is held out of ``root``.

    Scanning millions of files takes long, so the result is cached as a small json
    (keyed by root, shots, val_per_class, seed and val_root) and reused on restart.
    """
    root = Path(root).resolve()
    val_root = Path(val_root).resolve() if val_root else None
    tag = f"{root}|{shots}|{val_per_class}|{seed}" + (f"|{val_root}" if val_root else "")
    key = hashlib.sha1(tag.encode()).hexdigest()[:12]
    cache = Path(cache_dir or root) / f".pomp_index_{key}.json"
    if cache.is_file():
        data = json.loads(cache.read_text())
        return SplitIndex(str(root), data["classes"], [tuple(x) for x in data["train"]],
                          [tuple(x) for x in data["val"]], data.get("val_root"))
    folders = list_class_folders(root)
    rng = random.Random(seed)
    train, val, empty = [], [], []
    for label, folder in enumerate(folders):
        files = sorted(f.name for f in (root / folder).iterdir()
                       if is_image(f))
        kill_point("scan")
        if not files:
            empty.append(folder)
            continue
        rng.shuffle(files)
        held = files[:val_per_class] if len(files) > val_per_class and not val_root else []
        rest = files[len(held):]
        train += [(f"{folder}/{f}", label) for f in rest[:shots]]
        val += [(f"{folder}/{f}", label) for f in held]
    if empty:
        raise ValueError(f"{len(empty)} class folders hold no images, e.g. {empty[:5]}: "
                         "remove them or add images before training")
    if val_root:
        val = _separate_val(val_root, folders, val_per_class, rng)
    index = SplitIndex(str(root), folders, train, val, str(val_root) if val_root else None)
    try:
        atomic_write_text(cache, json.dumps({"classes": folders, "train": train, "val": index.val,
                                             "val_root": index.val_root}))
    except OSError as err:  # a read-only dataset root still trains, just rescans
        logger.warning("could not cache the split index at %s: %s", cache, err)
    return index


def _separate_val(val_root: Path, folders: List[str], per_class: int,
                  rng: random.Random) -> List[Tuple[str, int]]:
    """Validation items of a separate folder-per-class root labelled by the training folders."""
    label = {f: i for i, f in enumerate(folders)}
    val_folders = list_class_folders(val_root)
    unknown = [f for f in val_folders if f not in label]
    if unknown:
        raise ValueError(f"{len(unknown)} folders of data.val_root are not training classes, e.g. "
                         f"{unknown[:5]}: point data.val_root at the validation split of data.root")
    val = []
    for folder in val_folders:
        files = sorted(f.name for f in (val_root / folder).iterdir() if is_image(f))
        rng.shuffle(files)
        val += [(f"{folder}/{f}", label[folder]) for f in (files[:per_class] if per_class else files)]
    return val


def train_transform(size: int = 224, randaugment: str = "dassl") -> Callable:
    """The recipe's augmentation: random-resized-crop 0.08-1 (bicubic), flip, RandAugment, CLIP normalisation.

    ``randaugment``: ``dassl`` is the release's ``randaugment2`` (each of 2 ops applied on
    its own at p=0.6, random magnitude, Invert included; :mod:`.augment`); ``torchvision``
    applies torchvision's ``RandAugment(num_ops=2)`` (magnitude 9, no Invert) as one block at p=0.6.
    """
    if randaugment == "dassl":
        rand = RandAugment2(n=2, p=0.6)
    elif randaugment == "torchvision":
        rand = T.RandomApply([T.RandAugment(num_ops=2)], p=0.6)
    else:
        raise ValueError(f"data.randaugment must be 'dassl' or 'torchvision', got '{randaugment}'")
    return T.Compose([
        T.RandomResizedCrop(size, scale=(0.08, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        rand,
        T.ToTensor(),
        T.Normalize(CLIP_MEAN, CLIP_STD),
    ])

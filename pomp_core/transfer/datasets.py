"""Readers for the zero-shot transfer benchmarks in the layouts of the prompt-learning
community (CoOp's ``$DATA`` tree and its ``split_zhou_*.json`` files), by name.

Every reader returns a :class:`ClassificationSet`: an image folder, ``(relative path,
label)`` items and the class names after the dataset's clean-up, which is what CoOp's
published numbers were measured with. Class names follow CoOp: the split files already
hold its renamed classes (Caltech's ``Faces`` -> ``face``, lower-cased pet breeds,
EuroSAT's expanded names, UCF101's CamelCase split with underscores); the clean-ups are
applied again here, idempotently, so split files written from raw folder names read the
same; CoOp's prompt learners finally read underscores as spaces.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from ..images import is_image

Items = List[Tuple[str, int]]


@dataclass
class ClassificationSet:
    """One evaluation split: images under ``image_root``, labels index ``class_names``."""

    name: str
    image_root: Path
    items: Items
    class_names: List[str]
    split: str = "test"
    template: str = "a photo of a {}."  # CLIP's hand-crafted prompt for this dataset
    title: str = ""

    def __post_init__(self) -> None:
        self.title = self.title or self.name


@dataclass(frozen=True)
class DatasetSpec:
    """A benchmark: where it lives under the data root and how to read it."""

    name: str  # registry key, e.g. "caltech101"
    title: str  # table column, e.g. "Caltech"
    folder: str  # directory under the data root (CoOp's dataset_dir)
    layout: str  # the expected tree, shown when it is missing
    reader: Callable[["DatasetSpec", Path, str], Tuple[Path, Items, List[str]]]
    template: str = "a photo of a {}."  # CoOp's CUSTOM_TEMPLATES entry
    group: str = "cross-dataset"
    clean: Callable[[str], str] = field(default=lambda n: n)
    image_dir: str = ""
    split_file: str = ""

    def read(self, root: str | os.PathLike, split: str = "test") -> ClassificationSet:
        image_root, items, names = self.reader(self, Path(root).expanduser() / self.folder, split)
        names = [self.clean(n).replace("_", " ").strip() for n in names]
        return ClassificationSet(self.name, image_root, items, names, split, self.template, self.title)

    def missing(self, what: Path) -> FileNotFoundError:
        return FileNotFoundError(
            f"{self.title} ({self.name}): '{what}' does not exist. Expected this layout under the data root:\n"
            f"{self.layout}\nSee docs/transfer.md (and CoOp's DATASETS.md for the downloads and split files).")


DATASETS: Dict[str, DatasetSpec] = {}
GROUPS: Dict[str, List[str]] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    if spec.name in DATASETS:
        raise ValueError(f"dataset '{spec.name}' is already registered")
    DATASETS[spec.name] = spec
    GROUPS.setdefault(spec.group, []).append(spec.name)
    return spec


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def get_dataset(name: str) -> DatasetSpec:
    """A registered benchmark by name; case, '-' and '_' do not matter (``ImageNet-A`` = ``imagenet_a``)."""
    by_key = {_key(k): s for k, s in DATASETS.items()}
    spec = by_key.get(_key(name))
    if spec is None:
        raise KeyError(f"unknown dataset '{name}': registered are {sorted(DATASETS)}, groups {sorted(GROUPS)}, "
                       "or give a CoOp-style split_*.json file")
    return spec


def read_split_file(path: str | os.PathLike, split: str = "test") -> Tuple[List[Tuple[str, int]], List[str]]:
    """Items of ``split`` and the class names of a CoOp-style split file
    (``{"train": [...], "val": [...], "test": [[path, label, name], ...]}``).

    Class names come from every split of the file, so a class without ``split`` items
    still gets its classifier row (CoOp takes them from the training split).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file '{path}' does not exist")
    data = json.loads(path.read_text())
    rows = data.get(split)
    if not rows:
        raise ValueError(f"{path} has no '{split}' items (it has {sorted(k for k, v in data.items() if v)})")
    names: Dict[int, str] = {}
    for part in data.values():
        for _, label, name in part or []:
            if names.setdefault(int(label), name) != name:
                raise ValueError(f"{path}: label {label} is named both '{names[int(label)]}' and '{name}'")
    missing = sorted(set(range(max(names) + 1)) - set(names))
    if missing:
        raise ValueError(f"{path}: labels {missing[:10]} have no items, so their class names are unknown")
    return [(p, int(y)) for p, y, _ in rows], [names[i] for i in range(len(names))]


def load_split_json(path: str | os.PathLike, split: str = "test", name: Optional[str] = None,
                    image_root: Optional[str | os.PathLike] = None) -> ClassificationSet:
    """Any CoOp-style split file as a dataset; paths are relative to ``image_root`` (default: the file's folder)."""
    path = Path(path)
    items, names = read_split_file(path, split)
    name = name or re.sub(r"^split_(zhou_)?", "", path.stem)
    return ClassificationSet(name, Path(image_root) if image_root else path.parent, items,
                             [n.replace("_", " ") for n in names], split)


def build_datasets(names: List[str], root: Optional[str | os.PathLike], split: str = "test") -> List[ClassificationSet]:
    """Datasets by registry name, group name (``cross-dataset``, ``domain-shift``) or split-file path."""
    out = []
    for name in names:
        if name.endswith(".json") or os.sep in name:
            out.append(load_split_json(name, split))
            continue
        members = GROUPS.get(name) or GROUPS.get(name.replace("_", "-")) or [get_dataset(name).name]
        if root is None:
            raise ValueError(f"dataset '{name}' needs the data root (--root / root=), the folder holding "
                             f"{', '.join(DATASETS[m].folder + '/' for m in members)}")
        out += [DATASETS[m].read(root, split) for m in members]
    return out


# --------------------------------------------------------------------------- readers
def _require(spec: DatasetSpec, path: Path) -> Path:
    if not path.exists():
        raise spec.missing(path)
    return path


def read_coop_split(spec: DatasetSpec, base: Path, split: str) -> Tuple[Path, Items, List[str]]:
    """``<folder>/<split_zhou_X.json>`` with paths relative to ``<folder>/<image_dir>``."""
    _require(spec, base)
    split_file = _require(spec, base / spec.split_file)
    image_root = _require(spec, base / spec.image_dir) if spec.image_dir else base
    items, names = read_split_file(split_file, split)
    return image_root, items, names


def read_aircraft(spec: DatasetSpec, base: Path, split: str) -> Tuple[Path, Items, List[str]]:
    """``variants.txt`` (label order) and ``images_variant_<split>.txt`` (``<id> <variant>``)."""
    _require(spec, base)
    if not (base / "variants.txt").is_file() and (base / "data" / "variants.txt").is_file():
        base = base / "data"  # the archive's data/ folder, not renamed as CoOp asks
    variants = [ln.strip() for ln in _require(spec, base / "variants.txt").read_text().splitlines() if ln.strip()]
    label = {v: i for i, v in enumerate(variants)}
    items = []
    for line in _require(spec, base / f"images_variant_{split}.txt").read_text().splitlines():
        if line.strip():
            image_id, variant = line.strip().split(" ", 1)
            if variant not in label:
                raise ValueError(f"{base}/images_variant_{split}.txt: variant '{variant}' is not in variants.txt")
            items.append((f"{image_id}.jpg", label[variant]))
    return _require(spec, base / "images"), items, variants


def read_imagenet_names(spec: DatasetSpec, base: Path) -> Dict[str, str]:
    """``<wnid> <name>`` lines: the dataset's own classnames.txt, else ImageNet's (``imagenet/classnames.txt``)."""
    for path in (base / "classnames.txt", base.parent / "imagenet" / "classnames.txt"):
        if path.is_file():
            pairs = [ln.strip().split(" ", 1) for ln in path.read_text().splitlines() if ln.strip()]
            bad = [p[0] for p in pairs if len(p) != 2]
            if bad:
                raise ValueError(f"{path}: expected '<wnid> <class name>' per line, got {bad[:3]}")
            return dict(pairs)
    raise spec.missing(base.parent / "imagenet" / "classnames.txt")


def _class_folders(spec: DatasetSpec, image_root: Path) -> List[str]:
    # README.txt and other files sit next to the class folders in ImageNet-A/-R
    return sorted(p.name for p in _require(spec, image_root).iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(folder: Path) -> List[str]:
    return sorted(f.name for f in folder.iterdir() if is_image(f))


def read_wnid_folders(spec: DatasetSpec, base: Path, split: str) -> Tuple[Path, Items, List[str]]:
    """``<image_dir>/<wnid>/*``, labels in sorted-wnid order (ImageNet, -Sketch; -A and -R's 200 classes)."""
    _require(spec, base)
    image_root = base / spec.image_dir.format(split="val" if split == "test" else split)
    folders = _class_folders(spec, image_root)
    names = read_imagenet_names(spec, base)
    unknown = [f for f in folders if f not in names]
    if unknown:
        raise ValueError(f"{image_root}: folders {unknown[:5]} are not wnids of classnames.txt")
    items = [(f"{f}/{im}", label) for label, f in enumerate(folders) for im in _images(image_root / f)]
    return image_root, items, [names[f] for f in folders]


def read_imagenetv2(spec: DatasetSpec, base: Path, split: str) -> Tuple[Path, Items, List[str]]:
    """``<image_dir>/<i>/*`` where folder ``i`` is ImageNet label ``i`` (line i of classnames.txt)."""
    _require(spec, base)
    image_root = _require(spec, base / spec.image_dir)
    names = list(read_imagenet_names(spec, base).values())
    folders = sorted((p.name for p in image_root.iterdir() if p.is_dir()), key=lambda s: (not s.isdigit(), s))
    bad = [f for f in folders if not f.isdigit() or int(f) >= len(names)]
    if bad:
        raise ValueError(f"{image_root}: folders {bad[:5]} are not label indices 0..{len(names) - 1}")
    items = [(f"{f}/{im}", int(f)) for f in sorted(folders, key=int) for im in _images(image_root / f)]
    return image_root, items, names


# ------------------------------------------------------------------ class-name clean-up
CALTECH_RENAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}
EUROSAT_NAMES = {
    "AnnualCrop": "Annual Crop Land", "Forest": "Forest", "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road", "Industrial": "Industrial Buildings", "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land", "Residential": "Residential Buildings", "River": "River",
    "SeaLake": "Sea or Lake",
}


def split_camel_case(name: str) -> str:
    """UCF101 folder names to CoOp's class names: ``ApplyEyeMakeup`` -> ``Apply_Eye_Makeup``."""
    return name if "_" in name or " " in name else "_".join(re.findall(r"[A-Z][^A-Z]*", name)) or name


def _split_layout(folder: str, image_dir: str, split_file: str, example: str) -> str:
    images = f"{folder}/{image_dir}/" if image_dir else f"{folder}/"
    return (f"  {folder}/{split_file}   {{\"train\"|\"val\"|\"test\": [[relative_path, label, classname], ...]}}\n"
            f"  {images}{example}   (paths in the split file are relative to {images})")


def _split_spec(name: str, title: str, folder: str, image_dir: str, split_file: str, example: str,
                template: str, clean: Callable[[str], str] = lambda n: n) -> DatasetSpec:
    return DatasetSpec(name, title, folder, _split_layout(folder, image_dir, split_file, example), read_coop_split,
                       template, "cross-dataset", clean, image_dir, split_file)


for _spec in (
    _split_spec("caltech101", "Caltech", "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json",
                "accordion/image_0001.jpg", "a photo of a {}.", lambda n: CALTECH_RENAMES.get(n, n)),
    _split_spec("oxford_pets", "Pets", "oxford_pets", "images", "split_zhou_OxfordPets.json",
                "Abyssinian_1.jpg", "a photo of a {}, a type of pet.", str.lower),
    _split_spec("stanford_cars", "Cars", "stanford_cars", "", "split_zhou_StanfordCars.json",
                "cars_test/00001.jpg", "a photo of a {}."),
    _split_spec("oxford_flowers", "Flowers", "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json",
                "image_00001.jpg", "a photo of a {}, a type of flower."),
    _split_spec("food101", "Food", "food-101", "images", "split_zhou_Food101.json",
                "apple_pie/1005649.jpg", "a photo of {}, a type of food."),
    DatasetSpec("fgvc_aircraft", "Aircraft", "fgvc_aircraft",
                "  fgvc_aircraft/variants.txt                 one variant per line (label order)\n"
                "  fgvc_aircraft/images_variant_{train,val,test}.txt   '<image id> <variant>' per line\n"
                "  fgvc_aircraft/images/<image id>.jpg\n"
                "  (the archive's data/ folder renamed to fgvc_aircraft/; fgvc_aircraft/data/... is accepted too)",
                read_aircraft, "a photo of a {}, a type of aircraft."),
    _split_spec("sun397", "SUN", "sun397", "SUN397", "split_zhou_SUN397.json",
                "a/abbey/sun_aaalbzqrimafwbiv.jpg", "a photo of a {}."),
    _split_spec("dtd", "DTD", "dtd", "images", "split_zhou_DescribableTextures.json",
                "banded/banded_0002.jpg", "{} texture."),
    _split_spec("eurosat", "EuroSAT", "eurosat", "2750", "split_zhou_EuroSAT.json",
                "AnnualCrop/AnnualCrop_1.jpg", "a centered satellite photo of {}.",
                lambda n: EUROSAT_NAMES.get(n, n)),
    _split_spec("ucf101", "UCF", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json",
                "Apply_Eye_Makeup/v_ApplyEyeMakeup_g01_c01.jpg", "a photo of a person doing {}.",
                split_camel_case),
    DatasetSpec("imagenet", "ImageNet", "imagenet",
                "  imagenet/classnames.txt           '<wnid> <class name>' per line, 1000 lines\n"
                "  imagenet/images/val/<wnid>/*.JPEG  (split 'test' reads val/; labels = sorted wnids)",
                read_wnid_folders, group="imagenet", image_dir="images/{split}"),
    DatasetSpec("imagenetv2", "ImageNet-V2", "imagenetv2",
                "  imagenetv2/imagenetv2-matched-frequency-format-val/<0..999>/*.jpeg  (folder = ImageNet label)\n"
                "  imagenetv2/classnames.txt or imagenet/classnames.txt   '<wnid> <class name>' per line",
                read_imagenetv2, group="domain-shift", image_dir="imagenetv2-matched-frequency-format-val"),
    DatasetSpec("imagenet_sketch", "ImageNet-Sketch", "imagenet-sketch",
                "  imagenet-sketch/images/<wnid>/*.JPEG\n"
                "  imagenet-sketch/classnames.txt or imagenet/classnames.txt   '<wnid> <class name>' per line",
                read_wnid_folders, group="domain-shift", image_dir="images"),
    DatasetSpec("imagenet_a", "ImageNet-A", "imagenet-adversarial",
                "  imagenet-adversarial/imagenet-a/<wnid>/*.jpg   (its 200 ImageNet classes; README.txt ignored)\n"
                "  imagenet-adversarial/classnames.txt or imagenet/classnames.txt   '<wnid> <class name>' per line",
                read_wnid_folders, group="domain-shift", image_dir="imagenet-a"),
    DatasetSpec("imagenet_r", "ImageNet-R", "imagenet-rendition",
                "  imagenet-rendition/imagenet-r/<wnid>/*.jpg   (its 200 ImageNet classes; README.txt ignored)\n"
                "  imagenet-rendition/classnames.txt or imagenet/classnames.txt   '<wnid> <class name>' per line",
                read_wnid_folders, group="domain-shift", image_dir="imagenet-r"),
):
    register_dataset(_spec)

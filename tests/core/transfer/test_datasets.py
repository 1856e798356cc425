"""The 15 benchmark readers on tiny fake trees in CoOp's layouts (a few classes, a few images)."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pomp_core.transfer import DATASETS, GROUPS, build_datasets, get_dataset


def image(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(abs(hash(path.name)) % 2**32).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return path.name


def coop_split(base: Path, image_dir: str, split_file: str, classes, per_split=(2, 1, 2)):
    """classes: [(raw class name as stored in the split file, relative folder or None)].
    Returns the expected test items."""
    split, test = {"train": [], "val": [], "test": []}, []
    for label, (name, folder) in enumerate(classes):
        for part, n in zip(("train", "val", "test"), per_split):
            for i in range(n):
                rel = f"{folder}/{part}_{i}.jpg" if folder else f"{name.replace(' ', '')}_{label}_{part}_{i}.jpg"
                image(base / image_dir / rel)
                split[part].append([rel, label, name])
                if part == "test":
                    test.append((rel, label))
    base.mkdir(parents=True, exist_ok=True)
    (base / split_file).write_text(json.dumps(split))
    return test


SPLIT_CASES = {
    # name: (folder, image dir, split file, [(stored name, folder)], expected clean names)
    "caltech101": ("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json",
                   [("Faces", "Faces"), ("yin_yang", "yin_yang"), ("face", "face2")], ["face", "yin yang", "face"]),
    "oxford_pets": ("oxford_pets", "images", "split_zhou_OxfordPets.json",
                    [("Abyssinian", None), ("american_bulldog", None)], ["abyssinian", "american bulldog"]),
    "stanford_cars": ("stanford_cars", "", "split_zhou_StanfordCars.json",
                      [("2012 Audi TTS Coupe", "cars_test"), ("2007 BMW X5 SUV", "cars_train")],
                      ["2012 Audi TTS Coupe", "2007 BMW X5 SUV"]),
    "oxford_flowers": ("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json",
                       [("pink primrose", None), ("globe thistle", None)], ["pink primrose", "globe thistle"]),
    "food101": ("food-101", "images", "split_zhou_Food101.json",
                [("apple_pie", "apple_pie"), ("baby_back_ribs", "baby_back_ribs")], ["apple pie", "baby back ribs"]),
    "sun397": ("sun397", "SUN397", "split_zhou_SUN397.json",
               [("abbey", "a/abbey"), ("indoor apartment_building", "a/apartment_building/indoor")],
               ["abbey", "indoor apartment building"]),
    "dtd": ("dtd", "images", "split_zhou_DescribableTextures.json",
            [("banded", "banded"), ("zigzagged", "zigzagged")], ["banded", "zigzagged"]),
    "eurosat": ("eurosat", "2750", "split_zhou_EuroSAT.json",
                [("AnnualCrop", "AnnualCrop"), ("Sea or Lake", "SeaLake"), ("Forest", "Forest")],
                ["Annual Crop Land", "Sea or Lake", "Forest"]),
    "ucf101": ("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json",
               [("Apply_Eye_Makeup", "Apply_Eye_Makeup"), ("YoYo", "YoYo")], ["Apply Eye Makeup", "Yo Yo"]),
}

WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361", "n01494475"]
NAMES = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark"]


def imagenet_names(path: Path, n: int = 5):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{w} {c}\n" for w, c in zip(WNIDS[:n], NAMES[:n])))


@pytest.mark.parametrize("name", sorted(SPLIT_CASES))
def test_split_file_readers(tmp_path, name):
    folder, image_dir, split_file, classes, clean = SPLIT_CASES[name]
    expected = coop_split(tmp_path / folder, image_dir, split_file, classes)
    data = get_dataset(name).read(tmp_path)
    assert data.class_names == clean
    assert sorted(data.items) == sorted(expected)
    assert data.image_root == tmp_path / folder / image_dir
    assert all((data.image_root / p).is_file() for p, _ in data.items)
    assert len(get_dataset(name).read(tmp_path, "train").items) == 2 * len(classes)
    assert data.template == DATASETS[name].template and "{}" in data.template


@pytest.mark.parametrize("nested", [False, True])
def test_fgvc_aircraft_reader(tmp_path, nested):
    base = tmp_path / "fgvc_aircraft" / ("data" if nested else "")
    base.mkdir(parents=True)
    (base / "variants.txt").write_text("707-320\nA300B4\nCessna 172\n")
    rows = [("0034309", "A300B4"), ("0034958", "Cessna 172"), ("1000001", "707-320"), ("1000002", "A300B4")]
    (base / "images_variant_test.txt").write_text("".join(f"{i} {v}\n" for i, v in rows))
    for i, _ in rows:
        image(base / "images" / f"{i}.jpg")
    data = get_dataset("FGVCAircraft").read(tmp_path)
    assert data.class_names == ["707-320", "A300B4", "Cessna 172"]
    assert data.items == [("0034309.jpg", 1), ("0034958.jpg", 2), ("1000001.jpg", 0), ("1000002.jpg", 1)]
    assert all((data.image_root / p).is_file() for p, _ in data.items)


def test_imagenet_reader_labels_are_sorted_wnids(tmp_path):
    imagenet_names(tmp_path / "imagenet" / "classnames.txt")
    for w in reversed(WNIDS):
        for i in range(2):
            image(tmp_path / "imagenet/images/val" / w / f"ILSVRC2012_val_{w}_{i}.JPEG")
    data = get_dataset("ImageNet").read(tmp_path)
    assert data.class_names == NAMES and data.image_root == tmp_path / "imagenet/images/val"
    assert len(data.items) == 10
    assert all(p.split("/")[0] == WNIDS[y] for p, y in data.items)


def test_imagenetv2_folder_index_is_the_imagenet_label(tmp_path):
    imagenet_names(tmp_path / "imagenet" / "classnames.txt")  # v2 falls back to ImageNet's names
    root = tmp_path / "imagenetv2/imagenetv2-matched-frequency-format-val"
    for label in (4, 0, 2):
        image(root / str(label) / f"img{label}.jpeg")
    data = get_dataset("imagenet-v2").read(tmp_path)
    assert data.class_names == NAMES  # all 1000 (here 5) classes are in the classifier
    assert data.items == [("0/img0.jpeg", 0), ("2/img2.jpeg", 2), ("4/img4.jpeg", 4)]
    image(root / "7" / "x.jpeg")
    with pytest.raises(ValueError, match="label indices"):
        get_dataset("imagenetv2").read(tmp_path)


@pytest.mark.parametrize("name,folder,image_dir", [("imagenet_a", "imagenet-adversarial", "imagenet-a"),
                                                    ("imagenet_r", "imagenet-rendition", "imagenet-r"),
                                                    ("imagenet_sketch", "imagenet-sketch", "images")])
def test_imagenet_subsets_read_their_classes(tmp_path, name, folder, image_dir):
    imagenet_names(tmp_path / "imagenet" / "classnames.txt")
    root = tmp_path / folder / image_dir
    for w in (WNIDS[3], WNIDS[1]):
        image(root / w / "a.jpg")
        image(root / w / "b.jpg")
    (root / "README.txt").write_text("not a class")
    data = get_dataset(name).read(tmp_path)
    assert data.class_names == ["goldfish", "tiger shark"]  # the subset, in sorted-wnid order
    assert data.items == [(f"{WNIDS[1]}/a.jpg", 0), (f"{WNIDS[1]}/b.jpg", 0),
                          (f"{WNIDS[3]}/a.jpg", 1), (f"{WNIDS[3]}/b.jpg", 1)]
    # a classnames.txt of the dataset's own (CoOp copies ImageNet's there) takes precedence
    (tmp_path / folder / "classnames.txt").write_text(f"{WNIDS[1]} gold fish\n{WNIDS[3]} tiger shark\n")
    assert get_dataset(name).read(tmp_path).class_names == ["gold fish", "tiger shark"]


def test_missing_root_error_shows_the_expected_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        get_dataset("eurosat").read(tmp_path)
    msg = str(err.value)
    assert "eurosat" in msg and "split_zhou_EuroSAT.json" in msg and "eurosat/2750/" in msg
    (tmp_path / "eurosat" / "2750").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="split_zhou_EuroSAT.json' does not exist"):
        get_dataset("eurosat").read(tmp_path)
    with pytest.raises(FileNotFoundError, match="imagenet/classnames.txt"):
        (tmp_path / "imagenet-rendition" / "imagenet-r").mkdir(parents=True)
        get_dataset("imagenet_r").read(tmp_path)
    with pytest.raises(KeyError, match="unknown dataset 'imagenet-z'"):
        get_dataset("imagenet-z")


def test_registry_groups_and_split_file_paths(tmp_path):
    assert len(GROUPS["cross-dataset"]) == 10 and len(GROUPS["domain-shift"]) == 4 and len(DATASETS) == 15
    for name in ("dtd", "eurosat"):
        folder, image_dir, split_file, classes, _ = SPLIT_CASES[name]
        coop_split(tmp_path / folder, image_dir, split_file, classes)
    sets = build_datasets(["dtd", "EuroSAT", str(tmp_path / "eurosat" / "split_zhou_EuroSAT.json")], tmp_path)
    assert [d.name for d in sets] == ["dtd", "eurosat", "EuroSAT"]
    # a bare split file keeps the stored names (underscores read as spaces) and its folder as image root
    assert sets[2].class_names == ["AnnualCrop", "Sea or Lake", "Forest"]
    with pytest.raises(ValueError, match="data root"):
        build_datasets(["cross-dataset"], None)

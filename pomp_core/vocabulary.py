"""Vocabularies: class-name lists from Python, text files, or COCO/LVIS annotation json."""
from __future__ import annotations

import collections
import json
import os
from pathlib import Path
from typing import Iterable, List, Union

VocabularySource = Union[str, os.PathLike, Iterable[str]]


def check_vocabulary(names: List[str], source: str = "vocabulary",
                     allow_duplicates: bool = False) -> List[str]:
    """Reject empty vocabularies and blank names, and repeated names unless ``allow_duplicates``.

    A classifier over names cannot tell two classes of one name apart (their rows are
    identical), so repeats are an error where the names are the labels (``tools/classify.py``,
    exported embeddings). Pre-training indexes classes by label and allows them:
    ImageNet-21K's winter21 list repeats 661 first-lemma names, as the release trains.
    """
    if not names:
        raise ValueError(f"{source} is empty: give at least one class name")
    blank = [i for i, n in enumerate(names) if not n.strip()]
    if blank:
        raise ValueError(f"{source} has blank class names at positions {blank[:10]}")
    if not allow_duplicates:
        dupes = [n for n, c in collections.Counter(names).items() if c > 1]
        if dupes:
            raise ValueError(
                f"{source} repeats class names {dupes[:10]} ({len(dupes)} in all): classes of one name "
                "get identical classifier rows and a prediction cannot tell them apart. Rename them "
                "apart (e.g. 'crane (bird)' and 'crane (machine)') or drop the repeats.")
    return names


def _from_json(path: Path) -> List[str]:
    with open(path) as f:
        data = json.load(f)
    cats = data.get("categories") if isinstance(data, dict) else None
    if not cats:
        raise ValueError(f"{path} has no 'categories': expected a COCO or LVIS annotation file")
    # Detectors index classes in category-id order; LVIS names use underscores for spaces.
    return [c["name"].replace("_", " ") for c in sorted(cats, key=lambda c: c["id"])]


def load_vocabulary(source: VocabularySource, allow_duplicates: bool = False) -> List[str]:
    """Class names from a list, a text file (one name per line; blank lines and ``#``
    comments skipped), a comma-separated string, or a COCO/LVIS json (``categories``
    in id order, underscores read as spaces). Repeated names raise unless
    ``allow_duplicates`` (see :func:`check_vocabulary`)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.suffix == ".json" or path.is_file():
            if not path.is_file():
                raise FileNotFoundError(f"vocabulary file '{path}' does not exist")
            if path.suffix == ".json":
                names = _from_json(path)
            else:
                lines = (line.strip() for line in path.read_text().splitlines())
                names = [line for line in lines if line and not line.startswith("#")]
            return check_vocabulary(names, str(path), allow_duplicates)
        if path.suffix in (".txt", ".csv") or os.sep in str(source):
            raise FileNotFoundError(f"vocabulary file '{path}' does not exist")
        names = [n.strip() for n in str(source).split(",")]
        return check_vocabulary([n for n in names if n] if len(names) > 1 else names, "vocabulary",
                                allow_duplicates)
    return check_vocabulary([str(n) for n in source], allow_duplicates=allow_duplicates)

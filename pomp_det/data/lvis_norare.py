"""The open-vocabulary LVIS split: training annotations without the rare (novel) classes.

    python -m pomp_det.data.lvis_norare datasets/lvis/lvis_v1_train.json   # writes *_norare.json
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Optional

from pomp_core.durable import atomic_write_json

logger = logging.getLogger(__name__)


def norare_path(src: str | os.PathLike) -> Path:
    src = Path(src)
    return src.with_name(f"{src.stem}_norare.json")


def make_norare_json(src: str | os.PathLike, dst: Optional[str | os.PathLike] = None,
                     overwrite: bool = False) -> Path:
    """Write ``src`` with the annotations of rare-frequency categories removed (images and
    categories kept, so class ids do not move); atomically (unique temporary file + rename)."""
    src = Path(src)
    dst = Path(dst) if dst else norare_path(src)
    if dst.is_file() and not overwrite:
        return dst
    if not src.is_file():
        raise FileNotFoundError(
            f"LVIS annotation file '{src}' does not exist: download lvis_v1_train.json into "
            "$DETECTRON2_DATASETS/lvis/ (see docs/detection.md)")
    data = json.loads(src.read_text())
    if "categories" not in data or "annotations" not in data:
        raise ValueError(f"{src} has no 'categories' or 'annotations': not an LVIS v1 annotation file")
    if not all("frequency" in c for c in data["categories"]):
        raise ValueError(f"{src} has categories without 'frequency': not an LVIS v1 annotation file")
    rare = {c["id"] for c in data["categories"] if c["frequency"] == "r"}
    before = len(data["annotations"])
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] not in rare]
    atomic_write_json(dst, data)  # a unique temporary name: ranks may write it at once
    logger.info("%s: dropped %d annotations of %d rare classes, kept %d (%d images) -> %s", src.name,
                before - len(data["annotations"]), len(rare), len(data["annotations"]),
                len(data["images"]), dst)
    return dst


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="write the LVIS *_norare.json training split")
    p.add_argument("src", help="lvis_v1_train.json")
    p.add_argument("--out", help="default: <src>_norare.json next to it")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    print(make_norare_json(args.src, args.out, args.overwrite))


if __name__ == "__main__":
    from pomp_core.cli import run_tool

    run_tool(main)

#!/usr/bin/env python
"""Write the synthetic world (classification, detection, segmentation renderings) to a folder.

    .venv/bin/python tools/make_world.py --out output/world/world [--parts classification detection segmentation]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from pomp_core.cli import run_tool
from pomp_core.log import setup_logging
from pomp_world import WorldConfig, write_world


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--parts", nargs="+", default=["classification", "detection", "segmentation"],
                   choices=["classification", "detection", "segmentation"])
    for f in dataclasses.fields(WorldConfig):
        if f.type in ("int", "float"):
            p.add_argument(f"--{f.name.replace('_', '-')}", type=int if f.type == "int" else float, default=f.default)
        elif f.type == "bool":
            p.add_argument(f"--{f.name.replace('_', '-')}", action=argparse.BooleanOptionalAction, default=f.default)
        elif f.type == "Tuple[int, int]":  # (train, val) scene counts
            p.add_argument(f"--{f.name.replace('_', '-')}", type=int, nargs=2, default=f.default,
                           metavar=("TRAIN", "VAL"))
    args = p.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        raise NotADirectoryError(f"--out '{args.out}' is a file; give a folder")
    if not 0 < args.unseen_fraction < 1:
        raise ValueError(f"--unseen-fraction must be between 0 and 1, got {args.unseen_fraction}")
    if not 0 <= args.seg_train_unseen < 1:
        raise ValueError(f"--seg-train-unseen is the share of unseen objects in segmentation training scenes, "
                         f"0 (seen classes only) <= share < 1; got {args.seg_train_unseen}")
    sizes = {f.name: getattr(args, f.name) for f in dataclasses.fields(WorldConfig) if hasattr(args, f.name)}
    negative = [f"--{k.replace('_', '-')} {v}" for k, v in sizes.items() if min(v if isinstance(v, (list, tuple)) else [v]) < 0]
    if negative:
        raise ValueError(f"sizes and counts cannot be negative: {', '.join(negative)}")
    if "classification" in args.parts and min(args.pretrain_per_class, args.eval_per_class) < 1:
        raise ValueError("--pretrain-per-class and --eval-per-class must be at least 1")
    setup_logging()
    cfg = WorldConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in sizes.items()})
    files = write_world(args.out, cfg, parts=args.parts)
    print(json.dumps(files, indent=1))


if __name__ == "__main__":
    run_tool(main)

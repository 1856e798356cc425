#!/usr/bin/env python
"""Train the tiny CLIP shipped in pomp_world/weights/ (model config pomp-world) on the synthetic world.

    .venv/bin/python tools/train_tiny_clip.py            # the shipped weights' recipe (seed 0), written
                                                         # to output/tiny_clip/pomp_world_clip.pt
    .venv/bin/python tools/train_tiny_clip.py --steps 200 --out /tmp/tiny.pt
    .venv/bin/python tools/train_tiny_clip.py --replace-shipped   # overwrite pomp_world/weights/

Use the result with --pretrained PATH (tools) or model.pretrained=PATH (configs).

CPU only; see pomp_world/tiny_clip.py for the captions and the recipe.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pomp_core.cli import run_tool
from pomp_core.log import setup_logging
from pomp_world.tiny_clip import WEIGHTS, train_tiny_clip


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("output/tiny_clip/pomp_world_clip.pt"))
    p.add_argument("--replace-shipped", action="store_true",
                   help=f"write to the shipped weights, {WEIGHTS} (the repository's copy in an editable install)")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--per-class", type=int, default=12, help="rendered training images per class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if args.replace_shipped:
        args.out = WEIGHTS
    elif args.out.resolve() == WEIGHTS.resolve():
        raise ValueError(f"--out '{args.out}' is the shipped tiny CLIP: pass --replace-shipped to overwrite it")
    setup_logging()
    torch.set_num_threads(args.threads)
    return train_tiny_clip(args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                    per_class=args.per_class, seed=args.seed)


if __name__ == "__main__":
    run_tool(main)

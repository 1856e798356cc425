#!/usr/bin/env python
"""Train the tiny CLIP shipped in pomp_core/weights/ (model config pomp-world) on the synthetic world.

    .venv/bin/python tools/train_tiny_clip.py            # reproduces the shipped weights (seed 0)
    .venv/bin/python tools/train_tiny_clip.py --steps 200 --out /tmp/tiny.pt

CPU only; see pomp_core/world/tiny_clip.py for the captions and the recipe.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pomp_core.log import setup_logging
from pomp_core.world.tiny_clip import WEIGHTS, train_tiny_clip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=WEIGHTS)
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--per-class", type=int, default=12, help="rendered training images per class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    setup_logging()
    torch.set_num_threads(args.threads)
    train_tiny_clip(args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                    per_class=args.per_class, seed=args.seed)


if __name__ == "__main__":
    main()

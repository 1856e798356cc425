#!/usr/bin/env python
"""The main job on the embedded default: POMP on the synthetic world with the shipped tiny CLIP.

Writes the world, pre-trains a prompt on its seen classes (with and without local
correction), evaluates zero-shot on held-out seen and unseen classes against the
hand-crafted prompt, and prints the table. A few minutes on a 2-core CPU.

    .venv/bin/python tools/demo.py [--output-dir output/world] [KEY=VALUE pre-training overrides]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pomp_core.cli import run_tool
from pomp_core.log import setup_logging
from pomp_core.pretrain.config import load_config
from pomp_world.main_job import run

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", type=Path, default=REPO / "output/world")
    p.add_argument("--config", default=str(REPO / "configs/pomp/world_tiny.yaml"))
    p.add_argument("overrides", nargs="*", help="pre-training config overrides, e.g. sampling.k=128")
    args = p.parse_args(argv)
    load_config(args.config, args.overrides)  # a bad key fails now, not after the world is written
    setup_logging()
    run(args.output_dir, args.config, overrides=args.overrides)
    out = args.output_dir
    print((out / "results.md").read_text())
    print(f"table: {out / 'results.md'} (csv: results.csv, plot: results.png)")
    print(f"training curves: {out / 'pomp' / 'training_curves.png'}; prompt: {out / 'pomp' / 'prompt.pth'}")
    print(f"unseen-class embeddings (Detic format): {out / 'unseen_classes_pomp.npy'}")


if __name__ == "__main__":
    run_tool(main)

#!/usr/bin/env python
"""The main job on the embedded default: one POMP prompt, three tasks, against the
hand-crafted prompt, on the synthetic world with the shipped tiny CLIP.

Writes the world, pre-trains a prompt on its seen classes (with and without local
correction), then with the hand-crafted prompt and with the POMP prompt, unchanged: zero-shot
classification, a Detic-style detector and a ZSSeg-style segmentor (several training seeds),
and prints the table with POMP's margins. Finished stages are cached: a re-run re-prints it.

    .venv/bin/python tools/demo.py [--tasks cls,det,seg] [--quick] [--seeds 1,2] [--output-dir output/world]
                                   [KEY=VALUE pre-training overrides]
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from pomp_core.cli import run_tool
from pomp_core.log import setup_logging
from pomp_core.pretrain.config import load_config
from pomp_world.main_job import FULL, QUICK, TASKS, run

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", type=Path, default=REPO / "output/world")
    p.add_argument("--config", default=str(REPO / "configs/pomp/world_tiny.yaml"))
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated, of: " + ", ".join(TASKS))
    p.add_argument("--quick", action="store_true", help="one seed, short detection / segmentation trainings: "
                   "the pipeline end to end, not a measurement")
    p.add_argument("--seeds", default="", help="training seeds of detection and segmentation, e.g. 1,2,3")
    p.add_argument("--workers", type=int, default=2, help="training processes at once (one thread each)")
    p.add_argument("overrides", nargs="*", help="pre-training config overrides, e.g. sampling.k=128")
    args = p.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    if not tasks or set(tasks) - set(TASKS):
        p.error(f"--tasks {args.tasks}: choose from {', '.join(TASKS)}")
    settings = QUICK if args.quick else FULL
    if args.seeds:
        settings = replace(settings, seeds=tuple(int(s) for s in args.seeds.split(",")))
    load_config(args.config, args.overrides)  # a bad key fails now, not after the world is written
    setup_logging()
    run(args.output_dir, args.config, overrides=args.overrides, tasks=tasks, settings=settings, workers=args.workers)
    out = args.output_dir
    print((out / "results.md").read_text())
    print(f"table: {out / 'results.md'} (csv: results.csv, figure: results.png)")
    if "cls" in tasks:
        print(f"training curves: {out / 'pomp' / 'training_curves.png'}; prompt: {out / 'pomp' / 'prompt.pth'}")
        print(f"unseen-class embeddings (Detic format): {out / 'unseen_classes_pomp.npy'}")
    for task in ("det", "seg"):
        if task in tasks:
            print(f"{task}: each run's output and log under {out / task}/<prompt>/seed<N>/")


if __name__ == "__main__":
    run_tool(main)

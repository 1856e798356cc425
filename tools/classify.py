#!/usr/bin/env python
"""Classify an image, or every image in a folder, over a vocabulary; print the top-k with scores.

    python tools/classify.py --model pomp-world --pretrained pomp_world/weights/pomp_world_clip.pt \
        --prompt pomp.pth --vocabulary "small red striped circle,large blue plain square" --image photo.png

--prompt is a prompt file (this project's or the POMP release's .pth.tar) or a template
with {} (default "a photo of a {}."); --vocabulary is a text file (one name per line), a
COCO/LVIS json or a comma-separated list.
"""
from __future__ import annotations

import argparse
import os
from typing import List, Optional, Tuple

import torch

import pomp_core
from pomp_core.cli import check_clip_args, run_tool
from pomp_core.log import setup_logging
from pomp_core.transfer import classify


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ViT-B-16-quickgelu", help="open_clip architecture name")
    p.add_argument("--pretrained", default="openai", help="open_clip tag or local checkpoint file")
    p.add_argument("--prompt", default="a photo of a {}.", help="prompt file or a template with {}")
    p.add_argument("--vocabulary", required=True, help="text file, COCO/LVIS json or 'name1,name2,...'")
    p.add_argument("--image", required=True, help="an image file or a folder of images")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--trusted", action="store_true", help="allow prompt files that need full unpickling")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> List[Tuple[str, List[Tuple[str, float]]]]:
    args = parse_args(argv)
    if not os.path.exists(args.image):
        raise FileNotFoundError(f"--image '{args.image}' does not exist (an image file or a folder of images)")
    names = pomp_core.load_vocabulary(args.vocabulary)
    if os.path.isfile(args.prompt):
        classifier = pomp_core.load_prompt(args.prompt, trusted=args.trusted)
    elif "{}" in args.prompt:
        classifier = args.prompt
    else:
        raise FileNotFoundError(f"--prompt '{args.prompt}' is neither a prompt file nor a template with '{{}}'")
    check_clip_args(args.model, args.pretrained)
    model, tokenizer, preprocess = pomp_core.load_clip(args.model, pretrained=args.pretrained, device=args.device)
    rows = classify(model, tokenizer, preprocess, args.image, classifier, names, args.topk, args.batch_size)
    for path, top in rows:
        print(path)
        for rank, (name, score) in enumerate(top, 1):
            print(f"  {rank}. {name:<40s} {score:.4f}")
    return rows


if __name__ == "__main__":
    setup_logging()
    run_tool(main)

#!/usr/bin/env python
"""Write class embeddings of a vocabulary with a POMP prompt, for detectors and other consumers.

    python tools/export_embeddings.py --model ViT-B-16-quickgelu --pretrained openai \
        --prompt pomp_vit_b16.pth.tar --vocabulary lvis_v1_val.json --out datasets/metadata/lvis_pomp.npy

``detic`` files are [C, D] float16, not normalised (Detic's ZERO_SHOT_WEIGHT_PATH);
``normalized`` files are [C, D] float32 with unit rows.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import List, Optional

import torch

import pomp_core
from pomp_core.cli import check_clip_args, run_tool
from pomp_core.log import setup_logging


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ViT-B-16-quickgelu", help="open_clip architecture name")
    p.add_argument("--pretrained", default="openai", help="open_clip tag or local checkpoint file")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt file (this project's or the POMP release's .pth.tar)")
    src.add_argument("--init-words", help="a hand-crafted context instead, e.g. 'a photo of a'")
    p.add_argument("--vocabulary", required=True,
                   help="text file (one name per line), COCO/LVIS json, or 'name1,name2,...'")
    p.add_argument("--out", required=True, type=Path, help="output .npy path")
    p.add_argument("--format", nargs="+", default=["detic"], choices=["detic", "normalized"],
                   help="with several formats, the first goes to --out and the others to <out>_<format>.npy")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--truncate-names", action="store_true", help="cut names too long for the context")
    p.add_argument("--trusted", action="store_true",
                   help="unpickle the prompt file fully (a raw Dassl checkpoint); only for files you trust")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> List[Path]:
    args = parse_args(argv)
    # every input is checked before CLIP loads (a download, or a minute of retries offline)
    prompt = pomp_core.load_prompt(args.prompt, trusted=args.trusted) if args.prompt else None
    names = pomp_core.load_vocabulary(args.vocabulary)
    check_clip_args(args.model, args.pretrained)
    model, tokenizer, _ = pomp_core.load_clip(args.model, pretrained=args.pretrained, device=args.device)
    if prompt is None:
        prompt = pomp_core.PromptLearner.from_words(args.init_words, model, tokenizer)
    emb = pomp_core.class_embeddings(model, tokenizer, prompt, names, normalize=False,
                                     batch_size=args.batch_size, truncate_names=args.truncate_names)
    written = []
    for i, fmt in enumerate(args.format):
        path = args.out if i == 0 else args.out.with_name(f"{args.out.stem}_{fmt}.npy")
        written.append(pomp_core.save_embeddings(emb, path, fmt=fmt))
        logging.info("wrote %s embeddings [%d x %d] to %s", fmt, *emb.shape, path)
    return written


if __name__ == "__main__":
    setup_logging()
    run_tool(main)

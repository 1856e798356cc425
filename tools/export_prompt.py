#!/usr/bin/env python
"""Write a prompt where the POMP release's load_model reads it (Dassl's checkpoint layout).

    python tools/export_prompt.py --prompt output/pomp/vit_b16_ctx4_k1000_5ep/prompt.pth \
        --out release_model --epoch 5 --best

gives release_model/prompt_learner/model.pth.tar-5 (and model-best.pth.tar), for the
release's ``train.py --model-dir release_model --load-epoch 5 --eval-only``.
The context is stored in float16 (the release's default PREC fp16); --dtype fp32 for its fp32/amp.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import List, Optional

import torch

import pomp_core
from pomp_core.cli import run_tool
from pomp_core.log import setup_logging
from pomp_core.prompt_io import read_extra, save_release_prompt


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt", required=True, help="prompt file (tools/pretrain.py output or a release .pth.tar)")
    p.add_argument("--out", required=True, type=Path, help="output directory (the release's --model-dir)")
    p.add_argument("--epoch", type=int, help="epoch to record and name the file by (default: the prompt's own)")
    p.add_argument("--dtype", choices=["fp16", "fp32"], default="fp16")
    p.add_argument("--best", action="store_true", help="also write model-best.pth.tar")
    p.add_argument("--trusted", action="store_true",
                   help="unpickle the prompt file fully (a raw Dassl checkpoint); only for files you trust")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> Path:
    args = parse_args(argv)
    prompt = pomp_core.load_prompt(args.prompt, trusted=args.trusted)
    epoch = args.epoch if args.epoch is not None else read_extra(args.prompt, args.trusted).get("epoch")
    if epoch is None:
        raise ValueError(f"{args.prompt} records no epoch: pass --epoch N")
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    path = save_release_prompt(prompt, args.out, epoch, dtype=dtype, best=args.best)
    logging.info("wrote %s (epoch %d, %s ctx %s)", path, epoch, args.dtype, tuple(prompt.ctx.shape))
    return path


if __name__ == "__main__":
    setup_logging()
    run_tool(main)

#!/usr/bin/env python
"""Write prompts where the POMP release's load_model reads them (Dassl's checkpoint layout).

    python tools/export_prompt.py --run output/pomp/vit_b16_ctx4_k1000_5ep --out release_model
    python tools/export_prompt.py --prompt output/pomp/vit_b16_ctx4_k1000_5ep/prompt.pth \
        --out release_model --epoch 5 --best

--run gives release_model/prompt_learner/model.pth.tar-<e> for every epoch the run kept
(prompts/epoch_<e>.pth) and model-best.pth.tar for its best epoch (prompt_best.pth, when it
validated): what the release's train.py --validation-test leaves and xd_test.sh loads.
--prompt writes one file, model.pth.tar-<epoch> (and model-best.pth.tar with --best), for the
release's ``train.py --model-dir release_model --load-epoch <epoch> --eval-only``.
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
from pomp_core.pretrain.selection import best_epoch, epoch_prompts
from pomp_core.prompt_io import read_extra, save_release_prompt


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt file (tools/pretrain.py output or a release .pth.tar)")
    src.add_argument("--run", type=Path, help="a tools/pretrain.py output folder: every epoch and the best")
    p.add_argument("--out", required=True, type=Path, help="output directory (the release's --model-dir)")
    p.add_argument("--epoch", type=int, help="with --prompt: epoch to record and name the file by "
                                             "(default: the prompt's own)")
    p.add_argument("--dtype", choices=["fp16", "fp32"], default="fp16")
    p.add_argument("--best", action="store_true", help="with --prompt: also write model-best.pth.tar")
    p.add_argument("--trusted", action="store_true",
                   help="unpickle the prompt file fully (a raw Dassl checkpoint); only for files you trust")
    return p.parse_args(argv)


def export_run(run: Path, out: Path, dtype: torch.dtype) -> Path:
    """Every kept epoch as model.pth.tar-<e>; the best epoch also as model-best.pth.tar."""
    epochs = epoch_prompts(run)
    if not epochs:
        raise FileNotFoundError(f"{run} holds no prompts/epoch_<e>.pth: pass a tools/pretrain.py output folder")
    best = best_epoch(run)
    if best is None:
        logging.warning("%s has no prompt_best.pth (it ran without validation): no model-best.pth.tar", run)
    path = out
    for epoch, file in epochs:
        path = save_release_prompt(pomp_core.load_prompt(file), out, epoch, dtype=dtype,
                                             best=epoch == best)
        logging.info("wrote %s%s", path, " and model-best.pth.tar" if epoch == best else "")
    return path


def main(argv: Optional[List[str]] = None) -> Path:
    args = parse_args(argv)
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    if args.run:
        return export_run(args.run, args.out, dtype)
    prompt = pomp_core.load_prompt(args.prompt, trusted=args.trusted)
    epoch = args.epoch if args.epoch is not None else read_extra(args.prompt, args.trusted).get("epoch")
    if epoch is None:
        raise ValueError(f"{args.prompt} records no epoch: pass --epoch N")
    path = save_release_prompt(prompt, args.out, epoch, dtype=dtype, best=args.best)
    logging.info("wrote %s (epoch %d, %s ctx %s)", path, epoch, args.dtype, tuple(prompt.ctx.shape))
    return path


if __name__ == "__main__":
    setup_logging()
    run_tool(main)

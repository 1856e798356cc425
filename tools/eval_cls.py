#!/usr/bin/env python
"""Zero-shot top-1 of prompts on classification benchmarks: the cross-dataset and
domain-shift tables, written as results.md / results.csv / results.png.

    python tools/eval_cls.py --model ViT-B-16-quickgelu --pretrained openai --root $DATA \
        --datasets cross-dataset domain-shift --prompt hand --prompt POMP=pomp_vit_b16_ctx4.pth.tar \
        --out output/transfer

Datasets are registry names (caltech101, oxford_pets, ..., imagenet_r; see docs/transfer.md),
the groups cross-dataset / domain-shift / imagenet, or paths of CoOp-style split_*.json
files. Prompts are [label=]source with source a prompt file, a template with {}, 'hand'
(each dataset's CLIP prompt) or 'ensemble' (CLIP's 80 ImageNet templates). Image features
are cached per model, weights and transform (--cache-dir), so a second prompt on a seen
dataset does not run the image tower. Several GPUs: torchrun --nproc_per_node N tools/eval_cls.py ...
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional

import torch.distributed as dist

import pomp_core
from pomp_core.cli import check_clip_args, run_tool
from pomp_core.log import setup_logging
from pomp_core.pretrain.distributed import init_process_group
from pomp_core.transfer import (DATASETS, GROUPS, FeatureCache, ModelIdentity, build_datasets, evaluate,
                                parse_prompt, write_report)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ViT-B-16-quickgelu", help="open_clip architecture name")
    p.add_argument("--pretrained", default="openai", help="open_clip tag or local checkpoint file")
    p.add_argument("--root", help="data root holding the datasets' folders (caltech-101/, oxford_pets/, ...)")
    p.add_argument("--datasets", nargs="+", required=True, help="names, groups or split_*.json paths")
    p.add_argument("--split", default="test", help="split to evaluate (CoOp: test; ImageNet's test is val/)")
    p.add_argument("--prompt", action="append", required=True, help="[label=]file|template|hand|ensemble; repeat")
    p.add_argument("--out", type=Path, default=Path("output/transfer"))
    p.add_argument("--cache-dir", type=Path, default=Path(os.path.expanduser("~/.cache/pomp/image_features")))
    p.add_argument("--no-cache", action="store_true", help="encode images every time, keep nothing on disk")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    p.add_argument("--trusted", action="store_true", help="allow prompt files that need full unpickling")
    p.add_argument("--title", default="zero-shot top-1")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> Dict[str, Dict[str, float]]:
    args = parse_args(argv)
    # torchrun's WORLD_SIZE / RANK / LOCAL_RANK, one GPU per rank (gloo on CPU-only machines): the set-up
    # pre-training uses, with torch's default collective timeout (the feature cache's broadcasts and gathers).
    group = init_process_group("auto", dist_timeout_s=1800.0, rank0_wait_s=1800.0)
    device, main_rank = group.device, group.is_main
    prompts = [parse_prompt(s, trusted=args.trusted) for s in args.prompt]
    labels = [p.label for p in prompts]
    if len(set(labels)) != len(labels):
        raise ValueError(f"two prompts share a label in {labels}: name them with label=source")
    datasets = build_datasets(args.datasets, args.root, args.split)
    check_clip_args(args.model, args.pretrained)
    model, tokenizer, preprocess = pomp_core.load_clip(args.model, pretrained=args.pretrained, device=device)
    identity = ModelIdentity.of(model, getattr(model, "pomp_model_name", args.model), args.pretrained, preprocess)
    cache = FeatureCache(None if args.no_cache else args.cache_dir, identity, args.batch_size, args.workers)
    results = evaluate(model, tokenizer, preprocess, datasets, prompts, cache)
    if main_rank:
        groups = {g: [DATASETS[n].title for n in names] for g, names in GROUPS.items()}
        paths = write_report(results, args.out, groups, args.title)
        print(paths["md"].read_text(), end="")
        logging.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    if dist.is_initialized():
        dist.destroy_process_group()
    return results


if __name__ == "__main__":
    setup_logging()
    run_tool(main)

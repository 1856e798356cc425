#!/usr/bin/env python
"""Evaluating P prompts on one dataset, with and without the image-feature cache.

Without the cache every prompt's evaluation runs the image tower over the dataset (as
separate eval runs would); with it, the first evaluation encodes and stores the features
and the other P-1 read them from disk. Default: the synthetic world's unseen split
(240 classes x 2 images, 64 px) with the shipped tiny CLIP, prompts initialised from P
different phrasings. Figures: images/s (P x images / wall time) and the ratio.

    .venv/bin/python benchmarks/bench_eval_cache.py [--prompts 4] [--classes 240] [--per-class 2]
        [--model ViT-B-16 --pretrained ''  # a ViT-B/16-sized image tower, random weights]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import pomp_core
from pomp_core.transfer import FeatureCache, ModelIdentity, PromptSpec, evaluate, load_split_json
from pomp_world import WorldConfig, write_world
from pomp_world.tiny_clip import MODEL_NAME, WEIGHTS

PHRASES = ["a photo of a", "a picture of a", "an image of a", "a rendering of a", "a drawing of a",
           "a photo of the", "a close-up photo of a", "a bright photo of a"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--classes", type=int, default=240)
    p.add_argument("--per-class", type=int, default=2)
    p.add_argument("--model", default=MODEL_NAME)
    p.add_argument("--pretrained", default=str(WEIGHTS), help="'' for random weights")
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()
    torch.manual_seed(0)
    model, tokenizer, preprocess = pomp_core.load_clip(args.model, pretrained=args.pretrained or None)
    prompts = [PromptSpec(w, pomp_core.PromptLearner.from_words(w, model, tokenizer))
               for w in (PHRASES * 4)[: args.prompts]]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "classification" / "pretrain").mkdir(parents=True)
        files = write_world(tmp, WorldConfig(pretrain_per_class=0, eval_per_class=args.per_class,
                                             eval_classes=args.classes), parts=("classification",))
        data = load_split_json(files["eval_unseen"])
        n = len(data.items)
        identity = ModelIdentity.of(model, args.model, args.pretrained or None, preprocess)
        with torch.no_grad():  # the text side is the same in both runs: encode it once up front
            evaluate(model, tokenizer, preprocess, [data], prompts, FeatureCache(None, identity, args.batch_size))

        start = time.perf_counter()
        for prompt in prompts:  # one eval run per prompt, features recomputed each time
            evaluate(model, tokenizer, preprocess, [data], [prompt], FeatureCache(None, identity, args.batch_size))
        plain = time.perf_counter() - start

        start = time.perf_counter()
        times = []
        for prompt in prompts:  # one eval run per prompt, features from the cache after the first
            t0 = time.perf_counter()
            evaluate(model, tokenizer, preprocess, [data], [prompt], FeatureCache(tmp / "cache", identity, args.batch_size))
            times.append(time.perf_counter() - t0)
        cached = time.perf_counter() - start

    print(f"model {args.model} ({'random weights' if not args.pretrained else Path(args.pretrained).name}), "
          f"{n} images, {len(data.class_names)} classes, P={len(prompts)} prompts, {torch.get_num_threads()} threads")
    print("| | wall time (s) | images/s (P x images / time) |")
    print("|---|---|---|")
    print(f"| no cache (image tower per prompt) | {plain:.1f} | {len(prompts) * n / plain:.0f} |")
    print(f"| feature cache | {cached:.1f} | {len(prompts) * n / cached:.0f} |")
    print(f"cache: first prompt {times[0]:.2f} s (encode + write), later prompts {sum(times[1:]) / max(1, len(times) - 1):.2f} s each")
    print(f"ratio (no cache / cache): {plain / cached:.2f}x")


if __name__ == "__main__":
    main()

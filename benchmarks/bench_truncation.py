#!/usr/bin/env python
"""Speed-up of cutting each batch after its longest EOT, on a ViT-B/16-sized text tower.

Random weights (the speed does not depend on them), ImageNet-1K class names, a 16-vector
prompt, class token at the end. Measures inference (class embeddings) and a training step
(forward + backward to the prompt), each with all 77 positions and truncated, in one run.

    .venv/bin/python benchmarks/bench_truncation.py [--names 256] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

import pomp_core
from pomp_core.text_tower import text_tower


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--names", type=int, default=256, help="class names per batch")
    p.add_argument("--n-ctx", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    torch.manual_seed(0)
    model, tokenizer, _ = pomp_core.load_clip("ViT-B-16")  # random weights, text tower as ViT-B/16
    model.visual = None  # only the text tower is timed
    prompt = pomp_core.PromptLearner(n_ctx=args.n_ctx, width=text_tower(model).width)
    names = list(IMAGENET_CLASSNAMES[: args.names])
    enc = pomp_core.PromptedTextEncoder(model, tokenizer)
    ids, _ = enc.token_ids(names, prompt.n_ctx, prompt.position)
    lengths = (enc.eot_index(ids) + 1).float()
    print(f"text tower: width {enc.tower.width}, {len(enc.tower.transformer.resblocks)} layers, "
          f"context {enc.tower.context_length}; {len(names)} names, M={prompt.n_ctx}; "
          f"prompt length mean {lengths.mean():.1f}, max {int(lengths.max())} tokens; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    def infer(truncate: bool):
        with torch.no_grad():
            enc(prompt, names, truncate=truncate)

    def train_step(truncate: bool):
        prompt.ctx.grad = None
        enc(prompt, names, truncate=truncate).pow(2).mean().backward()

    print(f"{'mode':<28}{'77 positions':>14}{'truncated':>12}{'speed-up':>10}")
    for label, fn in [("inference (no grad)", infer), ("train step (fwd + bwd)", train_step)]:
        full = timed(lambda: fn(False), args.repeats)
        short = timed(lambda: fn(True), args.repeats)
        print(f"{label:<28}{full:>13.2f}s{short:>11.2f}s{full / short:>9.1f}x")
    # the sorted-batch path of class_embeddings: all of ImageNet-1K in batches of 256
    # (open_clip's list names two classes twice each: 'missile', 'sunglasses')
    vocab = list(dict.fromkeys(IMAGENET_CLASSNAMES))
    n = len(vocab)
    start = time.perf_counter()
    pomp_core.class_embeddings(model, tokenizer, prompt, vocab, progress=False)
    elapsed = time.perf_counter() - start
    print(f"class_embeddings for {n} ImageNet-1K names (length-sorted batches of 256): "
          f"{elapsed:.1f}s, {n / elapsed:.0f} names/s")


if __name__ == "__main__":
    main()

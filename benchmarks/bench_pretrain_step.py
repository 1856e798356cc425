#!/usr/bin/env python
"""Step time and peak memory of POMP's training step, on CPU, ViT-B/16-sized text tower.

Random text-tower weights and synthetic image features (the image tower is frozen, so a
step's trainable cost is the text side). Every configuration runs in its own process so
that its peak memory (peak RSS minus RSS before the step) is its own. Rows:

* ``original``: a straightforward implementation of the release's step: every row's
  positive re-encoded (B = images x views prompts) plus K-1 negatives, all 77 positions;
* ``pomp``: this project's step: distinct classes once, each batch cut after its longest EOT;
* ``pomp -trunc`` / ``pomp -dedup`` / ``pomp +ckpt``: one optimisation removed / checkpointing added;
* ``full softmax``: every one of N classes encoded each step (CoOp);
* the same pomp step at growing N with K fixed (cost must stay flat).

    .venv/bin/python benchmarks/bench_pretrain_step.py            # the full table (~30 min on 2 cores)
    .venv/bin/python benchmarks/bench_pretrain_step.py --layers 2 --ks 64 256 --n-classes 1000   # quick look
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import itertools
import json
import subprocess
import sys
import threading
import time
from typing import Dict, List

import torch
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

import pomp_core
from pomp_core.pretrain.contrast import (build_contrast_batch, local_contrast_logits, local_contrast_loss,
                                         sample_negatives)

libc = ctypes.CDLL("libc.so.6")


def class_names(n: int) -> List[str]:
    """n distinct names of realistic token length: ImageNet names, then 'A-ish B' blends."""
    base = list(dict.fromkeys(IMAGENET_CLASSNAMES))
    names = dict.fromkeys(base)
    for i, j in itertools.product(range(len(base)), repeat=2):
        if len(names) >= n:
            break
        names[f"{base[i].split()[-1]}-like {base[(i + 7 * j + 1) % len(base)]}"] = None
    return list(names)[:n]


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def available_mb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("inf")


class PeakRSS(threading.Thread):
    """Samples the process's RSS every 2 ms while a step runs (CPU tensors have no peak counter)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.running = rss_mb(), True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss_mb())
            time.sleep(0.002)

    def stop(self) -> float:
        self.running = False
        self.join()
        return max(self.peak, rss_mb())


def run_one(cfg: Dict) -> Dict:
    torch.manual_seed(0)
    model, tokenizer, _ = pomp_core.load_clip("ViT-B-16")
    model.visual = None
    tower = pomp_core.text_tower(model)
    tower.transformer.resblocks = tower.transformer.resblocks[: cfg["layers"]]
    tower.transformer.grad_checkpointing = cfg["mode"] == "pomp +ckpt"
    prompt = pomp_core.PromptLearner(n_ctx=cfg["n_ctx"], width=tower.width)
    enc = pomp_core.PromptedTextEncoder(model, tokenizer)
    names = class_names(cfg["n"])
    n, k, b, views = cfg["n"], cfg["k"], cfg["batch"], cfg["views"]
    labels = torch.randperm(n)[:b].repeat_interleave(views)  # distinct images, `views` views each
    image_feats = torch.randn(len(labels), tower.text_projection.shape[1])
    opt = torch.optim.SGD([prompt.ctx], lr=0.002, momentum=0.9)
    scale = model.logit_scale.exp()

    def step() -> int:
        opt.zero_grad()
        mode = cfg["mode"]
        if mode == "full softmax":
            text = enc(prompt, names)
            logits = scale * torch.nn.functional.normalize(image_feats, dim=-1) @ \
                torch.nn.functional.normalize(text, dim=-1).t()
            loss = torch.nn.functional.cross_entropy(logits, labels)
            encoded = n
        else:
            negatives = sample_negatives(n, k)
            cb = build_contrast_batch(labels, negatives, n)
            if mode in ("original", "pomp -dedup"):
                # one prompt per row for the positives, then the negatives
                rows = [names[c] for c in labels.tolist()] + [names[c] for c in negatives.tolist()]
                text = enc(prompt, rows, truncate=mode != "original")
                img = torch.nn.functional.normalize(image_feats, dim=-1)
                txt = torch.nn.functional.normalize(text, dim=-1)
                pos = (img * txt[: len(labels)]).sum(-1, keepdim=True) * scale
                neg = scale * img @ txt[len(labels):].t() + cb.margin
                loss = local_contrast_loss(torch.cat([pos, neg], dim=1))
                encoded = len(rows)
            else:
                text = enc(prompt, [names[c] for c in cb.classes.tolist()], truncate=mode != "pomp -trunc")
                loss = local_contrast_loss(local_contrast_logits(image_feats, text, cb, scale))
                encoded = len(cb.classes)
        loss.backward()
        opt.step()
        return encoded

    times, peaks = [], []
    for _ in range(cfg["repeats"] + 1):  # the first step is a warm-up
        gc.collect()
        libc.malloc_trim(0)  # hand freed memory back so RSS before the step is what is live
        before = rss_mb()
        monitor = PeakRSS()
        monitor.start()
        start = time.perf_counter()
        encoded = step()
        times.append(time.perf_counter() - start)
        peaks.append(monitor.stop() - before)
    return {**cfg, "seconds": min(times[1:]), "prompts": encoded, "peak_mb": max(peaks[1:])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=12, help="text transformer layers (ViT-B/16: 12)")
    p.add_argument("--n-classes", type=int, default=2000, help="N for the K comparison")
    p.add_argument("--ks", type=int, nargs="+", default=[64, 256, 1000])
    p.add_argument("--growth-ns", type=int, nargs="+", default=[2000, 8000, 21000],
                   help="N values for the flatness check at K = --growth-k")
    p.add_argument("--growth-k", type=int, default=256)
    p.add_argument("--batch", type=int, default=32, help="images per step")
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--n-ctx", type=int, default=4)
    p.add_argument("--repeats", type=int, default=1, help="timed steps after one warm-up step")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_one(json.loads(args.child))))
        return

    common = dict(layers=args.layers, batch=args.batch, views=args.views, n_ctx=args.n_ctx, repeats=args.repeats)
    runs = [dict(mode=m, n=args.n_classes, k=k, **common) for k in args.ks
            for m in ("original", "pomp", "pomp -trunc", "pomp -dedup", "pomp +ckpt")]
    runs.append(dict(mode="full softmax", n=args.n_classes, k=args.n_classes, **common))
    runs += [dict(mode="pomp", n=n, k=args.growth_k, **common) for n in args.growth_ns]

    print(f"text tower: ViT-B/16 width 512, {args.layers} layers, random weights; {args.batch} images x "
          f"{args.views} views per step, M={args.n_ctx}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'mode':<16}{'N':>7}{'K':>6}{'prompts':>9}{'step s':>9}{'peak MB':>9}   vs original at equal K")
    originals: Dict[int, Dict] = {}
    mb_per_prompt: Dict[str, float] = {}
    for cfg in runs:
        # Skip what would not fit in memory, projected from the same mode's smaller run.
        rows = cfg["batch"] * cfg["views"] if cfg["mode"] in ("original", "pomp -dedup") else cfg["batch"]
        prompts = cfg["n"] if cfg["mode"] == "full softmax" else rows + cfg["k"] - 1
        projected = mb_per_prompt.get(cfg["mode"], 0.0) * prompts
        if projected > 0.8 * available_mb():
            print(f"{cfg['mode']:<16}{cfg['n']:>7}{cfg['k']:>6}{prompts:>9}{'-':>9}{projected:>9.0f}   "
                  f"skipped: projected peak above 80% of the {available_mb():.0f} MB available", flush=True)
            continue
        out = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        mb_per_prompt.setdefault(r["mode"], r["peak_mb"] / r["prompts"])
        ratio = ""
        if r["mode"] == "original":
            originals[r["k"]] = r
        elif r["k"] in originals and r["n"] == args.n_classes:
            o = originals[r["k"]]
            ratio = f"{o['seconds'] / r['seconds']:.1f}x faster, {r['peak_mb'] / max(o['peak_mb'], 1):.2f}x mem"
        print(f"{r['mode']:<16}{r['n']:>7}{r['k']:>6}{r['prompts']:>9}{r['seconds']:>9.2f}{r['peak_mb']:>9.0f}   {ratio}",
              flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Step time and peak memory of POMP's training step against the release's, on CPU.

ViT-B/16 text tower with random weights and synthetic image features (the image tower is
frozen, so a step's trainable cost is the text side). Every configuration runs in its own
process so that its peak memory (peak RSS minus RSS before the step) is its own; all use
the same seed, so they see the same weights, prompt, labels and negatives, and the parent
compares their gradients. Modes:

* ``release``: the release's step (trainers/pomp.py): every row's positive re-encoded
  (one prompt per image view) plus K-1 negatives, all 77 positions;
* ``pomp``: this project's default: distinct classes once, length-aware encoding
  (groups by length, shared leading positions once), fp32, exact;
* ``pomp +ckpt``: with gradient checkpointing; ``pomp bf16``: under CPU bf16 autocast;
* (``--sweep``) ``pomp -trunc`` / ``pomp -dedup``: one optimisation removed, ``full
  softmax``, and the pomp step at growing N.

Default rows: (a) 32 images x 1 view, K=128, M=16, the 1,000 ImageNet-1K names;
(b) the recipe: 32 images x 4 views, K=1000, M=4, the 10,450 ImageNet-21K winter21 names
(timm's imagenet21k_miil_w21_synsets.txt + imagenet_synset_to_lemma.txt, first lemma, as
``data.lemmas=timm`` trains on them). A release step
that would not fit in memory runs in chunks (features without gradient, the loss, then
each chunk again with its share of the gradient: the release's exact gradient); its time
is then the chunks' forward + backward and its peak is projected from the largest chunk.

    .venv/bin/python benchmarks/bench_pretrain_step.py                 # rows (a) and (b)
    .venv/bin/python benchmarks/bench_pretrain_step.py --rows a        # one row
    .venv/bin/python benchmarks/bench_pretrain_step.py --sweep --layers 2 --ks 64 256 --n-classes 1000
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

import pomp_core
from pomp_core.text_tower import text_tower
from pomp_core.pretrain.contrast import (build_contrast_batch, local_contrast_logits, local_contrast_loss,
                                         sample_negatives)
from pomp_core.pretrain.data import read_lemmas, timm_info_file

libc = ctypes.CDLL("libc.so.6")
ROWS = {
    "a": dict(names="imagenet1k", n=1000, k=128, batch=32, views=1, n_ctx=16),
    "b": dict(names="winter21", n=10450, k=1000, batch=32, views=4, n_ctx=4),
}


def winter21_names() -> List[str]:
    """The 10,450 winter21 class names as ``data.lemmas=timm`` reads them (first lemma per wnid)."""
    lemma = read_lemmas("timm")
    return [lemma[w.strip()] for w in open(timm_info_file("imagenet21k_miil_w21_synsets.txt")) if w.strip()]


def class_names(kind: str, n: int) -> List[str]:
    if kind == "winter21":
        return winter21_names()[:n]
    if kind == "imagenet1k":
        return list(IMAGENET_CLASSNAMES)[:n]
    # n distinct names of realistic token length: ImageNet names, then 'A-ish B' blends
    base = list(dict.fromkeys(IMAGENET_CLASSNAMES))
    names = dict.fromkeys(base)
    for i, j in itertools.product(range(len(base)), repeat=2):
        if len(names) >= n:
            break
        names[f"{base[i].split()[-1]}-like {base[(i + 7 * j + 1) % len(base)]}"] = None
    return list(names)[:n]


def status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM): no sampling thread competing with the step."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def available_mb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("inf")


def run_one(cfg: Dict) -> Dict:
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    model, tokenizer, _ = pomp_core.load_clip("ViT-B-16")
    model.visual = None
    tower = text_tower(model)
    tower.transformer.resblocks = tower.transformer.resblocks[: cfg["layers"]]
    mode = cfg["mode"]
    tower.transformer.grad_checkpointing = mode == "pomp +ckpt"
    prompt = pomp_core.PromptLearner(n_ctx=cfg["n_ctx"], width=tower.width)
    enc = pomp_core.PromptedTextEncoder(model, tokenizer)
    names = class_names(cfg["names"], cfg["n"])
    n, k, b, views = cfg["n"], cfg["k"], cfg["batch"], cfg["views"]
    labels = torch.randperm(n)[:b].repeat_interleave(views)  # distinct images, `views` views each
    image_feats = torch.randn(len(labels), tower.text_projection.shape[1])
    scale = model.logit_scale.exp()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if mode == "pomp bf16" else contextlib.nullcontext()
    chunk = cfg.get("chunk")
    phases: Dict[str, float] = {}

    def release_loss(text: torch.Tensor, cb) -> torch.Tensor:
        img = F.normalize(image_feats, dim=-1)
        txt = F.normalize(text, dim=-1)
        pos = (img * txt[: len(labels)]).sum(-1, keepdim=True) * scale
        neg = scale * img @ txt[len(labels):].t() + cb.margin
        return local_contrast_loss(torch.cat([pos, neg], dim=1))

    def step(seed: int):
        prompt.ctx.grad = None
        negatives = sample_negatives(n, k, generator=torch.Generator().manual_seed(seed))
        cb = build_contrast_batch(labels, negatives, n)
        if mode == "full softmax":
            text = enc(prompt, names)
            logits = scale * F.normalize(image_feats, dim=-1) @ F.normalize(text, dim=-1).t()
            F.cross_entropy(logits, labels).backward()
            return n, text, torch.arange(n)
        if mode in ("release", "pomp -dedup"):
            # one prompt per row for the positives, then the negatives
            ids = torch.cat([labels, negatives])
            rows = [names[c] for c in ids.tolist()]
            truncate = mode != "release"
            if not chunk:
                text = enc(prompt, rows, truncate=truncate)
                release_loss(text, cb).backward()
                return len(rows), text, ids
            tic = time.perf_counter()
            with torch.no_grad():
                text = torch.cat([enc(prompt, rows[i:i + chunk], truncate=truncate) for i in range(0, len(rows), chunk)])
            phases["no-grad pass"] = time.perf_counter() - tic
            text.requires_grad_(True)
            release_loss(text, cb).backward()
            tic = time.perf_counter()
            for i in range(0, len(rows), chunk):
                enc(prompt, rows[i:i + chunk], truncate=truncate).backward(text.grad[i:i + chunk])
            phases["forward + backward"] = time.perf_counter() - tic
            return len(rows), text.detach(), ids
        with autocast:
            text = enc(prompt, [names[c] for c in cb.classes.tolist()], truncate=mode != "pomp -trunc")
        local_contrast_loss(local_contrast_logits(image_feats, text.float(), cb, scale)).backward()
        return len(cb.classes), text, cb.classes

    times, peaks = [], []
    first = None
    for i in range(1 if chunk else cfg["repeats"] + 1):  # the first step is a warm-up (chunks warm each other up)
        gc.collect()
        libc.malloc_trim(0)  # hand freed memory back so RSS before the step is what is live
        before = status_mb("VmRSS")
        reset_peak_rss()
        start = time.perf_counter()
        encoded, text, ids = step(seed=i)
        times.append(time.perf_counter() - start)
        peaks.append(status_mb("VmHWM") - before)
        if first is None:
            first = (prompt.ctx.grad.clone(), text.detach().float(), ids)
    result = {**cfg, "prompts": encoded, "peak_mb": max(peaks[1:] or peaks)}
    if chunk:  # the release's compute: the chunks' forward + backward; its peak: projected from one chunk
        result.update(seconds=phases["forward + backward"], peak_mb=max(peaks) * encoded / chunk, projected=True)
    else:
        result["seconds"] = min(times[1:] or times)
    if cfg.get("save"):
        grad, text, ids = first
        feats = {}
        for c, f in zip(ids.tolist(), text):
            feats.setdefault(c, f)  # a class's features (the release encodes its positives once per row)
        torch.save({"grad": grad, "classes": sorted(feats), "text": torch.stack([feats[c] for c in sorted(feats)])},
                   cfg["save"])
    return result


def compare(ref_path: str, path: str) -> str:
    """Relative max error of the first step's prompt gradient and of the text features."""
    ref, out = torch.load(ref_path), torch.load(path)
    rows = {c: i for i, c in enumerate(ref["classes"])}
    common = [c for c in out["classes"] if c in rows]
    ref_text = ref["text"][[rows[c] for c in common]]
    out_text = out["text"][[out["classes"].index(c) for c in common]]
    g = (out["grad"] - ref["grad"]).abs().max() / ref["grad"].abs().max()
    t = (out_text - ref_text).abs().max() / ref_text.abs().max()
    return f"grad err {g:.1e}, feature err {t:.1e}"


def run_child(cfg: Dict) -> Dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{cfg['mode']} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def release_rows(args: argparse.Namespace) -> None:
    common = dict(layers=args.layers, repeats=args.repeats, threads=args.threads)
    print(f"text tower: ViT-B/16 width 512, {args.layers} layers, random weights; torch {torch.__version__}, "
          f"{args.threads} threads; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    print(f"{'row':<4}{'mode':<12}{'N':>7}{'K':>6}{'rows':>6}{'M':>4}{'prompts':>9}{'step s':>9}{'peak MB':>9}"
          "   vs release (same run)")
    tmp = Path(tempfile.mkdtemp(prefix="bench_pretrain_"))
    for row in args.rows:
        spec = {**ROWS[row], **common}
        rows = spec["batch"] * spec["views"]
        release = None
        for mode in ["release"] + args.modes:
            cfg = dict(spec, mode=mode, save=str(tmp / f"{row}-{mode}.pt"))
            if mode == "release":
                # 77 positions x prompts; chunk when the projected peak would not fit (~20 MB per prompt)
                prompts = rows + spec["k"] - 1
                if prompts * 20 * spec["layers"] / 12 > 0.6 * available_mb():
                    cfg["chunk"] = args.chunk
            r = run_child(cfg)
            note = " (projected)" if r.get("projected") else ""
            ratio = ""
            if release is None:
                release = r
            else:
                ratio = (f"{release['seconds'] / r['seconds']:.1f}x faster, {r['peak_mb'] / max(release['peak_mb'], 1):.3f}x "
                         f"peak; {compare(release['save'], r['save'])}")
            print(f"{row:<4}{mode:<12}{r['n']:>7}{r['k']:>6}{rows:>6}{r['n_ctx']:>4}{r['prompts']:>9}{r['seconds']:>9.2f}"
                  f"{r['peak_mb']:>9.0f}   {ratio}{note}", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


def sweep(args: argparse.Namespace) -> None:
    common = dict(layers=args.layers, batch=args.batch, views=args.views, n_ctx=args.n_ctx, repeats=args.repeats,
                  threads=args.threads, names="blend")
    runs = [dict(mode=m, n=args.n_classes, k=k, **common) for k in args.ks
            for m in ("release", "pomp", "pomp -trunc", "pomp -dedup", "pomp +ckpt")]
    runs.append(dict(mode="full softmax", n=args.n_classes, k=args.n_classes, **common))
    runs += [dict(mode="pomp", n=n, k=args.growth_k, **common) for n in args.growth_ns]

    print(f"text tower: ViT-B/16 width 512, {args.layers} layers, random weights; {args.batch} images x "
          f"{args.views} views per step, M={args.n_ctx}; torch {torch.__version__}, {args.threads} threads")
    print(f"{'mode':<16}{'N':>7}{'K':>6}{'prompts':>9}{'step s':>9}{'peak MB':>9}   vs release at equal K")
    releases: Dict[int, Dict] = {}
    mb_per_prompt: Dict[str, float] = {}
    for cfg in runs:
        # Skip what would not fit in memory, projected from the same mode's smaller run.
        rows = cfg["batch"] * cfg["views"] if cfg["mode"] in ("release", "pomp -dedup") else cfg["batch"]
        prompts = cfg["n"] if cfg["mode"] == "full softmax" else rows + cfg["k"] - 1
        projected = mb_per_prompt.get(cfg["mode"], 0.0) * prompts
        if projected > 0.8 * available_mb():
            print(f"{cfg['mode']:<16}{cfg['n']:>7}{cfg['k']:>6}{prompts:>9}{'-':>9}{projected:>9.0f}   "
                  f"skipped: projected peak above 80% of the {available_mb():.0f} MB available", flush=True)
            continue
        r = run_child(cfg)
        mb_per_prompt.setdefault(r["mode"], r["peak_mb"] / r["prompts"])
        ratio = ""
        if r["mode"] == "release":
            releases[r["k"]] = r
        elif r["k"] in releases and r["n"] == args.n_classes:
            o = releases[r["k"]]
            ratio = f"{o['seconds'] / r['seconds']:.1f}x faster, {r['peak_mb'] / max(o['peak_mb'], 1):.2f}x mem"
        print(f"{r['mode']:<16}{r['n']:>7}{r['k']:>6}{r['prompts']:>9}{r['seconds']:>9.2f}{r['peak_mb']:>9.0f}   {ratio}",
              flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", nargs="+", choices=sorted(ROWS), default=sorted(ROWS))
    p.add_argument("--modes", nargs="+", default=["pomp", "pomp +ckpt", "pomp bf16"],
                   choices=["pomp", "pomp +ckpt", "pomp bf16", "pomp -trunc", "pomp -dedup"],
                   help="compared with the release in each row")
    p.add_argument("--chunk", type=int, default=128, help="prompts per chunk of a release step too big to fit")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--layers", type=int, default=12, help="text transformer layers (ViT-B/16: 12)")
    p.add_argument("--repeats", type=int, default=1, help="timed steps after one warm-up step")
    p.add_argument("--sweep", action="store_true", help="the K / N sweep below instead of the rows")
    p.add_argument("--n-classes", type=int, default=2000, help="sweep: N for the K comparison")
    p.add_argument("--ks", type=int, nargs="+", default=[64, 256, 1000])
    p.add_argument("--growth-ns", type=int, nargs="+", default=[2000, 8000, 21000],
                   help="sweep: N values for the flatness check at K = --growth-k")
    p.add_argument("--growth-k", type=int, default=256)
    p.add_argument("--batch", type=int, default=32, help="sweep: images per step")
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--n-ctx", type=int, default=4)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_one(json.loads(args.child))))
    elif args.sweep:
        sweep(args)
    else:
        release_rows(args)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Quick-start run: a tiny CLIP, a soft prompt, class embeddings of a vocabulary, exported.

Runs offline in seconds with a randomly initialised tiny open_clip model; with real
weights use tools/export_embeddings.py (same library calls).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

import pomp_core
from pomp_core.log import setup_logging

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="pomp-tiny")
    p.add_argument("--vocabulary", default=str(REPO / "configs/vocabularies/demo.txt"))
    p.add_argument("--n-ctx", type=int, default=4)
    p.add_argument("--output-dir", type=Path, default=REPO / "output/demo")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    torch.manual_seed(args.seed)
    model, tokenizer, _ = pomp_core.load_clip(args.model)
    width = pomp_core.text_tower(model).width
    prompt = pomp_core.PromptLearner(n_ctx=args.n_ctx, width=width, model_name=args.model)
    prompt_path = pomp_core.save_prompt(prompt, args.output_dir / "prompt.pth")
    names = pomp_core.load_vocabulary(args.vocabulary)
    emb = pomp_core.class_embeddings(model, tokenizer, prompt, names, normalize=False)
    detic = pomp_core.save_embeddings(emb, args.output_dir / "demo_detic.npy", fmt="detic")
    norm = pomp_core.save_embeddings(emb, args.output_dir / "demo_normalized.npy", fmt="normalized")

    unit = torch.nn.functional.normalize(emb[:3], dim=-1)
    print(f"model         {args.model} (random weights, text width {width})")
    print(f"prompt        {prompt} -> {prompt_path}")
    print(f"vocabulary    {len(names)} classes from {args.vocabulary}")
    print(f"embeddings    [{emb.shape[0]} x {emb.shape[1]}] float16 (Detic) -> {detic}")
    print(f"              [{emb.shape[0]} x {emb.shape[1]}] float32, unit rows -> {norm}")
    print(f"cosine of the first three classes:\n{(unit @ unit.T).numpy().round(3)}")


if __name__ == "__main__":
    setup_logging()
    main()

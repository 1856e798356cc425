#!/usr/bin/env python
"""GPU check of ``train.precision=fp16_weights`` (the release's ``PREC: fp16``) against fp32.

Trains the real ViT-B/16 shapes (random weights unless ``--pretrained`` names a local file:
the GPU machines have no network) on a synthetic folder-per-class set (one image per class, N = steps x batch = 1,280 by default,
K = 1000), 2 epochs of
``--steps`` steps each (epoch 1 the constant warmup lr 1e-5, epoch 2 lr 2e-3, the release's
schedule), and reports per epoch the fraction of context entries an optimizer step changes,
the mean loss, the relative distance of the fp16 prompt from the fp32 one, and step time.
Expected (docs/pretraining.md, fp16): in the warmup epoch fp16 moves a small fraction of the
entries where fp32 moves all of them; at lr 2e-3 both move all.

    python benchmarks/bench_fp16_release.py                       # a few minutes on one GPU
    python benchmarks/bench_fp16_release.py --model pomp-tiny --image-size 32 --device cpu \
        --precisions fp32 --steps 2 --k 16 --workers 0  # smoke test on CPU
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pomp_core.pretrain.config import load_config  # noqa: E402
from pomp_core.pretrain.trainer import Pretrainer  # noqa: E402


def write_images(root: Path, classes: int, per_class: int) -> None:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"n{c:08d}").mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / f"n{c:08d}" / f"{i}.jpg")


def run(precision: str, args: argparse.Namespace, root: Path, out: Path) -> Dict[str, List[float]]:
    cfg = load_config(str(Path(__file__).resolve().parents[1] / "configs/pomp/vit_b16_ctx4_k1000_5ep.yaml"), [
        f"model.name={args.model}", f"model.pretrained={args.pretrained or 'null'}", f"data.root={root}",
        "data.miil_tree=null", f"data.image_size={args.image_size}", "data.val_root=null", "data.shots=1",
        f"data.workers={args.workers}", f"sampling.k={args.k}", f"optim.batch_size={args.batch}",
        "optim.epochs=5", f"train.max_steps={2 * args.steps}", f"train.precision={precision}",
        f"train.device={args.device}", "train.final_prompt=last", "train.tensorboard=false",
        f"train.output_dir={out / precision}", f"data.index_cache={out / 'index'}", "train.save_every=100000"])
    trainer = Pretrainer(cfg)
    trainer.setup()
    stats: Dict[str, List[float]] = {"moved": [], "loss": [], "seconds": [], "lr": []}
    real = trainer.train_step

    def measured(batches):
        before = trainer.prompt.ctx.detach().clone()
        tic = time.perf_counter()
        metrics = real(batches)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        stats["seconds"].append(time.perf_counter() - tic)
        stats["moved"].append(float((trainer.prompt.ctx.detach() != before).float().mean()))
        stats["loss"].append(metrics["loss"] if metrics else float("nan"))
        stats["lr"].append(metrics["lr"] if metrics else float("nan"))
        return metrics

    trainer.train_step = measured
    trainer.fit()
    stats["ctx"] = trainer.prompt.ctx.detach().float().cpu()
    return stats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ViT-B-16-quickgelu")
    p.add_argument("--pretrained", help="local CLIP weights (default: random weights)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--precisions", nargs="+", default=["fp32", "fp16_weights"])
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=40, help="steps per epoch (one image per class: N = steps x batch)")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--image-size", type=int, default=224)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root, out = Path(tmp) / "images", Path(tmp) / "out"
        write_images(root, args.steps * args.batch, 1)
        results = {prec: run(prec, args, root, out) for prec in args.precisions}
    report = {}
    for prec, s in results.items():
        n = args.steps
        report[prec] = {f"epoch {e + 1}": {"lr": s["lr"][e * n], "moved": float(np.mean(s["moved"][e * n:(e + 1) * n])),
                                           "loss": float(np.nanmean(s["loss"][e * n:(e + 1) * n])),
                                           "step_s": float(np.median(s["seconds"][e * n:(e + 1) * n]))}
                        for e in range(2)}
    if "fp32" in results and "fp16_weights" in results:
        a, b = results["fp32"]["ctx"], results["fp16_weights"]["ctx"]
        report["fp16 vs fp32 prompt, relative distance"] = float((a - b).norm() / a.norm())
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

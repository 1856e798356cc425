"""Segmentation on the world: ZSSeg's two stages (configs/seg/zsseg-prompt_world.py, then
configs/seg/zsseg-r18tiny_world.py): (a) tune a prompt on masked crops of the seen classes,
started from one prompt, (b) the mask-proposal network with the tuned prompt's text features;
tested on the val scenes with the full vocabulary (seen / unseen mIoU, hIoU)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import torch

from ..tiny_clip import WEIGHTS

ROOT = Path(__file__).resolve().parents[2]
PROMPT_CFG = ROOT / "configs/seg/zsseg-prompt_world.py"
SEG_CFG = ROOT / "configs/seg/zsseg-r18tiny_world.py"
HAND_WORDS = "a photo of a"  # ZSSeg initialises stage (a) from these words
METRICS = ("mIoU_seen", "mIoU_unseen", "hIoU")


def _args(config: Path, seg_root: str | Path, work_dir: Path, options: List[str], *extra: str):
    from pomp_seg.cli import base_parser, config_from_args

    return config_from_args(base_parser("").parse_args(
        [str(config), *extra, "--work-dir", str(work_dir), "--data-root", str(seg_root), "--cfg-options", *options]))


def schedule(iters: int) -> List[str]:
    """Options that run stage (b)'s schedule in ``iters`` iterations: the polynomial decay
    reaching zero at the end, where its one checkpoint is saved."""
    return [f"train_cfg.max_iters={iters}", f"default_hooks.checkpoint.interval={iters}", f"param_scheduler.0.end={iters}"]


def train_segmentor(seg_root: str | Path, out: str | Path, seed: int, iters: int,
                    prompt: Optional[str] = None, words: Optional[str] = None) -> Dict[str, float]:
    """Seen / unseen mIoU and hIoU (points) of ZSSeg whose stage (a) starts from the prompt file
    ``prompt`` or from hand-crafted ``words``; stage (b) runs ``iters`` iterations."""
    from mmengine.runner import Runner

    from pomp_seg.checkpoint import DurableRunner

    torch.set_num_threads(1)  # a pool worker: two jobs share two cores
    out = Path(out)
    start = [f"model.prompt={prompt}", "model.init_words=None"] if prompt else [f"model.init_words={words}"]
    seeded = [f"randomness.seed={seed}"]
    DurableRunner.from_cfg(_args(PROMPT_CFG, seg_root, out / "prompt",
                                 [f"model.clip_pretrained={WEIGHTS}", *seeded, *start])).train()
    stage_b = [f"model.text_encoder.clip_pretrained={WEIGHTS}", f"model.text_encoder.prompt={out / 'prompt' / 'prompt.pth'}",
               *seeded, *schedule(iters), f"train_cfg.val_interval={iters}"]
    DurableRunner.from_cfg(_args(SEG_CFG, seg_root, out / "segmentor",
                                 stage_b + ["val_dataloader=None", "val_cfg=None", "val_evaluator=None"])).train()
    cfg = _args(SEG_CFG, seg_root, out / "segmentor", stage_b)
    cfg.load_from = str(out / "segmentor" / f"iter_{iters}.pth")
    metrics = Runner.from_cfg(cfg).test()
    return {k: float(metrics[k]) for k in METRICS}

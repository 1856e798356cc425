"""POMP prompt pre-training: local contrast + local correction, single process or torchrun DDP.

:class:`Pretrainer` puts the builders together: the process group (:mod:`.distributed`),
the training data (:mod:`.train_data`), the text model (:mod:`.text_model`), the
optimizer (:mod:`.optim`), the proposal distribution (:mod:`.proposals`), checkpoints
(:mod:`.checkpoint`) and model selection (:mod:`.selection`); the loop is :mod:`.loop`.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, List, Optional

import torch

from ..durable import atomic_write_text, kill_point
from ..embeddings import class_embeddings
from ..images import eval_transform
from ..zero_shot import image_features, top1
from . import loop
from .checkpoint import CHECKPOINT, FORMAT, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import PretrainConfig
from .contrast import build_contrast_batch, local_contrast_logits, local_contrast_loss, sample_negatives
from .distributed import init_process_group
from .monitor import MetricsLog
from .optim import build_optimizer, lr_at
from .proposals import build_proposal
from .selection import ModelSelection
from .text_model import build_text_model
from .train_data import build_index, build_train_data, read_names

__all__ = ["Pretrainer", "lr_at"]
logger = logging.getLogger(__name__)


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    # Negatives depend only on (seed, rank, step): each rank (each micro-batch, with
    # optim.accumulate) draws its own, and a resumed run draws what the uninterrupted one would.
    return torch.Generator().manual_seed(seed * 1_000_003 + rank * 7_919 + step)


class Pretrainer:
    def __init__(self, cfg: PretrainConfig) -> None:
        self.cfg = cfg
        t = cfg.train
        self.group = init_process_group(t.device, t.dist_timeout_s, t.rank0_wait_s)
        self.world, self.rank, self.device = self.group.world, self.group.rank, self.group.device
        self.out = Path(t.output_dir)
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)

    @property
    def is_main(self) -> bool:
        return self.group.is_main

    def wait_for_rank0(self) -> None:
        self.group.wait_for_rank0()

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Build everything; whatever can fail on bad input fails here, before any training."""
        cfg = self.cfg
        self.index = build_index(cfg, self.group)
        self.class_names = read_names(cfg, self.index)
        self.num_classes = len(self.class_names)
        if cfg.sampling.k < 2:
            raise ValueError(f"sampling.k must be at least 2, got {cfg.sampling.k}")
        if cfg.train.final_prompt not in ("last", "best"):
            raise ValueError(f"train.final_prompt must be last or best, got '{cfg.train.final_prompt}'")
        if cfg.train.final_prompt == "best" and not self.index.val:
            raise ValueError("train.final_prompt=best picks the epoch by validation, which is off: set "
                             "data.val_root (e.g. imagenet21k_val) or data.val_per_class, or train.final_prompt=last")
        lr_at(0, 1, cfg)  # an unknown optim.schedule fails here
        self.text_model = build_text_model(cfg, self.group, self.class_names)
        tm = self.text_model
        self.model, self.tokenizer, self.prompt, self.encoder, self.text = \
            tm.model, tm.tokenizer, tm.prompt, tm.encoder, tm.text
        self.optimizer = build_optimizer(cfg, self.prompt.ctx)
        self.proposal = build_proposal(cfg.sampling.distribution, [y for _, y in self.index.train],
                                       self.num_classes)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.train.precision == "fp16"
                                           and self.device.type == "cuda")
        self.data = build_train_data(cfg, self.group, self.index, self.class_names, self, self.out)
        self.dataset, self.sampler = self.data.dataset, self.data.sampler
        self.steps_per_epoch = self.data.steps_per_epoch
        self.total_steps = cfg.optim.epochs * self.steps_per_epoch
        if cfg.train.max_steps:
            self.total_steps = min(self.total_steps, cfg.train.max_steps)
        self.selection = ModelSelection(self.out)
        self.step = 0
        self.skipped = 0
        self.pending_validation = False  # the checkpoint at an epoch end precedes its validation

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> Dict:
        return {"format": FORMAT, "ctx": self.prompt.ctx.detach().cpu(),
                "optimizer": self.optimizer.state_dict(), "step": self.step, "skipped": self.skipped,
                "proposal": self.proposal.state_dict(), "scaler": self.scaler.state_dict(),
                "pending_validation": self.pending_validation, "selection": self.selection.state_dict(),
                "config": self.cfg.to_dict()}

    def save_checkpoint(self, log: Optional[MetricsLog] = None) -> Optional[Path]:
        """Keep the last two checkpoints, written atomically (see checkpoint.py); the metrics
        logged so far are flushed first, so a resume from this checkpoint finds them."""
        if not self.is_main:
            return None
        if log is not None:
            log.flush()
        return save_checkpoint(self.state_dict(), self.out, self.step)

    def latest_checkpoint(self) -> Optional[Path]:
        return latest_checkpoint(self.out)

    def resume(self, path: Optional[str] = None) -> None:
        """Continue from ``path`` (default: the newest checkpoint in the output folder)."""
        path = Path(path) if path else (self.latest_checkpoint() or self.out / CHECKPOINT)
        state = load_checkpoint(path)
        if state["ctx"].shape != self.prompt.ctx.shape:
            raise ValueError(f"checkpoint prompt {tuple(state['ctx'].shape)} does not match this "
                             f"config's {tuple(self.prompt.ctx.shape)}")
        with torch.no_grad():
            self.prompt.ctx.copy_(state["ctx"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.proposal.load_state_dict(state["proposal"])
        self.scaler.load_state_dict(state["scaler"])
        self.selection.load_state_dict(state.get("selection", {}))
        self.step, self.skipped = state["step"], state["skipped"]
        self.pending_validation = state.get("pending_validation", False)
        logger.info("resumed from %s at step %d", path, self.step)

    # ---------------------------------------------------------------- training
    def encode_all_classes(self) -> torch.Tensor:
        with self.text_model.autocast():
            return class_embeddings(self.model, self.tokenizer, self.prompt, self.class_names,
                                    normalize=True, progress=False, allow_duplicates=True)

    def image_features(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        if batch["images"].dim() == 3:  # cached features [b, V, D], not pixels [b, V, 3, H, W]
            return batch["images"].flatten(0, 1).to(self.device).float()
        images = batch["images"].flatten(0, 1).to(self.device, self.prompt.ctx.dtype, non_blocking=True)
        with torch.no_grad(), self.text_model.autocast():
            return self.model.encode_image(images).float()

    def micro_loss(self, batch: Dict[str, torch.Tensor], virtual_rank: int):
        """Loss, logits and encoded-class count of one micro-batch, its negatives drawn for ``virtual_rank``."""
        cfg = self.cfg
        views = batch["images"].shape[1]
        labels = batch["labels"].repeat_interleave(views)
        feats = self.image_features(batch)
        q = self.proposal.distribution(labels)
        negatives = sample_negatives(self.num_classes, cfg.sampling.k, q,
                                     step_generator(cfg.train.seed, virtual_rank, self.step))
        cb = build_contrast_batch(labels, negatives, self.num_classes, q,
                                  cfg.sampling.log_base if cfg.sampling.correction else None)
        with self.text_model.autocast():
            text = self.text([self.class_names[c] for c in cb.classes.tolist()])
        logits = local_contrast_logits(feats, text.float(), cb, self.model.logit_scale.exp().float())
        return local_contrast_loss(logits), logits, len(cb.classes)

    def train_step(self, batches: List[Dict[str, torch.Tensor]]) -> Optional[Dict[str, float]]:
        """One optimizer step over ``optim.accumulate`` micro-batches (every rank takes part,
        whatever its data); None when no micro-batch of any rank had a readable image."""
        return loop.train_step(self, batches)

    @torch.no_grad()
    def evaluate(self) -> Optional[float]:
        """Top-1 over all N classes on the held-out split (rank 0)."""
        if not self.index.val or not self.is_main:
            return None
        kill_point("validation", self.step)
        with self.text_model.autocast():
            feats, labels = image_features(self.model, self.index.val_root or self.index.root, self.index.val,
                                           eval_transform(self.cfg.data.image_size), batch_size=64,
                                           workers=self.cfg.data.workers)
        return top1(feats, labels, self.encode_all_classes().float())

    def fit(self) -> Path:
        """Train to the end (or train.max_steps); return the final prompt file (train.final_prompt)."""
        return loop.fit(self)

    def write_config(self) -> None:
        """config.json in the output folder (rank 0), written atomically."""
        if self.is_main:
            atomic_write_text(self.out / "config.json", json.dumps(self.cfg.to_dict(), indent=2))

"""SGD on the prompt and the learning-rate schedules of the recipe."""
from __future__ import annotations

import math

import torch

from .config import PretrainConfig

SCHEDULES = ("epoch_cosine", "step_cosine")


def lr_at(step: int, steps_per_epoch: int, cfg: PretrainConfig) -> float:
    """The learning rate of optimizer step ``step`` under ``optim.schedule``.

    ``epoch_cosine`` (Dassl's ConstantWarmupScheduler over CosineAnnealingLR(T_max=epochs),
    stepped once per epoch, recounted after the warmup): warmup_lr for warmup_epochs, then
    ``lr/2 (1 + cos(pi (e - warmup_epochs) / epochs))`` for epoch e. ``step_cosine``:
    warmup_lr for warmup_epochs, then cosine from lr to 0 over the remaining steps.
    """
    o = cfg.optim
    if o.schedule == "epoch_cosine":
        epoch = step // steps_per_epoch
        if epoch < o.warmup_epochs:
            return o.warmup_lr
        return 0.5 * o.lr * (1 + math.cos(math.pi * (epoch - o.warmup_epochs) / o.epochs))
    if o.schedule != "step_cosine":
        raise ValueError(f"optim.schedule must be epoch_cosine or step_cosine, got '{o.schedule}'")
    warmup = o.warmup_epochs * steps_per_epoch
    if step < warmup:
        return o.warmup_lr
    total = max(1, o.epochs * steps_per_epoch - warmup)
    return 0.5 * o.lr * (1 + math.cos(math.pi * (step - warmup) / total))


def build_optimizer(cfg: PretrainConfig, ctx: torch.Tensor) -> torch.optim.SGD:
    lr_at(0, 1, cfg)  # an unknown optim.schedule fails here, before training
    o = cfg.optim
    return torch.optim.SGD([ctx], lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)

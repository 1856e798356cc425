"""The optimizer of Detic's recipes: detectron2's SGD, or AdamW (``SOLVER.OPTIMIZER: ADAMW``)
with one weight decay for every parameter and a learning-rate multiplier on the backbone
(Detic's ``build_custom_optimizer`` without its DETR options), with detectron2's per-parameter
gradient clipping (``SOLVER.CLIP_GRADIENTS``) applied to the parameters that have a gradient:
detectron2's own clipper fails on current torch for a parameter without one, as the box
regressor and mask head are on image-label batches."""
from __future__ import annotations

import torch
from detectron2.solver import build_optimizer as build_d2_optimizer


def _add_gradient_clipping(cfg, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    c = cfg.SOLVER.CLIP_GRADIENTS
    if not c.ENABLED:
        return optimizer
    if c.CLIP_TYPE == "value":
        def clip(p):
            torch.nn.utils.clip_grad_value_(p, c.CLIP_VALUE)
    elif c.CLIP_TYPE == "norm":
        def clip(p):
            torch.nn.utils.clip_grad_norm_(p, c.CLIP_VALUE, c.NORM_TYPE)
    else:
        raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE {c.CLIP_TYPE!r}: use value or norm")

    base = type(optimizer)

    class ClippedOptimizer(base):
        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        clip(p)
            return super().step(closure)

    ClippedOptimizer.__name__ = base.__name__ + "WithGradientClipping"
    optimizer.__class__ = ClippedOptimizer
    return optimizer


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """detectron2's optimizer for ``SOLVER.OPTIMIZER`` SGD (``BACKBONE_MULTIPLIER`` 1), else
    AdamW or SGD over per-parameter groups; then the gradient clipping of the config."""
    kind = cfg.SOLVER.OPTIMIZER.upper()
    if kind not in ("SGD", "ADAMW"):
        raise ValueError(f"SOLVER.OPTIMIZER {cfg.SOLVER.OPTIMIZER!r}: use SGD or ADAMW")
    unclipped = cfg.clone()
    unclipped.defrost()
    unclipped.SOLVER.CLIP_GRADIENTS.ENABLED = False
    if kind == "SGD" and cfg.SOLVER.BACKBONE_MULTIPLIER == 1.0:
        return _add_gradient_clipping(cfg, build_d2_optimizer(unclipped, model))
    groups, seen = [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or p in seen:
            continue
        seen.add(p)
        lr = cfg.SOLVER.BASE_LR * (cfg.SOLVER.BACKBONE_MULTIPLIER if "backbone" in name else 1.0)
        groups.append({"params": [p], "lr": lr})
    if kind == "ADAMW":
        opt = torch.optim.AdamW(groups, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY)
    else:
        opt = torch.optim.SGD(groups, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM,
                              nesterov=cfg.SOLVER.NESTEROV, weight_decay=cfg.SOLVER.WEIGHT_DECAY)
    return _add_gradient_clipping(cfg, opt)

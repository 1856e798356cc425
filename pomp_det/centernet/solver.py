"""The optimizer of Detic's recipes: detectron2's SGD, or AdamW (``SOLVER.OPTIMIZER: ADAMW``)
with one weight decay for every parameter, a learning-rate multiplier on the backbone and
detectron2's gradient clipping (Detic's ``build_custom_optimizer`` without its DETR options)."""
from __future__ import annotations

import torch
from detectron2.solver import build_optimizer as build_d2_optimizer
from detectron2.solver.build import maybe_add_gradient_clipping


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """detectron2's optimizer for ``SOLVER.OPTIMIZER`` SGD (``BACKBONE_MULTIPLIER`` 1), else AdamW."""
    kind = cfg.SOLVER.OPTIMIZER.upper()
    if kind == "SGD" and cfg.SOLVER.BACKBONE_MULTIPLIER == 1.0:
        return build_d2_optimizer(cfg, model)
    if kind not in ("SGD", "ADAMW"):
        raise ValueError(f"SOLVER.OPTIMIZER {cfg.SOLVER.OPTIMIZER!r}: use SGD or ADAMW")
    groups, seen = [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or p in seen:
            continue
        seen.add(p)
        lr = cfg.SOLVER.BASE_LR * (cfg.SOLVER.BACKBONE_MULTIPLIER if "backbone" in name else 1.0)
        groups.append({"params": [p], "lr": lr})
    if kind == "ADAMW":
        opt_cls, kwargs = torch.optim.AdamW, {"weight_decay": cfg.SOLVER.WEIGHT_DECAY}
    else:
        opt_cls, kwargs = torch.optim.SGD, {"momentum": cfg.SOLVER.MOMENTUM, "nesterov": cfg.SOLVER.NESTEROV,
                                            "weight_decay": cfg.SOLVER.WEIGHT_DECAY}
    return maybe_add_gradient_clipping(cfg, opt_cls)(groups, lr=cfg.SOLVER.BASE_LR, **kwargs)

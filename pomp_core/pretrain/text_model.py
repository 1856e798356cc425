"""The frozen CLIP, the trainable prompt and the text path DDP wraps, in the run's precision."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, List

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..clip_loader import load_clip
from ..prompt import PromptLearner
from ..text_encoder import PromptedTextEncoder
from ..text_tower import text_tower
from .config import PretrainConfig
from .distributed import ProcessGroup

PRECISIONS = ("fp32", "bf16", "fp16", "fp16_weights")


class PromptText(nn.Module):
    """The trainable part as one module (what DDP wraps): prompt -> text features of names."""

    def __init__(self, prompt: PromptLearner, encoder: PromptedTextEncoder) -> None:
        super().__init__()
        self.prompt = prompt
        self.__dict__["encoder"] = encoder  # the frozen CLIP is not a submodule: DDP syncs only ctx

    def forward(self, names: List[str]) -> torch.Tensor:
        return self.encoder(self.prompt, names)


@dataclass
class TextModel:
    model: nn.Module  # the frozen CLIP
    tokenizer: Callable
    prompt: PromptLearner
    encoder: PromptedTextEncoder
    text: nn.Module  # PromptText, DDP-wrapped with several processes
    precision: str
    device: torch.device

    def autocast(self) -> ContextManager[Any]:
        if self.precision in ("fp32", "fp16_weights"):  # fp16_weights: the model itself is in fp16
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)

    def no_sync(self) -> ContextManager[Any]:
        """Accumulate this micro-batch's gradient locally (DDP all-reduces at the step's last one)."""
        return self.text.no_sync() if isinstance(self.text, DistributedDataParallel) else contextlib.nullcontext()


def check_precision(precision: str, device: torch.device) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision must be fp32, bf16, fp16 or fp16_weights, got '{precision}'")
    if precision == "fp16_weights" and device.type != "cuda":
        raise ValueError("train.precision=fp16_weights (the release's fp16) needs a GPU; "
                         "use fp32 or bf16 on CPU")


def build_text_model(cfg: PretrainConfig, group: ProcessGroup, class_names: List[str]) -> TextModel:
    """Load CLIP, build the prompt (N(0, std) or from words), check every name fits the context."""
    check_precision(cfg.train.precision, group.device)
    half = cfg.train.precision == "fp16_weights"
    torch.manual_seed(cfg.train.seed)  # random-weight models (tests, smoke runs) are reproducible
    model, tokenizer, _ = load_clip(cfg.model.name, cfg.model.pretrained, device=group.device,
                                    precision="fp16" if half else "fp32")
    if cfg.model.grad_checkpointing:
        text_tower(model).transformer.grad_checkpointing = True
    p = cfg.prompt
    if p.init_words:
        prompt = PromptLearner.from_words(p.init_words, model, tokenizer, position=p.position)
    else:
        prompt = PromptLearner(p.n_ctx, text_tower(model).width, p.position, init_std=p.init_std,
                               model_name=model.pomp_model_name)
    prompt = prompt.to(group.device, torch.float16 if half else torch.float32)
    encoder = PromptedTextEncoder(model, tokenizer)
    encoder.token_ids(class_names, prompt.n_ctx, prompt.position)  # every name fits?
    text: nn.Module = PromptText(prompt, encoder)
    if group.world > 1:
        text = DistributedDataParallel(text, device_ids=[group.device] if group.device.type == "cuda" else None)
    return TextModel(model, tokenizer, prompt, encoder, text, cfg.train.precision, group.device)

"""Prompt files: this project's format (with metadata) and the POMP release's ``.pth.tar``."""
from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from .durable import atomic_torch_save, atomic_write_text
from .pretrained import fetch_prompt, is_pretrained_name, list_pretrained, pretrained_info
from .prompt import POSITIONS, PromptLearner

logger = logging.getLogger(__name__)
FORMAT = "pomp-prompt"
FORMAT_VERSION = 1


def save_prompt(prompt: PromptLearner, path: str | os.PathLike, **extra: Any) -> Path:
    """Write ``prompt`` with its metadata; ``extra`` (epoch, dataset, …) is stored alongside.

    The file is written to a temporary name and renamed, so a crash never leaves a
    half-written prompt where a good one was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "model_name": prompt.model_name,
        "width": prompt.width,
        "n_ctx": prompt.n_ctx,
        "position": prompt.position,
        "class_specific": prompt.class_specific,
        "n_classes": prompt.n_classes,
        "init_words": prompt.init_words,
    }
    payload = {"format": FORMAT, "version": FORMAT_VERSION, "meta": meta,
               "state_dict": {"ctx": prompt.ctx.detach().cpu()}, "extra": extra}
    atomic_torch_save(payload, path)
    return path


def save_release_prompt(prompt: PromptLearner, directory: str | os.PathLike, epoch: int,
                        dtype: torch.dtype = torch.float16, best: bool = False) -> Path:
    """Write ``prompt`` where the POMP release's ``load_model(directory, epoch)`` reads it.

    Layout of Dassl's ``save_checkpoint``: ``<directory>/prompt_learner/model.pth.tar-<epoch>``
    holding ``{"state_dict": {"ctx": …}, "epoch": epoch, "optimizer": None, "scheduler": None,
    "val_result": None}`` and a ``checkpoint`` file naming it; ``best`` also writes
    ``model-best.pth.tar`` (what ``load_model`` reads without an epoch). ``dtype`` is the
    release's ctx dtype: float16 under its default ``PREC: fp16``, float32 under fp32/amp.
    Only tensors and plain values are stored, so a safe (weights-only) load reads it.
    """
    if prompt.position != "end":  # the release's checkpoints do not carry it
        logger.warning("prompt trained with position='%s': run the release with "
                       "TRAINER.POMP.CLASS_TOKEN_POSITION %s", prompt.position, prompt.position)
    folder = Path(directory) / "prompt_learner"
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"state_dict": {"ctx": prompt.ctx.detach().cpu().to(dtype)}, "epoch": int(epoch),
               "optimizer": None, "scheduler": None, "val_result": None}
    path = folder / f"model.pth.tar-{int(epoch)}"
    names = [path.name] + (["model-best.pth.tar"] if best else [])
    for name in names:
        atomic_torch_save(payload, folder / name)
    atomic_write_text(folder / "checkpoint", path.name + "\n")
    return path


def _read(path: Path, trusted: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} holds objects that a safe load refuses ({err.__class__.__name__}); "
            "if you trust the file, load it with trusted=True") from err
    except (RuntimeError, EOFError, OSError) as err:  # torch's zip reader raises all three on a cut file
        raise ValueError(f"{path} is not a readable torch file (truncated or corrupt?): {err}") from err


def read_extra(path: str | os.PathLike, trusted: bool = False) -> Dict[str, Any]:
    """The values stored alongside a prompt (``extra`` of ours; ``epoch`` of a release checkpoint)."""
    data = _read(Path(path), trusted)
    if isinstance(data, dict) and data.get("format") == FORMAT:
        return dict(data.get("extra", {}))
    return {"epoch": data["epoch"]} if isinstance(data, dict) and "epoch" in data else {}


def load_prompt(path: str | os.PathLike, trusted: bool = False,
                position: Optional[str] = None) -> PromptLearner:
    """Load a prompt written by :func:`save_prompt` or by the POMP release, or a published
    prompt by name (``pomp_core.list_pretrained()``; downloaded once, ``pomp_core.pretrained``).

    The release stores ``{"state_dict": {"ctx": [M, 512], "token_prefix": …,
    "token_suffix": …}, "epoch": …}``; its token buffers belong to a fixed class list and
    are ignored. Release prompts put the class token at the end unless ``position`` says
    otherwise. ``trusted=True`` allows files that need full unpickling.
    """
    if not Path(path).is_file():
        if is_pretrained_name(str(path)):
            prompt = load_prompt(fetch_prompt(str(path), trusted=trusted), trusted=trusted, position=position)
            # the file may not say which CLIP it is for; the table does
            prompt.model_name = prompt.model_name or pretrained_info(str(path)).model_name
            return prompt
        raise FileNotFoundError(f"prompt file '{path}' does not exist, nor is it the name of a "
                                f"published prompt ({', '.join(list_pretrained())})")
    path = Path(path)
    data = _read(path, trusted)
    state = data.get("state_dict") if isinstance(data, dict) else None
    ctx = state.get("ctx") if isinstance(state, dict) else None
    if not isinstance(ctx, torch.Tensor) or ctx.dim() not in (2, 3):
        raise ValueError(
            f"{path} is not a prompt file: expected a dict with state_dict['ctx'] of shape "
            "[M, width] or [C, M, width] (this project's prompts and the POMP release's .pth.tar)")
    meta: Dict[str, Any] = data.get("meta", {}) if data.get("format") == FORMAT else {}
    class_specific = ctx.dim() == 3
    position = position or meta.get("position", "end")
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {POSITIONS}, got '{position}'")
    prompt = PromptLearner(
        n_ctx=ctx.shape[-2], width=ctx.shape[-1], position=position,
        class_specific=class_specific, n_classes=ctx.shape[0] if class_specific else None,
        model_name=meta.get("model_name"), ctx=ctx)
    prompt.init_words = meta.get("init_words")
    return prompt

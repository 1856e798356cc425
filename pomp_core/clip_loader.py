"""Load open_clip models by name + pretrained tag, or from a local checkpoint file."""
from __future__ import annotations

import difflib
import logging
import os
import socket
import zipfile
from pathlib import Path
from typing import Callable, Optional, Tuple
from urllib.parse import urlparse

import open_clip
import torch

from .errors import WeightsUnavailable

logger = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """True for a TorchScript zip (such as OpenAI's original ``ViT-B-16.pt``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        # TorchScript archives carry their code and constants next to the pickled data.
        return any(name.split("/", 1)[-1] == "constants.pkl" for name in archive.namelist())


def is_local_path(pretrained: str) -> bool:
    """A ``pretrained`` value that names a file (a separator or an extension), not a tag."""
    return os.sep in pretrained or bool(Path(pretrained).suffix) or os.path.isfile(pretrained)


def _cache_folders() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:  # open_clip then downloads from URLs only
        HF_HUB_CACHE = "~/.cache/huggingface/hub"
    return f"{HF_HUB_CACHE} (Hugging Face hub) or {os.path.expanduser('~/.cache/clip')} (URLs)"


def _cached(cfg: dict) -> bool:
    """Whether open_clip's download of this tag would find the file without the network."""
    if cfg.get("hf_hub"):
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return False
        repo, filename = os.path.split(cfg["hf_hub"])
        names = [filename] if filename else ["open_clip_pytorch_model.bin", "open_clip_model.safetensors"]
        return any(isinstance(try_to_load_from_cache(repo, n), str) for n in names)
    url = cfg.get("url", "")
    return bool(url) and os.path.isfile(os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url)))


def _unreachable(cfg: dict) -> Optional[str]:
    """Why the tag's download host cannot be reached, in a few seconds (None if it can)."""
    if cfg.get("hf_hub"):
        host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    else:
        host = urlparse(cfg.get("url", "")).hostname
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as err:
        return f"{host} is unreachable: {err}"
    return None


def fetch_pretrained(model_name: str, tag: str) -> None:
    """Download (or find in open_clip's cache) the weights of an open_clip tag.

    Offline, open_clip's own error is a long traceback after a minute of retries; this
    fails in seconds with one message naming the offline alternatives.
    """
    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    reason = None if _cached(cfg) else _unreachable(cfg)
    if reason is None:
        try:
            open_clip.download_pretrained(cfg)
        except Exception as err:  # urllib, requests and huggingface_hub each raise their own
            reason = f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
    if reason is not None:
        raise WeightsUnavailable(
            f"cannot download the '{tag}' weights of {model_name} ({reason}). "
            f"Offline, pass a local file as --pretrained (an OpenAI TorchScript archive such as "
            f"ViT-B-16.pt, a state dict or an open_clip checkpoint), or copy the downloaded weights "
            f"into open_clip's cache folder: {_cache_folders()}")


def resolve_model_name(model_name: str, pretrained: Optional[str] = None) -> str:
    """Map ``model_name`` to the architecture that matches ``pretrained``.

    OpenAI's weights were trained with QuickGELU; the plain open_clip architecture
    (``ViT-B-16``) uses nn.GELU and silently gives wrong features with them. When the
    tag says QuickGELU and a ``-quickgelu`` twin exists, the twin is returned.
    """
    if model_name not in open_clip.list_models():
        close = difflib.get_close_matches(model_name, open_clip.list_models(), n=5)
        raise ValueError(
            f"Unknown open_clip model '{model_name}'. Close matches: {close or 'none'}. "
            "Add your own architecture with open_clip.add_model_config(path_to_json).")
    if not pretrained or os.path.isfile(pretrained) or model_name.endswith("-quickgelu"):
        return model_name
    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    twin = f"{model_name}-quickgelu"
    if tag_cfg.get("quick_gelu", False) and twin in open_clip.list_models():
        logger.warning("pretrained=%r was trained with QuickGELU: using %r instead of %r",
                       pretrained, twin, model_name)
        return twin
    return model_name


def load_clip(
    model_name: str,
    pretrained: Optional[str] = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    quick_gelu: Optional[bool] = None,
) -> Tuple[torch.nn.Module, Callable, Callable]:
    """Return ``(model, tokenizer, preprocess)`` in eval mode with all weights frozen.

    ``pretrained`` is an open_clip tag (``"openai"``, downloaded where a network is
    reachable), a local file, or None for random weights. Local files may be a plain
    state dict in OpenAI's key layout, an open_clip training checkpoint
    (``{"state_dict": {"module.…": …}, "epoch": …}``) or an OpenAI TorchScript archive.
    ``quick_gelu`` forces the activation for local files whose origin the file cannot
    tell; TorchScript archives are OpenAI's and always use QuickGELU.
    """
    force_quick_gelu = bool(quick_gelu)
    weights_only = True
    if pretrained is not None and is_local_path(pretrained):
        if not os.path.isfile(pretrained):
            raise FileNotFoundError(
                f"CLIP checkpoint '{pretrained}' does not exist. Pass an existing file, or an "
                f"open_clip pretrained tag such as {open_clip.list_pretrained_tags_by_model(model_name)[:3]}.")
        if is_torchscript_archive(pretrained):
            # TorchScript archives cannot be read with weights_only=True; they are OpenAI's.
            weights_only, force_quick_gelu = False, quick_gelu is not False
    name = resolve_model_name(model_name, pretrained)
    if pretrained and not os.path.isfile(pretrained) and open_clip.get_pretrained_cfg(name, pretrained):
        fetch_pretrained(name, pretrained)
    model, _, preprocess = open_clip.create_model_and_transforms(
        name, pretrained=pretrained, device=device, precision=precision,
        force_quick_gelu=force_quick_gelu, weights_only=weights_only)
    model.eval().requires_grad_(False)
    model.pomp_model_name = name  # recorded in prompt files written for this model
    return model, open_clip.get_tokenizer(name), preprocess

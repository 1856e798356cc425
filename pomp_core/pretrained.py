"""Prompts by name: the POMP release's published prompts, downloaded once into a local cache.

``list_pretrained()`` names them; ``pomp_core.load_prompt(name)`` takes a name wherever it
takes a file. A named prompt is read from ``<cache>/<release file name>`` (``$POMP_CACHE/prompts``,
default ``~/.cache/pomp/prompts``); when it is not there it is downloaded (a progress bar, to
a temporary name, checked, then renamed into place). Every file, downloaded or placed there by
hand, is checked before use: its sha256 and size where the table knows them, and always that it
is a prompt of the table's shape. ``$POMP_PROMPT_MIRROR`` (a URL) downloads
``<mirror>/<release file name>`` instead of the release's address.
"""
from __future__ import annotations

import difflib
import hashlib
import http.client
import logging
import os
import pickle
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Dict, List, Mapping, Optional

import torch

from .errors import WeightsUnavailable
from .durable import fsync_file, temporary_name
from .progress import Progress

logger = logging.getLogger(__name__)

CACHE_ENV = "POMP_CACHE"
MIRROR_ENV = "POMP_PROMPT_MIRROR"
MODELS_PAGE = "https://github.com/amazon-science/prompt-pretraining/blob/main/docs/MODELS.md"
B32_ANNOUNCEMENT = "https://github.com/amazon-science/prompt-pretraining/issues/17"
B32_REPO = "https://huggingface.co/ShuhuaiRen/POMP-ViT-Base-32/resolve/main/"


def _drive(file_id: str) -> str:
    return f"https://drive.google.com/uc?export=download&id={file_id}"


@dataclass(frozen=True)
class PretrainedPrompt:
    """One published prompt: where it comes from, what it is for, and what the release reports.

    ``accuracy`` holds the release's figures in percent (``imagenet21k``: top-1 on its
    ImageNet-21K test split; ``cross_dataset`` / ``cross_domain``: averages over its
    transfer benchmarks). ``size`` and ``sha256`` are None where the release does not give
    them; the file is then checked for its shape only.
    """

    name: str
    filename: str
    backbone: str  # as the release writes it
    model_name: str  # the open_clip architecture + tag that reproduce that CLIP
    pretrained: str
    n_ctx: int
    epochs: int
    url: str
    source: str
    accuracy: Dict[str, float] = field(default_factory=dict)
    width: int = 512
    size: Optional[int] = None
    sha256: Optional[str] = None
    max_size: int = 1 << 20  # "only a few KBs" (the release's MODELS.md): a bigger answer is not the prompt


# read-only: the table is data, not a registry to add to at run time
PROMPTS: Mapping[str, PretrainedPrompt] = MappingProxyType({p.name: p for p in (
    PretrainedPrompt(
        "pomp-vit-b16-ctx4", "vit_b16_ep5_randaug2_unc1000_16shots_nctx4_cscFalse_ctpend_seed42.pth.tar",
        "ViT-B/16", "ViT-B-16-quickgelu", "openai", n_ctx=4, epochs=5,
        url=_drive("1clOumlKZOCYwDGtY5WeCmIFFcy9YREJz"), source=MODELS_PAGE,
        accuracy={"imagenet21k": 24.9, "cross_dataset": 66.7, "cross_domain": 60.4}),
    PretrainedPrompt(
        "pomp-vit-b16-ctx16", "vit_b16_ep20_randaug2_unc1000_16shots_nctx16_cscFalse_ctpend_seed42.pth.tar",
        "ViT-B/16", "ViT-B-16-quickgelu", "openai", n_ctx=16, epochs=20,
        url=_drive("1C8oU6cWkJdU3Q3IHaqTcbIToRLo9bMnu"), source=MODELS_PAGE,
        accuracy={"imagenet21k": 25.2, "cross_dataset": 65.1, "cross_domain": 60.0}),
    PretrainedPrompt(
        "pomp-vit-b32-ctx4", "vit_b32_ep5_randaug2_unc1000_16shots_nctx4_cscFalse_ctpend_seed42.pth.tar",
        "ViT-B/32", "ViT-B-32-quickgelu", "openai", n_ctx=4, epochs=5,
        url=B32_REPO + "vit_b32_ep5_randaug2_unc1000_16shots_nctx4_cscFalse_ctpend_seed42.pth.tar",
        source=B32_ANNOUNCEMENT, accuracy={"cross_dataset": 62.0}),
    PretrainedPrompt(
        "pomp-vit-b32-ctx16", "vit_b32_ep20_randaug2_unc1000_16shots_nctx16_cscFalse_ctpend_seed42.pth.tar",
        "ViT-B/32", "ViT-B-32-quickgelu", "openai", n_ctx=16, epochs=20,
        url=B32_REPO + "vit_b32_ep20_randaug2_unc1000_16shots_nctx16_cscFalse_ctpend_seed42.pth.tar",
        source=B32_ANNOUNCEMENT, accuracy={"cross_dataset": 61.8}),
)})


class PromptUnavailable(WeightsUnavailable):
    """A named prompt is not in the cache and could not be downloaded."""


def list_pretrained() -> List[str]:
    """Names of the published prompts ``load_prompt`` accepts (``pretrained_info`` describes each)."""
    return list(PROMPTS)


def _aliases() -> Dict[str, str]:
    """Name, release file name and its stem -> name."""
    table = {}
    for p in PROMPTS.values():
        for alias in (p.name, p.filename, p.filename[: -len(".pth.tar")]):
            table[alias] = p.name
    return table


def is_pretrained_name(name: str) -> bool:
    return name in _aliases()


def pretrained_info(name: str) -> PretrainedPrompt:
    """The table's entry for a name (or the release's file name)."""
    aliases = _aliases()
    if name not in aliases:
        close = difflib.get_close_matches(name, list(aliases), n=3)
        raise KeyError(f"unknown pretrained prompt '{name}'; known: {', '.join(PROMPTS)}"
                       + (f" (close: {', '.join(close)})" if close else ""))
    return PROMPTS[aliases[name]]


def cache_dir() -> Path:
    """Where named prompts live: ``$POMP_CACHE/prompts``, default ``~/.cache/pomp/prompts``."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/pomp").expanduser() / "prompts"


def download_url(entry: PretrainedPrompt) -> str:
    mirror = os.environ.get(MIRROR_ENV)
    return f"{mirror.rstrip('/')}/{entry.filename}" if mirror else entry.url


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(entry: PretrainedPrompt, path: Path, trusted: bool = False) -> None:
    """Raise ValueError unless ``path`` is the table's prompt: sha256 and size where known, and a
    prompt file (read safely unless ``trusted``) whose context is [n_ctx, width]. The message
    is what is wrong with the file ("is 12 bytes, not 34"), for the caller to name the file."""
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        raise ValueError(f"is {size} bytes, not {entry.size}")
    digest = sha256_of(path) if entry.sha256 is not None else None
    if digest is not None and digest != entry.sha256:
        raise ValueError(f"has sha256 {digest}, not {entry.sha256}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as err:
        if zipfile.is_zipfile(path):  # a whole torch file: what it holds is refused
            raise ValueError(f"holds objects that a safe load refuses ({err.__class__.__name__}); "
                             "if you trust it, pass trusted=True") from err
        raise ValueError("is not a torch file (cut short, or a web page instead of the file?)") from err
    except (RuntimeError, EOFError, OSError) as err:  # torch's zip reader raises all three
        raise ValueError("is not a torch file (cut short, or a web page instead of the file?)") from err
    state = data.get("state_dict") if isinstance(data, dict) else None
    shape = tuple(getattr(state.get("ctx") if isinstance(state, dict) else None, "shape", ()))
    if shape != (entry.n_ctx, entry.width):
        raise ValueError(f"has state_dict['ctx'] of shape {shape or 'none'}, not "
                         f"{(entry.n_ctx, entry.width)} ('{entry.name}')")


def _download(url: str, dest: Path, entry: PretrainedPrompt, timeout: float, trusted: bool) -> None:
    """Stream ``url`` to a temporary name beside ``dest``, check it, rename it into place."""
    part = temporary_name(dest, ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else entry.size
            with Progress(total=total, desc=f"download {entry.filename}", unit="B") as bar:
                for chunk in iter(lambda: response.read(1 << 16), b""):
                    if out.tell() + len(chunk) > entry.max_size:
                        raise ValueError(f"{url} sends more than {entry.max_size} bytes: not the "
                                         f"'{entry.name}' prompt (a web page instead of the file?)")
                    out.write(chunk)
                    bar.update(len(chunk))
            # http.client ends a short body without an error: compare with the announced length
            if length and length.isdigit() and out.tell() != int(length):
                raise ConnectionError(f"the connection closed after {out.tell()} of {length} bytes")
        fsync_file(part)
        try:
            verify(entry, part, trusted)
        except ValueError as err:
            raise ValueError(f"refused the download of '{entry.name}' from {url}: the file {err}") from err
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)


def fetch_prompt(name: str, timeout: float = 30.0, trusted: bool = False) -> Path:
    """The checked local file of a named prompt: from the cache, else downloaded into it."""
    entry = pretrained_info(name)
    dest = cache_dir() / entry.filename
    if dest.is_file():
        try:
            verify(entry, dest, trusted)
        except ValueError as err:
            raise ValueError(f"{dest} {err}: delete it to download it again, or replace it with the "
                             f"file from {entry.url} (listed at {entry.source})") from err
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    url = download_url(entry)
    try:
        _download(url, dest, entry, timeout, trusted)
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as err:
        reason = " ".join(str(getattr(err, "reason", None) or err).split())[:200]
        raise PromptUnavailable(
            f"cannot download the '{entry.name}' prompt from {url} ({type(err).__name__}: {reason}). "
            f"Offline, download {entry.url} (listed at {entry.source}) elsewhere and place it as "
            f"{dest} (or set {CACHE_ENV} to a folder whose prompts/ holds it)") from err
    logger.info("downloaded '%s' to %s (%d bytes, sha256 %s)", entry.name, dest, dest.stat().st_size,
                sha256_of(dest))
    return dest

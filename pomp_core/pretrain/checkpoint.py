"""Pre-training checkpoints: the last two kept, written so that a kill at any moment leaves one to resume.

``checkpoint.pth`` is the newest, ``checkpoint_prev.pth`` the one before. A save writes
the new state to a temporary file (fsynced), moves the current checkpoint to the previous
name, then renames the new one into place: a kill between the two renames leaves only
``checkpoint_prev.pth``, which :func:`latest_checkpoint` then finds.
"""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
from pathlib import Path
from typing import Dict, Optional

import torch

from ..durable import fsync_file, kill_point, remove_stale_temporaries, temporary_name

logger = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pth"
PREVIOUS = "checkpoint_prev.pth"
FORMAT = "pomp-pretrain-checkpoint"


def save_checkpoint(state: Dict, folder: Path, step: int) -> Path:
    """Write ``state`` as the newest checkpoint in ``folder``; the former newest becomes the previous."""
    path, prev = folder / CHECKPOINT, folder / PREVIOUS
    remove_stale_temporaries(folder, CHECKPOINT)  # left by a run killed while saving
    tmp = temporary_name(path)
    try:
        torch.save(state, tmp)
        fsync_file(tmp)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    kill_point("checkpoint_tmp", step)
    if path.exists():
        os.replace(path, prev)
    kill_point("checkpoint_rotate", step)
    os.replace(tmp, path)
    return path


def latest_checkpoint(folder: Path) -> Optional[Path]:
    """The newest checkpoint in ``folder`` (the previous one if a save was killed mid-rotation), or None."""
    for name in (CHECKPOINT, PREVIOUS):
        if (folder / name).is_file():
            if name == PREVIOUS:
                logger.warning("no %s in %s (a save was interrupted): using %s", CHECKPOINT, folder, PREVIOUS)
            return folder / name
    return None


def load_checkpoint(path: Path) -> Dict:
    """Read a checkpoint; a damaged or foreign file is an error that names it and the way out."""
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as err:
        prev = path.with_name(PREVIOUS)
        hint = (f"the previous checkpoint is kept: resume from it with --checkpoint {prev}"
                if prev.is_file() and prev != path else "start again without --resume")
        raise ValueError(f"checkpoint {path} is damaged (truncated or corrupt, e.g. after a full disk): "
                         f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}; {hint}") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a pre-training checkpoint (a final prompt file? "
                         "those start new runs through prompt.init_words or are evaluated)")
    return state

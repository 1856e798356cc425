"""Resume under torch >= 2.6, whose ``torch.load`` refuses the numpy and mmengine objects
(message hub, history buffers) that mmengine checkpoints hold.

Only checkpoints in trusted folders (the run's own work_dir, a checkpoint named on the
command line) are fully unpickled; any other file still goes through torch's safe loader.
"""
from __future__ import annotations

import os
from typing import List

import torch
from mmengine.runner.checkpoint import CheckpointLoader

_TRUSTED: List[str] = []


def _load_local(filename: str, map_location=None):
    filename = os.path.expanduser(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f"checkpoint '{filename}' does not exist")
    real = os.path.realpath(filename)
    trusted = any(real.startswith(folder) for folder in _TRUSTED)
    return torch.load(filename, map_location=map_location, weights_only=not trusted)


def trust_checkpoints_under(folder: str) -> None:
    """Make mmengine load local checkpoints under ``folder`` with ``weights_only=False``."""
    _TRUSTED.append(os.path.realpath(folder) + os.sep)
    CheckpointLoader.register_scheme(prefixes="", loader=_load_local, force=True)

"""mmengine checkpoints: loaded under torch >= 2.6 from trusted folders, and written so that
they survive a killed process.

Loading: torch >= 2.6's ``torch.load`` refuses the numpy and mmengine objects (message hub,
history buffers) that mmengine checkpoints hold. Only checkpoints in trusted folders (the
run's own work_dir, a checkpoint named on the command line) are fully unpickled; any other
file still goes through torch's safe loader.

Saving: mmengine writes ``iter_N.pth`` in place, then the ``last_checkpoint`` tag in place: a
kill mid-save leaves a half file under a final-looking name, and a kill while writing the tag
leaves it empty (``--resume`` then fails). :class:`DurableRunner` writes each checkpoint to
``<name>.incomplete`` and renames it once complete (fsynced), so every ``iter_N.pth`` /
``epoch_N.pth`` in a work dir is whole; :func:`checkpoint_to_resume` reads the tag and,
when it is empty or names a missing file, takes the newest such checkpoint instead.
(pomp_det/checkpoint.py does the same for detectron2.)
"""
from __future__ import annotations

import logging
import os
import os.path as osp
import re
from typing import List, Optional

import torch
from mmengine.dist import master_only
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.runner import Runner
from mmengine.runner.checkpoint import CheckpointLoader

from pomp_core.durable import fsync_file, kill_point

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


INCOMPLETE = ".incomplete"
_NUMBERED = re.compile(r"^(?:iter|epoch)_(\d+)\.pth$")


class DurableRunner(Runner):
    @master_only  # as Runner.save_checkpoint: only rank 0 writes, so only rank 0 renames
    def save_checkpoint(self, out_dir: str, filename: str, *args, **kwargs) -> None:
        if "://" in out_dir:  # a remote backend: its own semantics
            return super().save_checkpoint(out_dir, filename, *args, **kwargs)
        super().save_checkpoint(out_dir, filename + INCOMPLETE, *args, **kwargs)
        partial = osp.join(out_dir, filename + INCOMPLETE)
        fsync_file(partial)
        kill_point("checkpoint_tmp", filename)
        os.replace(partial, osp.join(out_dir, filename))


def checkpoint_to_resume(work_dir: str) -> Optional[str]:
    """The checkpoint ``--resume`` continues from: the tagged one, else the newest whole
    ``iter_N.pth`` / ``epoch_N.pth``; None when the work dir has none yet."""
    tag = osp.join(work_dir, "last_checkpoint")
    if osp.isfile(tag):
        with open(tag) as f:
            name = f.read().strip()
        if name and osp.isfile(name):
            return name
        print_log(f"{tag} is empty or names a missing file ({name!r}): taking the newest checkpoint",
                  logger="current", level=logging.WARNING)
    numbered = [(int(m.group(1)), f) for f in (os.listdir(work_dir) if osp.isdir(work_dir) else [])
                if (m := _NUMBERED.match(f))]
    return osp.join(work_dir, max(numbered)[1]) if numbered else None


class KillPointHook(Hook):
    """``POMP_KILL_AT=seg_iter:N``: SIGKILL the process after training iteration N (1-based,
    mmengine's ``runner.iter`` once the iteration is done) and its checkpoint."""

    priority = "LOWEST"  # after the checkpoint hook

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        kill_point("seg_iter", runner.iter + 1)

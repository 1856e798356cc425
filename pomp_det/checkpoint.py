"""detectron2 checkpoints that survive a killed process, and a damaged one named.

detectron2's checkpointer writes ``model_XXXXXXX.pth`` and then the ``last_checkpoint``
tag in place: a kill while writing the tag leaves it empty (``--resume`` then fails) and
a kill mid-save leaves a half file under a final-looking name. Here the parent's save
writes ``<name>.incomplete.pth``; once complete it is fsynced and renamed, and only then
is the tag (written atomically) pointed at it. Every checkpoint is kept (detectron2's
default), so an earlier one is there when the newest is damaged.
"""
from __future__ import annotations

import os
import pickle
from typing import Any, Dict

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import HookBase

from pomp_core.durable import atomic_write_text, fsync_file, kill_point

INCOMPLETE = ".incomplete"


class DurableCheckpointer(DetectionCheckpointer):
    @classmethod
    def like(cls, other: DetectionCheckpointer) -> "DurableCheckpointer":
        """The same model, folder and checkpointables as ``other`` (a DefaultTrainer's)."""
        return cls(other.model, other.save_dir, save_to_disk=other.save_to_disk, **other.checkpointables)

    def save(self, name: str, **kwargs: Any) -> None:
        super().save(name + INCOMPLETE, **kwargs)  # the parent then calls tag_last_checkpoint

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        basename = last_filename_basename
        if basename.endswith(INCOMPLETE + ".pth"):
            done = basename[: -len(INCOMPLETE + ".pth")] + ".pth"
            partial = os.path.join(self.save_dir, basename)
            fsync_file(partial)
            kill_point("checkpoint_tmp", done[: -len(".pth")])
            os.replace(partial, os.path.join(self.save_dir, done))
            self.logger.info("Checkpoint complete: %s", done)
            basename = done
        atomic_write_text(os.path.join(self.save_dir, "last_checkpoint"), basename)

    def _load_file(self, filename: str) -> Dict[str, Any]:
        try:
            return super()._load_file(filename)
        except (RuntimeError, EOFError, pickle.UnpicklingError) as err:
            others = sorted(f for f in os.listdir(self.save_dir or ".")
                            if f.endswith(".pth") and INCOMPLETE not in f and f != os.path.basename(filename)) if self.save_dir else []
            hint = (f"; earlier checkpoints in {self.save_dir}: {others[-3:]} (resume from one by writing "
                    "its name into last_checkpoint)") if others else ""
            raise ValueError(f"checkpoint {filename} is damaged (truncated or corrupt, e.g. after a full "
                             f"disk): {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                             f"{hint}") from err


class KillPointHook(HookBase):
    """``POMP_KILL_AT=det_iter:N``: SIGKILL the process after iteration N (and its checkpoint)."""

    def after_step(self) -> None:
        kill_point("det_iter", self.trainer.iter)

"""Model selection as the release does it: every epoch's prompt kept, the best epoch on validation.

The release saves a Dassl checkpoint per epoch and its ``validation_test.py`` scores each
epoch on ``imagenet21k_val`` and renames the first of the highest as ``model-best.pth.tar``.
Here each epoch end writes ``prompts/epoch_<e>.pth`` (e counts from 1, as the release's
``model.pth.tar-<e>``; a few KB each), and with validation on, the epoch of highest top-1
(the first one on a tie) is recorded and written as ``prompt_best.pth``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..prompt import PromptLearner
from ..prompt_io import read_extra, save_prompt

logger = logging.getLogger(__name__)
EPOCHS = "prompts"
BEST = "prompt_best.pth"


def epoch_prompt_path(out: Path, epoch: int) -> Path:
    return out / EPOCHS / f"epoch_{epoch}.pth"


def epoch_prompts(out: Path) -> List[Tuple[int, Path]]:
    """(epoch, file) of every kept epoch prompt of a run folder, by epoch."""
    files = [(int(p.stem.split("_")[1]), p) for p in (Path(out) / EPOCHS).glob("epoch_*.pth")
             if p.stem.split("_")[1].isdigit()]
    return sorted(files)


class ModelSelection:
    """Keeps the epoch prompts and the best epoch so far (its state rides in the checkpoint)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.best_epoch: Optional[int] = None
        self.best_top1 = float("-inf")

    def save_epoch(self, prompt: PromptLearner, epoch: int, **extra) -> Path:
        return save_prompt(prompt, epoch_prompt_path(self.out, epoch), epoch=epoch, **extra)

    def record(self, prompt: PromptLearner, epoch: int, top1: float, **extra) -> bool:
        """Score of epoch ``epoch``'s prompt (the current one); True when it is the new best."""
        if top1 <= self.best_top1:  # a tie keeps the earlier epoch, as the release's list.index(max)
            return False
        self.best_epoch, self.best_top1 = epoch, top1
        save_prompt(prompt, self.out / BEST, epoch=epoch, val_top1=top1, **extra)
        logger.info("epoch %d is the best so far (val top-1 %.2f%%): %s", epoch, 100 * top1, self.out / BEST)
        return True

    def state_dict(self) -> Dict:
        return {"best_epoch": self.best_epoch, "best_top1": self.best_top1}

    def load_state_dict(self, state: Dict) -> None:
        self.best_epoch, self.best_top1 = state.get("best_epoch"), state.get("best_top1", float("-inf"))


def best_epoch(out: Path) -> Optional[int]:
    """The epoch recorded in a run's ``prompt_best.pth`` (None without validation)."""
    path = Path(out) / BEST
    return int(read_extra(path)["epoch"]) if path.is_file() else None

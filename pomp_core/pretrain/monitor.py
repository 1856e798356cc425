"""Training logs a person can read: JSON lines, TensorBoard events, and a plot of the curves."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, List, Optional

from ..durable import atomic_write, atomic_write_text, fsync_file

logger = logging.getLogger(__name__)


class MetricsLog:
    """Appends one JSON object per logged step to ``metrics.jsonl``; mirrors it to TensorBoard.

    On resume from a checkpoint at ``resume_step``, rows written after it (by the killed
    run, to be logged again) are dropped, and so are the rows at ``resume_step`` holding
    ``redo_key`` (a validation the checkpoint precedes); TensorBoard purges the same.
    """

    def __init__(self, output_dir: Path, tensorboard: bool = True, resume_step: int = 0,
                 redo_key: Optional[str] = None) -> None:
        self.path = output_dir / "metrics.jsonl"
        kept: List[Dict[str, float]] = []
        if resume_step == 0 and self.path.exists():
            self.path.unlink()
        elif resume_step:
            kept = [r for r in self.read(self.path) if r["step"] < resume_step
                    or (r["step"] == resume_step and not (redo_key and redo_key in r))]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.warning("tensorboard is not installed: no event files (pip install tensorboard)")
            else:
                # events at or after the purge step, from the killed run, are hidden
                redo = bool(redo_key) and resume_step > 0
                self.writer = SummaryWriter(str(output_dir / "tb"), purge_step=resume_step + (0 if redo else 1))
                for row in kept if redo else []:
                    if row["step"] == resume_step:
                        self._add(row["step"], {k: v for k, v in row.items() if k != "step"})

    def log(self, step: int, values: Dict[str, float]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        self._add(step, values)

    def _add(self, step: int, values: Dict[str, float]) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def flush(self) -> None:
        """Put every row logged so far on disk (before a checkpoint that covers them)."""
        if self.path.exists():
            fsync_file(self.path)
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    @staticmethod
    def read(path: Path) -> List[Dict[str, float]]:
        """The rows of a metrics file ([] if there is none); a last line cut by a kill is ignored."""
        path = Path(path)
        if not path.is_file():
            return []
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        rows = []
        for i, ln in enumerate(lines):
            try:
                rows.append(json.loads(ln))
            except json.JSONDecodeError:
                if i < len(lines) - 1:
                    raise ValueError(f"{path}, line {i + 1} is not JSON: {ln[:80]!r}") from None
                logger.warning("%s: ignoring an incomplete last line (the run was killed while writing it)", path)
        return rows


def plot_curves(metrics_path: Path, out_path: Path, title: Optional[str] = None) -> Optional[Path]:
    """Loss, accuracy over the K classes, learning rate (and val top-1) against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = MetricsLog.read(metrics_path)
    if not rows:
        return None
    panels = [("loss", "train loss"), ("acc_k", "accuracy over the K classes"), ("lr", "learning rate")]
    if any("val_top1" in r for r in rows):
        panels.append(("val_top1", "val top-1 over all N classes"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (key, label) in zip(axes, panels):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 30 else None)
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_write(out_path, kill_name="curves") as f:
        fig.savefig(f, dpi=110, format="png")
    plt.close(fig)
    return out_path

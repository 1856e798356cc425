"""Training logs a person can read: JSON lines, TensorBoard events, and a plot of the curves."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, List, Optional

logger = logging.getLogger(__name__)


class MetricsLog:
    """Appends one JSON object per logged step to ``metrics.jsonl``; mirrors it to TensorBoard."""

    def __init__(self, output_dir: Path, tensorboard: bool = True, resume_step: int = 0) -> None:
        self.path = output_dir / "metrics.jsonl"
        if resume_step == 0 and self.path.exists():
            self.path.unlink()
        elif resume_step:  # drop lines written after the checkpoint we resume from
            kept = [ln for ln in self.read(self.path) if ln["step"] <= resume_step]
            self.path.write_text("".join(json.dumps(ln) + "\n" for ln in kept))
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.warning("tensorboard is not installed: no event files (pip install tensorboard)")
            else:
                self.writer = SummaryWriter(str(output_dir / "tb"), purge_step=resume_step or None)

    def log(self, step: int, values: Dict[str, float]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    @staticmethod
    def read(path: Path) -> List[Dict[str, float]]:
        return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]


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
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path

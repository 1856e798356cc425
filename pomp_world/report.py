"""The main job's outputs: the paper-style table (rows: prompts; columns: the three tasks'
metrics, in points), each task's margin with its uncertainty, results.csv and results.png."""
from __future__ import annotations

import csv
import statistics
from pathlib import Path
from typing import Any, Dict, List, Tuple

from .tasks import classification, detection, segmentation

HAND, POMP, POMP_NC = "hand-crafted", "POMP", "POMP, no local correction"
DET_COLS = {"AP": "det AP", "APr": "det APr (novel)"}
SEG_COLS = {"mIoU_seen": "seg mIoU seen", "mIoU_unseen": "seg mIoU unseen", "hIoU": "seg hIoU"}


def table_rows(results: Dict[str, Any]) -> Tuple[List[str], Dict[str, Dict[str, float]]]:
    """Columns and ``{row: {column: points}}`` (None where a row has no value for a task)."""
    cols: List[str] = []
    rows: Dict[str, Dict[str, float]] = {HAND: {}, POMP: {}}
    if "cls" in results:
        cls = results["cls"]
        for split in ("unseen", "seen"):
            col = f"cls {split} top-1 ({cls['classes'][split]:,}-way)"
            cols.append(col)
            for row, acc in cls["top1"].items():
                rows.setdefault(row, {})[col] = 100 * acc[split]
    for task, names in (("det", DET_COLS), ("seg", SEG_COLS)):
        if task in results:
            for metric, col in names.items():
                cols.append(col)
                for row in (HAND, POMP):
                    rows[row][col] = results[task]["mean"][row][metric]
    return cols, rows


def margin_lines(results: Dict[str, Any], seeds: Tuple[int, ...]) -> List[str]:
    lines = []
    if "cls" in results:
        cls = results["cls"]
        for split in ("unseen", "seen"):
            mean, se = cls["margin"][POMP][split]
            lines.append(f"- classification, {split}: POMP - hand-crafted {100 * mean:+.1f} points "
                         f"(paired standard error {100 * se:.1f} over {cls['images'][split]:,} images; "
                         f"no local correction: {100 * cls['margin'][POMP_NC][split][0]:+.1f})")
    for task, label, names in (("det", "detection", DET_COLS), ("seg", "segmentation", SEG_COLS)):
        if task in results:
            per_seed = results[task]["per_seed"]
            for metric in names:
                mean, se = results[task]["margin"][metric]
                diffs = ", ".join(f"{per_seed[POMP][s][metric] - per_seed[HAND][s][metric]:+.1f}" for s in seeds)
                spread = (f"standard error {se:.1f} over {len(seeds)} training seeds" if len(seeds) > 1 else
                          "one training seed: its spread over seeds is not measured here, see docs/world.md")
                lines.append(f"- {label}, {metric}: POMP - hand-crafted {mean:+.1f} points ({spread}; "
                             f"per seed {diffs})")
    return lines


def write_results(results: Dict[str, Any], out: Path, settings: Any) -> Path:
    """results.md (table, margins, settings), results.csv and results.png under ``out``."""
    cols, rows = table_rows(results)
    seeds = tuple(settings.seeds)

    def cell(v: Any) -> str:
        return "-" if v is None else f"{v:.1f}"

    lines = ["| prompt | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {row} | " + " | ".join(cell(v.get(c)) for c in cols) + " |" for row, v in rows.items()]
    hand = {"cls": f'classification "{classification.HAND_PROMPT}"',
            "det": f'detection Detic\'s "{detection.HAND_WORDS} {{}}"',
            "seg": f'segmentation stage (a) started from "{segmentation.HAND_WORDS}" (ZSSeg\'s initialisation)'}
    notes = ["", "Hand-crafted prompt: " + "; ".join(v for k, v in hand.items() if k in results) +
             ". POMP: the prompt pre-trained on the seen classes, unchanged in every task."]
    if "det" in results or "seg" in results:
        notes.append(f"Detection and segmentation: mean over training seeds {', '.join(map(str, seeds))} (the same "
                     f"seeds for both prompts; detector {settings.det_iters} iterations, ZSSeg stage (b) "
                     f"{settings.seg_iters}); box AP on the val scenes; both with the full vocabulary.")
    notes += ["", "POMP's margin over the hand-crafted prompt:"] + margin_lines(results, seeds)
    (out / "results.md").write_text("\n".join(lines + notes) + "\n")
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prompt"] + cols)
        w.writerows([[row] + ["" if v.get(c) is None else f"{v[c]:.2f}" for c in cols] for row, v in rows.items()])
    _figure(results, cols, rows, out / "results.png")
    return out / "results.md"


def _figure(results: Dict[str, Any], cols: List[str], rows: Dict[str, Dict[str, float]], path: Path) -> None:
    """One panel per task; bars hand-crafted vs POMP, error bars = SD over training seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(t, [c for c in cols if c.startswith(t)]) for t in ("cls", "det", "seg") if any(c.startswith(t) for c in cols)]
    metric_of = {**{v: k for k, v in DET_COLS.items()}, **{v: k for k, v in SEG_COLS.items()}}
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for ax, (task, task_cols) in zip(axes[0], panels):
        for k, row in enumerate((HAND, POMP)):
            values = [rows[row][c] for c in task_cols]
            err = None
            if task != "cls" and len(results[task]["seeds"]) > 1:
                per_seed = results[task]["per_seed"][row]
                err = [statistics.stdev(per_seed[s][metric_of[c]] for s in results[task]["seeds"]) for c in task_cols]
            bars = ax.bar([i + 0.4 * k for i in range(len(task_cols))], values, 0.4, yerr=err, capsize=3, label=row)
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks([i + 0.2 for i in range(len(task_cols))], [c.split(" ", 1)[1] for c in task_cols],
                      rotation=20, ha="right", fontsize=8)
        ax.set_title({"cls": "classification", "det": "detection", "seg": "segmentation"}[task])
        ax.set_ylabel("points")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Synthetic world, tiny CLIP: one prompt, three tasks (hand-crafted vs POMP)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

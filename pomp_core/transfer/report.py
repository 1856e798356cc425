"""Results tables: Markdown, CSV and a bar plot, one row per prompt, one column per dataset."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Mapping, Optional

Results = Mapping[str, Mapping[str, float]]  # results[prompt][dataset] = top-1 in [0, 1]


def with_averages(results: Results, groups: Optional[Mapping[str, List[str]]] = None) -> Dict[str, Dict[str, float]]:
    """Each row plus its mean over all datasets ("Avg") and, when the datasets span several
    groups (cross-dataset, domain-shift), its mean over each group of two or more ("Avg <group>")."""
    out = {}
    for row, cols in results.items():
        full = dict(cols)
        present = {g: [d for d in ds if d in cols] for g, ds in (groups or {}).items()}
        present = {g: ds for g, ds in present.items() if ds}
        if len(present) > 1:  # a group of one dataset would only repeat its column
            full.update({f"Avg {g}": sum(cols[d] for d in ds) / len(ds) for g, ds in present.items() if len(ds) > 1})
        full["Avg"] = sum(cols.values()) / len(cols)
        out[row] = full
    return out


def markdown_table(results: Results, corner: str = "prompt") -> str:
    cols = list(next(iter(results.values())).keys())
    lines = [f"| {corner} | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {row} | " + " | ".join(f"{100 * v[c]:.1f}" for c in cols) + " |" for row, v in results.items()]
    return "\n".join(lines) + "\n"


def write_csv(results: Results, path: Path, corner: str = "prompt") -> Path:
    cols = list(next(iter(results.values())).keys())
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([corner] + cols)
        w.writerows([[row] + [f"{100 * v[c]:.2f}" for c in cols] for row, v in results.items()])
    return path


def bar_plot(results: Results, path: Path, title: str = "zero-shot top-1") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = list(next(iter(results.values())).keys())
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(cols) * max(1, len(results)) ** 0.5 + 2), 3.8))
    width = 0.8 / len(results)
    for k, (row, v) in enumerate(results.items()):
        bars = ax.bar([i + k * width for i in range(len(cols))], [100 * v[c] for c in cols], width, label=row)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks([i + width * (len(results) - 1) / 2 for i in range(len(cols))], cols, rotation=30, ha="right")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(results: Results, out: str | Path, groups: Optional[Mapping[str, List[str]]] = None,
                 title: str = "zero-shot top-1") -> Dict[str, Path]:
    """results.md, results.csv, results.png under ``out`` (averages added); returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = with_averages(results, groups)
    (out / "results.md").write_text(markdown_table(table))
    return {"md": out / "results.md", "csv": write_csv(table, out / "results.csv"),
            "png": bar_plot(table, out / "results.png", title)}

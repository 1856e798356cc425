"""The configs-layout check shared by configs/seg (mmengine .py) and configs/det (detectron2
.yaml with ``_BASE_``): a block of six or more non-comment lines written in two places belongs
in a base file that both inherit."""
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

BLOCK = 6


def repeated_blocks(root: Path, pattern: str, block: int = BLOCK) -> Dict[str, List[str]]:
    """Every run of ``block`` stripped non-empty non-comment lines seen more than once under root."""
    seen = defaultdict(list)
    for path in sorted(root.rglob(pattern)):
        lines = [line.strip() for line in path.read_text().splitlines()]
        lines = [line for line in lines if line and not line.startswith("#")]
        for i in range(len(lines) - block + 1):
            seen["\n".join(lines[i:i + block])].append(f"{path.relative_to(root)}:{i}")
    return {text: where for text, where in seen.items() if len(where) > 1}

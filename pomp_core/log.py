"""Readable logs for the tools: our INFO lines, without open_clip's model-building chatter."""
from __future__ import annotations

import logging


class _QuietLibraries(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # open_clip logs every parsing step at INFO through the root logger
        return record.levelno >= logging.WARNING or "/open_clip/" not in record.pathname


def setup_logging(rank: int = 0) -> None:
    """INFO on rank 0, warnings only on the other ranks; timestamps and rank in every line."""
    handler = logging.StreamHandler()
    handler.addFilter(_QuietLibraries())
    handler.setFormatter(logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, handlers=[handler], force=True)

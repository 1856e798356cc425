"""Progress of long loops: a tqdm bar on a terminal, a log line every few seconds elsewhere.

A carriage-return bar redrawn every step turns a redirected log (CI, nohup, sbatch,
``make demo > log.txt 2>&1``) into megabytes of one unreadable line; when stdout or
stderr is not a terminal the same loop logs ``desc: 120/500 step (24%), 3.1 step/s,
ETA 2m03s, loss=1.234`` at INFO every ``every`` seconds (default 30,
``POMP_PROGRESS_SECONDS``) and once at the end.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Iterable, Iterator, Optional

from tqdm import tqdm

logger = logging.getLogger(__name__)


def interactive() -> bool:
    """Both streams on a terminal: a redrawn bar is readable only there."""
    return all(getattr(s, "isatty", lambda: False)() for s in (sys.stdout, sys.stderr))


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
    """Iterate (``for x in Progress(items, desc=...)``) or ``update(n)`` by hand, like tqdm."""

    def __init__(self, iterable: Optional[Iterable] = None, total: Optional[int] = None, desc: str = "",
                 unit: str = "it", initial: int = 0, disable: bool = False, leave: bool = True,
                 every: Optional[float] = None) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.disable = disable
        self.every = float(os.environ.get("POMP_PROGRESS_SECONDS", 30)) if every is None else every
        self.postfix = ""
        self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, dynamic_ncols=True) \
            if interactive() and not disable else None
        self._start = self._last = time.monotonic()
        self._start_n = initial
        self._logged_n = None
        self._closed = False

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif not self.disable and time.monotonic() - self._last >= self.every:
            self._log()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())
        if self._bar is not None:
            self._bar.set_postfix(**values)

    def line(self) -> str:
        """``desc: n/total unit (pct%), rate unit/s, ETA, postfix``."""
        elapsed = time.monotonic() - self._start
        rate = (self.n - self._start_n) / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: {self.n}/{self.total} {self.unit}" if self.total else f"{self.desc}: {self.n} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{rate:.3g} {self.unit}/s")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"ETA {_duration((self.total - self.n) / rate)}")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)

    def _log(self) -> None:
        self._last = time.monotonic()
        self._logged_n = self.n
        logger.info(self.line())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif not self.disable and self._logged_n != self.n:
            self._log()  # the final count, once

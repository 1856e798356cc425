"""Files that survive a killed process, and the named kill points that test it.

A long run may die at any instruction (``kill -9``, preemption, a full disk). Everything a
resume reads is therefore written to a unique temporary name, flushed to disk and renamed
over the final name (``os.replace`` is atomic on POSIX): a reader sees the old file or the
new one, never half of one, and two runs writing the same file never write the same
temporary.

``POMP_KILL_AT=<point>`` (or ``<point>:<step>``) makes the process SIGKILL itself when it
reaches that named point, so tests can stop the real process at a chosen moment.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import uuid
from pathlib import Path
from typing import IO, Any, Iterator, Optional

import torch

KILL_ENV = "POMP_KILL_AT"


def kill_point(name: str, step: Optional[object] = None) -> None:
    """SIGKILL this process if ``POMP_KILL_AT`` names this point (``name`` or ``name:step``)."""
    want = os.environ.get(KILL_ENV)
    if want and (want == name or (step is not None and want == f"{name}:{step}")):
        logging.shutdown()  # the log lines up to here are what a person would see
        os.kill(os.getpid(), signal.SIGKILL)


def temporary_name(path: Path, suffix: str = ".tmp") -> Path:
    """``<path>.<host>-<pid>-<random><suffix>``: unique across processes and hosts sharing a folder."""
    return path.with_name(f"{path.name}.{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", kill_name: Optional[str] = None,
                 step: Optional[int] = None) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; on success flush, fsync and rename it to ``path``.

    On an exception the temporary file is removed and ``path`` is untouched. ``kill_name``
    names a kill point between the complete temporary file and the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)
    tmp = temporary_name(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if kill_name:
            kill_point(kill_name, step)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """``json.dump(data)`` through :func:`atomic_write`; returns ``path``."""
    with atomic_write(path, "w") as f:
        json.dump(data, f)
    return Path(path)


def atomic_torch_save(obj: Any, path: str | os.PathLike, kill_name: Optional[str] = None,
                      step: Optional[int] = None) -> None:
    with atomic_write(path, "wb", kill_name, step) as f:
        torch.save(obj, f)


def remove_stale_temporaries(folder: Path, prefix: str) -> None:
    """Delete this host's ``temporary_name`` files under ``folder`` whose writer process is dead
    (left by a killed run); files of live processes and of other hosts are left alone."""
    host = socket.gethostname()
    for tmp in folder.glob(f"{prefix}.{host}-*"):
        try:
            pid = int(tmp.name[len(prefix) + len(host) + 2:].split("-", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _alive(pid):
            with contextlib.suppress(OSError):
                tmp.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True

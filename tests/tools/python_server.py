"""Runs ``python SCRIPT ARGS``, ``python -m MODULE ARGS`` and ``python -c CODE ARGS`` commands in
forks of one interpreter that has already imported the third-party frameworks.

A new interpreter spends 3-6 s of CPU importing torch, detectron2 and mmseg before a documented
command does anything (docs/README.md); the docs' commands are about 50 of them. Each command
here runs in its own fork (its own copy of the interpreter: nothing it registers, sets or
writes in memory reaches the next), with its own argv, environment, working folder,
``sys.path[0]`` and stdout / stderr files, and its exit code as Python gives it. What Python
reads from the environment at start-up (``PYTHONPATH``, thread counts) is the server's own.
Only third-party packages are imported in advance, so each command still imports and registers
the project's own code itself: a tool that forgets an import of ours fails here as it would
for a user.

Protocol (``ForkedPython`` is the client): one JSON request per line on stdin,
``{"argv": [...], "cwd": ..., "env": {...}, "stdout": file, "stderr": file}``; one line
``{"code": N}`` back.
"""
from __future__ import annotations

import atexit
import json
import os
import runpy
import shlex
import subprocess
import sys
import threading
import traceback
import types
from pathlib import Path
from typing import Dict, List, Optional, Sequence

# What the project's tools import from outside the project (imported once, before any fork).
FRAMEWORKS = ("torch", "torchvision", "torchvision.ops", "numpy", "PIL.Image", "cv2", "matplotlib.pyplot",
              "open_clip", "tqdm", "yaml", "lvis", "pycocotools.mask", "detectron2.config", "detectron2.engine",
              "detectron2.modeling", "detectron2.data", "detectron2.evaluation", "detectron2.checkpoint",
              "mmengine.runner", "mmengine.config", "mmcv.ops", "mmcv.transforms", "mmdet.models", "mmseg.models",
              "mmseg.datasets", "mmseg.apis")


def _exit_code(exc: SystemExit) -> int:
    """The status Python's own exit gives for ``SystemExit(code)``."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def _run(argv: List[str], cwd: str) -> int:
    """``argv`` (``[python, ...]``) as a fresh interpreter would run it; its exit status."""
    os.chdir(cwd)
    try:
        if argv[1] == "-c":
            sys.argv, sys.path[0] = ["-c", *argv[3:]], ""
            main = sys.modules["__main__"] = types.ModuleType("__main__")
            exec(compile(argv[2], "<string>", "exec"), main.__dict__)
        elif argv[1] == "-m":
            sys.argv, sys.path[0] = [argv[2], *argv[3:]], os.getcwd()
            runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
        else:
            sys.argv, sys.path[0] = argv[1:], os.path.dirname(os.path.realpath(argv[1]))
            runpy.run_path(argv[1], run_name="__main__")
        return 0
    except SystemExit as exc:
        return _exit_code(exc)
    except BaseException:  # noqa: B902 - an uncaught error: Python prints it and exits with 1
        traceback.print_exc()
        return 1


def _child(request: Dict) -> None:
    os.environ.clear()
    os.environ.update(request["env"])
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, key in ((1, "stdout"), (2, "stderr")):
        os.dup2(os.open(request[key], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    code = _run(request["argv"], request["cwd"])
    try:
        atexit._run_exitfuncs()  # what the interpreter's exit would run (logging, temp folders)
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(code & 0xFF)


def serve(preload: List[str]) -> None:
    reply = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever the imports print must not mix with the replies
    for name in preload:
        __import__(name)
    assert threading.active_count() == 1, "a thread was started by an import: forking would copy its locks"
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(request)
        _, status = os.waitpid(pid, 0)
        reply.write(json.dumps({"code": os.waitstatus_to_exitcode(status)}) + "\n")
        reply.flush()


def python_argv(shell: str, cwd: Path, env: Dict[str, str]) -> Optional[List[str]]:
    """The argv bash gives a plain ``PYTHON SCRIPT | -m MODULE | -c CODE ...`` command (PYTHON: this
    interpreter's path; quotes, variables and comments as bash reads them); None for any other
    command (another program, pipes, lists, redirections, substitutions, other Python options)."""
    lexer = shlex.shlex(shell, posix=True, punctuation_chars=True)
    try:
        tokens = list(lexer)
    except ValueError:
        return None
    if not tokens or tokens[0] != sys.executable or "`" in shell or "$(" in shell or \
            any(set(t) <= set(lexer.punctuation_chars) for t in tokens):
        return None
    words = subprocess.run(["bash", "-c", "printf '%s\\0' " + shell], cwd=cwd, env=env, capture_output=True,
                           text=True, check=True).stdout.split("\0")[:-1]
    return words if len(words) > 1 and (words[1] in ("-c", "-m") or not words[1].startswith("-")) else None


class ForkedPython:
    """The client: ``run(argv, cwd, env)`` -> ``subprocess.CompletedProcess`` (text output). The
    interpreter starts with ``env`` at the first ``run``; ``close`` stops it."""

    def __init__(self, env: Dict[str, str], log: Path, preload: Sequence[str] = FRAMEWORKS):
        self.env, self.log, self.preload = env, log, list(preload)
        self.proc: Optional[subprocess.Popen] = None
        self.calls = 0

    def run(self, argv: List[str], cwd: Path, env: Dict[str, str]) -> subprocess.CompletedProcess:
        if self.proc is None:
            with open(self.log, "w") as log:
                self.proc = subprocess.Popen([sys.executable, "-m", "tests.tools.python_server", *self.preload],
                                             env=self.env, cwd=str(Path(__file__).resolve().parents[2]),
                                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
        self.calls += 1
        out, err = (self.log.with_suffix(f".{self.calls}.{s}") for s in ("out", "err"))
        request = {"argv": argv, "cwd": str(cwd), "env": env, "stdout": str(out), "stderr": str(err)}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the forking interpreter stopped: {self.log.read_text()[-2000:]}")
        return subprocess.CompletedProcess(argv, json.loads(line)["code"], out.read_text(), err.read_text())

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait()
            self.proc.stdout.close()


if __name__ == "__main__":
    serve(sys.argv[1:])

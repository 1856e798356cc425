"""Every shell command of README.md and docs/*.md, run as a new user would run it.

The commands are those of the fenced ``bash`` / ``sh`` / ``shell`` blocks, one per line
(``\\`` continues a line, ``#`` starts a comment). Each runs with bash in a scratch folder
that links the repository's tools/, configs/ and packages (so ``output/...`` goes there),
``.venv/bin/python`` standing for this interpreter, ``$DATA`` for a folder that does not
exist. ``python`` commands without shell operators run in forks of one interpreter that has
imported the frameworks (tests/tools/python_server.py: the same argv, folder and exit code,
without 3-6 s of imports each); the others with bash. By default a command must succeed
(exit code 0): a new command in the docs is run without further work. HTML comments right
above a block (invisible on GitHub) change that:

    <!-- docs-test: replace "OLD" -> "NEW": REASON -->   run the block with OLD replaced by
                                                          NEW, e.g. a reduced size
    <!-- docs-test: fails: REASON -->                    each command needs what the repository
                                                          does not ship (real data, weights, GPUs)
                                                          and must stop with exit code 2 and one
                                                          line ``error: ...`` naming what is missing
    <!-- docs-test: skip: REASON -->                     not run here (REASON says why); the
                                                          scripts and configs it names must exist
    <!-- docs-test: fails when "TEXT": REASON -->        (and ``skip when``) only the block's
                                                          commands that contain TEXT

A marker whose text is not in its block, or that stands away from a block, fails the test.
The convention is also described in docs/README.md.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from tests.tools.python_server import ForkedPython, python_argv

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
LINKED = ["tools", "configs", "pomp_core", "pomp_det", "pomp_seg", "pomp_world", "benchmarks", "requirements",
          "setup.py", "Makefile"]
SHELL_FENCES = ("bash", "sh", "shell")
MARKER = re.compile(r"<!--\s*docs-test:\s*(.*?)\s*-->")
REPLACE = re.compile(r'replace\s+"(.*?)"\s*->\s*"(.*?)"\s*:\s*(\S.*)')
MODE = re.compile(r'(skip|fails)(?:\s+when\s+"(.*?)")?\s*:\s*(\S.*)')
PYTHON = re.compile(r"(^|(?<=\s))(\.venv/bin/)?python3?(?=\s)")
NAMED = re.compile(r"'[^']+'|--[\w-]+|\b[\w-]+\.[\w.-]+|\b\w+/[\w./-]+")  # a path, an option or a key


@dataclass
class Block:
    doc: str
    line: int
    text: str
    replace: List[Tuple[str, str]] = field(default_factory=list)
    modes: List[Tuple[str, Optional[str], str]] = field(default_factory=list)  # (mode, when, reason)

    def commands(self) -> List[Tuple[str, str, str]]:
        """[(mode, command, reason)] with mode run / fails / skip."""
        text = self.text
        for old, new in self.replace:
            text = text.replace(old, new)
        out = []
        for line in text.replace("\\\n", " ").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            mode, reason = "run", ""
            for m, when, why in self.modes:
                if when is None or when in line:
                    mode, reason = m, why
            out.append((mode, line, reason))
        return out


def parse(doc: Path) -> List[Block]:
    blocks, pending, fence = [], [], None
    lines = doc.read_text().splitlines()
    for i, line in enumerate(lines, 1):
        if fence is not None:
            if line.strip() == "```":
                if fence.doc:
                    blocks.append(fence)
                fence = None
            else:
                fence.text += line + "\n"
            continue
        markers = MARKER.findall(line)
        if markers:
            pending += [(i, m) for m in markers]
            continue
        if line.startswith("```"):
            lang = line[3:].strip()
            fence = Block(doc.relative_to(ROOT) if lang in SHELL_FENCES else "", i, "")
            for at, m in pending:
                assert lang in SHELL_FENCES, f"{doc.relative_to(ROOT)}:{at}: docs-test marker above a '{lang}' block"
                if r := REPLACE.fullmatch(m):
                    fence.replace.append((r.group(1), r.group(2)))
                elif r := MODE.fullmatch(m):
                    fence.modes.append((r.group(1), r.group(2), r.group(3)))
                else:
                    raise AssertionError(f"{doc.relative_to(ROOT)}:{at}: unreadable docs-test marker '{m}' (see this test's docstring)")
            pending = []
        elif line.strip() and pending:
            raise AssertionError(f"{doc.relative_to(ROOT)}:{pending[0][0]}: docs-test marker not right above a code block")
    for block in blocks:
        for old, _ in block.replace:
            assert old in block.text, f"{doc.relative_to(ROOT)}:{block.line}: replace marker's \"{old}\" is not in the block"
        for _, when, _ in block.modes:
            assert when is None or when in block.text, f"{doc.relative_to(ROOT)}:{block.line}: \"{when}\" is not in the block"
    return blocks


def scratch(tmp: Path) -> Dict[str, str]:
    for name in LINKED:
        if (ROOT / name).exists():
            (tmp / name).symlink_to(ROOT / name)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONPATH=path, DATA=str(tmp / "data"), MPLBACKEND="Agg",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    for var in ("DETECTRON2_DATASETS", "POMP_DEBUG"):
        env.pop(var, None)
    return env


def referenced_files(command: str) -> List[str]:
    """The repository's scripts and configs a command names (none for another repository's commands)."""
    words = command.split()
    if not any(w.startswith(("tools/", "benchmarks/")) for w in words):
        return []
    return [w for w in words if re.match(r"(tools|configs|benchmarks)/\S+\.(py|yaml|sh)$", w)]


def check_command(mode: str, command: str, cwd: Path, env: Dict[str, str], python: ForkedPython) -> Optional[str]:
    """None if the command behaves as its mode says, else what went wrong."""
    if mode == "skip":
        missing = [f for f in referenced_files(command) if not (ROOT / f).exists()]
        return f"names files that do not exist: {missing}" if missing else None
    shell = PYTHON.sub(sys.executable, command)
    argv = python_argv(shell, cwd, env)
    done = python.run(argv, cwd, env) if argv else \
        subprocess.run(["bash", "-c", shell], cwd=cwd, env=env, capture_output=True, text=True)
    tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
    if mode == "run":
        if done.returncode != 0:
            return (f"exit code {done.returncode} (if it needs real data, weights or GPUs, mark its block "
                    f"'<!-- docs-test: fails: REASON -->'):\n{tail}")
        return None
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error: ")]
    if done.returncode != 2 or len(errors) != 1 or "Traceback" in done.stderr:
        return f"expected exit code 2 and one 'error: ' line, got exit code {done.returncode}:\n{tail}"
    if not NAMED.search(errors[0][len("error: "):]):
        return f"the error names no file, option or key: {errors[0]}"
    return None


def test_markers_are_well_formed_and_every_block_is_accounted_for():
    counts = {"run": 0, "fails": 0, "skip": 0}
    for doc in DOCS:
        for block in parse(doc):
            for mode, command, reason in block.commands():
                counts[mode] += 1
                assert mode == "run" or len(reason) > 10, f"{doc.relative_to(ROOT)}:{block.line}: say why '{command}' is {mode}"
    assert counts["run"] >= 10 and counts["fails"] >= 10, counts


@pytest.fixture(scope="module")
def python(tmp_path_factory):
    """One forking interpreter for every doc (the environment differs only in ``$DATA``)."""
    tmp = tmp_path_factory.mktemp("python_server")
    server = ForkedPython(scratch(tmp), tmp / "python_server.log")
    yield server
    server.close()


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_documented_commands(doc, tmp_path, python):
    env = scratch(tmp_path)
    name = doc.relative_to(ROOT)
    problems = []
    # in the documented order: each may use what the previous wrote
    for line, mode, command, reason in [(block.line, *c) for block in parse(doc) for c in block.commands()]:
        print(f"{mode:5s} {command[:110]}{'  [' + reason + ']' if reason else ''}")
        problem = check_command(mode, command, tmp_path, env, python)
        if problem:
            problems.append(f"{name}:{line}: {command}\n  {problem}")
    assert not problems, "\n\n".join(problems)

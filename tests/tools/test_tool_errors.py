"""Every tool in tools/ turns a user error (a missing file, a bad config key, a bad
vocabulary, a bad value) into one ``error: ...`` line on stderr and exit code 2, before
any slow work. The commands of the docs run the tools as scripts (tests/tools/test_docs_commands.py);
here each tool's ``main`` runs in this process, so the frameworks are imported once."""
import importlib.util
import logging
from pathlib import Path

import pytest

from pomp_core.cli import EXIT_USER_ERROR, run_tool

ROOT = Path(__file__).resolve().parents[2]
TOOLS = sorted(p.name for p in (ROOT / "tools").glob("*.py"))
MISSING = "no/such/file"

# tool -> (arguments with one mistake, a word the error line must contain)
BAD_ARGUMENTS = {
    "classify.py": (["--model", "pomp-tiny", "--pretrained", "", "--vocabulary", "a,b", "--image", MISSING],
                    MISSING),
    "demo.py": (["--output-dir", "{tmp}/demo", "sampling.kk=3"], "sampling.kk"),
    "demo_det.py": (["--config-file", "configs/det/world/world-base_pomp.yaml", "--input", MISSING,
                     "--output", "{tmp}/det"], MISSING),
    "demo_seg.py": (["configs/seg/zsseg-r18tiny_world.py", MISSING + ".pth", "--input", "x.png",
                     "--output", "{tmp}/seg"], MISSING),
    "eval_cls.py": (["--model", "pomp-tiny", "--pretrained", "", "--datasets", "caltech101",
                     "--root", "{tmp}/data", "--prompt", "hand"], "caltech"),
    "export_embeddings.py": (["--model", "pomp-tiny", "--pretrained", "", "--init-words", "a photo of a",
                              "--vocabulary", "cat,dog,cat", "--out", "{tmp}/e.npy"], "repeats"),
    "export_prompt.py": (["--prompt", MISSING, "--out", "{tmp}/release"], MISSING),
    "make_world.py": (["--out", "{tmp}/w", "--det-classes", "-3"], "--det-classes -3"),
    "mutation.py": (["pomp_det/no_such_module.py"], "no_such_module.py"),
    "pretrain.py": (["--config", "configs/pomp/world_tiny.yaml", "optim.lrr=0.1"], "optim.lrr"),
    "test_seg.py": (["configs/seg/zsseg-r18tiny_world.py", MISSING + ".pth"], MISSING),
    "train_net.py": (["--config-file", "configs/det/world/world-base_pomp.yaml", "--world", "{tmp}/none"],
                     "make_world"),
    "train_seg.py": (["configs/seg/zsseg-r18tiny_world.py", "--data-root", "{tmp}/none"], "none"),
    "train_tiny_clip.py": (["--out", "pomp_world/weights/pomp_world_clip.pt"], "--replace-shipped"),
}


@pytest.fixture
def keep_logging():
    """Tools configure the root logger (pointing at this test's captured stderr): restore it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tool_{name[:-3]}", ROOT / "tools" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_tool_is_covered_and_reports_through_run_tool():
    assert sorted(BAD_ARGUMENTS) == TOOLS, "a new tool needs a bad-argument case here"
    for name in TOOLS:
        main_block = (ROOT / "tools" / name).read_text().split('if __name__ == "__main__":')[-1]
        assert "run_tool(" in main_block, f"tools/{name} does not run its main through pomp_core.cli.run_tool"


@pytest.mark.parametrize("name", TOOLS)
def test_bad_argument_is_one_error_line_and_exit_2(name, tmp_path, capsys, monkeypatch, keep_logging):
    monkeypatch.chdir(ROOT)  # the relative config paths above
    monkeypatch.delenv("POMP_DEBUG", raising=False)
    argv, expected = BAD_ARGUMENTS[name]
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    tool = load_tool(name)
    if name == "train_net.py":  # detectron2's launcher wraps main; the checks run before it
        main = lambda: tool.check_inputs(tool.parser().parse_args(argv))  # noqa: E731
    else:
        main = lambda: tool.main(argv)  # noqa: E731
    with pytest.raises(SystemExit) as exit_info:
        run_tool(main)
    assert exit_info.value.code == EXIT_USER_ERROR
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert expected in err[0]
    assert not list(tmp_path.iterdir()), "a failed check left files behind"


@pytest.mark.parametrize("opts", [["MODEL.NO_SUCH_KEY", "1"], ["SOLVER.MAX_ITER"]])
def test_detector_config_errors_are_one_line(opts, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    tool = load_tool("train_net.py")
    args = tool.parser().parse_args(["--config-file", "configs/det/world/world-base_pomp.yaml", *opts])
    with pytest.raises(SystemExit):
        run_tool(tool.check_inputs, args)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and ("NO_SUCH_KEY" in err[0] or "odd" in err[0]), err


@pytest.mark.parametrize("name", ["classify.py", "make_world.py"])
def test_argparse_errors_are_one_line_too(name, capsys):
    tool = load_tool(name)
    with pytest.raises(SystemExit) as exit_info:
        run_tool(tool.main, ["--no-such-option"])
    assert exit_info.value.code == EXIT_USER_ERROR
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and "required" in err[0] and "--help" in err[0], err


def test_debug_keeps_the_traceback(monkeypatch):
    monkeypatch.setenv("POMP_DEBUG", "1")

    def bad():
        raise FileNotFoundError("x")

    with pytest.raises(FileNotFoundError):
        run_tool(bad)


def test_a_bug_is_not_dressed_as_a_user_error():
    def bug():
        raise TypeError("internal")

    with pytest.raises(TypeError):
        run_tool(bug)

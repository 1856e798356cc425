"""The forking interpreter that runs the docs' ``python`` commands (tests/tools/python_server.py)
behaves as a new interpreter would: argv as bash splits it, folder, environment, ``sys.path[0]``,
output, exit codes, and nothing kept from one command to the next."""
import os
import sys

import pytest

from tests.tools.python_server import ForkedPython, python_argv

PY = sys.executable


@pytest.mark.parametrize("command, argv", [
    (f'{PY} tools/x.py --vocabulary "red cross,blue ring" --root $DATA   # a comment',
     [PY, "tools/x.py", "--vocabulary", "red cross,blue ring", "--root", "/data", "here"]),  # bash splits $DATA
    (f"{PY} -m pomp_det.data.lvis_norare 'a b.json'", [PY, "-m", "pomp_det.data.lvis_norare", "a b.json"]),
    (f'{PY} -c "import sys; print(sys.argv)" one \'$DATA\'', [PY, "-c", "import sys; print(sys.argv)", "one", "$DATA"]),
    (f"{PY} tools/mutation.py", [PY, "tools/mutation.py"]),
    (f"{PY} x.py | tee log", None),
    (f"{PY} x.py && {PY} y.py", None),
    (f"{PY} x.py; {PY} y.py", None),
    (f"{PY} x.py > out.txt", None),
    (f"{PY} x.py 2>&1", None),
    (f"{PY} x.py $(cat args)", None),
    (f"{PY} x.py `cat args`", None),
    (f"{PY} -u x.py", None),
    (f"{PY}", None),
    (f"FOO=1 {PY} x.py", None),
    ("make test", None),
    (f'{PY} x.py "unclosed', None),
])
def test_python_argv_is_bash_split_of_plain_python_commands_only(command, argv, tmp_path):
    assert python_argv(command, tmp_path, dict(os.environ, DATA="/data here")) == argv


@pytest.fixture
def python(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path[1:]), SERVER_ONLY="1")
    env.pop("PYTHONUNBUFFERED", None)  # output is block-buffered, as in CI: the child must flush it
    server = ForkedPython(env, tmp_path / "server.log", preload=("json",))
    yield server
    server.close()


def test_scripts_run_with_their_argv_folder_env_and_exit_code(python, tmp_path):
    work = tmp_path / "work"
    (work / "tools").mkdir(parents=True)
    (work / "tools" / "show.py").write_text(
        "import os, sys\n"
        "print(sys.argv, os.getcwd(), sys.path[0], os.environ['DATA'], os.environ.get('SERVER_ONLY'), __name__)\n"
        "print('to stderr', file=sys.stderr)\n"
        "sys.exit(3)\n")
    done = python.run([PY, "tools/show.py", "--a", "b c"], work, dict(os.environ, DATA="d1"))
    assert done.returncode == 3
    assert done.stdout == f"['tools/show.py', '--a', 'b c'] {work} {work / 'tools'} d1 None __main__\n"
    assert done.stderr == "to stderr\n"
    (work / "mod.py").write_text("import sys\nprint(__name__, sys.argv[1:])\n")
    done = python.run([PY, "-m", "mod", "x"], work, dict(os.environ, DATA="d2"))
    assert (done.returncode, done.stdout) == (0, "__main__ ['x']\n")
    done = python.run([PY, "-c", "import os, sys; print(sys.argv, repr(sys.path[0]), repr(sys.stdin.read()), "
                            "os.environ['DATA'], __name__)", "y"], work, dict(os.environ, DATA="d3"))
    assert (done.returncode, done.stdout) == (0, "['-c', 'y'] '' '' d3 __main__\n")


@pytest.mark.parametrize("code, status, stderr", [
    ("raise ValueError('bad input')", 1, "ValueError: bad input"),
    ("import sys; sys.exit('error: no data')", 1, "error: no data"),
    ("import sys; sys.exit(2)", 2, ""),
    ("import sys; sys.exit()", 0, ""),
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", -9, ""),
])
def test_exit_status_is_pythons(python, tmp_path, code, status, stderr):
    done = python.run([PY, "-c", code], tmp_path, dict(os.environ))
    assert done.returncode == status and stderr in done.stderr
    assert ("Traceback" in done.stderr) == (status == 1 and "raise" in code)
    assert python.run([PY, "-c", "print('still serving')"], tmp_path, dict(os.environ)).stdout == "still serving\n"


def test_nothing_carries_over_from_one_command_to_the_next(python, tmp_path):
    python.run([PY, "-c", "import json, os; json.leaked = 1; os.environ['LEAK'] = '1'; os.chdir('/')"],
               tmp_path, dict(os.environ))
    check = "import json, os; print(hasattr(json, 'leaked'), os.environ.get('LEAK'), os.getcwd())"
    done = python.run([PY, "-c", check],
                      tmp_path, dict(os.environ))
    assert done.stdout == f"False None {tmp_path}\n"


def test_a_server_that_cannot_start_says_why_and_close_stops_a_running_one(tmp_path):
    broken = ForkedPython(dict(os.environ), tmp_path / "broken.log", preload=("no_such_framework",))
    with pytest.raises(RuntimeError, match="(?s)forking interpreter stopped.*No module named 'no_such_framework'"):
        broken.run([PY, "-c", "pass"], tmp_path, dict(os.environ))
    broken.close()
    server = ForkedPython(dict(os.environ), tmp_path / "server.log", preload=())
    assert server.run([PY, "-c", "print(1)"], tmp_path, dict(os.environ)).stdout == "1\n"
    server.close()
    assert server.proc.returncode == 0


def test_c_code_runs_as_the_main_module_and_its_exit_handlers_run(python, tmp_path):
    done = python.run([PY, "-c", "import atexit, sys; x = 5; atexit.register(print, 'at exit'); "
                                 "print(sys.modules['__main__'].x)"], tmp_path, dict(os.environ))
    assert (done.returncode, done.stdout) == (0, "5\nat exit\n")

"""Import a script of tools/ as a module (to call its ``main`` in this process) without
putting tools/ on sys.path."""
import functools
import importlib.util
from pathlib import Path
from types import ModuleType

TOOLS = Path(__file__).resolve().parents[1] / "tools"


@functools.lru_cache(maxsize=None)
def load_tool(name: str) -> ModuleType:
    """tools/<name>.py, loaded once per test session."""
    spec = importlib.util.spec_from_file_location(f"tools_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

"""Import a framework for a test, or skip; in CI (CI=true) a missing framework fails."""
import importlib
import importlib.util
import os
from types import ModuleType

import pytest


def require(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{module} does not import in CI ({err}): the install step is broken; "
                        "run tools/setup_env.sh", pytrace=False)
        pytest.skip(f"{module} is not installed ({err}); tools/setup_env.sh installs it")


def load_tool(name: str) -> ModuleType:
    """A script of tools/ as a module (``load_tool("train_net")``), without putting tools/ on sys.path."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"tool_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

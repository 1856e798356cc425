"""Import a framework for a test, or skip; in CI (CI=true) a missing framework fails."""
import importlib
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

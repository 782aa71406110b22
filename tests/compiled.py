"""The compiled twin of a module, for the tests that compare it with the pure one.

Missing is a failure that says how to build it, never a skip: a differential
test that silently compared the pure twin with itself would prove nothing.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def compiled(name: str) -> ModuleType:
    """`cext.<name>` as built from its .pyx, or a test failure saying why not."""
    if os.environ.get("OCS_NO_EXTENSIONS") == "1":
        pytest.fail(f"OCS_NO_EXTENSIONS=1 is set: the compiled cext.{name} cannot be "
                    "tested (unset it to run the contract on both twins)", pytrace=False)
    try:
        module = importlib.import_module(f"cext.{name}")
    except ImportError as exc:
        pytest.fail(f"the Cython extension cext.{name} is not built ({exc}); install a C "
                    "compiler (Debian: gcc, python3-dev) and run 'make build'", pytrace=False)
    assert module.__file__.endswith(".so"), f"cext.{name} is not the compiled module"
    return module

"""Selects the compiled (Cython, `cext/`) or pure-Python implementation.

`OCS_NO_EXTENSIONS=1` forces the pure-Python twins; otherwise the compiled
modules are used when they were built. `ocsd --version` reports `ACTIVE`.
"""

from __future__ import annotations

import os
from types import ModuleType

from . import rounding as _rounding_py
from .rating import engine as _rating_py


def _pick(compiled_name: str, twin: ModuleType) -> tuple[ModuleType, bool]:
    if os.environ.get("OCS_NO_EXTENSIONS") == "1":
        return twin, False
    try:
        module = __import__(f"cext.{compiled_name}", fromlist=[compiled_name])
    except ImportError:
        return twin, False
    if not getattr(module, "__file__", "").endswith((".so", ".pyd")):
        return twin, False
    return module, True


rounding, _compiled = _pick("rounding", _rounding_py)
rating, _rating_compiled = _pick("rating", _rating_py)

#: "compiled" when the Cython extensions are in use, else "pure-python".
ACTIVE = "compiled" if _compiled and _rating_compiled else "pure-python"

"""The request path, compiled ahead of time by Cython from its own source.

The modules in `MODULES` are ordinary Python. `setup.py` also compiles each
one, unchanged, into an extension module beside its source, and Python
imports an extension in preference to a `.py` of the same name. On the PAP
path that takes about a quarter off the CPU per request (`python -m
bench.request_path --mode auth` measures it in process, compiled against
interpreted); the source stays the one implementation to read, and it is the pure-Python twin: the whole test
suite runs on either.

* `OCS_NO_EXTENSIONS=1` loads every module here from its source (the policy is
  installed by `ocs/__init__`), as it selects the pure twins of `cext/`.
* `stale()` names compiled modules older than their source in a checkout, i.e.
  edited since the last `make build`: they would run the old code. ocsd warns
  at start, and the test suite fails on them.
* `compiled()` says which of them run compiled, for `ocsd --version`.

A module is listed here only if Cython compiles it and the suite passes with
it compiled. Two constructs Cython 3 gets wrong, avoided in these modules: a
bound method of a closure variable (`get = outer_dict.get`) called inside a
generator expression (the C does not compile), and starred names inside an
`except (...)` tuple (refused).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

MODULES = (
    "ocs.balance",
    "ocs.charging.core",
    "ocs.charging.prices",
    "ocs.charging.relay",
    "ocs.charging.tariffs",
    "ocs.charging.types",
    "ocs.cluster.local",
    "ocs.cluster.redis_backend",
    "ocs.model",
    "ocs.pricing",
    "ocs.store.batch",
    "ocs.store.cache",
    "ocs.store.postgres",
    "ocs.store.sql",
    "ocs.store.sqlite",
    "ocs.store.store",
    "radius.accounting",
    "radius.auth",
    "radius.codec",
    "radius.handler",
    "radius.outcomes",
    "radius.server",
    "diameter.base",
    "diameter.codec",
    "diameter.framing",
    "diameter.gy",
    "diameter.peer",
    "diameter.server",
    "diameter.transport",
)
_LISTED = frozenset(MODULES)


def forced_pure() -> bool:
    return os.environ.get("OCS_NO_EXTENSIONS") == "1"


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Loads the listed modules from their `.py` even where a compiled one is built."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _LISTED:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        source = _source_of(spec.origin) if spec is not None and spec.origin else None
        if source is None:
            return spec
        return importlib.util.spec_from_file_location(fullname, source)


def install_policy() -> None:
    """With OCS_NO_EXTENSIONS=1, make the listed modules import from source."""
    if forced_pure() and not any(isinstance(f, _SourceFirst) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceFirst())


def _source_of(origin: str) -> str | None:
    """The `.py` beside a compiled module (None when `origin` is not one, or has none)."""
    if origin.endswith(".py"):
        return None
    folder, name = os.path.split(origin)
    source = os.path.join(folder, name.split(".", 1)[0] + ".py")
    return source if os.path.exists(source) else None


def _origin(name: str) -> str | None:
    module = sys.modules.get(name)
    if module is not None:
        return getattr(module, "__file__", None)
    spec = importlib.util.find_spec(name)
    return spec.origin if spec is not None else None


def compiled() -> list[str]:
    """The listed modules that run (or will run, once imported) compiled."""
    return [name for name, _ in _builds()]


def stale() -> list[str]:
    """Compiled modules whose source is newer than them: edited since the build.

    Only in a source checkout (a `setup.py` beside the packages), where sources
    are edited: an installed wheel writes its files in an order of its own, so
    there a `.py` may be a moment younger than its build."""
    out = []
    for name, origin in _builds():
        source = _source_of(origin)
        if source is not None and _in_checkout(name, origin) \
                and os.path.getmtime(source) > os.path.getmtime(origin):
            out.append(name)
    return out


def _builds() -> list[tuple[str, str]]:
    """(name, file) of each listed module that is (or will be) loaded compiled."""
    out = []
    for name in MODULES:
        origin = _origin(name)
        if origin is not None and not origin.endswith(".py"):
            out.append((name, origin))
    return out


def _in_checkout(name: str, origin: str) -> bool:
    package = os.path.dirname(origin)  # of "a.b.c": a/b; the top-level one, a, is
    for _ in range(name.count(".") - 1):  # as many levels up as dots beyond the first
        package = os.path.dirname(package)
    return os.path.exists(os.path.join(os.path.dirname(package), "setup.py"))

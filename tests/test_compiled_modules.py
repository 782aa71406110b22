"""The request-path modules compiled from their own source (ocs/compiled.py).

The suite runs on whatever the build produced; these tests make sure that is
what was meant: every listed module compiled and none older than its source
(else the suite would be testing old code), and OCS_NO_EXTENSIONS=1 really
loading each from source, so that the interpreted twin can be run and served.
Missing compiled modules are a failure that says how to build them, never a
skip.
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import subprocess
import sys
import time

import pytest

from ocs import compiled

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_listed_module_runs_compiled_and_none_is_stale():
    if compiled.forced_pure():
        assert compiled.compiled() == []
        return
    missing = sorted(set(compiled.MODULES) - set(compiled.compiled()))
    if missing:
        pytest.fail(f"not compiled: {', '.join(missing)}; install a C compiler (Debian: gcc, "
                    "python3-dev) and run 'make build'", pytrace=False)
    assert compiled.stale() == [], "edited since the last build: run 'make build'"


def test_no_extensions_loads_every_listed_module_from_source():
    code = ("import importlib, json, sys\n"
            "from ocs import compiled\n"
            "files = {m: importlib.import_module(m).__file__ for m in compiled.MODULES}\n"
            "print(json.dumps([files, compiled.compiled()]))\n")
    env = {**os.environ, "OCS_NO_EXTENSIONS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=60, check=True).stdout
    files, running = json.loads(out)
    assert sorted(files) == sorted(compiled.MODULES)
    for name, path in files.items():
        assert path == os.path.join(ROOT, *name.split(".")) + ".py", name
    assert running == []


def test_a_compiled_module_older_than_its_source_is_stale(tmp_path, monkeypatch):
    """A build beside a source edited after it, in a checkout: named stale (ocsd
    warns at start). The "extension" is never imported, only found, so any bytes
    stand in for it."""
    pkg = tmp_path / "stalepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    source = pkg / "mod.py"
    source.write_text("X = 1\n")
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    built = pkg / f"mod{suffix}"
    built.write_bytes(b"not really an extension")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(compiled, "MODULES", ("stalepkg.mod",))
    now = time.time()
    os.utime(source, (now - 60, now - 60))
    os.utime(built, (now - 30, now - 30))
    assert compiled.compiled() == ["stalepkg.mod"]
    assert compiled.stale() == []
    os.utime(source, (now, now))  # edited after the build
    assert compiled.stale() == []  # not a checkout: an installed tree is never stale
    (tmp_path / "setup.py").write_text("")
    assert compiled.stale() == ["stalepkg.mod"]

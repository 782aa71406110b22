"""Build script: compiles the Cython hot paths when it can.

Two kinds: the typed `.pyx` kernels in cext/ (pure-Python twins in ocs/), and
the request-path modules listed in `ocs/compiled.py`, compiled from their own
`.py` source unchanged. Either behaves identically when interpreted, so a
machine without a C compiler (or with OCS_NO_EXTENSIONS=1) still gets a working
install; this script says which build it produced, and `ocsd --version` says
which one is active.
"""
import ast
import glob
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build the extensions, but fall back to pure Python if compiling fails."""

    def finalize_options(self):
        super().finalize_options()
        if self.parallel is None:  # one compiler per core: the module list is long
            self.parallel = os.cpu_count() or 1

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure means fallback
            self._fallback(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - that module stays interpreted, alone
            sys.stderr.write(f"ocsd: compiling {ext.name} failed ({exc}); it stays "
                             "interpreted (an older build of it, if any, is now stale)\n")

    @staticmethod
    def _fallback(exc):
        sys.stderr.write(
            f"ocsd: building the Cython extensions failed ({exc}); "
            "installing the pure-Python build\n"
        )


def extensions():
    if os.environ.get("OCS_NO_EXTENSIONS") == "1":
        sys.stderr.write("ocsd: OCS_NO_EXTENSIONS=1, installing the pure-Python build\n")
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        sys.stderr.write("ocsd: Cython is not available, installing the pure-Python build\n")
        return []
    try:
        out = cythonize(
            ["cext/*.pyx"],
            compiler_directives={"language_level": "3", "boundscheck": False,
                                 "wraparound": False},
            quiet=True,
        )
    except Exception as exc:  # noqa: BLE001 - a broken .pyx must not break the install
        sys.stderr.write(f"ocsd: cythonize failed ({exc}), installing the pure-Python build\n")
        return []
    for name in compiled_modules():
        source = name.replace(".", "/") + ".py"
        try:  # one at a time: a module Cython cannot compile stays interpreted, alone
            out += cythonize([Extension(name, [source])], build_dir="build/cython", quiet=True,
                             compiler_directives={"language_level": "3", "binding": True})
        except Exception as exc:  # noqa: BLE001
            sys.stderr.write(f"ocsd: cythonize {source} failed ({exc}); it stays interpreted\n")
    return out


def compiled_modules():
    """`MODULES` of ocs/compiled.py, read without importing the package (whose
    dependencies may not be installed yet)."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "ocs",
                           "compiled.py")) as fh:
        tree = ast.parse(fh.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "MODULES":
            return ast.literal_eval(node.value)
    raise RuntimeError("ocs/compiled.py has no MODULES")


def shipped_files():
    """conf/ (dictionaries, vendor profiles, the documented ocs.toml) installed to
    <prefix>/share/ocsd, where ocs.paths finds it outside a source checkout."""
    out = {}
    for path in glob.glob("conf/**/*", recursive=True):
        if os.path.isfile(path):
            target = os.path.join("share", "ocsd", os.path.dirname(os.path.relpath(path, "conf")))
            out.setdefault(target.rstrip("/"), []).append(path)
    return sorted(out.items())


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt},
      data_files=shipped_files())

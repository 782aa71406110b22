"""Build script: compiles the Cython hot paths in cext/ when it can.

The pure-Python twins in ocs/ behave identically, so a machine without a C
compiler (or with OCS_NO_EXTENSIONS=1) still gets a working install; this script
says which build it produced, and `ocsd --version` says which one is active.

Only typed kernels are compiled. Plain modules compiled unchanged were measured
and not kept: on Python 3.11 the specialising interpreter reads a slot or an
instance attribute from an inline cache, where the generated C takes the
generic attribute lookup, and the PAP path ran 30% slower compiled
(`python -m bench.request_path` measures the request path in process).
"""
import glob
import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build the extensions, but fall back to pure Python if compiling fails."""

    def finalize_options(self):
        super().finalize_options()
        if self.parallel is None:  # one compiler per core
            self.parallel = os.cpu_count() or 1

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure means fallback
            self._fallback(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - that kernel alone falls back to its twin
            sys.stderr.write(f"ocsd: compiling {ext.name} failed ({exc}); its pure-Python "
                             "twin is used\n")

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
        return cythonize(
            ["cext/*.pyx"],
            compiler_directives={"language_level": "3", "boundscheck": False,
                                 "wraparound": False},
            quiet=True,
        )
    except Exception as exc:  # noqa: BLE001 - a broken .pyx must not break the install
        sys.stderr.write(f"ocsd: cythonize failed ({exc}), installing the pure-Python build\n")
        return []


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

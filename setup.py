"""Builds pystatsd's optional C extensions: the compiled line cache (pystatsd/_linecache.pyx),
a timer's fold into its sketch (pystatsd/_fold.pyx) and the native UDP receive
(pystatsd/_receive.pyx, Linux only).

Everything else is in setup.cfg. The extensions are optional: without Cython or a C compiler,
or if one fails to build, the install goes on without it (saying so loudly in the build log)
and the daemon runs the pure-Python line cache, fold or receive loop, which are the reference
anyway.
"""

from __future__ import annotations

import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

BANNER = "*" * 78


def warn(message: str) -> None:
    print(f"{BANNER}\npystatsd: {message}\npystatsd: the daemon will run the pure-Python code "
          f"in its place (slower, same results)\n{BANNER}", file=sys.stderr, flush=True)


class OptionalBuildExt(build_ext):
    """build_ext that turns a failed compile into a warning."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # any failure: fall back, loudly
            warn(f"the compiled extensions were not built: {exc}")

    def build_extension(self, ext: object) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            warn(f"{getattr(ext, 'name', ext)} failed to build: {exc}")


def extensions() -> list:
    try:
        from Cython.Build import cythonize
    except ImportError:
        warn("Cython is not installed, so the compiled extensions are not built")
        return []
    from setuptools import Extension
    modules = [Extension("pystatsd._linecache", ["pystatsd/_linecache.pyx"]),
               # no fused multiply-add (aarch64's compilers contract by default): the fold
               # must round each product and sum as CPython does, to leave the same doubles
               Extension("pystatsd._fold", ["pystatsd/_fold.pyx"],
                         extra_compile_args=[] if sys.platform == "win32"
                         else ["-ffp-contract=off"])]
    if sys.platform == "linux":  # recvmmsg, futexes, MADV_DONTFORK
        modules.append(Extension("pystatsd._receive", ["pystatsd/_receive.pyx"]))
    return cythonize(modules, compiler_directives={"language_level": "3"}, quiet=True)


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})

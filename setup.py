"""Native (C) hot paths. Everything else is declared in pyproject.toml.

Each extension has a pure-Python twin that produces the same bytes (the unit tests compare
them); the Python one is the fallback where no compiler was available, and the reference the
C code is checked against. ``make native`` builds them in place for a source checkout; ``pip
install .`` builds them into the wheel.
"""

from setuptools import Extension, setup

_CFLAGS = [
    "-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter",
    "-Wno-missing-field-initializers",
]  # fmt: skip

EXTENSIONS = [
    Extension("enricher._render", ["enricher/_render.c"], extra_compile_args=_CFLAGS),
    Extension("collector._encode", ["collector/_encode.c"], extra_compile_args=_CFLAGS),
    Extension("collector.dns._native", ["collector/dns/_native.c"], extra_compile_args=_CFLAGS),
]

setup(ext_modules=EXTENSIONS)

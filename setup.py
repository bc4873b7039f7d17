"""Native (C) hot paths. Everything else is declared in pyproject.toml.

Each extension has a readable Python reference that produces the same bytes (property tests
compare them); the reference is the spec the C is checked against, and the fallback where no
compiler was available. ``make native`` builds them in place for a source checkout; ``pip
install .`` builds them into the wheel.
"""

import shutil
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

_CFLAGS = [
    "-O2",
    "-std=c11",
    "-Wall",
    "-Wextra",
    "-Wno-unused-parameter",
    "-Wno-missing-field-initializers",
]

# The collector's extensions include the BPF ABI headers (bpf/*.h) instead of copying offsets.
_ABI = {"include_dirs": ["bpf"], "extra_compile_args": _CFLAGS}

EXTENSIONS = [
    Extension("enricher.join._render", ["enricher/join/_render.c"], extra_compile_args=_CFLAGS),
    Extension(
        "collector.tcp._encode", ["collector/tcp/_encode.c"], depends=["bpf/tcpconn.h"], **_ABI
    ),
    Extension("collector.dns._native", ["collector/dns/_native.c"], depends=["bpf/dns.h"], **_ABI),
]

# Shipped with the package (flowscope/resources.py finds them): the price table and alert
# rules always, the BPF objects when they are built (make -C bpf) before the wheel.
SHIPPED = [
    "config/prices.yaml",
    "config/alerts.yaml",
    "bpf/.output/tcpconn.bpf.o",
    "bpf/.output/udpflow.bpf.o",
    "bpf/.output/dns.bpf.o",
    "bpf/.output/drops.bpf.o",
]


class BuildWithData(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "flowscope" / "_data"
        target.mkdir(parents=True, exist_ok=True)
        for name in SHIPPED:
            source = Path(name)
            if source.is_file():
                shutil.copy2(source, target / source.name)
            elif source.suffix == ".yaml":
                raise FileNotFoundError(f"{name} is missing from the source tree")


setup(ext_modules=EXTENSIONS, cmdclass={"build_py": BuildWithData})

"""Where the files flowscope ships with (BPF objects, price table, alert rules) are.

An installed package carries them in ``flowscope/_data/`` (copied there by setup.py's build
step from ``bpf/.output/`` and ``config/``); a source checkout has them in those two folders.
Defaults resolve to the first that exists, so neither an image nor a wheel depends on the
current directory or on a source tree next to site-packages.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DATA = Path(__file__).resolve().parent / "_data"
SOURCE_ROOT = Path(__file__).resolve().parent.parent
# name in the package -> where a source checkout keeps it
SHIPPED = {
    "tcpconn.bpf.o": "bpf/.output/tcpconn.bpf.o",
    "udpflow.bpf.o": "bpf/.output/udpflow.bpf.o",
    "dns.bpf.o": "bpf/.output/dns.bpf.o",
    "drops.bpf.o": "bpf/.output/drops.bpf.o",
    "prices.yaml": "config/prices.yaml",
    "alerts.yaml": "config/alerts.yaml",
}


def shipped(name: str) -> Path:
    """The installed copy of a shipped file if there is one, else the source tree's (which
    may not be built yet: the caller's error then names the path and how to build it)."""
    installed = PACKAGE_DATA / name
    if installed.is_file():
        return installed
    return SOURCE_ROOT / SHIPPED[name]

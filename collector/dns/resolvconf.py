"""Each client's resolver configuration, read from its own ``/etc/resolv.conf``.

The kubelet gives every pod its resolv.conf (search domains of its namespace, ``ndots:5``)
by bind-mounting a file into the container's mount namespace, so the host's resolv.conf says
nothing about a pod. A process of the container shows it: ``/proc/<pid>/root`` resolves in
that process's mount namespace. A cgroup's processes are listed in its ``cgroup.procs``.

Answers are cached per cgroup id for ``ttl_s`` (failures for a shorter time): a burst of
queries from one pod reads the file once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from collector.dns.search import SearchConfig, parse_resolv_conf

MAX_RESOLV_CONF_BYTES = 65536


@dataclass
class ResolvConfStats:
    reads: int = 0
    failures: int = 0  # no live process in the cgroup, or its resolv.conf unreadable


class ResolvConfReader:
    """``reader(cgroup_id)`` -> :class:`SearchConfig` or None."""

    def __init__(
        self,
        cgroup_root: Path,
        path_of: Callable[[int], str | None],
        proc: Path = Path("/proc"),
        ttl_s: float = 60.0,
        negative_ttl_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``path_of``: cgroup id -> path relative to ``cgroup_root`` (the collector's
        CgroupResolver knows it)."""
        self._root = cgroup_root
        self._path_of = path_of
        self._proc = proc
        self._ttl = ttl_s
        self._negative_ttl = negative_ttl_s
        self._clock = clock
        self._cache: dict[int, tuple[float, SearchConfig | None]] = {}
        self.stats = ResolvConfStats()

    def __call__(self, cgroup_id: int) -> SearchConfig | None:
        now = self._clock()
        cached = self._cache.get(cgroup_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        config = self._read(cgroup_id)
        self.stats.reads += 1
        if config is None:
            self.stats.failures += 1
        ttl = self._ttl if config is not None else self._negative_ttl
        if len(self._cache) > 65536:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        self._cache[cgroup_id] = (now + ttl, config)
        return config

    def _read(self, cgroup_id: int) -> SearchConfig | None:
        relative = self._path_of(cgroup_id)
        if relative is None:
            return None
        directory = self._root / relative.lstrip("/")
        for pid in _pids(directory):
            try:
                with open(self._proc / str(pid) / "root" / "etc" / "resolv.conf", "rb") as f:
                    text = f.read(MAX_RESOLV_CONF_BYTES).decode("utf-8", "replace")
            except OSError:
                continue  # exited meanwhile, or a kernel thread: try the next one
            return parse_resolv_conf(text)
        return None


def _pids(directory: Path) -> list[int]:
    """Processes of the cgroup, its own first, then its descendants'."""
    found: list[int] = []
    stack = [directory]
    while stack and len(found) < 16:
        current = stack.pop()
        try:
            found += [int(p) for p in (current / "cgroup.procs").read_text().split()]
            stack += [p for p in current.iterdir() if p.is_dir()]
        except (OSError, ValueError):
            continue
    return found

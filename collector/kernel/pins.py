"""BPF programs and maps kept in bpffs across collector restarts.

Why: a collector's links and maps live as long as its descriptors, so a restart (a crash, an
OOM kill, a rollout) detached the programs, and every connection that ended before the new
process attached again was never seen. Pinned, the links keep the programs attached and the
maps keep what they gathered: the per-socket map (connections open across the restart keep
their start, role and pid), the ring buffer with its consumer position (what ended while
nobody read it waits there) and the loss counters (cumulative over restarts).

Layout: ``<pin root>/<node>/<program set>/<generation>/`` holding one pin per map and
``link_<program>`` per attached program. The generation is a digest of the BPF object, its
load-time knobs and the ring size: the same collector build with the same settings resumes
the pinned programs as they run (it loads nothing); anything else is an upgrade: the new
programs are loaded and attached first, then the old generation is unpinned (its programs
detach) and what it still held is counted, because its records and socket entries have the
old layout: ``restart_upgrade_discarded_records`` (events in the old ring: connections that
ended while no reader of that layout ran, plus the few the new programs also saw during the
hand-over) and ``restart_upgrade_open_connections`` (open sockets whose start the new
programs never saw: they are still reported when they close, as start unknown).

bpffs holds only BPF objects and directories, so the generation is the directory's name.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from collector.errors import CollectorError
from collector.kernel import libbpf
from collector.kernel.libbpf import BpfObject
from collector.kernel.ringbuf import RingBufferReader

log = logging.getLogger("collector.kernel.pins")

LINK_PREFIX: Final = "link_"
DEFAULT_PIN_ROOT: Final = Path("/sys/fs/bpf/flowscope")


@dataclass(frozen=True)
class PinSpec:
    """Where one program set is pinned and which of its maps are kept."""

    directory: Path  # <pin root>/<node>/<program set>
    maps: tuple[str, ...]
    events_map: str = "events"
    sockets_map: str | None = None  # a hash map keyed by u64 whose entries are open sockets


@dataclass
class RestartReport:
    """What a start found in bpffs; published with the collector's counters."""

    mode: str  # "unpinned", "fresh", "resumed" or "upgraded"
    generation: str = ""
    backlog_records: int = 0  # waiting in the pinned ring at resume: read, not lost
    open_connections: int = 0  # tracked sockets at resume: their records keep their start
    upgrade_discarded_records: int = 0
    upgrade_open_connections: int = 0

    def counters(self) -> dict[str, int]:
        return {
            "restart_resumed": int(self.mode == "resumed"),
            "restart_backlog_records": self.backlog_records,
            "restart_upgrade_discarded_records": self.upgrade_discarded_records,
            "restart_upgrade_open_connections": self.upgrade_open_connections,
        }


def generation(bpf_object: Path, targs: Mapping[str, int], ringbuf_bytes: int | None) -> str:
    """Digest of what the kernel side is made of: equal digests run the same programs."""
    digest = hashlib.sha256(bpf_object.read_bytes())
    digest.update(repr(sorted(targs.items())).encode())
    digest.update(str(ringbuf_bytes or 0).encode())
    return digest.hexdigest()[:16]


class PinnedPrograms:
    """A generation pinned by an earlier collector, re-opened without loading anything:
    maps through their pins, programs through their links' program ids. Closing drops our
    descriptors only; the pins keep everything attached."""

    def __init__(self, directory: Path, maps: Sequence[str]) -> None:
        self._maps: dict[str, int] = {}
        self._progs: list[int] = []
        self._names: list[str] = []  # from the pins: the kernel keeps 15 characters
        try:
            for name in maps:
                self._maps[name] = libbpf.obj_get(directory / name)
            for link in sorted(directory.glob(f"{LINK_PREFIX}*")):
                link_fd = libbpf.obj_get(link)
                try:
                    self._progs.append(libbpf.link_prog_fd(link_fd))
                    self._names.append(link.name.removeprefix(LINK_PREFIX))
                finally:
                    os.close(link_fd)  # the pin holds the link
        except BaseException:
            self.close()
            raise

    def map_fd(self, name: str) -> int:
        try:
            return self._maps[name]
        except KeyError:
            raise libbpf.BpfError(f"map {name!r} is not pinned") from None

    def map_max_entries(self, name: str) -> int:
        return libbpf.map_max_entries(self.map_fd(name))

    def percpu_u64_sums(self, name: str, count: int) -> list[int]:
        return libbpf.percpu_u64_sums(self.map_fd(name), name, count)

    def map_update(self, name: str, key: bytes, value: bytes) -> None:
        libbpf.map_update(self.map_fd(name), name, key, value)

    def program_ids(self) -> list[int]:
        return [libbpf.prog_id(libbpf.prog_info(fd)) for fd in self._progs]

    def program_names(self) -> list[str]:
        return list(self._names)

    def recursion_misses(self) -> int:
        return sum(libbpf.prog_recursion_misses(libbpf.prog_info(fd)) for fd in self._progs)

    def detach(self) -> None:
        """Nothing to do: the programs stay attached for the next collector."""

    def close(self) -> None:
        for fd in [*self._maps.values(), *self._progs]:
            os.close(fd)
        self._maps.clear()
        self._progs.clear()

    @property
    def closed(self) -> bool:
        return not self._maps


def _complete(directory: Path, maps: Sequence[str]) -> bool:
    return all((directory / m).exists() for m in maps) and any(directory.glob(f"{LINK_PREFIX}*"))


def remove_tree(path: Path) -> list[Path]:
    """Unpin everything under ``path`` (bpffs: unlink pins, rmdir directories). A link's
    program detaches when its pin goes and no process holds it. Returns what was removed."""
    removed: list[Path] = []
    if not path.exists():
        return removed
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for name in filenames:
            (Path(dirpath) / name).unlink()
            removed.append(Path(dirpath) / name)
        for name in dirnames:
            (Path(dirpath) / name).rmdir()
    path.rmdir()
    removed.append(path)
    return removed


def _count_old(directory: Path, spec: PinSpec) -> tuple[int, int]:
    """Records waiting in an old generation's ring and its open sockets."""
    records = sockets = 0
    events = directory / spec.events_map
    if events.exists():
        fd = libbpf.obj_get(events)
        try:
            with RingBufferReader(fd, libbpf.map_max_entries(fd)) as reader:
                records = reader.pending_records()
        finally:
            os.close(fd)
    if spec.sockets_map and (directory / spec.sockets_map).exists():
        fd = libbpf.obj_get(directory / spec.sockets_map)
        try:
            sockets = libbpf.count_keys(fd, 8)
        finally:
            os.close(fd)
    return records, sockets


Kernel = BpfObject | PinnedPrograms


def open_pinned(
    spec: PinSpec, current: str, load: Callable[[], BpfObject]
) -> tuple[Kernel, RestartReport]:
    """Resume generation ``current`` if it is pinned whole; else ``load()`` (which loads
    and attaches), pin it, and unpin any other generation, counting what it held."""
    here = spec.directory / current
    if _complete(here, spec.maps):
        pinned = PinnedPrograms(here, spec.maps)
        report = RestartReport("resumed", current)
        with RingBufferReader(
            pinned.map_fd(spec.events_map), pinned.map_max_entries(spec.events_map)
        ) as reader:
            report.backlog_records = reader.pending_records()
        if spec.sockets_map:
            report.open_connections = libbpf.count_keys(pinned.map_fd(spec.sockets_map), 8)
        return pinned, report
    remove_tree(here)  # a start that died half way through pinning
    spec.directory.mkdir(parents=True, exist_ok=True)
    old = sorted(p for p in spec.directory.iterdir() if p.is_dir() and p.name != current)
    obj = load()
    try:
        here.mkdir()
        obj.pin(here, spec.maps)
    except BaseException:
        obj.close()
        remove_tree(here)
        raise
    report = RestartReport("upgraded" if old else "fresh", current)
    # The new programs run from here on: only now may the old ones stop.
    for directory in old:
        try:
            records, sockets = _count_old(directory, spec)
        except CollectorError as exc:
            log.warning("cannot read the old generation %s: %s", directory, exc)
            records = sockets = 0
        report.upgrade_discarded_records += records
        report.upgrade_open_connections += sockets
        remove_tree(directory)
        log.warning(
            "upgrade: unpinned the old generation %s: %d records in its ring buffer "
            "discarded (older layout), %d open connections lose their start",
            directory.name,
            records,
            sockets,
        )
    return obj, report


def uninstall(pin_root: Path, node: str) -> list[Path]:
    """Remove every pin of ``node``: its programs detach once no collector holds them."""
    return remove_tree(pin_root / node)

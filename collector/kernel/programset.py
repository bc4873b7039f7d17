"""What the collector's BPF program sets (tcpconn, udpflow, dns) have in common.

Each source owns one loaded :class:`BpfObject`: it sets it up and attaches it, reports its
programs' ids and its per-CPU counters, and closes it, also when setting up fails half way.
The ring-buffer sources (tcpconn, dns) also share their reader and counter layout.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, Generic, Protocol, Self, TypeVar

from collector.kernel.libbpf import BpfObject
from collector.kernel.pins import PinSpec, RestartReport, generation, open_pinned
from collector.kernel.ringbuf import RecordBatch, RingBufferReader

EVENTS_MAP: Final = "events"
COUNTERS_MAP: Final = "counters"
DEFAULT_TRACEFS: Final = Path("/sys/kernel/tracing")


class KernelPrograms(Protocol):
    """A loaded object (:class:`BpfObject`) or one re-opened from its pins."""

    def map_fd(self, name: str) -> int: ...
    def map_max_entries(self, name: str) -> int: ...
    def percpu_u64_sums(self, name: str, count: int) -> list[int]: ...
    def map_update(self, name: str, key: bytes, value: bytes) -> None: ...
    def program_ids(self) -> list[int]: ...
    def program_names(self) -> list[str]: ...
    def recursion_misses(self) -> int: ...
    def detach(self) -> None: ...
    def close(self) -> None: ...


K = TypeVar("K", bound=KernelPrograms)


class ProgramSet(Generic[K]):
    """One loaded BPF object. Use it as a context manager, or call :meth:`close`."""

    def __init__(self, obj: K, setup: Callable[[K], None]) -> None:
        """``setup`` (fill maps, attach) runs once the object is owned here, so a failure
        in it still closes everything."""
        self._obj = obj
        try:
            setup(obj)
        except BaseException:
            self.close()
            raise

    def program_ids(self) -> list[int]:
        return self._obj.program_ids()

    def percpu_counters(self, map_name: str, names: Sequence[str]) -> dict[str, int]:
        """A per-CPU u64 array summed over CPUs, by name (``names`` in index order)."""
        return dict(zip(names, self._obj.percpu_u64_sums(map_name, len(names)), strict=True))

    def close(self) -> None:
        self._obj.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()


class RingBufferSource(ProgramSet[KernelPrograms]):
    """A program set that sends events through the ring buffer map ``events`` and counts
    in the per-CPU array ``counters``; reads its events in batches."""

    def __init__(
        self,
        bpf_object: Path,
        ringbuf_bytes: int | None,
        targs: Mapping[str, int],
        counter_names: Sequence[str],
        attach: Callable[[BpfObject], None],
        tracefs: Path = DEFAULT_TRACEFS,
        pins: PinSpec | None = None,
    ) -> None:
        """``ringbuf_bytes``: the ring buffer's size (None or 0: as compiled in). ``targs``:
        the object's load-time knobs (its ``targ_*`` globals) by name.

        ``pins``: keep the links and ``pins.maps`` in bpffs there, so that the programs
        stay attached after this process and the next one resumes them
        (:mod:`collector.kernel.pins`); None: they go with this object."""
        sizes = {EVENTS_MAP: ringbuf_bytes} if ringbuf_bytes else {}
        self._counter_names = counter_names
        self._reader: RingBufferReader | None = None
        self.restart = RestartReport("unpinned")

        def load() -> BpfObject:
            obj = BpfObject(bpf_object, map_max_entries=sizes, tracefs=tracefs, rodata=targs)
            try:
                attach(obj)
            except BaseException:
                obj.close()
                raise
            return obj

        obj: KernelPrograms
        if pins is None:
            obj = BpfObject(bpf_object, map_max_entries=sizes, tracefs=tracefs, rodata=targs)
        else:
            obj, self.restart = open_pinned(
                pins, generation(bpf_object, targs, ringbuf_bytes), load
            )

        def setup(obj: KernelPrograms) -> None:
            self._reader = RingBufferReader(obj.map_fd(EVENTS_MAP), self.ringbuf_bytes)
            if pins is None:
                assert isinstance(obj, BpfObject)
                attach(obj)

        super().__init__(obj, setup)

    @property
    def ringbuf_bytes(self) -> int:
        return self._obj.map_max_entries(EVENTS_MAP)

    def program_names(self) -> list[str]:
        return self._obj.program_names()

    @property
    def reader(self) -> RingBufferReader:
        if self._reader is None:
            raise RuntimeError("source is closed")
        return self._reader

    def wait(self, timeout_s: float) -> bool:
        return self.reader.wait(timeout_s)

    def read(self, max_records: int = 1 << 30) -> RecordBatch:
        return self.reader.read(max_records)

    def kernel_counters(self) -> dict[str, int]:
        """The program's counters (summed over CPUs; pinned, over every run since they
        were first loaded) and the kernel's recursion misses."""
        counters = self.percpu_counters(COUNTERS_MAP, self._counter_names)
        counters["recursion_misses"] = self._obj.recursion_misses()
        return counters

    def detach(self) -> None:
        """Stop new events; what is in the ring buffer can still be read. Pinned programs
        stay attached: what they see meanwhile waits in the ring for the next collector."""
        self._obj.detach()

    def close(self) -> None:
        self._obj.detach()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._obj.close()

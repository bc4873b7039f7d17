"""The kernel side of the collector: the loaded tcpconn programs and their ring buffer.

Integration tests use this directly (no Kafka): load, attach, make connections, read.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import TracebackType

from collector.events import COUNTER_NAMES, TARGS
from collector.kernelfs import ensure_tracefs
from collector.libbpf import BpfObject
from collector.ringbuf import RecordBatch, RingBufferReader

log = logging.getLogger("collector.source")

EVENTS_MAP = "events"
COUNTERS_MAP = "counters"


class TcpConnSource:
    """Loads ``tcpconn.bpf.o``, attaches it, and reads its events in batches.

    Closing detaches the program and frees the maps, also when the constructor fails half
    way: use it as a context manager.
    """

    def __init__(
        self,
        bpf_object: Path,
        ringbuf_bytes: int | None = None,
        tracefs: Path = Path("/sys/kernel/tracing"),
        mount_tracefs: bool = True,
        interim_interval_s: float = 30.0,
        wakeup_bytes: int = 0,
    ) -> None:
        """``interim_interval_s``: an open connection reports its deltas at most this often
        (0: only when it closes). ``wakeup_bytes``: wake :meth:`wait` only once this much is
        waiting (0: every event); callers must then also read on a timeout."""
        if mount_tracefs and ensure_tracefs(tracefs):
            log.info("mounted tracefs at %s", tracefs)
        sizes = {EVENTS_MAP: ringbuf_bytes} if ringbuf_bytes else {}
        targs = TARGS.pack(round(interim_interval_s * 1e9), wakeup_bytes)
        self._obj = BpfObject(bpf_object, map_max_entries=sizes, tracefs=tracefs, rodata=targs)
        self._reader: RingBufferReader | None = None
        try:
            self._reader = RingBufferReader(
                self._obj.map_fd(EVENTS_MAP), self._obj.map_max_entries(EVENTS_MAP)
            )
            self._obj.attach_all()
        except BaseException:
            self.close()
            raise
        log.info(
            "attached %s from %s (ring buffer %d bytes)",
            ", ".join(self._obj.program_names()),
            bpf_object,
            self._obj.map_max_entries(EVENTS_MAP),
        )

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
        """The program's counters (summed over CPUs) and the kernel's recursion misses."""
        counters = dict(
            zip(
                COUNTER_NAMES,
                self._obj.percpu_u64_sums(COUNTERS_MAP, len(COUNTER_NAMES)),
                strict=True,
            )
        )
        counters["recursion_misses"] = self._obj.recursion_misses()
        return counters

    def program_ids(self) -> list[int]:
        return self._obj.program_ids()

    def detach(self) -> None:
        """Stop new events; what is in the ring buffer can still be read."""
        self._obj.detach()

    def close(self) -> None:
        self._obj.detach()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._obj.close()

    def __enter__(self) -> TcpConnSource:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()

"""The kernel side of DNS capture: bpf/dns.bpf.o attached to the cgroup v2 root, and its
ring buffer. Integration tests and the bench use it directly (no Kafka)."""

from __future__ import annotations

import logging
from pathlib import Path
from types import TracebackType

from collector.dns.abi import COUNTER_NAMES, TARGS
from collector.libbpf import BpfObject
from collector.ringbuf import RecordBatch, RingBufferReader

log = logging.getLogger("collector.dns.source")

EVENTS_MAP = "events"
COUNTERS_MAP = "counters"


class DnsSource:
    """Loads ``dns.bpf.o``, attaches its cgroup_skb programs to ``cgroup_root`` through BPF
    links (gone when this object is closed or the process dies: nothing is pinned), and
    reads its packets in batches. Use it as a context manager."""

    def __init__(
        self,
        bpf_object: Path,
        cgroup_root: Path,
        ringbuf_bytes: int | None = None,
        port: int = 53,
    ) -> None:
        if not 0 < port < 65536:
            raise ValueError(f"DNS port must be 1-65535, got {port}")
        sizes = {EVENTS_MAP: ringbuf_bytes} if ringbuf_bytes else {}
        self._obj = BpfObject(bpf_object, map_max_entries=sizes, rodata=TARGS.pack(port))
        self._reader: RingBufferReader | None = None
        try:
            self._reader = RingBufferReader(
                self._obj.map_fd(EVENTS_MAP), self._obj.map_max_entries(EVENTS_MAP)
            )
            self._obj.attach_all_to_cgroup(cgroup_root)
        except BaseException:
            self.close()
            raise
        log.info(
            "attached %s to cgroup %s (DNS port %d, ring buffer %d bytes)",
            ", ".join(self._obj.program_names()),
            cgroup_root,
            port,
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
        """Stop new packets; what is in the ring buffer can still be read."""
        self._obj.detach()

    def close(self) -> None:
        self._obj.detach()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._obj.close()

    def __enter__(self) -> DnsSource:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()

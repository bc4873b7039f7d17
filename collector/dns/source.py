"""The kernel side of DNS capture: bpf/dns.bpf.o attached to the cgroup v2 root, and its
ring buffer. Integration tests and the bench use it directly (no Kafka)."""

from __future__ import annotations

import logging
from pathlib import Path

from collector.dns.abi import COUNTER_NAMES
from collector.kernel.libbpf import BpfObject
from collector.kernel.programset import RingBufferSource

log = logging.getLogger("collector.dns.source")


class DnsSource(RingBufferSource):
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

        def attach(obj: BpfObject) -> None:
            obj.attach_all_to_cgroup(cgroup_root)

        targs = {"targ_port": port}
        super().__init__(bpf_object, ringbuf_bytes, targs, COUNTER_NAMES, attach)
        log.info(
            "attached %s to cgroup %s (DNS port %d, ring buffer %d bytes)",
            ", ".join(self.program_names()),
            cgroup_root,
            port,
            self.ringbuf_bytes,
        )

"""The kernel side of DNS capture: bpf/dns.bpf.o attached to the cgroup v2 root, and its
ring buffer. Integration tests and the bench use it directly (no Kafka)."""

from __future__ import annotations

import logging
from pathlib import Path

from collector.dns.abi import (
    COUNTER_NAMES,
    DIR_EGRESS,
    DIR_INGRESS,
    EVENT,
    EVENT_SIZE,
    IPPROTO_UDP,
    MAX_ATTEMPTS,
    PENDING_KEY,
    QUERY_FIXED,
    QUERY_SIDE_SIZE,
)
from collector.kernel.libbpf import BpfObject, map_delete, map_items
from collector.kernel.programset import RingBufferSource
from collector.kernel.ringbuf import EMPTY, RecordBatch

PENDING_MAP = "pending"

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

    def sweep(self, before_mono_ns: int) -> RecordBatch:
        """Take from the kernel the UDP queries held since before ``before_mono_ns`` (not
        answered: the caller times them out) as the packets they were, one per attempt.
        The delete decides against the program: a response that wins it is a pair event, one
        that comes after it a late response. Other held queries stay."""
        fd = self._obj.map_fd(PENDING_MAP)
        chunks: list[bytes] = []
        spans: list[tuple[int, int]] = []
        at = 0
        for key, value in map_items(fd, PENDING_KEY.size, QUERY_SIDE_SIZE):
            fixed = QUERY_FIXED.unpack_from(value)
            ts, saddr, daddr, sock_daddr, _qhash, length, attempts, sport, dport, sock_dport = fixed
            if ts > before_mono_ns or not map_delete(fd, key):
                continue
            cgroup_id, _remote, _rport, _lport, _txid, role, family = PENDING_KEY.unpack(key)
            payload = value[QUERY_FIXED.size : QUERY_FIXED.size + length]
            chunks.append(
                EVENT.pack(
                    ts,
                    cgroup_id,
                    saddr,
                    daddr,
                    sock_daddr,
                    length,
                    length,
                    sport,
                    dport,
                    sock_dport,
                    family,
                    DIR_EGRESS if role == 0 else DIR_INGRESS,
                    IPPROTO_UDP,
                    payload,
                )
            )
            spans.extend([(at, EVENT_SIZE)] * max(1, min(attempts, MAX_ATTEMPTS)))
            at += EVENT_SIZE
        if not chunks:
            return EMPTY
        return RecordBatch(b"".join(chunks), spans)

"""Decode ``struct dns_event`` (bpf/dns.h) in batches. Pure: no I/O.

The definitions below mirror dns.h; tests/unit/collector/test_dns_abi.py parses the header
and fails when they drift apart.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

from collector.kernel.ringbuf import RecordBatch

PAYLOAD_MAX: Final = 512

# struct dns_event, field by field (little-endian, no implicit padding).
EVENT_FORMAT: Final = (
    "<"
    "Q"  # ts_ns
    "Q"  # cgroup_id
    "16s"  # saddr
    "16s"  # daddr
    "16s"  # sock_daddr
    "I"  # payload_len
    "I"  # captured_len
    "H"  # sport
    "H"  # dport
    "H"  # sock_dport
    "H"  # family
    "B"  # direction
    "B"  # protocol
    "6x"  # _pad
    "512s"  # payload
)
EVENT = struct.Struct(EVENT_FORMAT)
EVENT_SIZE: Final = 600
assert EVENT.size == EVENT_SIZE
# Everything before the payload: unpacked in place, the payload sliced once.
FIXED = struct.Struct(EVENT_FORMAT.removesuffix("512s"))
assert FIXED.size == EVENT_SIZE - PAYLOAD_MAX

QUERY_MAX: Final = 256
# struct dns_query_side: a query held in the kernel until answered (the map "pending").
QUERY_SIDE_FORMAT: Final = (
    "<"
    "Q"  # ts_ns
    "16s"  # saddr
    "16s"  # daddr
    "16s"  # sock_daddr
    "Q"  # qhash
    "I"  # payload_len
    "I"  # attempts
    "H"  # sport
    "H"  # dport
    "H"  # sock_dport
    "2x"  # _pad
    "256s"  # payload
)
QUERY_SIDE = struct.Struct(QUERY_SIDE_FORMAT)
QUERY_SIDE_SIZE: Final = 336
assert QUERY_SIDE.size == QUERY_SIDE_SIZE
QUERY_FIXED = struct.Struct(QUERY_SIDE_FORMAT.removesuffix("256s"))
# struct dns_pair_event: a response's dns_event, then its query's dns_query_side.
PAIR_SIZE: Final = EVENT_SIZE + QUERY_SIDE_SIZE
# struct dns_pending_key
PENDING_KEY = struct.Struct("<Q16sHHHBB")
assert PENDING_KEY.size == 32
# A retransmission count above this in a pair is not a real one: a decode error.
MAX_ATTEMPTS: Final = 65535

AF_INET: Final = 2
AF_INET6: Final = 10
IPPROTO_TCP: Final = 6
IPPROTO_UDP: Final = 17

# enum dns_direction
DIR_EGRESS: Final = 0
DIR_INGRESS: Final = 1

# enum dns_counter, in index order
COUNTER_NAMES: Final = (
    "events",
    "lost_ringbuf",
    "clipped",
    "fragments",
    "bad_header",
    "pairs",
    "held_retries",
    "pending_full",
)

Transport = Literal["udp", "tcp"]


class DnsPacket(NamedTuple):
    """One DNS packet as a local socket sent (egress) or received (ingress) it."""

    time_ns: int  # Unix epoch ns
    mono_ns: int  # CLOCK_MONOTONIC ns, the kernel's clock: timeouts are measured in it
    cgroup_id: int
    family: Literal[4, 6]
    transport: Transport
    egress: bool
    src_addr: str
    src_port: int
    dst_addr: str
    dst_port: int
    # The socket's connected peer (pre-NAT), None when the socket is not connected.
    sock_peer_addr: str | None
    sock_peer_port: int | None
    payload_len: int  # bytes of DNS payload in the packet
    payload: bytes  # the captured part (payload_len may be larger: clipped)

    @property
    def local(self) -> tuple[str, int]:
        return (self.src_addr, self.src_port) if self.egress else (self.dst_addr, self.dst_port)

    @property
    def remote(self) -> tuple[str, int]:
        return (self.dst_addr, self.dst_port) if self.egress else (self.src_addr, self.src_port)

    @property
    def clipped(self) -> bool:
        return self.payload_len > len(self.payload)


@dataclass
class DecodeStats:
    decoded: int = 0
    decode_errors: int = 0  # records of the wrong size, or an unknown family/protocol
    discarded: int = 0  # records the kernel discarded (BPF_RB_DISCARD); none expected


def clock_offset_ns() -> int:
    """Unix epoch ns minus CLOCK_MONOTONIC ns (what bpf_ktime_get_ns reads)."""
    return time.time_ns() - time.monotonic_ns()


_ADDR_CACHE: dict[bytes, str] = {}


def _addr(raw: bytes, family: int) -> str:
    # A node talks to few DNS peers: caching the text saves most of the decode time.
    key = raw[:4] if family == AF_INET else raw
    text = _ADDR_CACHE.get(key)
    if text is None:
        text = socket.inet_ntop(socket.AF_INET if family == AF_INET else socket.AF_INET6, key)
        if len(_ADDR_CACHE) > 65536:
            _ADDR_CACHE.clear()
        _ADDR_CACHE[key] = text
    return text


def decode(data: bytes, offset_ns: int, start: int = 0, length: int = EVENT_SIZE) -> DnsPacket:
    """The event at ``data[start:start+length]``; raises ValueError if it is not a valid
    dns_event."""
    if length != EVENT_SIZE or len(data) < start + length:
        raise ValueError(f"dns_event of {length} bytes, expected {EVENT_SIZE}")
    (
        ts,
        cgroup_id,
        saddr,
        daddr,
        sock_daddr,
        payload_len,
        captured,
        sport,
        dport,
        sock_dport,
        family,
        direction,
        protocol,
    ) = FIXED.unpack_from(data, start)
    if family != AF_INET and family != AF_INET6:
        raise ValueError(f"dns_event with family {family}")
    if protocol != IPPROTO_UDP and protocol != IPPROTO_TCP:
        raise ValueError(f"dns_event with protocol {protocol}")
    if captured > PAYLOAD_MAX or captured > payload_len:
        raise ValueError(f"dns_event captured {captured} of {payload_len} bytes")
    body = start + FIXED.size
    return DnsPacket(
        ts + offset_ns,
        ts,
        cgroup_id,
        4 if family == AF_INET else 6,
        "udp" if protocol == IPPROTO_UDP else "tcp",
        direction == DIR_EGRESS,
        _addr(saddr, family),
        sport,
        _addr(daddr, family),
        dport,
        # An IPv4 packet on an AF_INET6 socket (v4-mapped) has a v6 peer: see _sock_peer.
        _sock_peer(sock_daddr, family) if sock_dport else None,
        sock_dport if sock_dport else None,
        payload_len,
        data[body : body + captured],
    )


def _sock_peer(raw: bytes, family: int) -> str:
    key = bytes([family]) + raw  # 17 bytes: never one of _addr's 4- or 16-byte keys
    cached = _ADDR_CACHE.get(key)
    if cached is not None:
        return cached
    text = _sock_peer_text(raw, family)
    _ADDR_CACHE[key] = text
    return text


def _sock_peer_text(raw: bytes, family: int) -> str:
    if family == AF_INET6:
        v6 = ipaddress.IPv6Address(raw)
        return str(v6.ipv4_mapped or v6)
    if raw[4:] == bytes(12):
        return str(ipaddress.IPv4Address(raw[:4]))
    # An IPv4 packet from an AF_INET6 socket: its peer is v4-mapped.
    v6 = ipaddress.IPv6Address(raw)
    return str(v6.ipv4_mapped or v6)


def decode_pair(data: bytes, offset_ns: int, start: int = 0) -> tuple[DnsPacket, int, DnsPacket]:
    """A dns_pair_event: (the query's packet, its attempts, the response's packet); raises
    ValueError if it is not a valid one."""
    response = decode(data, offset_ns, start, EVENT_SIZE)
    if response.transport != "udp" or len(data) < start + PAIR_SIZE:
        raise ValueError("dns_pair_event not UDP, or short")
    at = start + EVENT_SIZE
    ts, saddr, daddr, sock_daddr, _qhash, length, attempts, sport, dport, sock_dport = (
        QUERY_FIXED.unpack_from(data, at)
    )
    if not 12 <= length <= QUERY_MAX or not 1 <= attempts <= MAX_ATTEMPTS:
        raise ValueError(f"dns_pair_event query of {length} bytes, {attempts} attempts")
    family = AF_INET if response.family == 4 else AF_INET6
    body = at + QUERY_FIXED.size
    query = DnsPacket(
        ts + offset_ns,
        ts,
        response.cgroup_id,
        response.family,
        "udp",
        not response.egress,
        _addr(saddr, family),
        sport,
        _addr(daddr, family),
        dport,
        _sock_peer(sock_daddr, family) if sock_dport else None,
        sock_dport if sock_dport else None,
        length,
        data[body : body + length],
    )
    return query, attempts, response


def decode_batch(batch: RecordBatch, offset_ns: int, stats: DecodeStats) -> Iterator[DnsPacket]:
    """Each packet of the batch; a pair gives its query (once per attempt), then its
    response, as the packets would have come."""
    stats.discarded += batch.discarded
    data = batch.data
    for start, length in batch.spans:
        try:
            if length == PAIR_SIZE:
                query, attempts, response = decode_pair(data, offset_ns, start)
            else:
                packet = decode(data, offset_ns, start, length)
        except ValueError:
            stats.decode_errors += 1
            continue
        stats.decoded += 1
        if length == PAIR_SIZE:
            for _ in range(attempts):
                yield query
            yield response
        else:
            yield packet

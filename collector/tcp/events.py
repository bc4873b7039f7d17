"""Decode ``struct tcpconn_event`` (bpf/tcpconn.h) in batches. Pure: no I/O.

The definitions below mirror tcpconn.h; tests/unit/collector/test_collector_abi.py parses
the header and fails when they drift apart.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

from collector.kernel.ringbuf import RecordBatch
from flowscope.records import Outcome, Role

# struct tcpconn_event, field by field (little-endian, no implicit padding).
EVENT_FORMAT: Final = (
    "<"
    "Q"  # start_ns
    "Q"  # end_ns
    "Q"  # cgroup_id
    "Q"  # bytes_sent
    "Q"  # bytes_received
    "Q"  # retrans_bytes
    "16s"  # saddr
    "16s"  # daddr
    "I"  # connect_us
    "I"  # srtt_us
    "I"  # min_rtt_us
    "I"  # retrans_segs
    "I"  # segs_in
    "I"  # segs_out
    "I"  # pid
    "I"  # flags
    "I"  # netns_ino
    "I"  # seq
    "i"  # sk_err
    "H"  # sport
    "H"  # dport
    "H"  # family
    "B"  # role
    "B"  # oldstate
    "B"  # kind
    "B"  # syn_retries
    "2x"  # _pad
    "16s"  # comm
)
EVENT = struct.Struct(EVENT_FORMAT)
EVENT_SIZE: Final = 152
assert EVENT.size == EVENT_SIZE

AF_INET: Final = 2
AF_INET6: Final = 10

# enum tcpconn_role
ROLE_UNKNOWN, ROLE_CLIENT, ROLE_SERVER = 0, 1, 2
ROLES: Final[dict[int, Role]] = {
    ROLE_UNKNOWN: "unknown",
    ROLE_CLIENT: "client",
    ROLE_SERVER: "server",
}

# enum tcpconn_kind
KIND_FINAL, KIND_INTERIM = 0, 1

# enum tcpconn_flag
F_ESTABLISHED: Final = 1 << 0
F_START_UNKNOWN: Final = 1 << 1
F_FIN_ACKED: Final = 1 << 2
F_FIN_RECEIVED: Final = 1 << 3
F_PID_AT_CLOSE: Final = 1 << 4

# enum tcpconn_counter, in index order
COUNTER_NAMES: Final = (
    "events",
    "lost_ringbuf",
    "untracked_close",
    "track_failed",
    "interim_events",
    "interim_deferred",
    "pipeline_closed",
    "pipeline_failed",
)

# struct tcpconn_endpoint: key of the "pipeline" map (addr, port, family, pad)
ENDPOINT = struct.Struct("<16sHHI")

# Linux TCP states (include/net/tcp_states.h), for the state a socket closed from.
TCP_STATES: Final = (
    "?",
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
    "NEW_SYN_RECV",
)

_V4_MAPPED_PREFIX: Final = b"\x00" * 10 + b"\xff\xff"

# errno values the kernel leaves in sk_err when it ends a connection (Linux numbers).
ECONNREFUSED: Final = 111
ETIMEDOUT: Final = 110
ECONNRESET: Final = 104
EPIPE: Final = 32
ECONNABORTED: Final = 103
UNREACHABLE_ERRNOS: Final = frozenset({101, 112, 113})  # ENETUNREACH, EHOSTDOWN, EHOSTUNREACH
# An established socket goes straight to CLOSE from these states with sk_err still 0 only
# when its own side aborts it (close() with unread data, SO_LINGER 0, tcp_disconnect):
# the kernel sends the RST and sets sk_err after the state change. Peer resets and timeouts
# set sk_err first.
_LOCAL_ABORT_STATES: Final = frozenset({"ESTABLISHED", "CLOSE_WAIT", "FIN_WAIT1"})


def outcome_of(
    kind: int, established: bool, close_state: str, sk_err: int, syn_retries: int
) -> Outcome:
    """How a connection end finished, from the socket's last state, its error and its SYN
    retransmissions (flowscope.records.vocabulary.OUTCOME_RULES states the rules).

    A socket that never established and closed with no error was closed by its own side:
    after one or more SYN retransmissions that is the application's connect timeout
    (``connect_timeout``, a failure: it gave up long before the kernel's ``timed_out``),
    before any it was ``cancelled`` (happy eyeballs, a client that stopped at once).
    """
    if kind == KIND_INTERIM:
        return "open"
    if sk_err == ECONNREFUSED:
        return "refused"
    if sk_err == ETIMEDOUT:
        return "timed_out"
    if sk_err in (ECONNRESET, EPIPE):
        return "reset_by_peer"
    if sk_err in UNREACHABLE_ERRNOS:
        return "unreachable"
    if sk_err == ECONNABORTED:
        return "aborted"
    if sk_err:
        return "error"
    if not established:
        return "connect_timeout" if syn_retries else "cancelled"
    if close_state in _LOCAL_ABORT_STATES:
        return "reset_locally"
    return "closed"


class TcpConnEvent(NamedTuple):
    """One record of a connection end (final, or interim for an open connection), times in
    Unix epoch ns, addresses as text, volumes as deltas since the previous record."""

    start_time_ns: int  # the end time when the start was not seen (F_START_UNKNOWN)
    end_time_ns: int
    role: Role
    family: Literal[4, 6]
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int
    pid: int
    comm: str
    cgroup_id: int
    bytes_sent: int
    bytes_received: int
    srtt_us: int
    retrans_segs: int
    connect_latency_us: int | None  # clients that reached ESTABLISHED only
    flags: int
    close_state: str  # the state it closed from (final) or is in (interim)
    interim: bool
    seq: int
    outcome: Outcome
    sk_err: int
    syn_retries: int
    segs_in: int
    segs_out: int
    retrans_bytes: int
    min_rtt_us: int
    netns_ino: int

    @property
    def established(self) -> bool:
        """Whether the handshake completed (for sockets opened before the attach: whether
        it closed from a state that only an established connection reaches)."""
        if self.flags & F_START_UNKNOWN:
            return self.close_state not in ("SYN_SENT", "SYN_RECV")
        return bool(self.flags & F_ESTABLISHED)


@dataclass
class DecodeStats:
    decoded: int = 0
    decode_errors: int = 0  # records of the wrong size or with an unknown family
    discarded: int = 0  # records the kernel discarded (BPF_RB_DISCARD); none expected


def clock_offset_ns() -> int:
    """Unix epoch ns minus CLOCK_MONOTONIC ns (what bpf_ktime_get_ns reads).

    Taken between two monotonic reads so the error is at most half their distance;
    recompute it now and then, because the wall clock may be stepped.
    """
    before = time.monotonic_ns()
    wall = time.time_ns()
    after = time.monotonic_ns()
    return wall - (before + after) // 2


def _address(family: int, raw: bytes) -> tuple[Literal[4, 6], str]:
    if family == AF_INET:
        return 4, socket.inet_ntop(socket.AF_INET, raw[:4])
    # A dual-stack socket talking to an IPv4 peer: the packets are IPv4, and the enricher
    # knows pods by their IPv4 address, so report it as one.
    if raw[:12] == _V4_MAPPED_PREFIX:
        return 4, socket.inet_ntop(socket.AF_INET, raw[12:])
    return 6, socket.inet_ntop(socket.AF_INET6, raw)


_new_event = tuple.__new__


class Decoder:
    """Decodes events; remembers formatted addresses and comms, which repeat a lot (a pod
    talks to the same few services), so most records cost dict lookups, not formatting."""

    def __init__(self, cache_limit: int = 65536) -> None:
        self.addresses: dict[tuple[int, bytes], tuple[Literal[4, 6], str]] = {}
        self.comms: dict[bytes, str] = {}
        self._limit = cache_limit

    def address(self, family: int, raw: bytes) -> tuple[Literal[4, 6], str]:
        key = (family, raw)
        found = self.addresses.get(key)
        if found is None:
            if family not in (AF_INET, AF_INET6):
                raise ValueError(f"unknown address family {family}")
            if len(self.addresses) >= self._limit:
                self.addresses.clear()
            found = self.addresses[key] = _address(family, raw)
        return found

    def comm(self, raw: bytes) -> str:
        found = self.comms.get(raw)
        if found is None:
            if len(self.comms) >= self._limit:
                self.comms.clear()
            found = self.comms[raw] = raw.split(b"\0", 1)[0].decode(errors="replace")
        return found

    def decode(self, data: bytes, offset: int, clock_offset: int) -> TcpConnEvent:
        """Decode one event at ``offset``. Raises ValueError on an impossible record."""
        (
            start_ns,
            end_ns,
            cgroup_id,
            bytes_sent,
            bytes_received,
            retrans_bytes,
            saddr,
            daddr,
            connect_us,
            srtt_us,
            min_rtt_us,
            retrans,
            segs_in,
            segs_out,
            pid,
            flags,
            netns_ino,
            seq,
            sk_err,
            sport,
            dport,
            family,
            role,
            oldstate,
            kind,
            syn_retries,
            comm,
        ) = EVENT.unpack_from(data, offset)
        # Hot path (once per record): cache hits inline, and the tuple built directly
        # rather than through the NamedTuple's Python-level __new__ with its 30 arguments.
        addresses = self.addresses
        local = addresses.get((family, saddr)) or self.address(family, saddr)
        remote = addresses.get((family, daddr)) or self.address(family, daddr)
        end = end_ns + clock_offset
        state = TCP_STATES[oldstate] if oldstate < len(TCP_STATES) else str(oldstate)
        if flags & F_START_UNKNOWN:
            established = state not in ("SYN_SENT", "SYN_RECV")
        else:
            established = bool(flags & F_ESTABLISHED)
        return _new_event(
            TcpConnEvent,
            (
                start_ns + clock_offset if start_ns else end,
                end,
                ROLES.get(role, "unknown"),
                local[0],
                local[1],
                sport,
                remote[1],
                dport,
                pid,
                self.comms.get(comm) or self.comm(comm),
                cgroup_id,
                bytes_sent,
                bytes_received,
                srtt_us,
                retrans,
                connect_us if role == ROLE_CLIENT and flags & F_ESTABLISHED else None,
                flags,
                state,
                kind == KIND_INTERIM,
                seq,
                outcome_of(kind, established, state, sk_err, syn_retries),
                sk_err,
                syn_retries,
                segs_in,
                segs_out,
                retrans_bytes,
                min_rtt_us,
                netns_ino,
            ),
        )

    def decode_batch(
        self, batch: RecordBatch, clock_offset: int, stats: DecodeStats
    ) -> list[TcpConnEvent]:
        """Decode every record of a batch; bad records are counted in ``stats``, not raised."""
        data = batch.data
        decode = self.decode
        events: list[TcpConnEvent] = []
        append = events.append
        stats.discarded += batch.discarded
        for offset, length in batch.spans:
            if length != EVENT_SIZE:
                stats.decode_errors += 1
                continue
            try:
                append(decode(data, offset, clock_offset))
            except ValueError:
                stats.decode_errors += 1
        stats.decoded += len(events)
        return events


_DEFAULT = Decoder()


def decode_event(data: bytes, offset: int, clock_offset: int) -> TcpConnEvent:
    """Decode one event with the module's shared :class:`Decoder`."""
    return _DEFAULT.decode(data, offset, clock_offset)


def decode_batch(batch: RecordBatch, clock_offset: int, stats: DecodeStats) -> list[TcpConnEvent]:
    """Decode a batch with the module's shared :class:`Decoder`."""
    return _DEFAULT.decode_batch(batch, clock_offset, stats)

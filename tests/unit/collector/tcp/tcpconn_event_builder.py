"""Build struct tcpconn_event bytes with ctypes, laid out the way the C compiler lays out
bpf/tcpconn.h: an independent copy of the ABI, not the decoder's own struct format."""

from __future__ import annotations

import ctypes
import socket

from collector.kernel.ringbuf import RecordBatch
from collector.tcp import events


class CEvent(ctypes.Structure):
    _fields_ = [
        ("start_ns", ctypes.c_uint64),
        ("end_ns", ctypes.c_uint64),
        ("cgroup_id", ctypes.c_uint64),
        ("bytes_sent", ctypes.c_uint64),
        ("bytes_received", ctypes.c_uint64),
        ("retrans_bytes", ctypes.c_uint64),
        ("saddr", ctypes.c_uint8 * 16),
        ("daddr", ctypes.c_uint8 * 16),
        ("connect_us", ctypes.c_uint32),
        ("srtt_us", ctypes.c_uint32),
        ("min_rtt_us", ctypes.c_uint32),
        ("retrans_segs", ctypes.c_uint32),
        ("segs_in", ctypes.c_uint32),
        ("segs_out", ctypes.c_uint32),
        ("pid", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("netns_ino", ctypes.c_uint32),
        ("seq", ctypes.c_uint32),
        ("sk_err", ctypes.c_int32),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("family", ctypes.c_uint16),
        ("role", ctypes.c_uint8),
        ("oldstate", ctypes.c_uint8),
        ("kind", ctypes.c_uint8),
        ("syn_retries", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8 * 2),
        ("comm", ctypes.c_char * 16),
    ]


OFFSET = 1_700_000_000_000_000_000
CLIENT_ESTABLISHED = events.F_ESTABLISHED | events.F_FIN_ACKED | events.F_FIN_RECEIVED


def make(
    family: int = socket.AF_INET,
    saddr: str = "10.1.2.3",
    daddr: str = "10.9.8.7",
    **fields: object,
) -> bytes:
    ev = CEvent()
    defaults: dict[str, object] = {
        "start_ns": 1_000_000,
        "end_ns": 5_000_000,
        "cgroup_id": 4242,
        "bytes_sent": 1234,
        "bytes_received": 5678,
        "connect_us": 81,
        "srtt_us": 16,
        "retrans_segs": 2,
        "retrans_bytes": 2896,
        "min_rtt_us": 9,
        "segs_in": 7,
        "segs_out": 8,
        "netns_ino": 4026531840,
        "pid": 321,
        "flags": CLIENT_ESTABLISHED,
        "sport": 40000,
        "dport": 8080,
        "role": events.ROLE_CLIENT,
        "oldstate": 5,
        "comm": b"curl",
    }
    defaults.update(fields)
    for name, value in defaults.items():
        setattr(ev, name, value)
    ev.family = family
    if family not in (socket.AF_INET, socket.AF_INET6):
        return bytes(ev)
    af = socket.AF_INET if family == socket.AF_INET else socket.AF_INET6
    ctypes.memmove(ev.saddr, socket.inet_pton(af, saddr), 4 if af == socket.AF_INET else 16)
    ctypes.memmove(ev.daddr, socket.inet_pton(af, daddr), 4 if af == socket.AF_INET else 16)
    return bytes(ev)


def batch(*records: bytes) -> RecordBatch:
    """Records laid out as the ring buffer copy has them: 8-byte header, 8-byte aligned."""
    data = b""
    spans = []
    for record in records:
        data += b"\0" * 8
        spans.append((len(data), len(record)))
        data += record + b"\0" * (-len(record) % 8)
    return RecordBatch(data, spans)

"""Decode of struct tcpconn_event, with events built by ctypes (tcpconn_event_builder)."""

from __future__ import annotations

import ctypes
import socket

import pytest
from tcpconn_event_builder import OFFSET, CEvent, batch, make

from collector.kernel.ringbuf import RecordBatch
from collector.tcp import events


def test_ctypes_layout_is_the_abi_size() -> None:
    assert ctypes.sizeof(CEvent) == events.EVENT_SIZE


def test_decodes_ipv4_client() -> None:
    stats = events.DecodeStats()
    [ev] = events.decode_batch(batch(make()), OFFSET, stats)
    assert ev.role == "client"
    assert (ev.family, ev.local_addr, ev.local_port) == (4, "10.1.2.3", 40000)
    assert (ev.remote_addr, ev.remote_port) == ("10.9.8.7", 8080)
    assert (ev.start_time_ns, ev.end_time_ns) == (OFFSET + 1_000_000, OFFSET + 5_000_000)
    assert (ev.bytes_sent, ev.bytes_received) == (1234, 5678)
    assert (ev.srtt_us, ev.retrans_segs, ev.connect_latency_us) == (16, 2, 81)
    assert (ev.pid, ev.comm, ev.cgroup_id) == (321, "curl", 4242)
    assert ev.close_state == "FIN_WAIT2"
    assert ev.established
    assert (stats.decoded, stats.decode_errors) == (1, 0)


def test_decodes_ipv6_server_without_connect_latency() -> None:
    raw = make(
        family=socket.AF_INET6,
        saddr="fd00::1",
        daddr="2001:db8::42",
        role=events.ROLE_SERVER,
        connect_us=0,
        flags=events.F_ESTABLISHED | events.F_PID_AT_CLOSE,
    )
    [ev] = events.decode_batch(batch(raw), 0, events.DecodeStats())
    assert (ev.role, ev.family, ev.local_addr, ev.remote_addr) == (
        "server",
        6,
        "fd00::1",
        "2001:db8::42",
    )
    assert ev.connect_latency_us is None


def test_ipv4_mapped_ipv6_is_reported_as_ipv4() -> None:
    raw = make(family=socket.AF_INET6, saddr="::ffff:10.0.0.1", daddr="::ffff:10.0.0.2")
    [ev] = events.decode_batch(batch(raw), 0, events.DecodeStats())
    assert (ev.family, ev.local_addr, ev.remote_addr) == (4, "10.0.0.1", "10.0.0.2")


def test_unknown_start_uses_end_time_and_role_unknown() -> None:
    raw = make(start_ns=0, role=events.ROLE_UNKNOWN, flags=events.F_START_UNKNOWN, oldstate=1)
    [ev] = events.decode_batch(batch(raw), OFFSET, events.DecodeStats())
    assert ev.role == "unknown"
    assert ev.start_time_ns == ev.end_time_ns == OFFSET + 5_000_000
    assert ev.connect_latency_us is None
    assert ev.established  # it closed from ESTABLISHED


@pytest.mark.parametrize("oldstate", [2, 3])  # SYN_SENT, SYN_RECV
def test_never_established(oldstate: int) -> None:
    raw = make(flags=0, connect_us=0, oldstate=oldstate, bytes_sent=0, bytes_received=0)
    [ev] = events.decode_batch(batch(raw), 0, events.DecodeStats())
    assert not ev.established
    assert ev.connect_latency_us is None


def test_comm_is_cut_at_nul_and_full_length_comm_kept() -> None:
    [short, full] = events.decode_batch(
        batch(make(comm=b"nginx"), make(comm=b"0123456789abcdef")), 0, events.DecodeStats()
    )
    assert short.comm == "nginx"
    assert full.comm == "0123456789abcdef"


def test_bad_records_are_counted_not_raised() -> None:
    good = make()
    stats = events.DecodeStats()
    decoded = events.decode_batch(batch(good, good[:100], make(family=99), good), 0, stats)
    assert len(decoded) == 2
    assert (stats.decoded, stats.decode_errors) == (2, 2)


def test_discarded_records_are_counted() -> None:
    stats = events.DecodeStats()
    events.decode_batch(RecordBatch(b"", [], discarded=3), 0, stats)
    assert stats.discarded == 3


def test_many_records_keep_order() -> None:
    records = [make(sport=1000 + i, bytes_sent=i) for i in range(50)]
    decoded = events.decode_batch(batch(*records), 0, events.DecodeStats())
    assert [e.local_port for e in decoded] == [1000 + i for i in range(50)]
    assert [e.bytes_sent for e in decoded] == list(range(50))


def test_clock_offset_is_wall_minus_monotonic() -> None:
    import time

    offset = events.clock_offset_ns()
    assert abs(time.monotonic_ns() + offset - time.time_ns()) < 50_000_000

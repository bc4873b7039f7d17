"""Both message encoders (collector/tcp/_encode.c and the reference in collector/tcp/messages.py)
against decode then build_record, record by record, and batch messages (one JSON array per
pod per ring-buffer read)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from tcpconn_event_builder import batch, make
from test_collector_app import CID, UID, FakeSink, FakeSource, resolver
from test_collector_outcome_nat import FakeTable

from collector.app import Collector
from collector.kernel.ringbuf import RecordBatch
from collector.node.attribution import CgroupResolver
from collector.node.nat import NatResolver, NetnsIndex, parse_cidrs
from collector.tcp import events
from collector.tcp.events import DecodeStats, decode_batch
from collector.tcp.messages import MessageEncoder, NativeMessages, PythonMessages
from collector.tcp.record import build_record
from flowscope.codec import JsonCodec
from flowscope.records import RawTcpConnection

CODEC = JsonCodec(RawTcpConnection)
OFFSET = 1_700_000_000_000_000_000

# One of each kind of record the kernel sends.
VARIETY = [
    {"cgroup_id": 500},
    {"cgroup_id": 1, "comm": b"sshd", "role": events.ROLE_SERVER},
    {"kind": events.KIND_INTERIM, "seq": 4, "oldstate": 1, "cgroup_id": 500},
    {"flags": 0, "oldstate": 2, "sk_err": 111, "syn_retries": 3},  # refused
    {"flags": 0, "oldstate": 2, "sk_err": 110, "syn_retries": 6},  # timed out
    {"flags": 0, "oldstate": 2, "connect_us": 0},  # cancelled (no SYN retransmitted)
    {"flags": 0, "oldstate": 2, "syn_retries": 2},  # connect timeout (the application's)
    {"oldstate": 5, "syn_retries": 1},  # retried SYNs, then established: closed
    {"oldstate": 1, "sk_err": 0, "cgroup_id": 500},  # reset locally
    {"flags": events.F_START_UNKNOWN, "start_ns": 0, "role": 0, "oldstate": 8},
    {"family": socket.AF_INET6, "saddr": "fd00::1", "daddr": "fd00::2", "cgroup_id": 500},
    {"family": socket.AF_INET6, "saddr": "::ffff:10.0.0.1", "daddr": "::ffff:10.0.0.2"},
    {"daddr": "10.96.0.10", "dport": 80, "netns_ino": 77},  # a Service: NATed below
    {"cgroup_id": 9999},  # unknown cgroup
]


def nat_resolver() -> NatResolver:
    return NatResolver(
        parse_cidrs("10.96.0.0/12"),
        NetnsIndex(scan=lambda: {77: "/run/netns/pod-a"}),
        open_table=lambda _path: FakeTable(("10.244.1.7", 8080)),
        own_netns_inode=1,
    )


def reference(raw: list[bytes], cgroups: CgroupResolver, nat: NatResolver | None) -> list:  # type: ignore[type-arg]
    out = []
    for e in decode_batch(batch(*raw), OFFSET, DecodeStats()):
        info = cgroups.resolve(e.cgroup_id)
        out.append(build_record(e, info, "node-1", nat.resolve(e) if nat else None))
    return out


ENCODERS = [NativeMessages, PythonMessages]
Encoder = type[NativeMessages] | type[PythonMessages]


def group(
    enc: MessageEncoder, records: RecordBatch, offset: int, stats: DecodeStats
) -> dict[str, list[RawTcpConnection]]:
    """Key -> that key's records, in message order (the encoder built with batching on)."""
    groups: dict[str, list[RawTcpConnection]] = {}
    for key, value, _n in enc.encode(records, offset, stats):
        groups.setdefault(key, []).extend(CODEC.decode_batch(value))
    return groups


@pytest.mark.parametrize("kind", ENCODERS)
@pytest.mark.parametrize("with_nat", [False, True])
def test_same_records_as_the_reference_path_grouped_by_pod_in_order(
    with_nat: bool, kind: Encoder
) -> None:
    raw = [make(end_ns=5_000_000 + i, **fields) for i, fields in enumerate(VARIETY)]  # type: ignore[arg-type]
    enc = kind(resolver(), "node-1", nat_resolver() if with_nat else None, 256)
    stats = DecodeStats()
    groups = group(enc, batch(*raw), OFFSET, stats)
    got = [w for ws in groups.values() for w in ws]
    want = reference(raw, resolver(), nat_resolver() if with_nat else None)
    assert sorted(got, key=lambda r: r.end_time_ns) == want
    assert set(groups) == {UID, "node-1"}
    for key, records in groups.items():
        assert all((r.pod_uid or "node-1") == key for r in records)
        assert [r.end_time_ns for r in records] == sorted(r.end_time_ns for r in records)
    nated = [r for r in got if r.original_remote_addr is not None]
    assert len(nated) == (1 if with_nat else 0)
    assert stats.decoded == len(VARIETY)
    # refused, timed out, cancelled, connect timeout: never established
    assert (enc.stats.failed_connects, enc.stats.interim_records) == (4, 1)


@pytest.mark.parametrize("kind", ENCODERS)
def test_bad_records_are_counted_and_skipped(kind: Encoder) -> None:
    enc = kind(resolver(), "n", None, 256)
    stats = DecodeStats()
    groups = group(enc, batch(make(), make()[:100], make(family=99), make()), 0, stats)
    assert sum(len(ws) for ws in groups.values()) == 2
    assert (stats.decoded, stats.decode_errors) == (2, 2)


def batching(size: int, max_bytes: int = 256 << 10) -> tuple[Collector, FakeSink]:
    sink = FakeSink()
    c = Collector(
        FakeSource([]),
        sink,
        resolver(),
        node_name="node-1",
        topic="t",
        batch_records=size,
        batch_bytes=max_bytes,
    )
    return c, sink


def test_batches_are_json_arrays_per_pod_bounded_by_records() -> None:
    c, sink = batching(3)
    raw = [make(cgroup_id=500, end_ns=10 + i) for i in range(7)] + [make(cgroup_id=1)] * 2
    assert c.process(batch(*raw)) == 9
    sizes = [(key, len(CODEC.decode_batch(value))) for _t, value, key in sink.sent]
    assert sizes == [(UID, 3), (UID, 3), (UID, 1), ("node-1", 2)]
    assert all(value is not None and value[:1] == b"[" for _t, value, _k in sink.sent)
    pod = [r for _t, v, k in sink.sent if k == UID for r in CODEC.decode_batch(v)]
    assert [r.end_time_ns for r in pod] == sorted(r.end_time_ns for r in pod)
    assert pod[0].container_id == CID
    counters = c.counters()
    assert (counters["records_produced"], counters["produced"]) == (9, 4)


def test_batches_are_split_to_stay_under_the_byte_bound() -> None:
    c, sink = batching(100, max_bytes=2000)  # a record is ~600 bytes of JSON
    c.process(batch(*[make(cgroup_id=500, seq=i) for i in range(10)]))
    values = [v for _t, v, _k in sink.sent if v is not None]
    assert all(len(v) <= 2000 for v in values) and len(values) >= 4
    decoded = [r for v in values for r in CODEC.decode_batch(v)]
    assert [r.sequence for r in decoded] == list(range(10))


def test_batch_of_one_is_a_plain_object() -> None:
    c, sink = batching(1)
    c.process(batch(make(cgroup_id=500), make(cgroup_id=500)))
    assert [v[:1] for _t, v, _k in sink.sent if v is not None] == [b"{", b"{"]


def test_refused_batch_counts_every_record_in_it() -> None:
    sink = FakeSink(accept=False)
    c = Collector(FakeSource([]), sink, resolver(), node_name="n", topic="t", batch_records=10)
    assert c.process(batch(make(), make(), make())) == 0
    assert c.counters()["records_dropped_buffer_full"] == 3


@pytest.mark.parametrize("kind", ENCODERS)
def test_unknown_cgroup_is_asked_again_on_the_next_batch(kind: Encoder) -> None:
    tree = {1: "/"}
    r = CgroupResolver(Path("/cg"), walk=lambda _root: dict(tree), min_walk_interval_s=0.0)
    r.refresh()
    enc = kind(r, "n", None, 256)
    [[first]] = group(enc, batch(make(cgroup_id=600)), 0, DecodeStats()).values()
    tree[600] = f"/kubepods/pod{UID}/{CID}"  # the pod's cgroup appears
    [[second]] = group(enc, batch(make(cgroup_id=600)), 0, DecodeStats()).values()
    assert first.pod_uid is None
    assert second.pod_uid == UID

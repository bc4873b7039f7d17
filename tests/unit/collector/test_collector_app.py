"""The pipeline stage without kernel or broker: batch -> records handed to the sink."""

from __future__ import annotations

import socket
from pathlib import Path

from tcpconn_event_builder import batch, make

from collector.app import Collector
from collector.kernel.ringbuf import EMPTY, RecordBatch
from collector.node.attribution import CgroupResolver
from collector.tcp import events
from flowscope.codec import JsonCodec
from flowscope.kafka import ProducerCounters
from flowscope.records import RawTcpConnection

UID = "0b7c2d4e-1111-4222-8333-444455556666"
CID = "c" * 64


class FakeSource:
    def __init__(self, batches: list[RecordBatch]) -> None:
        self.batches = batches
        self.detached = False

    def wait(self, timeout_s: float) -> bool:
        return bool(self.batches)

    def read(self, max_records: int = 1 << 30) -> RecordBatch:
        return self.batches.pop(0) if self.batches else EMPTY

    def kernel_counters(self) -> dict[str, int]:
        return {"events": 7, "lost_ringbuf": 1}

    def detach(self) -> None:
        self.detached = True


class FakeSink:
    def __init__(self, accept: bool = True) -> None:
        self.counters = ProducerCounters()
        self.sent: list[tuple[str, bytes | None, bytes | str | None]] = []
        self.accept = accept
        self.flushed = False

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | str | None = None,
        headers: list[tuple[str, str | bytes | None]] | None = None,
        records: int = 1,
    ) -> bool:
        if not self.accept:
            self.counters.dropped_buffer_full += 1
            return False
        self.sent.append((topic, value, key))
        self.counters.produced += 1
        return True

    def poll(self, timeout_s: float = 0.0) -> None:
        pass

    def flush(self, timeout_s: float = 10.0) -> int:
        self.flushed = True
        return 0

    def in_flight(self) -> int:
        return 0


def resolver() -> CgroupResolver:
    tree = {1: "/", 500: f"/kubepods/burstable/pod{UID}/{CID}"}
    r = CgroupResolver(Path("/cg"), walk=lambda _root: dict(tree))
    r.refresh()
    return r


def collector(source: FakeSource, sink: FakeSink) -> Collector:
    return Collector(source, sink, resolver(), node_name="node-1", topic="t.raw.tcp")


def test_records_carry_pod_and_are_keyed_by_pod_or_node() -> None:
    sink = FakeSink()
    source = FakeSource([])
    c = collector(source, sink)
    produced = c.process(batch(make(cgroup_id=500), make(cgroup_id=1, comm=b"sshd")))
    assert produced == 2
    codec = JsonCodec(RawTcpConnection)
    (t1, v1, k1), (t2, v2, k2) = sink.sent
    pod, host = codec.decode(v1), codec.decode(v2)
    assert (t1, k1, t2, k2) == ("t.raw.tcp", UID, "t.raw.tcp", "node-1")
    assert (pod.pod_uid, pod.container_id, pod.cgroup_path) == (
        UID,
        CID,
        f"/kubepods/burstable/pod{UID}/{CID}",
    )
    assert (pod.node, pod.role, pod.bytes_sent, pod.bytes_received) == (
        "node-1",
        "client",
        1234,
        5678,
    )
    assert pod.connect_latency_us == 81
    assert (host.pod_uid, host.container_id, host.cgroup_path, host.comm) == (
        None,
        None,
        "/",
        "sshd",
    )


def test_unknown_cgroup_still_produces_with_no_path() -> None:
    sink = FakeSink()
    c = collector(FakeSource([]), sink)
    c.process(batch(make(cgroup_id=9999)))
    record = JsonCodec(RawTcpConnection).decode(sink.sent[0][1])
    assert (record.cgroup_id, record.cgroup_path, record.pod_uid) == (9999, None, None)
    assert c.counters()["cgroup_misses"] == 1


def test_every_event_lands_in_one_counter() -> None:
    sink = FakeSink()
    c = collector(FakeSource([]), sink)
    failed_connect = make(flags=0, oldstate=2, connect_us=0)  # SYN_SENT -> CLOSE
    c.process(
        batch(
            make(),
            failed_connect,
            make()[:50],
            make(family=socket.AF_INET6, saddr="::1", daddr="::1"),
        )
    )
    counters = c.counters()
    assert counters["events"] == 3
    assert counters["decode_errors"] == 1
    assert counters["failed_connects"] == 1
    assert counters["produced"] == 3  # a failed connect is a record too
    assert counters["kernel_lost_ringbuf"] == 1
    line = c.stats_line()
    assert "failed_connects=1" in line and "kernel_events=7" in line


def test_refused_produce_is_counted() -> None:
    sink = FakeSink(accept=False)
    c = collector(FakeSource([]), sink)
    assert c.process(batch(make())) == 0
    assert c.stats.produce_refused == 1
    assert c.counters()["dropped_buffer_full"] == 1


def test_refused_records_are_counted_by_pod_or_node() -> None:
    c = collector(FakeSource([]), FakeSink(accept=False))
    c.process(batch(make(cgroup_id=500), make(cgroup_id=500), make(cgroup_id=1)))
    assert c.dropped_by_key() == {UID: 2, "node-1": 1}
    assert sum(c.dropped_by_key().values()) == c.counters()["records_dropped_buffer_full"]


def test_shutdown_detaches_then_drains_then_flushes() -> None:
    source = FakeSource([batch(make()), batch(make(), make())])
    sink = FakeSink()
    c = collector(source, sink)
    c.shutdown(flush_timeout_s=1.0)
    assert source.detached
    assert len(sink.sent) == 3
    assert sink.flushed


def test_events_constants_used_by_the_fakes() -> None:
    assert len(make()) == events.EVENT_SIZE

"""Pure parts added for outcomes, interim records, NAT and health: no kernel, no broker."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from tcpconn_event_builder import batch, make

from collector.app import Collector
from collector.health import HealthReporter
from collector.metrics import VOCABULARY
from collector.node.attribution import CgroupResolver
from collector.node.nat import NatResolver, NetnsIndex, parse_cidrs
from collector.settings import SettingsError, parse_settings
from collector.tcp import events
from collector.tcp.events import DecodeStats, decode_batch, outcome_of
from collector.tcp.record import build_record

F = events.KIND_FINAL


@pytest.mark.parametrize(
    ("established", "state", "err", "syn_retries", "want"),
    [
        (False, "SYN_SENT", 111, 0, "refused"),
        (False, "SYN_SENT", 110, 6, "timed_out"),  # the kernel gave up
        (False, "SYN_SENT", 113, 2, "unreachable"),
        # Closed by the application with no answer yet: a connect timeout once a SYN was
        # retransmitted, cancelled before any.
        (False, "SYN_SENT", 0, 1, "connect_timeout"),
        (False, "SYN_SENT", 0, 255, "connect_timeout"),
        (False, "SYN_SENT", 0, 0, "cancelled"),
        (False, "SYN_RECV", 0, 0, "cancelled"),
        (True, "ESTABLISHED", 104, 0, "reset_by_peer"),
        (True, "CLOSE_WAIT", 32, 0, "reset_by_peer"),
        (True, "ESTABLISHED", 0, 0, "reset_locally"),
        (True, "ESTABLISHED", 0, 3, "reset_locally"),  # retried SYNs, then established
        (True, "CLOSE_WAIT", 0, 0, "reset_locally"),
        (True, "FIN_WAIT2", 0, 0, "closed"),
        (True, "FIN_WAIT2", 0, 2, "closed"),
        (True, "LAST_ACK", 0, 0, "closed"),
        (True, "ESTABLISHED", 110, 0, "timed_out"),
        (True, "ESTABLISHED", 103, 0, "aborted"),
        (True, "ESTABLISHED", 22, 0, "error"),
    ],
)
def test_outcome_from_state_error_and_syn_retries(
    established: bool, state: str, err: int, syn_retries: int, want: str
) -> None:
    assert outcome_of(F, established, state, err, syn_retries) == want


def test_interim_records_are_open_whatever_the_state() -> None:
    assert outcome_of(events.KIND_INTERIM, True, "ESTABLISHED", 0, 0) == "open"
    assert outcome_of(events.KIND_INTERIM, False, "SYN_SENT", 0, 2) == "open"


def test_new_fields_decode() -> None:
    [e] = decode_batch(
        batch(make(kind=events.KIND_INTERIM, seq=3, syn_retries=2, sk_err=0, oldstate=1)),
        0,
        DecodeStats(),
    )
    assert (e.interim, e.seq, e.outcome, e.syn_retries) == (True, 3, "open", 2)
    assert (e.segs_in, e.segs_out, e.retrans_bytes, e.min_rtt_us) == (7, 8, 2896, 9)
    assert e.netns_ino == 4026531840
    [refused] = decode_batch(batch(make(flags=0, oldstate=2, sk_err=111)), 0, DecodeStats())
    assert (refused.outcome, refused.established, refused.sk_err) == ("refused", False, 111)


class FakeTable:
    def __init__(self, answer: tuple[str, int] | None) -> None:
        self.answer = answer
        self.asked: list[tuple[int, str, str, int, int, int]] = []

    def reply_source(
        self, family: int, saddr: str, daddr: str, sport: int, dport: int, proto: int = 6
    ) -> tuple[str, int] | None:
        self.asked.append((family, saddr, daddr, sport, dport, proto))
        return self.answer

    def close(self) -> None:
        pass


def _event(**fields: object) -> events.TcpConnEvent:
    [e] = decode_batch(batch(make(**fields)), 0, DecodeStats())
    return e


def _resolver(tables: dict[str | None, FakeTable], opened: list[str | None]) -> NatResolver:
    def open_table(path: str | None) -> FakeTable:
        opened.append(path)
        return tables[path]

    return NatResolver(
        parse_cidrs("10.96.0.0/12"),
        NetnsIndex(scan=lambda: {77: "/run/netns/pod-a"}),
        open_table=open_table,
        own_netns_inode=1,
    )


def test_nat_is_looked_up_in_the_node_namespace_first() -> None:
    """kube-proxy DNATs in the node's root namespace (the collector's own): found there, the
    socket's namespace is never opened."""
    root, pod = FakeTable(("10.244.1.7", 8080)), FakeTable(None)
    opened: list[str | None] = []
    nat = _resolver({None: root, "/run/netns/pod-a": pod}, opened)
    svc = _event(daddr="10.96.0.10", dport=80, netns_ino=77)
    assert nat.resolve(svc) == ("10.244.1.7", 8080)
    assert nat.resolve(_event(daddr="10.244.9.9", netns_ino=77)) is None  # not a service
    assert nat.resolve(_event(daddr="10.96.0.10", role=events.ROLE_SERVER, netns_ino=77)) is None
    assert opened == [None]
    assert root.asked == [(4, "10.1.2.3", "10.96.0.10", 40000, 80, 6)] and pod.asked == []
    assert (nat.stats.lookups, nat.stats.translated, nat.stats.translated_in_socket_netns) == (
        1,
        1,
        0,
    )
    record = build_record(
        svc, CgroupResolver(Path("/x"), walk=lambda _: {}).resolve(1), "n", ("10.244.1.7", 8080)
    )
    assert (record.remote_addr, record.remote_port) == ("10.244.1.7", 8080)
    assert (record.original_remote_addr, record.original_remote_port) == ("10.96.0.10", 80)


def test_nat_falls_back_to_the_socket_namespace_and_counts_misses_by_cause() -> None:
    root, pod = FakeTable(None), FakeTable(("10.244.1.8", 9090))
    opened: list[str | None] = []
    nat = _resolver({None: root, "/run/netns/pod-a": pod}, opened)
    assert nat.resolve(_event(daddr="10.96.0.11", netns_ino=77)) == ("10.244.1.8", 9090)
    assert (nat.stats.translated, nat.stats.translated_in_socket_netns) == (1, 1)
    pod.answer = None
    assert nat.resolve(_event(daddr="10.96.0.11", netns_ino=77)) is None
    root.answer = ("10.96.0.11", 80)  # an entry, not rewritten
    assert nat.resolve(_event(daddr="10.96.0.11", dport=80, netns_ino=77)) is None
    root.answer = None
    assert nat.resolve(_event(daddr="10.96.0.11", netns_ino=99)) is None  # netns gone
    assert opened == [None, "/run/netns/pod-a"]
    s = nat.stats
    assert (s.lookups, s.not_translated, s.no_entry, s.no_dnat, s.netns_unknown) == (4, 3, 2, 1, 1)


def test_nat_lookup_errors_are_counted_not_raised() -> None:
    class Broken(FakeTable):
        def reply_source(self, *args: object) -> tuple[str, int] | None:  # type: ignore[override]
            raise OSError("netlink went away")

    nat = NatResolver(
        parse_cidrs("10.96.0.0/12"), open_table=lambda _p: Broken(None), own_netns_inode=5
    )
    assert nat.resolve(_event(daddr="10.96.0.1", netns_ino=5)) is None
    assert nat.stats.errors == 1


def test_without_cap_sys_admin_only_the_node_namespace_is_asked() -> None:
    """Entering a pod's namespace (setns) is refused without CAP_SYS_ADMIN: learnt once,
    counted for every lookup that could not go there, the node's table still asked."""

    class Refused(FakeTable):
        def reply_source(self, *args: object) -> tuple[str, int] | None:  # type: ignore[override]
            raise PermissionError(1, "failed to open netns")

    root, pod = FakeTable(None), Refused(None)
    opened: list[str | None] = []
    nat = _resolver({None: root, "/run/netns/pod-a": pod}, opened)
    for _ in range(3):
        assert nat.resolve(_event(daddr="10.96.0.12", netns_ino=77)) is None
    root.answer = ("10.244.1.9", 8080)
    assert nat.resolve(_event(daddr="10.96.0.12", netns_ino=77)) == ("10.244.1.9", 8080)
    assert opened == [None, "/run/netns/pod-a"]  # never tried again after the refusal
    assert len(root.asked) == 4
    s = nat.stats
    assert (s.netns_denied, s.netns_unknown, s.errors, s.no_entry) == (3, 0, 0, 3)


def test_bad_cidr_fails_at_start_naming_the_value() -> None:
    with pytest.raises(SettingsError, match=re.escape("10.96.0.0/33")):
        parse_settings(["--service-cidrs", "10.96.0.0/33"], {})
    with pytest.raises(SettingsError, match="interim_interval_s"):
        parse_settings(["--interim-interval-seconds", "-1"], {})
    s = parse_settings([], {"FLOWSCOPE_COLLECTOR_INTERIM_INTERVAL_SECONDS": "2.5"})
    assert s.interim_interval_s == 2.5 and s.metrics_port == 0


def test_prometheus_text_marks_totals_and_gauges() -> None:
    text = generate_latest(VOCABULARY.registry(lambda: {"delivered": 5, "in_flight": 2})).decode()
    assert 'flowscope_collector_kafka_messages_total{outcome="delivered"} 5.0' in text
    assert "# TYPE flowscope_collector_kafka_in_flight_messages gauge" in text
    assert "flowscope_collector_kafka_in_flight_messages 2.0" in text


def test_health_record_is_produced_on_its_interval() -> None:
    now = [0.0]
    sent: list[tuple[str, bytes, str]] = []

    def produce(topic: str, value: bytes, key: str) -> bool:
        sent.append((topic, value, key))
        return True

    h = HealthReporter(
        lambda: {"x": 1},
        produce,
        "p.collector.health",
        "node-1",
        5.0,
        clock=lambda: now[0],
        dropped_by_key=lambda: {"uid-1": 3},
    )
    h.tick()
    now[0] = 5.0
    h.tick()
    h.tick()
    assert len(sent) == 1 and sent[0][0] == "p.collector.health" and sent[0][2] == "node-1"
    assert b'"counters":{"x":1}' in sent[0][1]
    assert b'"records_dropped_by_key":{"uid-1":3}' in sent[0][1]


def test_collector_runs_periodic_tasks() -> None:
    from test_collector_app import FakeSink, FakeSource, resolver

    calls: list[int] = []
    c = Collector(
        FakeSource([]),
        FakeSink(),
        resolver(),
        node_name="n",
        topic="t",
        poll_interval_s=0.01,
        periodic=[lambda: calls.append(1)],
    )
    stop = threading.Event()
    t = threading.Thread(target=c.run, args=(stop,))
    t.start()
    deadline = time.monotonic() + 5
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    t.join(5)
    assert calls


def test_encoded_record_decodes_to_the_built_record() -> None:
    from collector.tcp.record import encode_record
    from flowscope.codec import JsonCodec
    from flowscope.records import RawTcpConnection

    codec = JsonCodec(RawTcpConnection)
    info = CgroupResolver(Path("/x"), walk=lambda _: {}).resolve(1)
    for fields, nat in (
        ({}, None),
        ({"kind": events.KIND_INTERIM, "seq": 4, "oldstate": 1}, None),
        ({"flags": 0, "oldstate": 2, "sk_err": 111, "syn_retries": 3}, None),
        ({"daddr": "10.96.0.1", "dport": 80}, ("10.244.0.9", 8080)),
        ({"family": 10, "saddr": "fd00::1", "daddr": "fd00::2"}, None),
    ):
        e = _event(**fields)
        assert codec.decode(encode_record(e, info, "n", nat)) == build_record(e, info, "n", nat)

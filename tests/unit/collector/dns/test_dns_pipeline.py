"""Ring-buffer records -> RawDnsQuery records, with privacy, TCP framing and bad input."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.dns import abi
from collector.dns.pipeline import DnsPipeline
from collector.dns.privacy import NamePrivacy
from collector.dns.search import SearchConfig, SearchTracker
from collector.dns.settings import ENV as DNS_ENV
from collector.dns.settings import DnsSettings, DnsSettingsError
from collector.kernel.ringbuf import RecordBatch
from collector.node.attribution import CgroupResolver
from collector.settings import build_parser, parse_settings
from flowscope.codec import JsonCodec
from flowscope.kafka import ProducerCounters
from flowscope.records import RawDnsQuery
from simnode.dns.wire import build_query, build_response, parse_query

POD_UID = "0f7a2a1e-9d0c-4c55-8f59-6f2b1f0c1a11"
CID = "ab" * 32
PATHS = {1: "/", 11: f"/kubepods/besteffort/pod{POD_UID}/{CID}", 22: "/kubepods/podsrv/c" * 1}
CODEC = JsonCodec(RawDnsQuery)
MS = 1_000_000


class FakeSource:
    def __init__(self) -> None:
        self.records: list[bytes] = []
        self.detached = False

    def read(self, max_records: int = 1 << 30) -> RecordBatch:
        take, self.records = self.records[:max_records], self.records[max_records:]
        spans, pos = [], 0
        for r in take:
            spans.append((pos, len(r)))
            pos += len(r)
        return RecordBatch(b"".join(take), spans)

    def kernel_counters(self) -> dict[str, int]:
        return {"events": len(self.records)}

    def detach(self) -> None:
        self.detached = True


class ListSink:
    def __init__(self) -> None:
        self.counters = ProducerCounters()
        self.messages: list[tuple[str, bytes, str]] = []

    def produce(self, topic: str, value: bytes | None, key: bytes | str | None = None) -> bool:
        assert value is not None and isinstance(key, str)
        self.messages.append((topic, value, key))
        return True

    def records(self) -> list[RawDnsQuery]:
        return [CODEC.decode(v) for _, v, _ in self.messages]


def event(
    t_ms: int,
    cgroup: int,
    egress: bool,
    src: tuple[str, int],
    dst: tuple[str, int],
    payload: bytes,
    proto: int = abi.IPPROTO_UDP,
    peer: tuple[str, int] | None = None,
    payload_len: int | None = None,
) -> bytes:
    def a(text: str) -> bytes:
        return bytes(int(x) for x in text.split(".")) + bytes(12)

    captured = payload[: abi.PAYLOAD_MAX]
    return abi.EVENT.pack(
        t_ms * MS,
        cgroup,
        a(src[0]),
        a(dst[0]),
        a(peer[0]) if peer else bytes(16),
        payload_len if payload_len is not None else len(payload),
        len(captured),
        src[1],
        dst[1],
        peer[1] if peer else 0,
        abi.AF_INET,
        abi.DIR_EGRESS if egress else abi.DIR_INGRESS,
        proto,
        captured,
    )


def pipeline(
    privacy: NamePrivacy | None = None,
    search: SearchTracker | None = None,
    now_ms: list[int] | None = None,
) -> tuple[DnsPipeline, FakeSource, ListSink]:
    clock = now_ms if now_ms is not None else [0]
    src, sink = FakeSource(), ListSink()
    resolver = CgroupResolver(Path("/nonexistent"), walk=lambda _r: PATHS)
    p = DnsPipeline(
        src,
        sink,
        resolver,
        "node-1",
        "t.raw.dns",
        privacy or NamePrivacy(),
        timeout_s=1.0,
        search=search,
        clock_ns=lambda: clock[0] * MS,
    )
    return p, src, sink


C, S, SVC = ("10.244.0.2", 40001), ("10.244.0.3", 53), ("10.96.0.10", 53)


def exchange(src: FakeSource, name: str, txid: int, t0: int, t1: int, rcode: int = 0) -> None:
    q = build_query(txid, name)
    r = build_response(q, parse_query(q), rcode, ["10.1.2.3"])
    src.records += [
        event(t0, 11, True, C, S, q, peer=SVC),  # client sends to the ClusterIP, DNATed
        event(t0, 22, False, C, S, q),
        event(t1, 22, True, S, C, r),
        event(t1, 11, False, SVC, C, r),  # un-NATed on the way back
    ]


def test_both_ends_one_record_each() -> None:
    p, src, sink = pipeline()
    exchange(src, "web.default.svc.cluster.local", 7, 100, 125)
    assert p.pump() == 2
    client, server = sorted(sink.records(), key=lambda r: r.role)
    assert client.role == "client" and client.pod_uid == POD_UID and client.container_id == CID
    assert (client.remote_addr, client.original_remote_addr) == ("10.244.0.3", "10.96.0.10")
    assert client.latency_us == 25_000 and client.rcode == "NOERROR" and client.txid == 7
    assert client.answer_addrs == ["10.1.2.3"] and client.answer_count == 1
    assert client.query_name == "web.default.svc.cluster.local" and client.query_type == "A"
    assert server.role == "server" and server.cgroup_path == "/kubepods/podsrv/c"
    assert server.remote_addr == "10.244.0.2" and server.original_remote_addr is None
    assert {k for _, _, k in sink.messages} == {POD_UID, "node-1"}  # no pod uid: node key


def test_timeout_emitted_by_pump_after_the_wait() -> None:
    now = [0]
    p, src, sink = pipeline(now_ms=now)
    q = build_query(1, "silent.test")
    src.records.append(event(10, 11, True, C, S, q))
    now[0] = 500
    p.pump()
    assert sink.records() == []
    now[0] = 1100
    p.pump()
    (record,) = sink.records()
    assert record.outcome == "timeout" and record.latency_us is None and record.rcode is None


@pytest.mark.parametrize(("policy", "expect"), [("hash", "hashed"), ("drop", "dropped")])
def test_privacy(policy: str, expect: str) -> None:
    privacy = NamePrivacy(policy, b"secret")  # type: ignore[arg-type]
    search = SearchTracker(lambda _c: SearchConfig(("default.svc.cluster.local",), 5))
    p, src, sink = pipeline(privacy, search)
    exchange(src, "web.default.svc.cluster.local", 7, 100, 125)
    p.pump()
    for r in sink.records():
        assert r.name_privacy == expect
        assert b"web" not in CODEC.encode(r)
    client = next(r for r in sink.records() if r.role == "client")
    if policy == "hash":
        assert client.query_name == privacy.apply("WEB.default.svc.cluster.local")
        assert client.asked_name == privacy.apply("web") and client.search_expansion is True
        assert client.query_name != NamePrivacy("hash", b"other").apply(client.query_name)
    else:
        assert client.query_name is None and client.asked_name is None


def test_tcp_two_messages_in_one_segment_and_unframed_data() -> None:
    p, src, _sink = pipeline()
    q1, q2 = build_query(1, "a.test"), build_query(2, "b.test")
    seg = struct.pack("!H", len(q1)) + q1 + struct.pack("!H", len(q2)) + q2
    src.records.append(event(0, 11, True, C, S, seg, proto=abi.IPPROTO_TCP))
    src.records.append(event(0, 11, True, C, S, b"\x05\x00garbage", proto=abi.IPPROTO_TCP))
    p.pump()
    assert p.matcher.stats.queries == 2 and p.stats.tcp_unframed == 1


def test_clipped_response_keeps_question_and_counts() -> None:
    p, src, sink = pipeline()
    q = build_query(3, "big.test")
    r = build_response(q, parse_query(q), 0, [f"10.0.{i // 250}.{i % 250}" for i in range(40)])
    assert len(r) > abi.PAYLOAD_MAX
    src.records += [event(0, 11, True, C, S, q), event(5, 11, False, S, C, r)]
    p.pump()
    (record,) = sink.records()
    assert record.outcome == "answered" and record.answer_count == 40
    assert 0 < len(record.answer_addrs) < 40 and p.stats.clipped == 1


def test_bad_records_are_counted_not_fatal() -> None:
    p, src, _sink = pipeline()
    good = event(0, 11, True, C, S, build_query(1, "x.test"))
    src.records += [b"short", good[:-1] + b"", b"\x00" * abi.EVENT_SIZE]
    p.pump()
    counters = p.counters()
    assert counters["dns_decode_errors"] == 3 and counters["dns_packets"] == 0


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.binary(max_size=80), st.sampled_from([6, 17])), max_size=20
    )
)
def test_fuzz_garbage_payloads_never_crash(packets: list[tuple[bool, bytes, int]]) -> None:
    p, src, _sink = pipeline()
    for egress, payload, proto in packets:
        src.records.append(event(0, 11, egress, C, S, payload, proto=proto))
    p.pump()
    p.matcher.flush()
    assert p.stats.packets == len(packets)


def test_settings_flags_and_invalid_values() -> None:
    s = parse_settings(
        ["--dns-enabled", "true", "--dns-query-names", "hash", "--dns-timeout-seconds", "2"],
        {"FLOWSCOPE_DNS_NAME_HASH_KEY": "k"},
    )
    assert s.dns == DnsSettings(enabled=True, query_names="hash", timeout_s=2.0, name_hash_key="k")
    with pytest.raises(DnsSettingsError, match="plain, hash, drop"):
        parse_settings([], {"FLOWSCOPE_DNS_QUERY_NAMES": "scramble"})
    with pytest.raises(DnsSettingsError, match="power of 2"):
        DnsSettings(ringbuf_bytes=5000)


def test_help_documents_every_dns_setting_and_its_variable() -> None:
    text = build_parser({}).format_help()
    assert set(DNS_ENV) == set(DnsSettings.__dataclass_fields__)
    for name, variable in DNS_ENV.items():
        assert variable in text and "--dns-" + name.replace("_", "-") in text, name


K8S_DEFAULT = SearchConfig(("default.svc.cluster.local", "svc.cluster.local", "cluster.local"), 5)
NXDOMAIN = 3


def client_flow(src: FakeSource, steps: list[tuple[str, int, int, int, bool]]) -> None:
    """The client's side of a resolver's queries: (name, txid, sent ms, answered ms, found).
    Not found: NXDOMAIN with no answer."""
    for name, txid, t0, t1, found in steps:
        q = build_query(txid, name)
        r = build_response(
            q, parse_query(q), 0 if found else NXDOMAIN, ["10.1.2.3"] if found else []
        )
        src.records += [event(t0, 11, True, C, S, q, peer=SVC), event(t1, 11, False, SVC, C, r)]


def marks_of(sink: ListSink) -> dict[str, tuple[bool | None, str | None, str | None]]:
    return {r.query_name or "": (r.search_expansion, r.asked_name, r.rcode) for r in sink.records()}


def test_absolute_name_nxdomain_is_not_a_search_expansion() -> None:
    """getaddrinfo("nope.default.svc.cluster.local.") sends that one query and stops at its
    NXDOMAIN: no later candidate follows it, so it is the asked name and a real failure,
    although on the wire it is the first expansion of "nope"."""
    now = [0]
    search = SearchTracker(lambda _c: K8S_DEFAULT, hold_s=1.0)
    p, src, sink = pipeline(search=search, now_ms=now)
    client_flow(src, [("nope.default.svc.cluster.local", 1, 10, 12, False)])
    now[0] = 20
    p.pump()
    assert sink.records() == []  # held: the resolver may still go on to the next domain
    now[0] = 1100
    p.pump()
    assert marks_of(sink) == {"nope.default.svc.cluster.local": (False, None, "NXDOMAIN")}
    assert p.counters()["dns_search_not_continued"] == 1
    assert p.counters()["dns_search_expansions"] == 0


def test_first_expansion_nxdomain_confirmed_by_the_next_candidate() -> None:
    now = [0]
    search = SearchTracker(lambda _c: K8S_DEFAULT, hold_s=1.0)
    p, src, sink = pipeline(search=search, now_ms=now)
    client_flow(src, [("nope.default.svc.cluster.local", 1, 10, 12, False)])
    now[0] = 20
    p.pump()
    client_flow(
        src,
        [
            ("nope.svc.cluster.local", 2, 13, 15, False),
            ("nope.cluster.local", 3, 16, 18, False),
            ("nope", 4, 19, 21, False),
        ],
    )
    now[0] = 40
    p.pump()
    assert marks_of(sink) == {
        "nope.default.svc.cluster.local": (True, "nope", "NXDOMAIN"),
        "nope.svc.cluster.local": (True, "nope", "NXDOMAIN"),
        "nope.cluster.local": (True, "nope", "NXDOMAIN"),
        "nope": (False, "nope", "NXDOMAIN"),
    }
    assert p.counters()["dns_search_expansions"] == 3


def test_search_that_ended_is_not_continued_by_a_later_absolute_name() -> None:
    """The short name "web" is found by its first expansion, so glibc stops there; a pod asking for
    the absolute "web.svc.cluster.local." a moment later is its own lookup, not the second
    expansion of "web"."""
    now = [0]
    search = SearchTracker(lambda _c: K8S_DEFAULT, hold_s=1.0)
    p, src, sink = pipeline(search=search, now_ms=now)
    client_flow(
        src,
        [
            ("web.default.svc.cluster.local", 1, 10, 12, True),
            ("web.svc.cluster.local", 2, 500, 502, False),
        ],
    )
    now[0] = 2000
    p.pump()
    assert marks_of(sink) == {
        "web.default.svc.cluster.local": (True, "web", "NOERROR"),
        "web.svc.cluster.local": (False, None, "NXDOMAIN"),
    }


def test_name_of_ndots_dots_that_is_also_a_first_expansion() -> None:
    """With ndots:2, "web.default.svc.cluster.local" is both "web"'s first expansion and a
    name asked as is before its own search list: its next query says which lookup it was."""
    now = [0]
    conf = SearchConfig(K8S_DEFAULT.search, 2)
    p, src, sink = pipeline(search=SearchTracker(lambda _c: conf, hold_s=1.0), now_ms=now)
    asked = "web.default.svc.cluster.local"
    client_flow(
        src, [(asked, 1, 10, 12, False), (f"{asked}.default.svc.cluster.local", 2, 13, 15, True)]
    )
    now[0] = 2000
    p.pump()
    assert marks_of(sink) == {
        asked: (False, None, "NXDOMAIN"),
        f"{asked}.default.svc.cluster.local": (True, asked, "NOERROR"),
    }


def test_held_result_at_shutdown_is_emitted_with_the_mark_unknown() -> None:
    now = [0]
    p, src, sink = pipeline(search=SearchTracker(lambda _c: K8S_DEFAULT), now_ms=now)
    client_flow(src, [("nope.default.svc.cluster.local", 1, 10, 12, False)])
    now[0] = 20
    p.shutdown()
    assert marks_of(sink) == {"nope.default.svc.cluster.local": (None, None, "NXDOMAIN")}
    assert p.counters()["dns_search_unsettled"] == 1 and src.detached

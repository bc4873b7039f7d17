"""The C DNS path (collector/dns/_native.c) against its spec, the Python path: the same
hostile input through both, the same records (decoded field by field) and the same counters.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st

from collector.dns import _native, abi
from collector.dns.native import NativeMatcher, native_available
from collector.dns.parser import DnsParseError, Message, parse
from collector.dns.pipeline import DnsPipeline
from collector.dns.privacy import NamePrivacy
from collector.dns.search import SearchConfig, SearchTracker
from collector.kernel.ringbuf import RecordBatch
from collector.node.attribution import CgroupResolver
from flowscope.codec import JsonCodec
from flowscope.kafka import ProducerCounters
from flowscope.records import RawDnsQuery
from simnode.dns.wire import build_query, build_response, encode_name, parse_query

CODEC = JsonCodec(RawDnsQuery)
MS = 1_000_000
PATHS = {
    1: "/",
    11: "/kubepods/besteffort/pod0f7a2a1e-9d0c-4c55-8f59-6f2b1f0c1a11/" + "ab" * 32,
    22: "/kubepods/podsrv/c",
    33: '/odd "path"\\x',
}
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_the_extension_is_built() -> None:
    # The pipeline falls back to Python silently; the build must not.
    assert native_available() and _native.EVENT_SIZE == abi.EVENT_SIZE


# -- the parser ---------------------------------------------------------------------------


def _python_view(data: bytes, clipped: bool) -> tuple[Any, ...]:
    try:
        m = parse(data, clipped)
    except DnsParseError as exc:
        h = tuple(exc.header) if exc.header is not None else None
        return (exc.reason, h, None, None, None, None)
    q = tuple(m.question) if m.question is not None else None
    return (None, tuple(m.header), q, m.rcode, m.answer_addrs, m.complete)


def _c_view(data: bytes, clipped: bool) -> tuple[Any, ...]:
    reason, header, question, rcode, offsets, complete = _native.parse(data, clipped)
    if reason is not None:
        return (reason, header, None, None, None, None)
    addrs = tuple(str(ipaddress.ip_address(data[off : off + n])) for off, n in offsets)
    return (None, header, question, rcode, addrs, complete)


def _same_parse(data: bytes) -> None:
    for clipped in (False, True):
        assert _c_view(data, clipped) == _python_view(data, clipped), (data, clipped)


labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789-_", min_size=1, max_size=20)
names = st.lists(labels, min_size=1, max_size=6).map(".".join)
odd_labels = st.binary(min_size=1, max_size=63).map(lambda b: bytes([len(b)]) + b)
# v4-mapped and v4-compatible: glibc and Python's ipaddress print them differently
ODD_V6 = ["::ffff:1.2.3.4", "::2:3", "::", "::1", "::ffff:0:1"]
addr_text = st.one_of(
    st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str), st.sampled_from(ODD_V6)
)


def header(
    txid: int = 0x1234, flags: int = 0x8180, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0
) -> bytes:
    return struct.pack("!HHHHHH", txid, flags, qd, an, ns, ar)


def answer_record(addr: str) -> bytes:
    ip = ipaddress.ip_address(addr)
    rtype = 1 if ip.version == 4 else 28
    return b"\xc0\x0c" + struct.pack("!HHIH", rtype, 1, 60, len(ip.packed)) + ip.packed


def response_with(name: str, addrs: list[str], extra: bytes = b"", ar: int = 0) -> bytes:
    body = header(an=len(addrs), ar=ar) + encode_name(name) + struct.pack("!HH", 1, 1)
    return body + b"".join(answer_record(a) for a in addrs) + extra


@FUZZ
@given(st.binary(max_size=600))
def test_parse_random_bytes(data: bytes) -> None:
    _same_parse(data)


@FUZZ
@given(
    names,
    st.lists(addr_text, max_size=6),
    st.lists(st.tuples(st.integers(0, 700), st.integers(0, 255)), max_size=6),
    st.integers(0, 700),
)
def test_parse_mutated_and_cut_responses(
    name: str, addrs: list[str], flips: list[tuple[int, int]], cut: int
) -> None:
    """A and AAAA answers (v4-mapped and v4-compatible included), bytes flipped, cut short."""
    data = bytearray(response_with(name, addrs))
    for position, value in flips:
        data[position % len(data)] = value
    _same_parse(bytes(data))
    _same_parse(bytes(data[:cut]))


@FUZZ
@given(
    st.lists(
        st.one_of(
            st.binary(min_size=1, max_size=1).map(lambda b: bytes([b[0] | 0xC0]) + b"\x0c"),
            st.integers(0, 0x3FFF).map(lambda p: struct.pack("!H", 0xC000 | p)),
            labels.map(lambda s: bytes([len(s)]) + s.encode()),
            odd_labels,
            st.sampled_from([b"\x00", b"\x40", b"\x80a", b"\x00\x05\x00\x01", b"\x00\x01\x00\x01"]),
        ),
        max_size=40,
    ),
    st.integers(0, 5),
    st.integers(0, 5),
    st.integers(0, 2),
)
def test_parse_hostile_name_soup(parts: list[bytes], qd: int, an: int, ar: int) -> None:
    """Pointers anywhere (loops, forward jumps), odd label bytes, reserved label types."""
    _same_parse(header(qd=qd, an=an, ar=ar) + b"".join(parts))


def test_parse_refusals_name_their_reason() -> None:
    loop = header() + b"\xc0\x0c\x00\x01\x00\x01"  # a name pointing at itself
    forward = header() + b"\xc0\x20\x00\x01\x00\x01"
    for data, reason in (
        (loop, "bad_pointer"),
        (forward, "bad_pointer"),
        (response_with("a.b", ["10.0.0.1"])[:-2], "truncated"),
        (response_with("a.b", []) + b"x", "trailing_bytes"),
    ):
        assert _native.parse(data, False)[0] == reason == _python_view(data, False)[0]
    # EDNS extended rcode (BADVERS), CNAME then AAAA
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 1 << 24, 0)
    _same_parse(response_with("x.test", ["::1"], opt, ar=1))
    cname = b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 60, 4) + b"\x01b\xc0\x0e"
    _same_parse(header(an=1) + encode_name("a.test") + struct.pack("!HH", 28, 1) + cname)


@FUZZ
@given(
    names,
    st.lists(addr_text, min_size=1, max_size=4),
    st.integers(0, 3),
    st.sampled_from(["itself", "ahead", "past the end", "past the buffer"]),
    st.booleans(),
)
def test_a_pointer_that_loops_or_leaves_the_message_is_refused(
    name: str, addrs: list[str], which: int, target: str, clipped: bool
) -> None:
    """Refused, not merely survived: one A or AAAA answer's owner pointing at itself, ahead
    of itself, past the message's end or past what a pointer can reach is a bad_pointer in
    both parsers, whatever else the message holds."""
    data = bytearray(response_with(name, addrs))
    at = 12 + len(encode_name(name)) + 4
    for addr in addrs[: which % len(addrs)]:
        at += len(answer_record(addr))
    pointer = {
        "itself": at,
        "ahead": at + 2,
        "past the end": len(data) + 1,
        "past the buffer": 0x3FFF,
    }[target]
    struct.pack_into("!H", data, at, 0xC000 | pointer)
    for view in (_python_view, _c_view):
        assert view(bytes(data), clipped)[0] == "bad_pointer", (view.__name__, target)
    hypothesis_event(f"{target}, answer {which % len(addrs)} of {len(addrs)}")


# -- the whole path -----------------------------------------------------------------------


class ListSink:
    def __init__(self) -> None:
        self.counters = ProducerCounters()
        self.messages: list[tuple[str, bytes, str]] = []

    def produce(self, topic: str, value: bytes | None, key: bytes | str | None = None) -> bool:
        assert value is not None and isinstance(key, str)
        self.messages.append((topic, value, key))
        return True


class ListSource:
    def __init__(self) -> None:
        self.batches: list[RecordBatch] = []

    def read(self, max_records: int = 1 << 30) -> RecordBatch:
        return self.batches.pop(0) if self.batches else RecordBatch(b"", [])

    def kernel_counters(self) -> dict[str, int]:
        return {}

    def detach(self) -> None:
        pass


class FakeNat:
    """The pipeline's view of NatResolver: Service range 10.96.0.0/16, DNAT to .53 pods."""

    def in_service(self, address: str) -> bool:
        return address.startswith("10.96.")

    def resolve_tuple(
        self,
        family: int,
        local_addr: str,
        remote_addr: str,
        local_port: int,
        remote_port: int,
        proto: int,
    ) -> tuple[str, int] | None:
        if remote_addr.endswith(".7"):
            return None
        return ("10.244.9." + remote_addr.rsplit(".", 1)[1], remote_port)


def _raw(addr: str) -> bytes:
    packed = ipaddress.ip_address(addr).packed
    return packed + bytes(16 - len(packed))


def event(
    t_ms: int,
    cgroup: int,
    egress: bool,
    src: tuple[str, int],
    dst: tuple[str, int],
    payload: bytes,
    proto: int,
    peer: tuple[str, int] | None,
    payload_len: int | None,
) -> bytes:
    family = abi.AF_INET6 if ":" in src[0] else abi.AF_INET
    captured = payload[: abi.PAYLOAD_MAX]
    return abi.EVENT.pack(
        t_ms * MS,
        cgroup,
        _raw(src[0]),
        _raw(dst[0]),
        _raw(peer[0]) if peer else bytes(16),
        max(payload_len or 0, len(captured)),
        len(captured),
        src[1],
        dst[1],
        peer[1] if peer else 0,
        family,
        abi.DIR_EGRESS if egress else abi.DIR_INGRESS,
        proto,
        captured,
    )


Run = tuple[DnsPipeline, ListSource, ListSink, list[int]]
SEARCH = SearchConfig(("ns.svc.cluster.local", "svc.cluster.local"), 5)


def pipelines(privacy: str, search: bool, nat: bool, hold_s: float = 5.0) -> list[Run]:
    out = []
    for native in (False, True):
        clock = [0]
        src, sink = ListSource(), ListSink()
        resolver = CgroupResolver(Path("/nonexistent"), walk=lambda _r: PATHS)
        tracker = None
        if search:
            tracker = SearchTracker(lambda c: SEARCH if c != 22 else None, hold_s=hold_s)
        p = DnsPipeline(
            src,
            sink,
            resolver,
            'node "1"',
            "t",
            NamePrivacy(privacy, b"k"),  # type: ignore[arg-type]
            timeout_s=1.0,
            search=tracker,
            clock_ns=lambda c=clock: c[0] * MS,
            nat=FakeNat() if nat else None,
            native=native,
        )  # type: ignore[arg-type]
        p._offset = 1_700_000_000 * 10**9  # the same wall clock for both
        out.append((p, src, sink, clock))
    return out


CLIENTS = [("10.244.0.2", 40001), ("10.244.0.2", 40002), ("fd00::2", 40001)]
SERVERS = [("10.244.0.3", 53), ("10.96.0.10", 53), ("10.96.0.7", 53), ("fd00::3", 53)]
NAMES = [
    "web.ns.svc.cluster.local",
    "WEB.ns.svc.cluster.local",
    "web.svc.cluster.local",
    "web",
    "a.b.c.d.e.f",
    "x\\.y",
    "ex.com.",
]


@st.composite
def exchanges(
    draw: st.DrawFn, names: tuple[str, ...] = tuple(NAMES), whole: bool = False
) -> list[bytes]:
    """Some of the four packets of one exchange (client egress, server ingress, server
    egress, client ingress), in order or not, repeated or not, each possibly hostile.
    ``whole``: the four in order, the response well formed."""
    client = draw(st.sampled_from(CLIENTS))
    v6 = ":" in client[0]
    server = draw(st.sampled_from([s for s in SERVERS if (":" in s[0]) == v6]))
    name = draw(st.sampled_from(names))
    txid = draw(st.integers(0, 3))
    qtype = draw(st.sampled_from([1, 28, 65]))
    try:
        q = build_query(txid, name, qtype)
    except ValueError:
        q = header(txid, 0x0100) + b"\x01x\x00\x00\x01\x00\x01"
    kinds = (
        ["answer", "cname"]
        if whole
        else ["answer", "answer", "cname", "garbage", "mutated", "big", "other"]
    )
    kind = draw(st.sampled_from(kinds))
    if kind == "big":
        r = response_with("big.test", ["10.0.0.1"] * 40)  # clipped at 512
        r = struct.pack("!H", txid) + r[2:]
    elif kind == "other":
        r = build_response(
            build_query(txid, "other.test"), parse_query(build_query(txid, "other.test")), 0, []
        )
    elif kind == "garbage":
        r = draw(st.binary(max_size=40))
    elif kind == "cname":
        r = build_response(q, parse_query(q), 0, [])
        rrs = cname_records(draw, parse_query(q).name)
        addrs = draw(st.lists(addr_text, max_size=2))
        r = r[:6] + struct.pack("!H", len(rrs) + len(addrs)) + r[8:] + b"".join(rrs)
        r += b"".join(answer_record(a) for a in addrs)
    else:
        addrs = draw(st.lists(addr_text, max_size=3))
        r = build_response(q, parse_query(q), draw(st.sampled_from([0, 3, 2])), [])
        r = r[:6] + struct.pack("!H", len(addrs)) + r[8:]
        r += b"".join(answer_record(a) for a in addrs)
        if kind == "mutated":
            data = bytearray(r)
            flips = st.lists(st.tuples(st.integers(0, 100), st.integers(0, 255)), max_size=3)
            for position, value in draw(flips):
                data[position % len(data)] = value
            r = bytes(data)
    proto = draw(st.sampled_from([abi.IPPROTO_UDP, abi.IPPROTO_UDP, abi.IPPROTO_TCP]))

    def framed(payload: bytes) -> bytes:
        if proto != abi.IPPROTO_TCP:
            return payload
        one = struct.pack("!H", len(payload)) + payload
        framing = draw(st.sampled_from(["one", "one", "two", "bad", "cut"]))
        return {"one": one, "two": one + one, "bad": payload, "cut": one[: max(3, len(one) // 2)]}[
            framing
        ]

    t0 = draw(st.integers(0, 3000))
    t1 = t0 + draw(st.integers(0, 1500))
    peer = (server if draw(st.booleans()) else None, None)
    server_cg = draw(st.sampled_from([22, 33]))
    full = [
        (t0, 11, True, client, server, framed(q), peer[0]),
        (t0, server_cg, False, client, server, framed(q), None),
        (t1, server_cg, True, server, client, framed(r), None),
        (t1, 11, False, server, client, framed(r), None),
    ]
    picked = (
        [0, 1, 2, 3]
        if whole
        else draw(
            st.lists(st.sampled_from(range(4)), min_size=1, max_size=6).map(sorted)
            | st.just([0, 1, 2, 3])
            | st.permutations(range(4))
        )
    )
    length = draw(st.sampled_from([None, None, 600]))
    return [
        event(t, cg, eg, src, dst, payload, proto, pr, length)
        for t, cg, eg, src, dst, payload, pr in (full[i] for i in picked)
    ]


def cname_records(draw: st.DrawFn, name: str) -> list[bytes]:
    """A CNAME chain from ``name`` (links in any order, any case, possibly a loop or a
    dangling link), uncompressed."""
    targets = draw(
        st.lists(
            st.sampled_from(["c1.cdn.test", "C2.cdn.test", "c3.Edge.test", name.upper()]),
            max_size=4,
        )
    )
    owners = [name, *targets][: len(targets)]
    if draw(st.booleans()):
        owners = [o.swapcase() for o in owners]
    links = list(zip(owners, targets, strict=True))
    if draw(st.booleans()):
        links.append(("elsewhere.test", "c1.cdn.test"))
    records = []
    for owner, target in draw(st.permutations(links)):
        rdata = encode_name(target)
        records.append(encode_name(owner) + struct.pack("!HHIH", 5, 1, 60, len(rdata)) + rdata)
    return records


@st.composite
def lookups(draw: st.DrawFn) -> list[bytes]:
    """A resolver's search: the candidates of one short name in glibc's order, cut anywhere
    (the exchanges still drawn as above), so that failed opening queries are held."""
    base = draw(st.sampled_from(["web", "Nope"]))
    candidates = [f"{base}.{domain}" for domain in SEARCH.search] + [base]
    cut = draw(st.integers(1, len(candidates)))
    return [
        p
        for name in candidates[:cut]
        for p in draw(exchanges(names=(name,), whole=draw(st.booleans())))
    ]


def _records(sink: ListSink) -> list[tuple[str, RawDnsQuery]]:
    return [(k, CODEC.decode(v)) for _, v, k in sink.messages]


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.lists(exchanges() | lookups(), max_size=6).map(lambda x: [p for e in x for p in e]),
        max_size=5,
    ),
    st.sampled_from(["plain", "hash", "drop"]),
    st.booleans(),
    st.booleans(),
    st.lists(st.integers(0, 1500), min_size=5, max_size=5),
    st.sampled_from([0.5, 5.0, 60.0]),
)
def test_same_records_and_counters_as_the_python_path(
    batches: list[list[bytes]],
    privacy: str,
    search: bool,
    nat: bool,
    steps: list[int],
    hold_s: float,
) -> None:
    """With search marking, some client results are held: released as confirmed or as the
    asked name by pump, and at shutdown with the mark unknown (hold_s 60: all of them)."""
    both = pipelines(privacy, search, nat, hold_s)
    for p, src, _sink, clock in both:
        for i, records in enumerate(batches):
            spans, pos = [], 0
            for r in records:
                spans.append((pos, len(r)))
                pos += len(r)
            src.batches.append(RecordBatch(b"".join(records), spans))
            clock[0] += steps[i]
            p.pump()
        clock[0] += 5000
        p.pump()
        p.shutdown()
    (py, _, py_sink, _), (c, _, c_sink, _) = both
    assert _records(c_sink) == _records(py_sink)
    assert c.counters() == py.counters()
    for _key, record in _records(c_sink):
        hypothesis_event(f"{record.outcome} {record.role}")
        if record.answer_cnames:
            hypothesis_event(f"CNAME chain of {len(record.answer_cnames)}")
    for name in ("held", "not_continued", "unsettled"):
        if py.counters().get(f"dns_search_{name}"):
            hypothesis_event(f"search {name}")
    assert len(c.matcher) == len(py.matcher) == 0


@FUZZ
@given(
    st.lists(exchanges(), min_size=1, max_size=4).map(lambda x: [p for e in x for p in e]),
    st.integers(-2, 2),
)
def test_timeouts_fall_on_the_same_tick_as_python(records: list[bytes], delta_ms: int) -> None:
    """Expiry at, just before and just after a query's deadline (timeout 1 s, expiry margin
    50 ms): the boundary must be the same in both paths."""
    first_ms = min(abi.EVENT.unpack_from(r)[0] for r in records) // MS
    outs = []
    for p, src, sink, clock in pipelines("plain", False, False):
        src.batches.append(RecordBatch(b"".join(records), _spans(records)))
        p.pump()
        clock[0] = first_ms + 1000 + 50 + delta_ms
        p.pump()
        outs.append((_records(sink), p.counters(), len(p.matcher)))
    assert outs[0] == outs[1]
    hypothesis_event(f"delta {delta_ms}: {len(outs[0][0])} records")


def _spans(records: list[bytes]) -> list[tuple[int, int]]:
    spans, pos = [], 0
    for r in records:
        spans.append((pos, len(r)))
        pos += len(r)
    return spans


def test_ring_layout_discards_and_bad_sizes_are_counted() -> None:
    """Spans walked from the ring's own headers (as the reader hands batches over)."""
    q = build_query(1, "x.test")
    good = event(0, 11, True, CLIENTS[0], SERVERS[0], q, abi.IPPROTO_UDP, None, None)

    def rec(body: bytes, flags: int = 0) -> bytes:
        pad = (-len(body)) % 8
        return struct.pack("<II", len(body) | flags, 0) + body + bytes(pad)

    data = rec(good) + rec(good, 1 << 30) + rec(b"short") + rec(good)
    for native in (False, True):
        src, sink = ListSource(), ListSink()
        resolver = CgroupResolver(Path("/nonexistent"), walk=lambda _r: PATHS)
        p = DnsPipeline(src, sink, resolver, "n", "t", NamePrivacy(), native=native)
        src.batches.append(RecordBatch(data, None, discarded=1))
        p.pump()
        counters = p.counters()
        assert (counters["dns_packets"], counters["dns_decode_errors"]) == (2, 1)
        assert counters["dns_retransmissions"] == 1 and p.decode_stats.discarded == 1


def test_mark_and_v6_callbacks_see_what_python_sees() -> None:
    seen: list[tuple[int, int, str, int]] = []

    class Tracker(SearchTracker):
        def mark(self, cgroup_id: int, qtype: int, name: str, now_ns: int) -> Any:
            seen.append((cgroup_id, qtype, name, now_ns))
            return super().mark(cgroup_id, qtype, name, now_ns)

    tracker = Tracker(lambda _c: SearchConfig(("ns.svc.cluster.local",), 5))
    resolver = CgroupResolver(Path("/nonexistent"), walk=lambda _r: PATHS)
    m = NativeMatcher(resolver, "n", NamePrivacy(), 1.0, tracker, None)
    q = build_query(9, "Web.ns.svc.cluster.local", 28)
    r = response_with("Web.ns.svc.cluster.local", ["::ffff:1.2.3.4", "2001:db8::1"])
    r = r[:2] + struct.pack("!H", 0x8180) + r[4:]
    r = (
        r[:12]
        + encode_name("Web.ns.svc.cluster.local")
        + struct.pack("!HH", 28, 1)
        + r[12 + len(encode_name("Web.ns.svc.cluster.local")) + 4 :]
    )
    r = struct.pack("!H", 9) + r[2:]
    evs = [
        event(
            5,
            11,
            True,
            ("fd00::2", 1000),
            ("fd00::3", 53),
            q,
            abi.IPPROTO_UDP,
            ("::ffff:10.96.0.10", 53),
            None,
        ),
        event(6, 11, False, ("fd00::3", 53), ("fd00::2", 1000), r, abi.IPPROTO_UDP, None, None),
    ]
    spans = [(0, len(evs[0])), (len(evs[0]), len(evs[1]))]
    ((key, value),) = m.process(RecordBatch(b"".join(evs), spans), 0)
    rec = CODEC.decode(value)
    assert seen == [(11, 28, "Web.ns.svc.cluster.local", 5 * MS)]
    assert rec.search_expansion is True and rec.asked_name == "web"
    assert rec.answer_addrs == [str(ipaddress.IPv6Address("::ffff:1.2.3.4")), "2001:db8::1"]
    assert rec.original_remote_addr == "10.96.0.10" and rec.local_addr == "fd00::2"
    assert rec.query_name == "Web.ns.svc.cluster.local" and rec.latency_us == 1000
    assert key == "0f7a2a1e-9d0c-4c55-8f59-6f2b1f0c1a11"
    assert socket.inet_pton(socket.AF_INET6, rec.remote_addr)  # a valid address


def test_required_native_is_refused_when_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    from collector.dns import native

    monkeypatch.setattr(native, "_native", None)
    resolver = CgroupResolver(Path("/nonexistent"), walk=lambda _r: PATHS)
    with pytest.raises(ImportError, match="make native"):
        DnsPipeline(ListSource(), ListSink(), resolver, "n", "t", NamePrivacy(), native=True)
    p = DnsPipeline(ListSource(), ListSink(), resolver, "n", "t", NamePrivacy())
    assert not isinstance(p.matcher, NativeMatcher)  # the Python path, not a crash


def test_search_marking_runs_the_compiled_path() -> None:
    """Search marking holds results; the compiled path holds its encoded records for it, so
    it is the default with marking on too (the production setting)."""
    resolver = CgroupResolver(Path("/nonexistent"), walk=lambda _r: PATHS)
    for native in (True, None):
        tracker = SearchTracker(lambda _c: SEARCH)
        p = DnsPipeline(
            ListSource(),
            ListSink(),
            resolver,
            "n",
            "t",
            NamePrivacy(),
            search=tracker,
            native=native,
        )
        assert isinstance(p.matcher, NativeMatcher)
    p = DnsPipeline(
        ListSource(), ListSink(), resolver, "n", "t", NamePrivacy(), search=tracker, native=False
    )
    assert not isinstance(p.matcher, NativeMatcher)
    _ = Message  # the Python parser's type stays the reference


# -- queries matched in the kernel: one pair event per answered query ------------------------


def pair_event(query: bytes, response: bytes, attempts: int, length: int | None = None) -> bytes:
    """The kernel's dns_pair_event for ``query`` and ``response`` (two dns_events as
    :func:`event` builds them): the response's event, then the query's side."""
    ts, _cg, saddr, daddr, peer, _plen, captured, sport, dport, peer_port, *_rest, body = (
        abi.EVENT.unpack(query)
    )
    side = abi.QUERY_SIDE.pack(
        ts,
        saddr,
        daddr,
        peer,
        0,
        captured if length is None else length,
        attempts,
        sport,
        dport,
        peer_port,
        body[: abi.QUERY_MAX],
    )
    return response + side


@st.composite
def udp_pairs(draw: st.DrawFn, hostile: bool) -> tuple[bytes, list[bytes]]:
    """(a pair event, the packets it stands for) for one end of a UDP exchange; ``hostile``:
    its lengths, attempts or bytes may be anything."""
    client = draw(st.sampled_from(CLIENTS))
    v6 = ":" in client[0]
    server = draw(st.sampled_from([s for s in SERVERS if (":" in s[0]) == v6]))
    txid = draw(st.integers(0, 3))
    q = build_query(txid, draw(st.sampled_from(NAMES[:4])), draw(st.sampled_from([1, 28])))
    addrs = draw(st.lists(addr_text, max_size=3))
    r = build_response(q, parse_query(q), draw(st.sampled_from([0, 3, 2])), [])
    r = r[:6] + struct.pack("!H", len(addrs)) + r[8:] + b"".join(answer_record(a) for a in addrs)
    t0 = draw(st.integers(0, 3000))
    t1 = t0 + draw(st.integers(0, 1500))
    udp = abi.IPPROTO_UDP
    if draw(st.booleans()):  # the client's end
        peer = server if draw(st.booleans()) else None
        qe = event(t0, 11, True, client, server, q, udp, peer, None)
        re = event(t1, 11, False, server, client, r, udp, None, None)
    else:
        cg = draw(st.sampled_from([22, 33]))
        qe = event(t0, cg, False, client, server, q, udp, None, None)
        re = event(t1, cg, True, server, client, r, udp, None, None)
    attempts = draw(st.integers(1, 3))
    length = None
    if hostile:
        attempts = draw(st.sampled_from([0, 1, 2, abi.MAX_ATTEMPTS, abi.MAX_ATTEMPTS + 1]))
        length = draw(st.sampled_from([None, 0, 11, 12, abi.QUERY_MAX, abi.QUERY_MAX + 1]))
    pair = pair_event(qe, re, attempts, length)
    if hostile:
        data = bytearray(pair)
        flips = st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)), max_size=3)
        for position, value in draw(flips):
            data[position] = value
        pair = bytes(data)
    return pair, [qe] * attempts + [re]


def _run(run: Run, records: list[bytes]) -> None:
    p, src, _sink, clock = run
    src.batches.append(RecordBatch(b"".join(records), _spans(records)))
    p.pump()
    clock[0] += 5000
    p.pump()
    p.shutdown()


PAIRS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PAIRS
@given(st.lists(udp_pairs(hostile=True), min_size=1, max_size=4), st.booleans())
def test_hostile_pair_events_give_the_same_records_in_c_and_python(
    pairs: list[tuple[bytes, list[bytes]]], search: bool
) -> None:
    """Lengths past the query buffer, attempts of 0 or past the bound, flipped bytes: both
    paths refuse or accept the same events and give the same records and counters."""
    both = pipelines("plain", search, False)
    for run in both:
        _run(run, [pair for pair, _packets in pairs])
    (py, _, py_sink, _), (c, _, c_sink, _) = both
    assert _records(c_sink) == _records(py_sink)
    assert c.counters() == py.counters()
    hypothesis_event(f"decode errors {py.counters()['dns_decode_errors']}")


@PAIRS
@given(st.lists(udp_pairs(hostile=False), min_size=1, max_size=4), st.booleans(), st.booleans())
def test_a_pair_event_gives_the_records_of_the_packets_it_stands_for(
    pairs: list[tuple[bytes, list[bytes]]], search: bool, native: bool
) -> None:
    """The kernel's matching changes how the packets travel, not what they say: the same
    records as the query (once per attempt) and the response sent one event each."""
    index = 1 if native else 0
    as_pairs = pipelines("plain", search, False)[index]
    as_packets = pipelines("plain", search, False)[index]
    _run(as_pairs, [pair for pair, _packets in pairs])
    _run(as_packets, [p for _pair, packets in pairs for p in packets])
    assert _records(as_pairs[2]) == _records(as_packets[2])
    assert as_pairs[0].counters()["dns_decode_errors"] == 0
    hypothesis_event(f"{len(_records(as_pairs[2]))} records")

"""Property: collector/tcp/_encode.c writes the reference's bytes (events.Decoder, then
record.build_record and msgspec, in collector/tcp/messages.py:PythonMessages) for any batch of
struct tcpconn_event records: every outcome, IPv4, IPv6 and v4-mapped addresses, Service NAT,
hostile comm bytes (not UTF-8, quotes, control characters), hostile node names and cgroup
paths (quotes, backslashes, control characters, very long, not UTF-8), times at the edges
of 64 bits, and every batching bound."""

from __future__ import annotations

import ipaddress
import os
import socket
import string
import struct
from pathlib import Path
from typing import get_args

from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st
from tcpconn_event_builder import CEvent, batch
from test_collector_outcome_nat import FakeTable

from collector.kernel.ringbuf import RecordBatch
from collector.node.attribution import CgroupResolver
from collector.node.nat import NatResolver, NetnsIndex, parse_cidrs
from collector.tcp import events
from collector.tcp.events import DecodeStats
from collector.tcp.messages import MessageEncoder, NativeMessages, PythonMessages
from flowscope.codec import JsonCodec
from flowscope.records import Outcome, RawTcpConnection

CODEC = JsonCodec(RawTcpConnection)
PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
UID = "0b7c2d4e-1111-4222-8333-444455556666"
U64 = 2**64 - 1

hostile_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet='"\\\x00\x01\x1f\x7f\u2028\u00e9\U0001f600/ab', max_size=40),
    st.text(min_size=2000, max_size=6000, alphabet='ab"\\\n/'),
)
# Directory names that are not UTF-8 reach Python as surrogate escapes.
unencodable = st.binary(max_size=8).map(lambda b: os.fsdecode(b"/x" + b + b"\xff"))
cgroup_paths = st.one_of(
    st.just("/"),
    hostile_text.map(lambda t: "/system.slice/" + t),
    st.builds(lambda c: f"/kubepods/burstable/pod{UID}/{c}", st.sampled_from(["c" * 64, "x"])),
    hostile_text.map(lambda t: f"/kubepods/pod{UID}/cri-containerd-{'d' * 64}.scope/{t}"),
)
CGROUP_IDS = [1, 500, 501, 502, 503, 9999]  # 9999: not in the tree

v4 = st.ip_addresses(v=4).map(lambda a: a.packed + bytes(12))
v6 = st.ip_addresses(v=6).map(lambda a: a.packed)
mapped = st.ip_addresses(v=4).map(lambda a: bytes(10) + b"\xff\xff" + a.packed)
# Off the v4-mapped prefix by a byte: plain IPv6, printed as such.
near_mapped = st.tuples(
    st.sampled_from([b"\xff", b"\x00", b"\x01"]), st.binary(min_size=5, max_size=5)
).map(lambda t: bytes(10) + t[0] + t[1])
service_v4 = st.integers(0, 2**20 - 1).map(
    lambda n: (ipaddress.IPv4Address("10.96.0.0") + n).packed + bytes(12)
)
service_v6 = st.integers(0, 2**20).map(lambda n: (ipaddress.IPv6Address("fd00:96::") + n).packed)
service_mapped = service_v4.map(lambda a: bytes(10) + b"\xff\xff" + a[:4])
SK_ERRS = [0, 0, 0, 32, 101, 103, 104, 110, 111, 112, 113, 22]
comm_bytes = st.one_of(
    st.sampled_from([b"curl", b"nginx", b"worker-1", b""]),
    st.binary(max_size=16),
    # all 16 bytes used, no NUL: the decoder must stop at the field's end
    st.text(alphabet=string.ascii_letters + "-_.", min_size=16, max_size=16).map(str.encode),
    st.text(alphabet='"\\\x01\x1f\u00e9a', max_size=5).map(lambda t: t.encode()[:16]),
)
times = st.one_of(st.integers(0, 2**62), st.sampled_from([0, 1, U64, U64 - 1, 2**63]))


@st.composite
def records(draw: st.DrawFn) -> bytes:
    family = draw(st.sampled_from([socket.AF_INET, socket.AF_INET6, socket.AF_INET6, 0, 99]))
    if family == socket.AF_INET:
        saddr, daddr = draw(v4), draw(st.one_of(v4, service_v4))
    else:
        saddr = draw(st.one_of(v6, mapped, near_mapped))
        daddr = draw(st.one_of(v6, mapped, near_mapped, service_v6, service_mapped))
    ev = CEvent()
    ev.start_ns = draw(times)
    ev.end_ns = draw(times)
    ev.cgroup_id = draw(st.sampled_from(CGROUP_IDS))
    for name in ("bytes_sent", "bytes_received", "retrans_bytes"):
        setattr(ev, name, draw(st.integers(0, U64)))
    for name in (
        "connect_us",
        "srtt_us",
        "min_rtt_us",
        "retrans_segs",
        "segs_in",
        "segs_out",
        "pid",
        "seq",
    ):
        setattr(ev, name, draw(st.integers(0, 2**32 - 1)))
    ev.netns_ino = draw(st.sampled_from([1, 77, 5]))
    ev.flags = draw(st.integers(0, 31))
    ev.sk_err = draw(st.one_of(st.sampled_from(SK_ERRS), st.integers(-(2**31), 2**31 - 1)))
    ev.sport, ev.dport = draw(st.integers(0, 65535)), draw(st.integers(0, 65535))
    ev.family = family
    ev.role = draw(st.sampled_from([0, 1, 1, 2, 7]))
    ev.oldstate = draw(st.one_of(st.integers(0, 13), st.integers(0, 255)))
    ev.kind = draw(st.sampled_from([0, 0, 1, 5]))
    ev.syn_retries = draw(st.sampled_from([0, 0, 1, 2, 255]))
    ev.comm = draw(comm_bytes)
    raw = bytearray(bytes(ev))
    raw[CEvent.saddr.offset : CEvent.saddr.offset + 16] = saddr
    raw[CEvent.daddr.offset : CEvent.daddr.offset + 16] = daddr
    return bytes(raw)


def _run(
    kind: type[MessageEncoder],
    batches: list[RecordBatch],
    tree: dict[int, str],
    node: str,
    batch_records: int,
    batch_bytes: int,
    offset: int,
) -> object:
    """Messages and every counter, or the exception both tiers must raise alike."""
    resolver = CgroupResolver(Path("/cg"), walk=lambda _root: dict(tree), min_walk_interval_s=0.0)
    resolver.refresh()
    nat = NatResolver(
        parse_cidrs("10.96.0.0/12,fd00:96::/108"),
        NetnsIndex(scan=lambda: {77: "/run/netns/pod-a"}),
        open_table=lambda _path: FakeTable(("10.244.1.7", 8080)),
        own_netns_inode=1,
    )
    enc = kind(resolver, node, nat, batch_records, batch_bytes)  # type: ignore[call-arg]
    stats = DecodeStats()
    try:
        out = [enc.encode(b, offset, stats) for b in batches]
    except Exception as exc:  # the same exception from both tiers is the same behaviour
        return type(exc)
    return out, stats, enc.stats, resolver.stats, nat.stats


@PROPERTY
@given(
    st.lists(st.lists(records(), max_size=30), min_size=1, max_size=3),
    st.fixed_dictionaries({i: cgroup_paths for i in CGROUP_IDS[:-1]}),
    st.one_of(hostile_text, st.sampled_from(["node-1", 'node-"ü"'])),
    st.sampled_from([1, 3, 256]),
    st.sampled_from([1024, 5000, 256 << 10]),
    # The clock offset (wall minus monotonic ns) is an int64 for the C path.
    st.one_of(st.just(1_700_000_000_000_000_000), st.integers(0, 2**63 - 1)),
)
def test_c_encoder_writes_the_reference_bytes(
    raw_batches: list[list[bytes]],
    tree: dict[int, str],
    node: str,
    batch_records: int,
    batch_bytes: int,
    offset: int,
) -> None:
    batches = [batch(*b) for b in raw_batches]
    args = (batches, tree, node, batch_records, batch_bytes, offset)
    want = _run(PythonMessages, *args)
    got = _run(NativeMessages, *args)
    assert got == want
    if isinstance(want, tuple):
        for messages in want[0]:
            for _key, value, count in messages:
                for record in CODEC.decode_batch(value):
                    hypothesis_event(f"{record.outcome} v{record.family}")
                assert len(CODEC.decode_batch(value)) == count
    else:
        hypothesis_event(f"raises {want.__name__}")


@PROPERTY
@given(
    st.lists(records(), min_size=1, max_size=10),
    st.fixed_dictionaries({i: st.one_of(cgroup_paths, unencodable) for i in CGROUP_IDS[:-1]}),
)
def test_c_encoder_fails_like_the_reference_on_unencodable_paths(
    raws: list[bytes], tree: dict[int, str]
) -> None:
    args = ([batch(*raws)], tree, "n", 256, 256 << 10, 0)
    want = _run(PythonMessages, *args)
    assert _run(NativeMessages, *args) == want
    hypothesis_event("raises" if isinstance(want, type) else "encodes")


def test_the_strategies_reach_every_outcome() -> None:
    """The random records can make every outcome (else the property proves less than it says)."""

    def outcomes(raw: bytes) -> set[str]:
        return {e.outcome for e in events.decode_batch(batch(raw), 0, DecodeStats())}

    search = settings(max_examples=20_000, database=None, phases=[Phase.generate])
    for outcome in get_args(Outcome):
        found = find(records(), lambda raw, o=outcome: o in outcomes(raw), settings=search)
        assert outcome in outcomes(found)


def test_field_offsets_match_the_header_layout() -> None:
    """The builder the strategies use lays addresses where the C reads them."""
    assert struct.calcsize(events.EVENT_FORMAT) == len(bytes(CEvent())) == 152
    assert CEvent.saddr.offset == 48 and CEvent.daddr.offset == 64

"""The native message encoder (collector/tcp/_encode.c) against the Python reference: the same
messages, byte for byte, and the same counters, over every kind of record."""

from __future__ import annotations

import importlib.util
import logging
import random
import socket
import sys
from pathlib import Path

import pytest
from tcpconn_event_builder import batch, make
from test_collector_app import CID, UID
from test_collector_outcome_nat import FakeTable

from collector.kernel.ringbuf import RecordBatch
from collector.node.attribution import CgroupInfo, CgroupResolver
from collector.node.nat import NatResolver, NetnsIndex, parse_cidrs
from collector.tcp import events, messages
from collector.tcp.events import DecodeStats
from collector.tcp.messages import NativeMessages, PythonMessages, message_encoder
from flowscope.codec import JsonCodec
from flowscope.records import RawTcpConnection

CODEC = JsonCodec(RawTcpConnection)
OFFSET = 1_700_000_000_000_000_000
NODE = 'node-"ü"'  # escaped by msgspec on both paths


def test_the_native_encoder_is_built() -> None:
    if importlib.util.find_spec("collector.tcp._encode") is None:
        pytest.fail("collector.tcp._encode is not built: run `make native`")


TREE = {
    1: "/",
    500: f"/kubepods/burstable/pod{UID}/{CID}",
    501: f"/kubepods/burstable/pod{UID}",  # the pod's own cgroup: no container
    502: "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0b7c2d4e_2222_4222"
    "_8333_444455556666.slice/cri-containerd-" + "d" * 64 + ".scope",
    503: '/system.slice/odd"name\\.service',
}


def resolver() -> CgroupResolver:
    r = CgroupResolver(Path("/cg"), walk=lambda _root: dict(TREE), min_walk_interval_s=0.0)
    r.refresh()
    return r


def nat() -> NatResolver:
    return NatResolver(
        parse_cidrs("10.96.0.0/12,fd00:96::/108"),
        NetnsIndex(scan=lambda: {77: "/run/netns/pod-a"}),
        open_table=lambda _path: FakeTable(("10.244.1.7", 8080)),
        own_netns_inode=1,
    )


SERVER = events.ROLE_SERVER
# One of each kind of record the kernel sends, and the corners of each field.
VARIETY: list[dict[str, object]] = [
    {},
    {"cgroup_id": 500},
    {"cgroup_id": 501, "role": SERVER, "comm": b"nginx"},
    {"cgroup_id": 502, "role": 0},
    {"cgroup_id": 503, "role": 7},
    {"cgroup_id": 9999},  # unknown cgroup
    {"kind": events.KIND_INTERIM, "seq": 4, "oldstate": 1, "cgroup_id": 500},
    {"kind": events.KIND_INTERIM, "seq": 9, "oldstate": 1, "flags": 0},
    {"flags": 0, "oldstate": 2, "sk_err": 111, "syn_retries": 3},  # refused
    {"flags": 0, "oldstate": 2, "sk_err": 110, "syn_retries": 255},  # timed out
    {"flags": 0, "oldstate": 2, "connect_us": 0, "syn_retries": 0},  # cancelled
    {"flags": 0, "oldstate": 2, "syn_retries": 1},  # connect timeout
    {"flags": 0, "oldstate": 2, "syn_retries": 255},  # connect timeout
    {"oldstate": 1, "syn_retries": 2},  # retried SYNs, then established: reset locally
    {"oldstate": 5, "syn_retries": 1},  # retried SYNs, then established: closed
    {"flags": 0, "oldstate": 2, "sk_err": 113, "syn_retries": 2},  # unreachable
    {"flags": events.F_START_UNKNOWN, "start_ns": 0, "role": 0, "oldstate": 2, "syn_retries": 4},
    {"kind": events.KIND_INTERIM, "flags": 0, "oldstate": 2, "syn_retries": 3},
    {"flags": 0, "oldstate": 3, "role": SERVER},
    {"sk_err": 104},
    {"sk_err": 32},
    {"sk_err": 101},
    {"sk_err": 112},
    {"sk_err": 113},
    {"sk_err": 103},
    {"sk_err": 22},
    {"sk_err": -5},
    {"oldstate": 1},
    {"oldstate": 8},
    {"oldstate": 4},  # reset locally
    {"oldstate": 0},
    {"oldstate": 7},
    {"oldstate": 12},
    {"oldstate": 13},
    {"oldstate": 200},
    {"flags": events.F_START_UNKNOWN, "start_ns": 0, "role": 0, "oldstate": 8},
    {"flags": events.F_START_UNKNOWN, "start_ns": 0, "oldstate": 2},
    {"flags": events.F_START_UNKNOWN | events.F_ESTABLISHED, "oldstate": 3},
    {"start_ns": 0},
    {"role": SERVER, "connect_us": 55},
    {
        "bytes_sent": 2**64 - 1,
        "bytes_received": 0,
        "retrans_bytes": 2**63,
        "pid": 2**32 - 1,
        "seq": 2**32 - 1,
        "sport": 65535,
        "dport": 0,
        "segs_in": 2**32 - 1,
        "srtt_us": 0,
    },
    {"family": socket.AF_INET6, "saddr": "fd00::1", "daddr": "fd00::2", "cgroup_id": 500},
    {"family": socket.AF_INET6, "saddr": "::1", "daddr": "2001:db8:0:1:1:1:1:1"},
    {"family": socket.AF_INET6, "saddr": "fe80::1:0:0:2", "daddr": "::"},
    {"family": socket.AF_INET6, "saddr": "::ffff:10.0.0.1", "daddr": "::ffff:10.0.0.2"},
    {"family": socket.AF_INET6, "saddr": "::10.0.0.1", "daddr": "64:ff9b::10.0.0.2"},
    {"saddr": "0.0.0.0", "daddr": "255.255.255.255"},
    {"comm": b""},
    {"comm": b"a" * 16},
    {"comm": b'say "hi"\\'},
    {"comm": b"tab\there\n"},
    {"comm": b"\xc3\xa9t\xc3\xa9"},
    {"comm": b"bad\xff\xfeutf8"},
    {"comm": b"del\x7f"},
    {"comm": b"\x01\x1f"},
    {"comm": b"\xe2\x80\xa8ls"},
    # Services: NATed for clients (and unknown roles), never for servers.
    {"daddr": "10.96.0.10", "dport": 80, "netns_ino": 77},
    {"daddr": "10.96.0.10", "dport": 80, "netns_ino": 77, "role": 0},
    {"daddr": "10.96.0.10", "dport": 80, "netns_ino": 77, "role": SERVER},
    {"daddr": "10.111.255.255", "netns_ino": 5},  # in range, unknown netns
    {"daddr": "10.112.0.1", "netns_ino": 77},  # just outside 10.96.0.0/12
    {
        "family": socket.AF_INET6,
        "saddr": "::ffff:10.0.0.1",
        "daddr": "::ffff:10.96.0.1",
        "netns_ino": 77,
    },
    {"family": socket.AF_INET6, "saddr": "fd00::1", "daddr": "fd00:96::f:1", "netns_ino": 77},
    {"family": socket.AF_INET6, "saddr": "fd00::1", "daddr": "fd00:96::10:1", "netns_ino": 77},
]


def variety() -> list[bytes]:
    return [make(end_ns=5_000_000 + i, **fields) for i, fields in enumerate(VARIETY)]  # type: ignore[arg-type]


def both(
    records: RecordBatch | list[RecordBatch],
    batch_records: int = 256,
    batch_bytes: int = 256 << 10,
    with_nat: bool = True,
    node: str = NODE,
) -> None:
    """Run both encoders over the batches; assert identical messages and counters."""
    batches = records if isinstance(records, list) else [records]
    results = []
    for kind in (NativeMessages, PythonMessages):
        r, n = resolver(), nat() if with_nat else None
        enc = kind(r, node, n, batch_records, batch_bytes)
        stats = DecodeStats()
        out = [enc.encode(b, OFFSET, stats) for b in batches]
        results.append((out, stats, enc.stats, r.stats, n.stats if n else None))
    assert results[0] == results[1]
    for messages_of_batch in results[0][0]:
        for key, value, count in messages_of_batch:
            assert len(CODEC.decode_batch(value)) == count and isinstance(key, str)


@pytest.mark.parametrize("batch_records", [1, 3, 256])
@pytest.mark.parametrize("with_nat", [False, True])
def test_every_kind_of_record_makes_the_same_bytes(batch_records: int, with_nat: bool) -> None:
    both(batch(*variety()), batch_records=batch_records, with_nat=with_nat)


@pytest.mark.parametrize("batch_bytes", [1024, 2000, 5000])
def test_byte_bound_splits_the_same_way(batch_bytes: int) -> None:
    both(batch(*variety()), batch_bytes=batch_bytes)
    both(batch(*[make(cgroup_id=500, seq=i) for i in range(37)]), batch_bytes=batch_bytes)


def test_bad_and_discarded_records_are_counted_the_same() -> None:
    b = batch(make(), make()[:100], make(family=99), make(), make(family=0))
    both(RecordBatch(b.data, b.spans, discarded=3))
    both(RecordBatch(b"", []))


def test_attribution_is_asked_again_on_each_batch() -> None:
    both([batch(make(cgroup_id=9999), make(cgroup_id=500)), batch(make(cgroup_id=9999))])


def test_node_names_are_escaped_the_same() -> None:
    for node in ("n", "", "a\\b\nc\u2028", "ノード"):
        both(batch(make(), make(cgroup_id=500)), node=node)


def test_random_records_make_the_same_bytes() -> None:
    rng = random.Random(7)
    records = []
    for i in range(3000):
        family = rng.choice([socket.AF_INET, socket.AF_INET6])
        raw = bytearray(
            make(family=family, saddr="::1", daddr="::2") if family == socket.AF_INET6 else make()
        )
        raw[0:48] = rng.randbytes(48)
        raw[0:8] = rng.randrange(2**62).to_bytes(8, "little") if i % 7 else bytes(8)
        raw[8:16] = rng.randrange(2**62).to_bytes(8, "little")
        raw[16:24] = rng.choice([1, 500, 501, 502, 503, 9999]).to_bytes(8, "little")
        raw[48:80] = rng.randbytes(32) if i % 3 else bytes(10) + b"\xff\xff" + rng.randbytes(20)
        raw[80:128] = rng.randbytes(48)
        raw[130:136] = rng.randbytes(6)
        raw[136:152] = rng.randbytes(16) if i % 5 == 0 else b"worker-%d\0" % (i % 9) + bytes(7)
        records.append(bytes(raw[:152]))
    for size in (1, 64, 256):
        both([batch(*records[:1000]), batch(*records[1000:])], batch_records=size)


def test_random_endings_make_the_same_bytes_and_outcomes() -> None:
    # The outcome depends on kind, flags, the state, sk_err and whether a SYN was
    # retransmitted: draw those together (the test above mostly draws a non-zero sk_err).
    rng = random.Random(11)
    records = []
    for i in range(4000):
        flags = rng.choice(
            [
                0,
                events.F_ESTABLISHED,
                events.F_START_UNKNOWN,
                events.F_START_UNKNOWN | events.F_ESTABLISHED,
            ]
        )
        records.append(
            make(
                end_ns=5_000_000 + i,
                flags=flags,
                kind=rng.choice([0, 0, 0, events.KIND_INTERIM]),
                oldstate=rng.randrange(14),
                sk_err=rng.choice([0, 0, 0, 110, 111, 104, 113, 22]),
                syn_retries=rng.choice([0, 1, 2, 7, 255]),
                role=rng.choice([0, 1, 1, SERVER]),
            )
        )
    both(batch(*records))
    enc = NativeMessages(resolver(), NODE, None, 256, 256 << 10)
    outcomes = [
        r.outcome
        for _key, value, _n in enc.encode(batch(*records), OFFSET, DecodeStats())
        for r in CODEC.decode_batch(value)
    ]
    want = [e.outcome for e in events.decode_batch(batch(*records), OFFSET, DecodeStats())]
    assert sorted(outcomes) == sorted(want)
    assert {"connect_timeout", "cancelled", "closed", "reset_locally", "open"} <= set(want)


def test_times_beyond_64_bits_make_the_same_bytes() -> None:
    # end_ns + the clock offset overflows u64: the C path hands such records to Python.
    both(batch(make(end_ns=2**64 - 1), make(start_ns=2**64 - 2), make()))


def test_callback_errors_propagate_without_leaking() -> None:
    def failing(_cgroup_id: int) -> CgroupInfo:
        raise RuntimeError("boom")

    r = resolver()
    r.resolve = failing  # type: ignore[method-assign]
    enc = NativeMessages(r, "n")
    with pytest.raises(RuntimeError, match="boom"):
        enc.encode(batch(make()), OFFSET, DecodeStats())


def test_no_reference_is_leaked_per_batch() -> None:
    enc = NativeMessages(resolver(), "n", nat(), 4, 256 << 10)
    b = batch(*variety())
    key = enc._cgroup(500)[0]  # the interned key string the encoder hands out
    enc.encode(b, OFFSET, DecodeStats())
    before = sys.getrefcount(key), sys.getrefcount(b.data)
    for _ in range(50):
        enc.encode(b, OFFSET, DecodeStats())
    assert (sys.getrefcount(key), sys.getrefcount(b.data)) == before


def test_without_the_extension_the_python_path_is_used_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "collector.tcp._encode", None)  # import raises ImportError
    monkeypatch.setattr(messages, "_warned", False)
    with caplog.at_level(logging.WARNING, logger="collector"):
        first = message_encoder(resolver(), "n")
        second = message_encoder(resolver(), "n")
    assert isinstance(first, PythonMessages) and isinstance(second, PythonMessages)
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "make native" in caplog.records[0].message and len(caplog.records) == 1


def test_with_the_extension_the_native_path_is_used() -> None:
    assert isinstance(message_encoder(resolver(), "n"), NativeMessages)


def ring_laid(records: list[bytes], discard: set[int] = frozenset()) -> bytes:  # type: ignore[assignment]
    """Records as the ring buffer lays them out: real headers (length, discard bit)."""
    out = b""
    for i, record in enumerate(records):
        header = len(record) | (1 << 30 if i in discard else 0)
        out += header.to_bytes(4, "little") + bytes(4) + record + bytes(-len(record) % 8)
    return out


def test_records_found_from_the_ring_headers_make_the_same_bytes() -> None:
    raw = variety()
    raw.insert(3, make()[:100])  # a record of the wrong size: a decode error
    data = ring_laid(raw, discard={5, 6})
    batch_ = RecordBatch(data, None, discarded=2, count=len(raw) - 2)
    assert batch_.given_spans is None and len(batch_.spans) == len(raw) - 2
    both(batch_)
    both(batch_, batch_records=1)
    enc = NativeMessages(resolver(), NODE, nat(), 256, 256 << 10)
    walked = enc.encode(RecordBatch(data, None, 2), OFFSET, DecodeStats())
    assert walked == enc.encode(RecordBatch(data, batch_.spans, 2), OFFSET, DecodeStats())


def test_a_record_running_past_the_data_is_refused() -> None:
    data = ring_laid([make()])[:-8]
    enc = NativeMessages(resolver(), "n")
    with pytest.raises(ValueError, match="outside"):
        enc.encode(RecordBatch(data), OFFSET, DecodeStats())

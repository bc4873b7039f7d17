"""Batched output: grouping per output partition, Kafka's murmur2, bounds per message."""

from __future__ import annotations

import msgspec
import pytest
from enricher_records import raw_connection

from enricher.join.outbox import MAX_BATCH_BYTES, Outbox, murmur2, partition_of
from enricher.join.render import NATIVE, Rendered
from flowscope.records import RawTcpConnection

Sent = list[tuple[str, bytes, str, int]]


def _outbox(max_records: int, partitions: int = 1) -> tuple[Outbox, Sent]:
    sent: Sent = []

    def produce(topic: str, value: bytes, key: str, records: int) -> None:
        sent.append((topic, value, key, records))

    return Outbox(produce, "out", max_records, partitions), sent


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # Kafka's own test vectors (org.apache.kafka.common.utils.UtilsTest.testMurmur2).
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        (b"abc", 479470107),
    ],
)
def test_murmur2_matches_kafka(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected


def test_one_record_per_message_keeps_each_key_and_no_array() -> None:
    box, sent = _outbox(1)
    box.add("a", b'{"x":1}')
    box.add("b", b'{"x":2}')
    assert sent == [("out", b'{"x":1}', "a", 1), ("out", b'{"x":2}', "b", 1)]
    box.flush()
    assert len(sent) == 2 and box.messages == 2 and box.records == 2


def test_records_are_grouped_per_partition_and_keyed_by_their_first_record() -> None:
    box, sent = _outbox(100, partitions=4)
    keys = [f"ns/Deployment/wl-{i}" for i in range(40)]
    for i, key in enumerate(keys):
        box.add(key, b'{"i":%d}' % i)
    assert sent == []  # nothing is sent before the flush (or a full group)
    box.flush()
    assert box.records == 40 and box.messages == len(sent) <= 4
    seen = []
    for _, value, key, records in sent:
        items = msgspec.json.decode(value)
        assert records == len(items)
        part = partition_of(key, 4)
        # Every record in the message belongs on the partition its key (the first) goes to.
        assert {partition_of(keys[item["i"]], 4) for item in items} == {part}
        assert key == keys[items[0]["i"]]
        seen += [item["i"] for item in items]
    assert sorted(seen) == list(range(40))


def test_a_full_group_goes_out_at_once_and_order_is_kept() -> None:
    box, sent = _outbox(3)
    for i in range(7):
        box.add(f"k{i}", b"%d" % i)
    assert [v for _, v, _, _ in sent] == [b"[0,1,2]", b"[3,4,5]"]
    box.flush()
    assert [v for _, v, _, _ in sent][-1] == b"[6]" and box.records == 7


def test_a_batch_stays_below_the_message_size_limit() -> None:
    box, sent = _outbox(1000)
    big = b'"' + b"x" * (MAX_BATCH_BYTES // 5) + b'"'
    for _ in range(12):
        box.add("k", big)
    box.flush()
    assert sum(r for *_, r in sent) == 12 and len(sent) >= 3
    assert all(len(v) < MAX_BATCH_BYTES for _, v, _, _ in sent)
    assert all(len(msgspec.json.decode(v)) == r for _, v, _, r in sent)


def test_a_new_partition_count_flushes_what_was_grouped_under_the_old_one() -> None:
    box, sent = _outbox(100, partitions=1)
    box.add("a", b"1")
    box.partitions = 6
    assert [v for _, v, _, _ in sent] == [b"[1]"] and box.partitions == 6


def test_max_records_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        _outbox(0)


def _rendered_batch(n: int) -> tuple[list[Rendered | None], list[RawTcpConnection]]:
    """Records of every kind the outbox treats apart: plain, not plain, waiting for metadata,
    of another schema version, and None (dead-lettered while rendering)."""
    outs: list[Rendered | None] = []
    raws = []
    for i in range(n):
        kind = i % 7
        raws.append(raw_connection(v=2 if kind == 3 else 1, local_port=1 + i))
        if kind == 5:
            outs.append(None)
            continue
        outs.append(
            Rendered(
                value=b'{"i":%d}' % i,
                key=f"wl-{i % 11}",
                local_attribution="pod",
                remote_attribution="pod" if kind in (0, 1, 2, 3) else "external",
                missing="ip:10.0.9.9" if kind == 6 else None,
                plain=kind in (0, 1, 2, 3),
            )
        )
    return outs, raws


@pytest.mark.parametrize(("max_records", "partitions"), [(2, 1), (3, 4), (256, 1), (256, 6)])
def test_the_c_router_adds_exactly_what_the_python_one_adds(
    max_records: int, partitions: int
) -> None:
    assert NATIVE is not None, "enricher.join._render is not built: run `make native`"
    outs, raws = _rendered_batch(200)
    results = []
    for native in (True, False):
        outbox, sent = _outbox(max_records, partitions)
        attended: list[int] = []

        def attend(raw: RawTcpConnection, out: Rendered, seen: list[int] = attended) -> bool:
            seen.append(raw.local_port)
            return raw.local_port % 2 == 0  # some go out, some (held, dead-lettered) do not

        added = outbox.add_rendered(outs, raws, 1, attend, native=native)
        outbox.flush()
        results.append((added, sent, attended, outbox.messages, outbox.records))
    assert results[0] == results[1]
    added, sent, attended, _, records = results[0]
    assert added == records == sum(n for *_, n in sent)
    # Attended: every record not plain, waiting, or of version 2 (kinds 3, 4, 6), not None.
    assert attended == [i + 1 for i in range(200) if i % 7 in (3, 4, 6)]
    # Every partition's messages hold only keys of that partition, in the order added.
    for _, value, key, _ in sent:
        for record in msgspec.json.decode(value):
            key_of = f"wl-{record['i'] % 11}"
            assert partition_of(key_of, partitions) == partition_of(key, partitions)
